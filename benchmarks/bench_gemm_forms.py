"""Which form of the biLM's products this CPU's TF GEMM runs faster.

    .venv/bin/python benchmarks/bench_gemm_forms.py

For each product of the original ELMo model, times X [N, in] @ W [in, out] against the
same product with the weight on the left, W [out, in] @ X^T [in, N] (the layout
`hub_export/model/lstm.py` and `hub_export/model/highway.py` use), as median milliseconds in a
tf.function. The recurrent rows chain 10 steps of both directions, as the LSTM loop
does, and report per step. This is a script that prints figures, not a test; about a
minute on 2 cores.
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

STEPS = 10  # chained recurrent steps per call


def median_ms(fn, repeats: int = 7) -> float:
    for _ in range(2):
        fn().numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn().numpy()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def one_product(n: int, k: int, m: int) -> tuple[float, float]:
    """(X @ W, W^T @ X^T) in ms for X [n, k], W [k, m]."""
    x = tf.random.normal([n, k])
    w = tf.Variable(tf.random.normal([k, m]))
    w_t = tf.Variable(tf.transpose(w))
    x_t = tf.transpose(x)
    right = tf.function(lambda: tf.reduce_sum(tf.matmul(x, w)[:1]))
    left = tf.function(lambda: tf.reduce_sum(tf.matmul(w_t, x_t)[:1]))
    return median_ms(right), median_ms(left)


def recurrent_step(batch: int, dim: int = 4096, proj: int = 512,
                   in_loop: bool = False) -> tuple[float, float]:
    """(X @ W, W @ X^T) in ms per step of both directions: h @ W_h, then the projection.
    The steps are unrolled, or with `in_loop` a tf.while_loop as in `hub_export/model/lstm.py`."""
    w_h = [tf.Variable(tf.random.normal([proj, 4 * dim]) * 0.05) for _ in range(2)]
    w_p = [tf.Variable(tf.random.normal([dim, proj]) * 0.05) for _ in range(2)]
    w_h_t = [tf.Variable(tf.transpose(w)) for w in w_h]
    w_p_t = [tf.Variable(tf.transpose(w)) for w in w_p]
    h0 = tf.random.normal([batch, proj])

    def chain(step, h):
        if in_loop:
            _, *hs = tf.while_loop(lambda t, *_: t < STEPS,
                                   lambda t, h_f, h_b: (t + 1, step(0, h_f), step(1, h_b)), (0, h, h))
        else:
            hs = [h, h]
            for _ in range(STEPS):
                hs = [step(d, hs[d]) for d in range(2)]
        return tf.reduce_sum(hs[0]) + tf.reduce_sum(hs[1])

    right = tf.function(lambda: chain(
        lambda d, h: tf.tanh(tf.matmul(tf.tanh(tf.matmul(h, w_h[d])[:, :dim]), w_p[d])), h0))
    left = tf.function(lambda: chain(
        lambda d, h: tf.tanh(tf.matmul(w_p_t[d], tf.tanh(tf.matmul(w_h_t[d], h)[:dim]))),
        tf.transpose(h0)))
    return median_ms(right) / STEPS, median_ms(left) / STEPS


def main() -> None:
    rows = []
    for batch in (1, 16, 64):
        rows.append((f"recurrent step, both directions, B={batch}", *recurrent_step(batch)))
    for batch in (1, 16):
        rows.append((f"the same in a tf.while_loop, B={batch}", *recurrent_step(batch, in_loop=True)))
    for label, shape in [("input GEMM, 16x50 batch", (832, 512, 16384)),
                         ("highway (carry+transform), 16x50 batch", (832, 2048, 4096)),
                         ("projection, 16x50 batch", (832, 2048, 512)),
                         ("bench.py's GEMM roof shape", (4096, 2048, 2048))]:
        n, k, m = shape
        rows.append((f"{label}: [{n}x{k}] by [{k}x{m}]", *one_product(n, k, m)))
    print(f"TF {tf.__version__}, {os.cpu_count()} CPUs; median ms")
    print(f"{'product':68s} {'X @ W':>9s} {'W @ X^T':>9s} {'ratio':>6s}")
    for label, right, left in rows:
        print(f"{label:68s} {right:9.2f} {left:9.2f} {right / left:6.2f}")


if __name__ == "__main__":
    main()
