"""Speed of an exported module on the original ELMo architecture, with the machine's roofs.

    python benchmarks/bench.py [--quick] [--json benchmarks/results.json]

Writes seeded initial weights (as training starts from) of the original architecture (2x4096_512_2048cnn_2xhighway)
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


def vocabulary(size: int, seed: int = 0) -> list[str]:
    """`size` distinct random lowercase words of 2 to 10 letters."""
    import numpy as np

    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words: dict[str, None] = {}
    while len(words) < size:
        words["".join(rng.choice(letters, rng.integers(2, 11)))] = None
    return list(words)


def sentences(vocab: list[str], batch: int, length: int, seed: int) -> list[list[str]]:
    """Text drawn from `vocab` (so the token cache covers all of it)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [[vocab[i] for i in rng.integers(0, len(vocab), length)] for _ in range(batch)]


def tokens_per_s(module, toks: list[list[str]], repeats: int) -> tuple[float, float]:
    """(tokens signature, default signature) tokens/s on the same text."""
    import tensorflow as tf

    tokens = tf.constant(toks)
    lengths = tf.constant([len(t) for t in toks], tf.int32)
    text = tf.constant([" ".join(t) for t in toks])
    n = sum(len(t) for t in toks)
    t_tok = median_time(lambda: module.signatures["tokens"](
        tokens=tokens, sequence_len=lengths)["elmo"].numpy(), repeats)
    t_def = median_time(lambda: module.signatures["default"](default=text)["elmo"].numpy(), repeats)
    return n / t_tok, n / t_def


def export_in_child(options_path: Path, weights_path: Path, out: Path, version: int = 1,
                    vocab: Path | None = None, compute_dtype: str = "float32"
                    ) -> tuple[float, float, float]:
    """Exports in a fresh process: (wall seconds, peak RSS MB, RSS MB after importing TF)."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through
    # fork + exec, so a child would report this (large) process's peak as its own.
    code = ("import time; t = time.perf_counter();"
            "hwm = lambda: [int(l.split()[1]) for l in open('/proc/self/status') "
            "if l.startswith('VmHWM')][0];"
            "from hub_export.export.exporter import export;"
            "from hub_export.export.elmo_module import ExportConfig;"
            "base = hwm();"
            f"export({version}, {str(options_path)!r}, {str(weights_path)!r}, "
            f"output_dir={str(out)!r}, vocab_path={str(vocab) if vocab else None!r}, "
            f"config=ExportConfig(compute_dtype={compute_dtype!r}));"
            "print(time.perf_counter() - t, hwm(), base)")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"export failed:\n{done.stderr[-3000:]}")
    _, rss_kb, base_kb = done.stdout.split()[-3:]
    return wall, int(rss_kb) / 1024, int(base_kb) / 1024


def print_export(results: dict) -> None:
    grown = results["export_peak_rss_mb"] - results["export_rss_after_import_mb"]
    print(f"export: {results['export_s']:.1f} s, peak RSS {results['export_peak_rss_mb']:.0f} MB "
          f"({results['export_rss_after_import_mb']:.0f} MB after importing TF, so +{grown:.0f} MB "
          f"for the model; weights file {results['weights_mb']:.0f} MB, so the peak is "
          f"{results['export_peak_rss_mb'] / results['weights_mb']:.2f}x it); "
          f"hub.load: {results['hub_load_s']:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (rougher figures)")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results.json"),
                        help="where to write the figures as JSON")
    parser.add_argument("--export-only", action="store_true",
                        help="only the export's time and peak RSS and hub.load's time")
    parser.add_argument("--vocab-size", type=int, default=20000,
                        help="words in the token cache's vocabulary (the text is drawn from it)")
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf
    import tensorflow_hub as hub

    from hub_export.model.options import parse_options
    from hub_export.model.weights import write_weights
    from hub_export.train.language_model import initial_weights

    repeats = 3 if args.quick else 5
    options = parse_options(ORIGINAL_OPTIONS, source="bench")
    flops = flops_per_token(options)
    results = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "tensorflow": tf.__version__, "flops_per_token": flops}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        options_path, weights_path = tmp / "options.json", tmp / "weights.hdf5"
        options_path.write_text(json.dumps(ORIGINAL_OPTIONS))
        write_weights(weights_path, initial_weights(options, seed=0))
        results["weights_mb"] = weights_path.stat().st_size / 2**20
        export_s, export_rss, base_rss = export_in_child(options_path, weights_path, tmp / "exported")
        results.update(export_s=export_s, export_peak_rss_mb=export_rss,
                       export_rss_after_import_mb=base_rss)
        path = str(tmp / "exported" / "elmo" / "1")
        start = time.perf_counter()
        module = hub.load(path)
        results["hub_load_s"] = time.perf_counter() - start
        if args.export_only:
            print_export(results)
            return

        results["gemm_roof_flops"] = gemm = gemm_roof(tf, repeats)
        results["bandwidth_roof_bytes_per_s"] = bw = bandwidth_roof(tf, repeats)
        step_bytes = recurrent_bytes_per_step(options)
        vocab = vocabulary(args.vocab_size)
        rows = []
        for batch, length in SHAPES:
            toks = sentences(vocab, batch, length, seed=batch * 1000 + length)
            n = batch * length
            reps = max(repeats, 3) if n >= 320 else repeats * 2
            tok_s, default_s = tokens_per_s(module, toks, reps)
            row = {"batch": batch, "tokens": length, "tokens_per_s": tok_s,
                   "default_tokens_per_s": default_s,
                   "efficiency": tok_s * flops["total"] / gemm}
            if batch == 1:
                # Each of the length + 2 steps streams the recurrent weights once.
                row["bandwidth_efficiency"] = (length + 2) * step_bytes * tok_s / n / bw
            rows.append(row)
        results["shapes"] = rows

        # The token cache: the same text through a module exported with --vocab.
        vocab_path = tmp / "vocab.txt"
        vocab_path.write_text("\n".join(vocab) + "\n")
        cache_s, _, _ = export_in_child(options_path, weights_path, tmp / "exported", version=2,
                                        vocab=vocab_path)
        cached = hub.load(str(tmp / "exported" / "elmo" / "2"))
        results["token_cache"] = {"vocab_size": len(vocab), "export_s": cache_s, "shapes": []}
        for batch, length in [(16, 20), (64, 20)]:
            toks = sentences(vocab, batch, length, seed=batch * 1000 + length)
            plain_s, _ = tokens_per_s(module, toks, repeats)
            cached_s, _ = tokens_per_s(cached, toks, repeats)
            results["token_cache"]["shapes"].append(
                {"batch": batch, "tokens": length, "uncached_tokens_per_s": plain_s,
                 "cached_tokens_per_s": cached_s, "speedup": cached_s / plain_s})

        # Reduced precision: the same text through a bfloat16 module.
        export_in_child(options_path, weights_path, tmp / "exported", version=3,
                        compute_dtype="bfloat16")
        half = hub.load(str(tmp / "exported" / "elmo" / "3"))
        results["bfloat16"] = {"shapes": []}
        worst = 0.0
        for batch, length in [(1, 20), (64, 20)]:
            toks = sentences(vocab, batch, length, seed=batch * 1000 + length)
            full_s, _ = tokens_per_s(module, toks, repeats)
            half_s, _ = tokens_per_s(half, toks, repeats)
            inputs = {"tokens": tf.constant(toks), "sequence_len": tf.constant([length] * batch)}
            a, b = module.signatures["tokens"](**inputs), half.signatures["tokens"](**inputs)
            worst = max([worst] + [float(np.abs(a[k].numpy() - b[k].numpy()).max())
                                   for k in ("word_emb", "lstm_outputs1", "lstm_outputs2", "elmo")])
            results["bfloat16"]["shapes"].append(
                {"batch": batch, "tokens": length, "float32_tokens_per_s": full_s,
                 "bfloat16_tokens_per_s": half_s, "speedup": half_s / full_s})
        results["bfloat16"]["max_abs_difference"] = worst

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
    print_export(results)
    cache = results["token_cache"]
    print(f"token cache ({cache['vocab_size']} words, export {cache['export_s']:.1f} s), "
          "in-vocabulary text, tokens signature:")
    for r in cache["shapes"]:
        print(f"  {r['batch']}x{r['tokens']}: {r['uncached_tokens_per_s']:.0f} -> "
              f"{r['cached_tokens_per_s']:.0f} tok/s ({r['speedup']:.2f}x)")
    half = results["bfloat16"]
    print(f"bfloat16 compute (--compute-dtype bfloat16), largest |difference| to float32 "
          f"over all per-token outputs: {half['max_abs_difference']:.2g}")
    for r in half["shapes"]:
        print(f"  {r['batch']}x{r['tokens']}: {r['float32_tokens_per_s']:.0f} -> "
              f"{r['bfloat16_tokens_per_s']:.0f} tok/s ({r['speedup']:.2f}x)")
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
