"""`python -m hub_export evaluate`: held-out perplexity of a checkpoint or a weight file."""

from __future__ import annotations

from absl import flags

from hub_export.cli import require

SUMMARY = "Held-out perplexity of a checkpoint (--save-dir) or of --options/--weights"
EXAMPLES = ("--test-prefix 'data/test/*.txt' --vocab vocab.txt --save-dir ckpt/",)


def define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("test-prefix", None, "A glob of held-out files, one tokenized "
                        "sentence per line (quote it). Required.", flag_values=fv)
    flags.DEFINE_string("vocab", None, "The training vocabulary. Required.", flag_values=fv)
    flags.DEFINE_string("save-dir", None, "The checkpoint folder to evaluate.", flag_values=fv)
    flags.DEFINE_string("options", None, "With --weights: evaluate a weight file instead "
                        "(it needs softmax/W and softmax/b: dump-weights --include-softmax).",
                        flag_values=fv)
    flags.DEFINE_string("weights", None, "The weight file, with --options.", flag_values=fv)
    flags.DEFINE_integer("batch-size", 64, "Sentence streams (rows) evaluated together; the "
                         "LSTM state is carried along each row.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("unroll-steps", 20, "Tokens per window.", lower_bound=1,
                         flag_values=fv)


def check(fv: flags.FlagValues) -> None:
    require(fv, "evaluate", ("test-prefix", "vocab"), EXAMPLES[0])


def main(fv: flags.FlagValues) -> int:
    from hub_export.train.trainer import evaluate

    perplexity, n_tokens = evaluate(fv["test-prefix"].value, fv.vocab,
                                    save_dir=fv["save-dir"].value, options_path=fv.options,
                                    weights_path=fv.weights, batch_size=fv["batch-size"].value,
                                    unroll_steps=fv["unroll-steps"].value)
    print(f"perplexity {perplexity:.3f} over {n_tokens} tokens per direction")
    return 0
