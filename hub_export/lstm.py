"""The two stacks of LSTMs with projection (forward and backward), run together.

Layout. Both directions are stored stacked on a leading axis of size 2 (0 forward,
1 backward), so that one batched matmul per time step advances both, and the input
half of every gate pre-activation is one GEMM per layer over all time steps, outside
the recurrence. Tensors inside are time-major: [2, T, B, ...].

Conventions bridged from the TF LSTMCell that bilm-tf trained with:
- `W_0` is [input; h_prev] x 4D: rows [:input_dim] act on the input, the rest on h.
  It is split at load so the input half can be applied to all steps at once.
- Gate order along 4D is i, j, f, o (input, candidate, forget, output).
- TF adds forget_bias=1.0 to f inside the cell rather than storing it; it is added to
  the f block of `B` at load instead.
- No peepholes. c is clipped to +-cell_clip, the projected h to +-proj_clip, and the
  clipped values are the carried state.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from hub_export.options import LSTMOptions
from hub_export.weights import LSTM_PREFIX

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
    """

    def __init__(self, options: LSTMOptions, weights: Mapping[str, np.ndarray],
                 trainable: bool = False, name: str = "lstm"):
        super().__init__(name=name)
        self.options = options
        # Variable names carry the part's name (char_cnn/conv_0/kernel, ...).
        with self.name_scope:
            D, P = options.dim, options.projection_dim
            self.input_kernels, self.recurrent_kernels, self.biases, self.projections = [], [], [], []
            for layer in range(options.n_layers):
                parts = [
                    [weights[f"{LSTM_PREFIX.format(direction=d, layer=layer)}/{leaf}"] for d in (0, 1)]
                    for leaf in ("W_0", "B", "W_P_0")
                ]
                w0 = np.stack(parts[0])  # [2, in + P, 4D], rows [x; h]
                input_dim = w0.shape[1] - P
                bias = np.stack(parts[1]).copy()  # [2, 4D], blocks i, j, f, o
                bias[:, 2 * D:3 * D] += FORGET_BIAS
                name_ = f"lstm_{layer}"
                self.input_kernels.append(
                    tf.Variable(w0[:, :input_dim], trainable=trainable, name=f"{name_}/input_kernel"))
                self.recurrent_kernels.append(
                    tf.Variable(w0[:, input_dim:], trainable=trainable, name=f"{name_}/recurrent_kernel"))
                self.biases.append(tf.Variable(bias[:, None, :], trainable=trainable, name=f"{name_}/bias"))
                self.projections.append(
                    tf.Variable(np.stack(parts[2]), trainable=trainable, name=f"{name_}/projection"))

    def zero_state(self, batch_size: tf.Tensor) -> list[LayerState]:
        o = self.options
        return [(tf.zeros([2, batch_size, o.dim]), tf.zeros([2, batch_size, o.projection_dim]))
                for _ in range(o.n_layers)]

    def __call__(self, inputs: tf.Tensor, mask: tf.Tensor,
                 initial_state: Sequence[LayerState] | None = None
                 ) -> tuple[list[tf.Tensor], list[LayerState]]:
        """Runs every layer of both directions.

        Args:
            inputs: float32 [2, T, B, P], time-major; [1] already reversed per row so the
                backward stack reads each row from its own last valid step.
            mask: bool [T, B], True at valid steps (the same in both frames).
            initial_state: per layer (c, h); zeros when None.

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
        w_x = tf.convert_to_tensor(self.input_kernels[layer])
        w_h = tf.convert_to_tensor(self.recurrent_kernels[layer])
        w_p = tf.convert_to_tensor(self.projections[layer])
        bias = tf.convert_to_tensor(self.biases[layer])

        # The input half of all gates for all steps: one GEMM per direction.
        flat = tf.reshape(x, [2, -1, tf.shape(x)[3]])  # [2, T*B, in]
        gates_x = tf.reshape(tf.matmul(flat, w_x) + bias, [2, steps, batch, 4 * o.dim])
        mask = mask[None, :, :, None]  # [1, T, B, 1]

        def step(t, c, h, out):
            z = gates_x[:, t] + tf.matmul(h, w_h)  # [2, B, 4D]
            i, j, f, g_o = tf.split(z, 4, axis=-1)
            c_new = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(j)
            if o.cell_clip:
                c_new = tf.clip_by_value(c_new, -o.cell_clip, o.cell_clip)
            h_new = tf.matmul(tf.sigmoid(g_o) * tf.tanh(c_new), w_p)  # [2, B, P]
            if o.proj_clip:
                h_new = tf.clip_by_value(h_new, -o.proj_clip, o.proj_clip)
            # Past a row's end the state is held, so the final state is the one after
            # its last valid step (what dynamic_rnn with sequence_length returns).
            valid = mask[:, t]
            c = tf.where(valid, c_new, c)
            h = tf.where(valid, h_new, h)
            return t + 1, c, h, out.write(t, h_new)

        out = tf.TensorArray(tf.float32, size=steps, element_shape=[2, None, o.projection_dim])
        _, c, h, out = tf.while_loop(
            lambda t, *_: t < steps, step, (tf.constant(0), state[0], state[1], out))
        h_seq = tf.transpose(out.stack(), [1, 0, 2, 3])  # [T, 2, B, P] -> [2, T, B, P]
        return h_seq, (c, h)
