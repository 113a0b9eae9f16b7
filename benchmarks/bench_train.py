"""Training throughput of the built-in default model's configuration.

    .venv/bin/python benchmarks/bench_train.py [--steps 40] [--json benchmarks/results_train.json]

Trains the built-in model's architecture (hub_export.export.default_model.OPTIONS) from fresh
weights with the recipe's settings (batch 64, unroll 20, 1024 sampled negatives, dropout
0.1) on a generated corpus with a Zipfian vocabulary of the recipe's size (no download),
and prints tokens/s (input positions per direction, as the trainer's progress counts
them): the median over windows of steps after a warm-up. Also prints the held-out
evaluation speed (full softmax, no gradients). About 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from hub_export.export.default_model import OPTIONS  # noqa: E402
from hub_export.model.options import parse_options  # noqa: E402
from hub_export.model.vocab import Vocabulary, write_vocab  # noqa: E402
from hub_export.train import data as lm_data  # noqa: E402
from hub_export.train import trainer  # noqa: E402
from hub_export.train.language_model import LanguageModel, initial_softmax, initial_weights  # noqa: E402

VOCAB_SIZE = 15907  # the recipe's vocabulary
BATCH, UNROLL, NEGATIVES = 64, 20, 1024


def generated_corpus(folder: str, n_sentences: int = 20000, seed: int = 0) -> tuple[str, str]:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(VOCAB_SIZE)]
    words = list(dict.fromkeys(words))
    ranks = np.arange(1, len(words) + 1)
    p = 1.0 / ranks
    p /= p.sum()
    path = os.path.join(folder, "train.txt")
    with open(path, "w") as f:
        for _ in range(n_sentences):
            f.write(" ".join(words[i] for i in rng.choice(len(words), rng.integers(5, 40), p=p)) + "\n")
    stats = lm_data.corpus_stats([path], "x")
    vocab_path = os.path.join(folder, "vocab.txt")
    write_vocab(vocab_path, stats.counts)
    return path, vocab_path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--json", default="benchmarks/results_train.json")
    args = parser.parse_args()

    options = parse_options(OPTIONS)
    with tempfile.TemporaryDirectory() as folder:
        train_path, vocab_path = generated_corpus(folder)
        vocab = Vocabulary(vocab_path).check_training()
        batches = lm_data.WindowBatcher(
            lm_data.sentence_stream([train_path], "x", shuffle=True, repeat=True), vocab, BATCH,
            UNROLL, options.char_cnn.max_characters_per_token)
        config = trainer.TrainConfig(batch_size=BATCH, unroll_steps=UNROLL, n_negative_samples=NEGATIVES)
        P = options.lstm.projection_dim
        model = LanguageModel(options, initial_weights(options, 0), initial_softmax(vocab.size, P, 0))
        run = trainer.TrainingRun(model, config.learning_rate, None)
        step = trainer.make_train_step(model, run, config)
        state = model.zero_state(BATCH)
        times, data_times = [], []
        for k in range(args.steps + 5):
            t0 = time.perf_counter()
            b = next(batches)
            t1 = time.perf_counter()
            loss, _, state = step(b.char_rows, b.token_rows, b.targets, b.weights, state,
                                  tf.constant([0, k], tf.int32))
            float(loss)
            if k >= 5:  # warm-up: tracing
                times.append(time.perf_counter() - t1)
                data_times.append(t1 - t0)
        tokens = BATCH * UNROLL
        train_tps = tokens / statistics.median(times)
        eval_times = []
        eval_step = trainer.make_eval_step(model)
        for k in range(10):
            b = next(batches)
            t0 = time.perf_counter()
            _, state = eval_step(b.char_rows, b.token_rows, b.targets, b.weights, state)
            if k >= 2:
                eval_times.append(time.perf_counter() - t0)
        eval_tps = tokens / statistics.median(eval_times)
    n_params = sum(int(np.prod(v.shape)) for v in run.variables)
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "tensorflow": tf.__version__,
        "config": {"options": OPTIONS, "batch_size": BATCH, "unroll_steps": UNROLL,
                   "n_negative_samples": NEGATIVES, "vocab_size": vocab.size, "parameters": n_params},
        "train_tokens_per_s": train_tps, "train_step_s": statistics.median(times),
        "data_s_per_step": statistics.median(data_times), "eval_tokens_per_s": eval_tps,
    }
    print(f"built-in model configuration, {n_params:,} trainable parameters (softmax included), "
          f"vocabulary {vocab.size:,}, batch {BATCH} x unroll {UNROLL}")
    print(f"{'what':<34}{'tok/s':>10}{'s/step':>10}")
    print(f"{'train step (fwd+bwd+Adagrad)':<34}{train_tps:>10,.0f}{statistics.median(times):>10.3f}")
    print(f"{'data (windows, char ids)':<34}{'':>10}{statistics.median(data_times):>10.3f}")
    print(f"{'evaluation (full softmax)':<34}{eval_tps:>10,.0f}{statistics.median(eval_times):>10.3f}")
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
