"""The two stacks of LSTMs with projection (forward and backward), run together.

Layout. Inputs, outputs and states carry the two directions on a leading axis of size 2
(0 forward, 1 backward); tensors are time-major: [2, T, B, ...]. One loop step advances
both directions. The input half of every gate pre-activation is one GEMM per layer and
direction over all time steps, outside the recurrence. Each direction keeps its own
weight matrices and its own plain matmuls: TF's CPU BatchMatMul over a stacked
[2, ...] batch measured 2-4x slower per step than two MatMuls (benchmarks/RESULTS.md).

Inside a layer the work is feature-major: matrices are held as [out, in] and multiply
from the left (W @ h^T, state [D, B] and [P, B]). oneDNN's f32 GEMM ran the recurrent
product [4D, P] @ [P, B] about 2x faster at B = 16 than h @ W [B, P] @ [P, 4D], and the
all-steps input GEMM 2x faster too, on the 2-core AVX2 CPU; batch 1 was unchanged
(benchmarks/RESULTS.md, 2026-11-26). The weight-file layout is restored by
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

from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from hub_export.options import LSTMOptions
from hub_export.precision import matrix_variable, product
from hub_export.weights import DIRECTIONS, LSTM_PREFIX

FORGET_BIAS = 1.0

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
        mask = mask[:, None, :]  # [T, 1, B]

        def cell_step(cell, g_x, c, h, valid):  # g_x [4D, B], c [D, B], h [P, B]
            z = g_x + product(cell["recurrent_kernel"], h)  # [4D, B]
            i, j, f, g_o = tf.split(z, 4, axis=0)
            c_new = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(j)
            if o.cell_clip:
                c_new = tf.clip_by_value(c_new, -o.cell_clip, o.cell_clip)
            h_new = product(cell["projection"], tf.sigmoid(g_o) * tf.tanh(c_new))  # [P, B]
            if o.proj_clip:
                h_new = tf.clip_by_value(h_new, -o.proj_clip, o.proj_clip)
            # Past a row's end the state is held, so the final state is the one after
            # its last valid step (what dynamic_rnn with sequence_length returns).
            return tf.where(valid, c_new, c), tf.where(valid, h_new, h), h_new

        def step(t, c_f, h_f, c_b, h_b, out_f, out_b):
            valid = mask[t]
            c_f, h_f, y_f = cell_step(cells[0], gates_x[0][:, t], c_f, h_f, valid)
            c_b, h_b, y_b = cell_step(cells[1], gates_x[1][:, t], c_b, h_b, valid)
            return t + 1, c_f, h_f, c_b, h_b, out_f.write(t, y_f), out_b.write(t, y_b)

        def array():
            return tf.TensorArray(tf.float32, size=steps, element_shape=[o.projection_dim, None])

        c0, h0 = (tf.transpose(s, [0, 2, 1]) for s in state)  # [2, D|P, B]
        loop = tf.while_loop(lambda t, *_: t < steps, step,
                             (tf.constant(0), c0[0], h0[0], c0[1], h0[1], array(), array()))
        _, c_f, h_f, c_b, h_b, out_f, out_b = loop
        h_seq = tf.transpose(tf.stack([out_f.stack(), out_b.stack()]), [0, 1, 3, 2])  # [2, T, B, P]
        return h_seq, (tf.transpose(tf.stack([c_f, c_b]), [0, 2, 1]),
                       tf.transpose(tf.stack([h_f, h_b]), [0, 2, 1]))
