"""`python -m hub_export dump-weights`: a training checkpoint as a weight file."""

from __future__ import annotations

from absl import flags

from hub_export.cli import require

SUMMARY = "Write a checkpoint's weights as weights.hdf5 (and inference options), ready to export"
EXAMPLES = ("--save-dir ckpt/ --outfile weights.hdf5 --options-out options.json",)


def define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("save-dir", None, "The checkpoint folder. Required.", flag_values=fv)
    flags.DEFINE_string("outfile", None, "The weight file to write. Required.", flag_values=fv)
    flags.DEFINE_string("options-out", None, "Also write the options for inference.",
                        flag_values=fv)
    flags.DEFINE_bool("include-softmax", False, "Also write softmax/W and softmax/b (ignored "
                      "by readers of the standard layout; lets `evaluate --weights` and "
                      "`train --restart-from-weights` use the softmax).", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Replace an existing --outfile (and --options-out).",
                      flag_values=fv)


def check(fv: flags.FlagValues) -> None:
    require(fv, "dump-weights", ("save-dir", "outfile"), EXAMPLES[0])


def main(fv: flags.FlagValues) -> int:
    from hub_export.train.trainer import dump_weights

    print(dump_weights(fv["save-dir"].value, fv.outfile, options_out=fv["options-out"].value,
                       include_softmax=fv["include-softmax"].value, overwrite=fv.overwrite))
    return 0
