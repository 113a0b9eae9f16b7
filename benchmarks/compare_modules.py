"""Two exported modules side by side: tokens/s of each and their largest output difference.

    .venv/bin/python benchmarks/compare_modules.py BEFORE_DIR AFTER_DIR [--rounds 5]

Both SavedModels are loaded into one process and their `tokens` signatures are called
alternately, shape by shape, on the same random 2-10 letter words (bench.py's text), so
that this machine's drift from minute to minute falls on both alike; the figure per
module is the median call. A script that prints figures, not a test: about two minutes
for two full-size modules on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHAPES = [(1, 20), (16, 20), (64, 20), (16, 50)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", help="the first module's directory (<name>/<version>)")
    parser.add_argument("after", help="the second module's directory")
    parser.add_argument("--rounds", type=int, default=5, help="timed calls of each module per shape")
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf
    from bench import vocabulary

    modules = {label: tf.saved_model.load(path).signatures["tokens"]
               for label, path in (("before", args.before), ("after", args.after))}
    rng = np.random.default_rng(0)
    words = vocabulary(20000)
    print(f"{'shape':>6} {'before tok/s':>13} {'after tok/s':>12} {'ratio':>6} {'max |difference|':>17}")
    for batch, length in SHAPES:
        tokens = tf.constant([[words[i] for i in rng.integers(len(words), size=length)]
                              for _ in range(batch)])
        lengths = tf.fill([batch], length)
        outputs = {}
        for label, fn in modules.items():
            for _ in range(2):  # warm-up
                outputs[label] = {k: v.numpy() for k, v in fn(tokens=tokens, sequence_len=lengths).items()}
        diff = max(float(np.abs(outputs["before"][k] - outputs["after"][k]).max()) for k in outputs["before"])
        times = {label: [] for label in modules}
        for _ in range(args.rounds):
            for label, fn in modules.items():
                start = time.perf_counter()
                fn(tokens=tokens, sequence_len=lengths)["elmo"].numpy()
                times[label].append(time.perf_counter() - start)
        rate = {label: batch * length / statistics.median(t) for label, t in times.items()}
        print(f"{batch:>3}x{length:<2} {rate['before']:13.0f} {rate['after']:12.0f} "
              f"{rate['after'] / rate['before']:6.2f} {diff:17.2e}", flush=True)


if __name__ == "__main__":
    main()
