"""`python -m hub_export dump-token-embeddings`: bilm-tf's token-embedding file."""

from __future__ import annotations

import sys

from absl import flags

from hub_export.cli import require

SUMMARY = "Write bilm-tf's token-embedding file (char CNN, highway, projection) for a vocabulary"
EXAMPLES = ("--options options.json --weights weights.hdf5 --vocab vocab.txt --output tokens.hdf5",)
DEFAULT_BATCH_SIZE = 4096  # words per char-CNN call: words are far cheaper than sentences


def define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("options", None, "The biLM's options.json. Required.", flag_values=fv)
    flags.DEFINE_string("weights", None, "The biLM's weights.hdf5. Required.", flag_values=fv)
    flags.DEFINE_string("vocab", None, "The vocabulary, one word a line, read as bilm-tf's "
                        "Vocabulary reads it. Required.", flag_values=fv)
    flags.DEFINE_string("output", None, "The hdf5 file to write (dataset `embedding`, "
                        "[vocab size, P]). Required.", flag_values=fv)
    flags.DEFINE_integer("batch-size", DEFAULT_BATCH_SIZE, "Words per char-CNN call.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Replace an existing --output.", flag_values=fv)
    flags.DEFINE_bool("quiet", False, "No progress display on stderr.", flag_values=fv)


def check(fv: flags.FlagValues) -> None:
    require(fv, "dump-token-embeddings", ("options", "weights", "vocab", "output"),
            "--options options.json --weights weights.hdf5 --vocab vocab.txt --output tokens.hdf5")


def main(fv: flags.FlagValues) -> int:
    from hub_export.corpus.token_embeddings import dump_token_embeddings
    from hub_export.progress import Progress

    path = dump_token_embeddings(fv.vocab, fv.options, fv.weights, fv.output,
                                 overwrite=fv.overwrite, batch_size=fv["batch-size"].value,
                                 progress=Progress(2, stream=None if fv.quiet else sys.stderr))
    print(path)
    return 0
