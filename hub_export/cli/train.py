"""`python -m hub_export train`: bilm-tf's training scheme, in TF2."""

from __future__ import annotations

import sys

from absl import flags

from hub_export.cli import require
from hub_export.errors import UsageError

SUMMARY = "Train a biLM (bilm-tf's scheme); --restart continues it"
EXAMPLES = ("--train-prefix 'data/train/*.txt' --vocab vocab.txt --options options.json "
            "--save-dir ckpt/",
            "--train-prefix 'data/train/*.txt' --vocab vocab.txt --save-dir ckpt/ --restart")


def define(fv: flags.FlagValues) -> None:
    # The defaults are TrainConfig's (bilm-tf's); tests/test_cli.py checks they agree.
    flags.DEFINE_string("train-prefix", None, "A glob of training files, one tokenized "
                        "sentence per line, e.g. 'data/train/*.txt' (quote it). Required.",
                        flag_values=fv)
    flags.DEFINE_string("vocab", None, "The training vocabulary: <S>, </S>, <UNK>, then the "
                        "words by descending count. Required.", flag_values=fv)
    flags.DEFINE_string("save-dir", None, "The checkpoint folder. Required.", flag_values=fv)
    flags.DEFINE_string("options", None, "The architecture's options.json (a new run).",
                        flag_values=fv)
    flags.DEFINE_string("test-prefix", None, "A glob of held-out files, evaluated at the "
                        "start and at every checkpoint.", flag_values=fv)
    flags.DEFINE_bool("restart", False, "Continue from the latest checkpoint in --save-dir, "
                      "at its step.", flag_values=fv)
    flags.DEFINE_list("restart-from-weights", None, "OPTIONS WEIGHTS (or OPTIONS,WEIGHTS): "
                      "start from an existing weight file (fine-tuning on new text) with its "
                      "vocabulary as --vocab.", flag_values=fv)
    flags.DEFINE_integer("batch-size", 128, "Sentence streams (rows) per step.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("unroll-steps", 20, "Tokens per window (gradients are cut at window "
                         "boundaries; the LSTM state is carried).", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("epochs", 10, "Passes over --n-train-tokens.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("n-train-tokens", None, "Words in the training data (bilm-tf's "
                         "n_train_tokens; one epoch is n_train_tokens / (batch x unroll) "
                         "steps); default: counted from the files.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("n-negative-samples", 8192, "Negatives of the sampled softmax; the "
                         "full softmax is used when the vocabulary is not larger.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_float("dropout", 0.1, "Dropout on the LSTM inputs and output.",
                       flag_values=fv)
    flags.DEFINE_float("learning-rate", 0.2, "Adagrad's learning rate.", flag_values=fv)
    flags.DEFINE_float("clip-norm", 10.0, "Global gradient-norm clip.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Initial weights, data order, dropout, negatives.",
                         flag_values=fv)
    flags.DEFINE_integer("checkpoint-every", 1250, "Steps between checkpoints.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("log-every", 100, "Steps between progress lines.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("max-steps", None, "Stop after this many steps in all.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_bool("check-vocab-order", True, "Refuse a vocabulary whose words are not "
                      "sorted by descending count in the training files.", flag_values=fv)
    flags.DEFINE_bool("quiet", False, "No progress lines on stderr.", flag_values=fv)


def normalise(argv: list[str]) -> list[str]:
    """`--restart-from-weights O W`, as bilm-tf's README writes it, is one flag here."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if (arg == "--restart-from-weights" and i + 2 < len(argv)
                and not argv[i + 1].startswith("-") and not argv[i + 2].startswith("-")):
            argv[i:i + 3] = [f"--restart-from-weights={argv[i + 1]},{argv[i + 2]}"]
            break
    return argv


def check(fv: flags.FlagValues) -> None:
    require(fv, "train", ("train-prefix", "vocab", "save-dir"), EXAMPLES[0])
    restart_from = fv["restart-from-weights"].value
    if restart_from is not None and len(restart_from) != 2:
        raise UsageError("--restart-from-weights takes OPTIONS WEIGHTS, e.g. "
                         "--restart-from-weights options.json weights.hdf5")


def main(fv: flags.FlagValues) -> int:
    from hub_export.train.trainer import TrainConfig, train

    restart_from = fv["restart-from-weights"].value

    config = TrainConfig(batch_size=fv["batch-size"].value, unroll_steps=fv["unroll-steps"].value,
                         n_epochs=fv.epochs, n_train_tokens=fv["n-train-tokens"].value,
                         n_negative_samples=fv["n-negative-samples"].value,
                         dropout=fv.dropout, learning_rate=fv["learning-rate"].value,
                         clip_norm=fv["clip-norm"].value, seed=fv.seed,
                         checkpoint_every=fv["checkpoint-every"].value,
                         log_every=fv["log-every"].value)
    result = train(fv["train-prefix"].value, fv.vocab, fv["save-dir"].value,
                   options_path=fv.options, config=config, restart=fv.restart,
                   restart_from_weights=tuple(restart_from) if restart_from else None,
                   check_vocab_order=fv["check-vocab-order"].value,
                   test_prefix=fv["test-prefix"].value, max_steps=fv["max-steps"].value,
                   log=None if fv.quiet else sys.stderr)
    print(f"{result.save_dir}: step {result.step}")
    return 0
