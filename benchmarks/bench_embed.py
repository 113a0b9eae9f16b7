"""Cost of `python -m hub_export embed` on a large corpus: memory growth and speed.

    python benchmarks/bench_embed.py [--model default] [--lines 100000] [--batch-size 64] [--layers all]
                                     [--repeats 1]

Exports a model into a temporary directory (`--model default`: the built-in default
model, the smallest real model a user has; `--model fixture`: the 16-wide bilm-tf
fixture model in ../shared/fixtures/bilm-tf, where writing the output is most of the
work), writes a seeded corpus of synthetic sentences (lengths 1..60 tokens, about
25 on average, 1% empty lines, words drawn from a Zipf-like vocabulary) and prints:

* peak RSS of `embed` over the whole corpus and over its first 1,000 lines, each run
  in a fresh process, and the difference: memory must not grow with the corpus;
* tokens/s of `embed` (first batch to the output file in place: reading, batching,
  the module, writing the output) against the module's own tokens/s at the same batch
  size, its `tokens` signature called on batches already built as tensors: (a) the
  same length-sorted batches embed makes, over the whole corpus, in a fresh process
  timed from its first batch as embed is, before and after the embed run (the mean is
  used: a shared machine's speed drifts; `--repeats N` runs embed N times, each between
  two timings of the module, and prints each ratio and their median); (b) batches of
  consecutive lines, padded to their longest (what calling the module on the corpus in
  order gives).

This is a script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FIXTURE = REPO.parent / "shared" / "fixtures" / "bilm-tf"

# Run in a child process. Peak RSS is the kernel's high-water mark (VmHWM) of the embed
# process. Not ru_maxrss: a process started by vfork + exec inherits its parent's
# high-water mark there, so it would report the bench's own memory.
CHILD = """
import json, sys
from hub_export.corpus.embed import embed

r = embed(sys.argv[1], sys.argv[2], sys.argv[3], layers=sys.argv[4], batch_size=int(sys.argv[5]))
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"lines": r.lines, "tokens": r.tokens, "seconds": r.seconds,
                  "peak_rss_mb": hwm / 1024}))
"""


def write_corpus(path: Path, n_lines: int, seed: int = 0) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, rng.integers(1, 12))) for _ in range(20000)]
    weights = 1.0 / np.arange(1, len(vocab) + 1)
    weights /= weights.sum()
    with open(path, "w") as f:
        for _ in range(n_lines):
            n = 0 if rng.random() < 0.01 else int(np.clip(rng.gamma(4.0, 6.5), 1, 60))
            f.write(" ".join(vocab[i] for i in rng.choice(len(vocab), n, p=weights)) + "\n")


def run_embed(module: Path, corpus: Path, output: Path, layers: str, batch_size: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(module), str(corpus), str(output),
                           layers, str(batch_size)], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    if proc.returncode != 0:
        sys.exit(f"embed failed with status {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def module_throughput(module_path: Path, corpus: Path, batch_size: int, layers: str,
                      max_lines: int, order: str) -> float:
    """tokens/s of the `tokens` signature alone on the first max_lines lines, in this
    process, over one pass of the batches, from the first (as embed is timed)."""
    import tensorflow as tf

    from hub_export.corpus.embed import (
        DEFAULT_MAX_TOKENS,
        WINDOW_BATCHES,
        length_batches,
        load_module,
    )

    module = load_module(module_path)
    names = {"all": ["word_emb"] + [f"lstm_outputs{j}" for j in range(1, module.n_layers + 1)],
             "elmo": ["elmo"], "default": ["default"]}[layers]
    sentences = []
    with open(corpus) as f:
        for _, line in zip(range(max_lines), f):
            tokens = line.split()
            for start in range(0, len(tokens), DEFAULT_MAX_TOKENS):
                sentences.append(tokens[start: start + DEFAULT_MAX_TOKENS])
    sentences = [s for s in sentences if s]  # embed skips empty lines too
    n_tokens = sum(len(s) for s in sentences)

    def tensors(rows):
        T = max(len(r) for r in rows)
        return (tf.constant([r + [""] * (T - len(r)) for r in rows]),
                tf.constant([len(r) for r in rows], tf.int32))

    batches = []
    if order == "sorted":  # embed's batching: windows of lines, sorted by length
        window = WINDOW_BATCHES * batch_size
        for w in range(0, len(sentences), window):
            chunk = sentences[w: w + window]
            for batch in length_batches([len(s) for s in chunk], batch_size):
                batches.append(tensors([chunk[i] for i in batch]))
    else:
        batches = [tensors(sentences[i: i + batch_size]) for i in range(0, len(sentences), batch_size)]

    start = time.perf_counter()
    for tokens, lengths in batches:
        out = module.fn(tokens=tokens, sequence_len=lengths)
        for name in names:
            out[name].numpy()
    return n_tokens / (time.perf_counter() - start)


def time_module(module: Path, corpus: Path, batch_size: int, layers: str, lines: int,
                order: str) -> float:
    """`module_throughput` in a fresh process, as embed runs in one."""
    proc = subprocess.run([sys.executable, __file__, "--time-module", str(module), str(corpus),
                           str(batch_size), layers, str(lines), order],
                          capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    if proc.returncode != 0:
        sys.exit(f"timing the module failed with status {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1:2] == ["--time-module"]:  # the child process of `time_module`
        module, corpus, batch_size, layers, lines, order = sys.argv[2:]
        print(json.dumps(module_throughput(Path(module), Path(corpus), int(batch_size), layers,
                                           int(lines), order)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", choices=["default", "fixture"])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--small-lines", type=int, default=1_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--layers", default="all", choices=["all", "elmo", "default"])
    parser.add_argument("--in-order-lines", type=int, default=20_000,
                        help="lines used to time the module on consecutive-line batches")
    parser.add_argument("--repeats", type=int, default=1,
                        help="embed runs, each between two timings of the module alone")
    args = parser.parse_args()
    files = (None, None)
    if args.model == "fixture":
        if not (FIXTURE / "lm_weights.hdf5").exists():
            sys.exit(f"the bilm-tf fixture model is not at {FIXTURE}")
        files = (FIXTURE / "options.json", FIXTURE / "lm_weights.hdf5")

    from hub_export.export.exporter import export

    with tempfile.TemporaryDirectory(prefix="bench_embed-") as tmp:
        tmp = Path(tmp)
        module = export(1, *files, output_dir=tmp / "exported", write_warmup=False).path
        big, small = tmp / "corpus.txt", tmp / "corpus-small.txt"
        write_corpus(big, args.lines)
        with open(big) as f, open(small, "w") as g:
            for _, line in zip(range(args.small_lines), f):
                g.write(line)

        few = run_embed(module, small, tmp / "small.hdf5", args.layers, args.batch_size)
        # Each embed run is timed between two timings of the module alone, and compared
        # with their mean: a shared machine's speed drifts within minutes.
        modules = [time_module(module, big, args.batch_size, args.layers, args.lines, "sorted")]
        runs = []
        for _ in range(args.repeats):
            (tmp / "big.hdf5").unlink(missing_ok=True)
            runs.append(run_embed(module, big, tmp / "big.hdf5", args.layers, args.batch_size))
            modules.append(time_module(module, big, args.batch_size, args.layers, args.lines,
                                       "sorted"))
        size_mb = (tmp / "big.hdf5").stat().st_size / 2**20
        in_order = time_module(module, big, args.batch_size, args.layers, args.in_order_lines,
                               "in_order")

    many = runs[0]
    peak = max(run["peak_rss_mb"] for run in runs)
    print(f"corpus: {many['lines']:,} lines, {many['tokens']:,} tokens; {args.model} model; "
          f"--layers {args.layers} --batch-size {args.batch_size}; {os.cpu_count()} CPUs")
    print(f"peak RSS of the embed process: {few['peak_rss_mb']:.0f} MB for {few['lines']:,} "
          f"lines, {peak:.0f} MB for {many['lines']:,} lines: growth {peak - few['peak_rss_mb']:+.0f} MB "
          "(limit +200 MB)")
    ratios = []
    for i, run in enumerate(runs):
        rate = run["tokens"] / run["seconds"]
        own = (modules[i] + modules[i + 1]) / 2
        ratios.append(rate / own)
        print(f"embed run {i + 1}: {rate:,.0f} tokens/s, {run['lines'] / run['seconds']:,.0f} "
              f"sentences/s, {run['seconds']:.1f} s, output {size_mb:,.0f} MB; module alone "
              f"(embed's length-sorted batches, all {args.lines:,} lines, fresh process) "
              f"{own:,.0f} tokens/s (before {modules[i]:,.0f}, after {modules[i + 1]:,.0f}): "
              f"embed/module = {ratios[-1]:.2f}")
    if len(runs) > 1:
        print(f"embed/module over {len(runs)} runs: median {statistics.median(ratios):.2f}, "
              f"range {min(ratios):.2f}-{max(ratios):.2f}")
    rate = sum(run["tokens"] for run in runs) / sum(run["seconds"] for run in runs)
    print(f"module alone, batches of consecutive lines, first {args.in_order_lines:,} lines: "
          f"{in_order:,.0f} tokens/s; embed/module = {rate / in_order:.2f}")


if __name__ == "__main__":
    main()
