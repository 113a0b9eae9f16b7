"""The two stacks of LSTMs with projection (forward and backward), run together.

Layout. Inputs, outputs and states carry the two directions on a leading axis of size 2
(0 forward, 1 backward); tensors are time-major: [2, T, B, ...]. One loop step advances
both directions. The input half of every gate pre-activation is one GEMM per layer and
direction over all time steps, outside the recurrence. Each direction keeps its own
weight matrices and its own plain matmuls: TF's CPU BatchMatMul over a stacked
[2, ...] batch is slower per step than two MatMuls.

Inside a layer the work is feature-major: matrices are held as [out, in] and multiply
from the left (W @ h^T, state [D, B] and [P, B]), the form in which oneDNN's f32 GEMM
runs the recurrent product and the all-steps input GEMM faster at batch sizes above 1.
Batch 1 is the exception: there the step products are matrix-vector products, which run
faster with [in, out] matrices on the right, so a frozen biLM runs batch 1 batch-major
on [in, out] copies of its step matrices, made at the first such call (`_row_kernels`).
`python benchmarks/bench_gemm_forms.py` times each form; benchmarks/RESULTS.md has the
figures and the CPUs they were taken on. The weight-file layout is restored by
`weight_arrays`.

Conventions bridged from the TF LSTMCell that bilm-tf trained with:
- `W_0` is [input; h_prev] x 4D: rows [:input_dim] act on the input, the rest on h.
  It is split (and transposed) at load so the input half can be applied to all steps
  at once.
- Gate order along 4D is i, j, f, o (input, candidate, forget, output).
- TF adds forget_bias=1.0 to f inside the cell rather than storing it; here it is added
  to the f block of `B` once per call, before the loop (the variable keeps the file's
  value, so that a trained biLM dumps back exactly).
- No peepholes. c is clipped to +-cell_clip, the projected h to +-proj_clip, and the
  clipped values are the carried state.
"""

from __future__ import annotations

import uuid
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from hub_export.model.options import LSTMOptions
from hub_export.model.precision import matmul, matrix_variable, product
from hub_export.model.weights import DIRECTIONS, LSTM_PREFIX

FORGET_BIAS = 1.0

# The per-step matrices that batch 1 multiplies in the [in, out] layout.
ROW_KERNELS = ("recurrent_kernel", "projection")

# (c, h) per layer, each [2, B, D] / [2, B, P]: axis 0 is the direction.
LayerState = tuple[tf.Tensor, tf.Tensor]


class BiLSTM(tf.Module):
    """`n_layers` LSTM layers per direction, the two directions independent.

    Args:
        options: LSTMOptions.
        weights: mapping with the `RNN_d/RNN/MultiRNNCell/Cell{l}/LSTMCell/{W_0,B,W_P_0}`
            arrays (d = 0 forward, 1 backward).
        trainable: bool.
        dtype: tf.DType. Compute dtype of the matrices (see `precision`).
    """

    def __init__(self, options: LSTMOptions, weights: Mapping[str, np.ndarray],
                 trainable: bool = False, dtype: tf.DType = tf.float32, name: str = "lstm"):
        super().__init__(name=name)
        self.options = options
        P = options.projection_dim
        # cells[layer][direction] = {"input_kernel" [4D, in], "recurrent_kernel" [4D, P],
        # "bias" [4D], "projection" [P, D]}
        self.cells = []
        # Variable names carry the part's name (lstm/lstm_0/forward/input_kernel, ...).
        with self.name_scope:
            for layer in range(options.n_layers):
                pair = []
                for d, direction in enumerate(DIRECTIONS):
                    prefix = LSTM_PREFIX.format(direction=d, layer=layer)
                    w0 = weights[f"{prefix}/W_0"]  # [in + P, 4D], rows [x; h]
                    input_dim = w0.shape[0] - P
                    bias = weights[f"{prefix}/B"]  # [4D], blocks i, j, f, o
                    scope = f"lstm_{layer}/{direction}"
                    pair.append({
                        "input_kernel": matrix_variable(w0[:input_dim].T, dtype, trainable,
                                                        f"{scope}/input_kernel"),
                        "recurrent_kernel": matrix_variable(w0[input_dim:].T, dtype, trainable,
                                                            f"{scope}/recurrent_kernel"),
                        "bias": tf.Variable(bias, trainable=trainable, name=f"{scope}/bias"),
                        "projection": matrix_variable(weights[f"{prefix}/W_P_0"].T, dtype, trainable,
                                                      f"{scope}/projection"),
                    })
                self.cells.append(pair)
            # Batch 1 multiplies vectors, and there the weight-on-the-right product
            # h [1, P] @ W [P, 4D] runs a step faster than W @ h, while at batch 16 it is
            # slower (`python benchmarks/bench_gemm_forms.py`). So a frozen biLM transposes
            # its step matrices at the first call of batch 1 and keeps those copies for the
            # process (see `_row_kernels`); a trainable one has none (they would go stale
            # as it trains).
            self.row_copies = None if trainable else f"hub_export_rows_{uuid.uuid4().hex}"

    def weight_arrays(self) -> dict[str, np.ndarray]:
        """The variables back in the weight-file layout: W_0 = [input; recurrent] kernels,
        B, W_P_0."""
        arrays = {}
        for layer, pair in enumerate(self.cells):
            for d, cell in enumerate(pair):
                prefix = LSTM_PREFIX.format(direction=d, layer=layer)
                v = {k: tf.cast(t, tf.float32).numpy() for k, t in cell.items()}
                arrays[f"{prefix}/W_0"] = np.concatenate([v["input_kernel"].T, v["recurrent_kernel"].T])
                arrays[f"{prefix}/B"] = v["bias"]
                arrays[f"{prefix}/W_P_0"] = np.ascontiguousarray(v["projection"].T)
        return arrays

    def zero_state(self, batch_size: tf.Tensor) -> list[LayerState]:
        o = self.options
        return [(tf.zeros([2, batch_size, o.dim]), tf.zeros([2, batch_size, o.projection_dim]))
                for _ in range(o.n_layers)]

    def __call__(self, inputs: tf.Tensor, mask: tf.Tensor,
                 initial_state: Sequence[LayerState] | None = None, dropout: float = 0.0,
                 seed: tf.Tensor | None = None) -> tuple[list[tf.Tensor], list[LayerState]]:
        """Runs every layer of both directions.

        Args:
            inputs: float32 [2, T, B, P], time-major; [1] already reversed per row so the
                backward stack reads each row from its own last valid step.
            mask: bool [T, B], True at valid steps (the same in both frames).
            initial_state: per layer (c, h); zeros when None.
            dropout: float. Training only: the rate of dropout on every layer's input, as
                bilm-tf's DropoutWrapper(input_keep_prob) around the residual cell, so the
                skip connection adds the dropped input.
            seed: int32 [2] stateless-random seed for the dropout masks (required with
                dropout), so that a training step is reproducible.

        Returns:
            (outputs, final_state): per layer [2, T, B, P] (residual included where skip
            connections are on; not masked), and per layer the (c, h) after each row's
            last valid step.
        """
        o = self.options
        batch = tf.shape(inputs)[2]
        if initial_state is None:
            initial_state = self.zero_state(batch)
        outputs, final_state = [], []
        x = inputs
        for layer in range(o.n_layers):
            if dropout:
                x = tf.nn.experimental.stateless_dropout(x, dropout, seed + layer)
            h_seq, state = self._layer(layer, x, mask, initial_state[layer])
            if o.use_skip_connections and layer > 0:
                h_seq = h_seq + x
            outputs.append(h_seq)
            final_state.append(state)
            x = h_seq
        return outputs, final_state

    def _layer(self, layer: int, x: tf.Tensor, mask: tf.Tensor, state: LayerState
               ) -> tuple[tf.Tensor, LayerState]:
        o = self.options
        steps, batch = tf.shape(x)[1], tf.shape(x)[2]
        # Read the variables into tensors here, outside the loop: a resource read inside
        # a while_loop body breaks a second gradient after save/load.
        cells = [{k: tf.convert_to_tensor(v) for k, v in cell.items()} for cell in self.cells[layer]]
        forget = tf.concat([tf.zeros([2 * o.dim]), tf.fill([o.dim], FORGET_BIAS), tf.zeros([o.dim])], 0)
        # The input half of all gates for all steps: one GEMM per direction, [4D, T, B].
        gates_x = []
        for d, cell in enumerate(cells):
            flat_t = tf.transpose(tf.reshape(x[d], [-1, tf.shape(x)[3]]))  # [in, T*B]
            gx = product(cell["input_kernel"], flat_t) + (cell["bias"] + forget)[:, None]
            gates_x.append(tf.reshape(gx, [4 * o.dim, steps, batch]))
        if self.row_copies is None:
            return self._recur(cells, gates_x, mask, state, None)
        return tf.cond(tf.equal(batch, 1),
                       lambda: self._recur(cells, gates_x, mask, state, self._row_kernels(layer, cells)),
                       lambda: self._recur(cells, gates_x, mask, state, None))

    def _recur(self, cells: list[dict], gates_x: list[tf.Tensor], mask: tf.Tensor,
               state: LayerState, rows: list[dict] | None) -> tuple[tf.Tensor, LayerState]:
        """The loop over time steps of one layer, both directions.

        Feature-major when `rows` is None (matrices [out, in] on the left, state
        [D|P, B]); else batch-major with `rows[d][key]`, the [in, out] copies, on the
        right (state [B, D|P]), the faster form for batch 1. Same arithmetic.
        """
        o = self.options
        steps = tf.shape(mask)[0]
        if rows is None:
            def mul(d, key, v):  # v [in, B]
                return product(cells[d][key], v)
            axis = 0
            gates = gates_x  # [4D, T, B], step t at [:, t]
            mask = mask[:, None, :]  # [T, 1, B]
            c0, h0 = (tf.transpose(s, [0, 2, 1]) for s in state)  # [2, D|P, B]
        else:
            def mul(d, key, v):  # v [B, in]
                return matmul(v, rows[d][key])
            axis = 1
            gates = [tf.transpose(g, [1, 2, 0]) for g in gates_x]  # [T, B, 4D], step t at [t]
            mask = mask[:, :, None]  # [T, B, 1]
            c0, h0 = state

        def cell_step(d, g_x, c, h, valid):
            z = g_x + mul(d, "recurrent_kernel", h)
            i, j, f, g_o = tf.split(z, 4, axis=axis)
            c_new = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(j)
            if o.cell_clip:
                c_new = tf.clip_by_value(c_new, -o.cell_clip, o.cell_clip)
            h_new = mul(d, "projection", tf.sigmoid(g_o) * tf.tanh(c_new))
            if o.proj_clip:
                h_new = tf.clip_by_value(h_new, -o.proj_clip, o.proj_clip)
            # Past a row's end the state is held, so the final state is the one after
            # its last valid step (what dynamic_rnn with sequence_length returns).
            return tf.where(valid, c_new, c), tf.where(valid, h_new, h), h_new

        def step(t, c_f, h_f, c_b, h_b, out_f, out_b):
            valid = mask[t]
            at = (lambda g: g[t]) if rows else (lambda g: g[:, t])
            c_f, h_f, y_f = cell_step(0, at(gates[0]), c_f, h_f, valid)
            c_b, h_b, y_b = cell_step(1, at(gates[1]), c_b, h_b, valid)
            return t + 1, c_f, h_f, c_b, h_b, out_f.write(t, y_f), out_b.write(t, y_b)

        def array():
            shape = [None, o.projection_dim] if rows else [o.projection_dim, None]
            return tf.TensorArray(tf.float32, size=steps, element_shape=shape)

        loop = tf.while_loop(lambda t, *_: t < steps, step,
                             (tf.constant(0), c0[0], h0[0], c0[1], h0[1], array(), array()))
        _, c_f, h_f, c_b, h_b, out_f, out_b = loop
        h_seq = tf.stack([out_f.stack(), out_b.stack()])  # [2, T, B, P] or [2, T, P, B]
        final = tf.stack([c_f, c_b]), tf.stack([h_f, h_b])
        if rows:
            return h_seq, final
        return tf.transpose(h_seq, [0, 1, 3, 2]), tuple(tf.transpose(s, [0, 2, 1]) for s in final)

    def _row_kernels(self, layer: int, cells: list[dict]) -> list[dict]:
        """[in, out] copies of a layer's step matrices: {key: tensor} per direction.

        The copies live in resources of the process, named in the graph and not among
        the module's variables: a saved module ships one layout (its checkpoint is
        unchanged), Keras wrappers see the same variables as before, and only a process
        that runs batch 1 holds both layouts. The first call of batch 1 fills them; two
        such calls at once write the same values. The name carries an id drawn when the
        biLM is built, so two different biLMs in one process never share copies (two
        loads of one saved module do, and their values are the same).
        """
        names = [(d, key) for d in range(2) for key in ROW_KERNELS]
        dtype = cells[0][ROW_KERNELS[0]].dtype
        handles = [tf.raw_ops.VarHandleOp(dtype=dtype, shape=[None, None], container="",
                                          shared_name=f"{self.row_copies}/{layer}/{d}/{key}")
                   for d, key in names]

        def fill():
            values = [tf.transpose(cells[d][key]) for d, key in names]
            written = [tf.raw_ops.AssignVariableOp(resource=h, value=v)
                       for h, v in zip(handles[:-1], values[:-1])]
            # The last copy is the one whose presence says all are there.
            with tf.control_dependencies(written):
                written = [tf.raw_ops.AssignVariableOp(resource=handles[-1], value=values[-1])]
            with tf.control_dependencies(written):
                return [tf.identity(v) for v in values]

        def read():
            return [tf.raw_ops.ReadVariableOp(resource=h, dtype=dtype) for h in handles]

        values = tf.cond(tf.raw_ops.VarIsInitializedOp(resource=handles[-1]), read, fill)
        rows = [{}, {}]
        for (d, key), value in zip(names, values):
            # Static shapes, for the loop's gradient machinery (the copies are constants).
            rows[d][key] = tf.stop_gradient(tf.reshape(value, cells[d][key].shape[::-1]))
        return rows
