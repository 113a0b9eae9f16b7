"""The output contract: every signature of an exported module returns this dict.

P is `lstm.projection_dim`, L is `lstm.n_layers`, and E is the width of `elmo` and
`default`: 2P, or K when the module was exported with `--projection-dim K`. Batch (B)
and time (T) stay dynamic; the last dimension is static.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    """One output of the module.

    Args:
        name: str. Key in the output dict.
        dtype: tf.DType.
        rank: int. 2 for [B, width], 3 for [B, T, width], 1 for [B].
        width: int or None. Static last dimension (None for rank 1).
        doc: str. What the output holds, for the module card.
    """

    name: str
    dtype: tf.DType
    rank: int
    width: int | None
    doc: str

    @property
    def shape(self) -> tuple:
        return {1: (None,), 2: (None, self.width), 3: (None, None, self.width)}[self.rank]

    def shape_text(self) -> str:
        return {1: "[B]", 2: f"[B, {self.width}]", 3: f"[B, T, {self.width}]"}[self.rank]


def output_specs(projection_dim: int, n_layers: int, elmo_dim: int | None = None) -> list[OutputSpec]:
    """The outputs, in order, for a biLM of width P=projection_dim and L=n_layers."""
    P = projection_dim
    E = elmo_dim or 2 * P
    specs = [OutputSpec("word_emb", tf.float32, 3, P,
                        "the context-independent token representation (char CNN, highway, projection)")]
    for layer in range(1, n_layers + 1):
        specs.append(OutputSpec(f"lstm_outputs{layer}", tf.float32, 3, 2 * P,
                                f"biLSTM layer {layer}: forward half, then backward half"))
    specs += [
        OutputSpec("elmo", tf.float32, 3, E,
                   "scaling * sum_j softmax(weights)_j * layer_j, layer_0 = [word_emb, word_emb]"),
        OutputSpec("default", tf.float32, 2, E,
                   "mean of elmo over each sentence's tokens (zeros for a sentence with none)"),
        OutputSpec("sequence_len", tf.int32, 1, None, "tokens in each sentence"),
    ]
    return specs
