"""`python -m hub_export embed`: every line of a corpus embedded, in bilm-tf's hdf5 layout."""

from __future__ import annotations

import functools
import sys

from absl import flags

from hub_export.cli import require

SUMMARY = "Embed every line of a tokenized corpus with an export, into bilm-tf's hdf5 layout"
EXAMPLES = ("--module exported/elmo/3 --input corpus.txt --output embeddings.hdf5",
            "--module exported/elmo/3 --input corpus.txt --output embeddings.hdf5 --resume")


def define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("module", None, "An export's version directory, e.g. "
                        "exported/elmo/3. Required.", flag_values=fv)
    flags.DEFINE_string("input", None, "A UTF-8 text file, one tokenized sentence per line "
                        "(tokens split on whitespace, as bilm-tf). Required.", flag_values=fv)
    flags.DEFINE_string("output", None, "The hdf5 file to write; progress is kept in "
                        "<output>.parts/ until it is complete. Required.", flag_values=fv)
    flags.DEFINE_enum("layers", "all", ["all", "elmo", "default"], "What to write per line "
                      "i: 'all': dataset str(i) of shape (3, n_tokens, 2P), [word_emb, "
                      "word_emb] then the two biLSTM layers (bilm-tf's layout); 'elmo': "
                      "str(i) of shape (n_tokens, E); 'default': row i of one dataset "
                      "sentence_embeddings [n_lines, E].", flag_values=fv)
    flags.DEFINE_integer("batch-size", 64, "Sentences per module call (lines are sorted by "
                         "length within a window first).", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("max-tokens", 256, "A line of more than N tokens is embedded in "
                         "consecutive pieces of at most N tokens, each run as a sentence of "
                         "its own (the LSTMs restart at every piece, so no context crosses a "
                         "cut) and joined back along the tokens; its `default` is the mean "
                         "over all its tokens.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("window", None, "Lines sorted by length and saved together (a kill "
                         "loses at most the windows in flight); default 8 x --batch-size.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_bool("resume", False, "Finish a run that was killed or stopped, from "
                      "<output>.parts/: lines already saved are neither recomputed nor "
                      "rewritten.", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Start over and replace an existing output (the "
                      "old one stays until the new one is complete).", flag_values=fv)
    flags.DEFINE_string("runner", None, "Run the job as an Apache Beam pipeline on this "
                        "runner (DirectRunner, DataflowRunner, FlinkRunner, SparkRunner; "
                        "needs the hub_export[beam] extra); the parts it writes are merged "
                        "into --output.", flag_values=fv)
    flags.DEFINE_string("beam-options", "", "With --runner: further Beam pipeline options, "
                        "quoted, e.g. '--project=p --region=r --temp_location=gs://b/tmp'.",
                        flag_values=fv)
    flags.DEFINE_bool("quiet", False, "No progress line on stderr.", flag_values=fv)


def check(fv: flags.FlagValues) -> None:
    require(fv, "embed", ("module", "input", "output"),
            "--module exported/elmo/3 --input corpus.txt --output embeddings.hdf5")


def main(fv: flags.FlagValues) -> int:
    if fv.runner is None:
        from hub_export.corpus.embed import embed
    else:  # the same job as a Beam pipeline
        from hub_export.corpus.beam import embed_beam

        embed = functools.partial(embed_beam, runner=fv.runner,
                                  beam_options=fv["beam-options"].value)
    try:
        result = embed(fv.module, fv.input, fv.output, layers=fv.layers,
                       batch_size=fv["batch-size"].value, max_tokens=fv["max-tokens"].value,
                       window=fv.window, resume=fv.resume, overwrite=fv.overwrite,
                       progress=None if fv.quiet else sys.stderr)
    except KeyboardInterrupt:
        print(f"error: interrupted; what was embedded is kept in {fv.output}.parts/: run "
              "again with --resume to finish", file=sys.stderr)
        return 130
    print(result.path)
    return 0
