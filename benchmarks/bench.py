"""Speed of an exported module on the original ELMo architecture, with the machine's roofs.

    python benchmarks/bench.py [--quick] [--json benchmarks/results.json]

Writes seeded random weights of the original architecture (2x4096_512_2048cnn_2xhighway)
into a temporary directory (nothing is downloaded), exports them with hub_export,
and measures, through `hub.load(...).signatures["tokens"]` and `["default"]`:
tokens/s at several batch shapes (begin/end-of-sentence positions not counted; median
over repeats after warm-up), FLOPs per token from the options, the fp32 GEMM roof and
the memory-bandwidth roof of this machine measured with TF in the same run, the
efficiency ratios, export wall time and peak RSS, and `hub.load` time.
This is a script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ORIGINAL_OPTIONS = {
    "char_cnn": {"embedding": {"dim": 16},
                 "filters": [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]],
                 "n_highway": 2, "activation": "relu", "n_characters": 262,
                 "max_characters_per_token": 50},
    "lstm": {"dim": 4096, "projection_dim": 512, "n_layers": 2, "cell_clip": 3, "proj_clip": 3,
             "use_skip_connections": True},
}
SHAPES = [(1, 20), (16, 20), (64, 20), (16, 50)]


def flops_per_token(options) -> dict[str, float]:
    """Multiply-adds x 2 per token of each part (the biLSTM counts both directions)."""
    c, l = options.char_cnn, options.lstm
    C, E, F, P, D = c.max_characters_per_token, c.embedding_dim, c.n_filters, l.projection_dim, l.dim
    cnn = sum(2 * (C - w + 1) * w * E * n for w, n in c.filters)
    highway = c.n_highway * 2 * 2 * F * F
    projection = 2 * F * P if options.has_projection else 0
    lstm = 2 * l.n_layers * (2 * (P + P) * 4 * D + 2 * D * P)
    return {"char_cnn": cnn, "highway": highway, "projection": projection, "bilstm": lstm,
            "total": cnn + highway + projection + lstm}


def recurrent_bytes_per_step(options) -> int:
    """fp32 weights the recurrence must read at every time step (both directions)."""
    l = options.lstm
    return 4 * 2 * l.n_layers * (l.projection_dim * 4 * l.dim + l.dim * l.projection_dim)


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gemm_roof(tf, repeats: int) -> float:
    a = tf.random.normal([4096, 2048])
    b = tf.random.normal([2048, 2048])
    mm = tf.function(lambda: tf.matmul(a, b))
    t = median_time(lambda: mm().numpy(), repeats)
    return 2 * 4096 * 2048 * 2048 / t


def bandwidth_roof(tf, repeats: int) -> float:
    a = tf.random.normal([1, 512])
    b = tf.random.normal([512, 131072])
    mm = tf.function(lambda: tf.matmul(a, b))
    t = median_time(lambda: mm().numpy(), repeats)
    return 512 * 131072 * 4 / t


def sentences(batch: int, length: int, seed: int) -> list[list[str]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return [["".join(rng.choice(letters, rng.integers(2, 9))) for _ in range(length)]
            for _ in range(batch)]


def export_in_child(options_path: Path, weights_path: Path, out: Path) -> tuple[float, float]:
    """Exports in a fresh process: (wall seconds, peak RSS in MB of that process)."""
    code = ("import resource, sys, time; t = time.perf_counter();"
            "from hub_export.export import export;"
            f"export(1, {str(options_path)!r}, {str(weights_path)!r}, output_dir={str(out)!r});"
            "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"export failed:\n{done.stderr[-3000:]}")
    _, rss_kb = done.stdout.split()[-2:]
    return wall, int(rss_kb) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (rougher figures)")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results.json"),
                        help="where to write the figures as JSON")
    parser.add_argument("--vocab-cache", action="store_true",
                        help="also measure a module exported with --vocab (token cache)")
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf
    import tensorflow_hub as hub

    from hub_export.options import parse_options
    from hub_export.weights import random_weights, write_weights

    repeats = 3 if args.quick else 7
    options = parse_options(ORIGINAL_OPTIONS, source="bench")
    flops = flops_per_token(options)
    results = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "tensorflow": tf.__version__, "flops_per_token": flops}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        options_path, weights_path = tmp / "options.json", tmp / "weights.hdf5"
        options_path.write_text(json.dumps(ORIGINAL_OPTIONS))
        write_weights(weights_path, random_weights(options, seed=0))
        results["weights_mb"] = weights_path.stat().st_size / 2**20
        export_s, export_rss = export_in_child(options_path, weights_path, tmp / "exported")
        results.update(export_s=export_s, export_peak_rss_mb=export_rss)
        path = str(tmp / "exported" / "elmo" / "1")
        start = time.perf_counter()
        module = hub.load(path)
        results["hub_load_s"] = time.perf_counter() - start

        results["gemm_roof_flops"] = gemm = gemm_roof(tf, repeats)
        results["bandwidth_roof_bytes_per_s"] = bw = bandwidth_roof(tf, repeats)
        step_bytes = recurrent_bytes_per_step(options)
        rows = []
        for batch, length in SHAPES:
            toks = sentences(batch, length, seed=batch * 1000 + length)
            tokens = tf.constant(toks)
            lengths = tf.constant([length] * batch, tf.int32)
            text = tf.constant([" ".join(t) for t in toks])
            n = batch * length
            reps = max(repeats, 3) if n >= 320 else repeats * 2
            t_tok = median_time(lambda: module.signatures["tokens"](
                tokens=tokens, sequence_len=lengths)["elmo"].numpy(), reps)
            t_def = median_time(lambda: module.signatures["default"](default=text)["elmo"].numpy(), reps)
            row = {"batch": batch, "tokens": length, "tokens_per_s": n / t_tok,
                   "default_tokens_per_s": n / t_def,
                   "efficiency": n / t_tok * flops["total"] / gemm}
            if batch == 1:
                # Each of the length + 2 steps streams the recurrent weights once.
                row["bandwidth_efficiency"] = (length + 2) * step_bytes / t_tok / bw
            rows.append(row)
        results["shapes"] = rows

    print(f"\nhub_export speed, original ELMo architecture (random weights), TF {tf.__version__}, "
          f"{os.cpu_count()} CPUs")
    print(f"FLOPs/token: {flops['total'] / 1e6:.1f} M (char CNN {flops['char_cnn'] / 1e6:.1f}, "
          f"highway {flops['highway'] / 1e6:.1f}, projection {flops['projection'] / 1e6:.1f}, "
          f"biLSTM {flops['bilstm'] / 1e6:.1f})")
    print(f"GEMM roof: {gemm / 1e9:.0f} GFLOP/s -> {gemm / flops['total']:.0f} tok/s;  "
          f"bandwidth roof: {bw / 1e9:.1f} GB/s -> batch-1 cap {bw / step_bytes:.0f} tok/s")
    print(f"{'shape':>8} {'tokens tok/s':>13} {'default tok/s':>14} {'GEMM eff.':>10} {'BW eff.':>8}")
    for r in rows:
        bwe = f"{r['bandwidth_efficiency']:.2f}" if "bandwidth_efficiency" in r else ""
        print(f"{r['batch']:>3}x{r['tokens']:<4} {r['tokens_per_s']:>13.0f} "
              f"{r['default_tokens_per_s']:>14.0f} {r['efficiency']:>10.2f} {bwe:>8}")
    print(f"export: {results['export_s']:.1f} s, peak RSS {results['export_peak_rss_mb']:.0f} MB "
          f"(weights {results['weights_mb']:.0f} MB); hub.load: {results['hub_load_s']:.1f} s")
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
