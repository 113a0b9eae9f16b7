"""Compute precision of the biLM's matrix products (`--compute-dtype`).

float32 is exact to the reference. bfloat16 stores the highway, projection and LSTM
matrices in bfloat16 and multiplies in it (half the bytes stream per LSTM step); every
sum of gates, the cell state, clipping and outputs stay float32. The char CNN stays
float32. Its outputs are about 1e-2 from float32's (values of magnitude about 1), and
it pays only on CPUs with bfloat16 instructions (AVX512-BF16 or AMX): elsewhere TF
emulates it and it runs slower. `python benchmarks/bench.py` measures both on the
machine at hand; benchmarks/RESULTS.md has the figures and the CPU flags.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

COMPUTE_DTYPES = {"float32": tf.float32, "bfloat16": tf.bfloat16}


def matrix_variable(value: np.ndarray, dtype: tf.DType, trainable: bool,
                    name: str) -> tf.Variable:
    """A weight matrix stored in the compute dtype.

    A transposed view (the model holds many matrices [out, in] that the file stores
    [in, out]) is transposed by TensorFlow, whose blocked, multi-threaded copy is several
    times faster on these matrices than numpy's strided one (`python benchmarks/bench.py
    --export-only` times an export of the original model).
    """
    value = np.asarray(value)
    if not value.flags.c_contiguous and value.T.flags.c_contiguous:
        value = tf.transpose(tf.convert_to_tensor(value.T))
    if dtype != tf.float32:
        value = tf.cast(value, dtype)
    return tf.Variable(value, trainable=trainable, name=name)


def matmul(x: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    """x (float32) @ w in w's dtype, the product returned as float32."""
    if w.dtype == tf.float32:
        return tf.matmul(x, w)
    return tf.cast(tf.matmul(tf.cast(x, w.dtype), w), tf.float32)


def product(w: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """w @ x (x float32) in w's dtype, returned as float32: `matmul` with the weight on
    the left."""
    if w.dtype == tf.float32:
        return tf.matmul(w, x)
    return tf.cast(tf.matmul(w, tf.cast(x, w.dtype)), tf.float32)
