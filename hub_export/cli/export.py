"""The main job: `python -m hub_export --version N [--options O --weights W] ...`."""

from __future__ import annotations

import sys

from absl import flags

from hub_export.errors import HubExportError, UsageError

SUMMARY = "Export a biLM as a versioned TF Hub-style SavedModel: <output-dir>/<name>/<version>/"
EXAMPLES = (
    "--version 3   (the built-in default model -> exported/elmo/3/)",
    "--version 1 --options options.json --weights weights.hdf5 --name elmo_en --archive",
)


def define(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("version", None, "Version number: the export goes to "
                         "<output-dir>/<name>/<version>/. A positive integer. Required.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_string("options", None, "The biLM's options.json (bilm-tf / AllenNLP "
                        "layout). With --weights; leave both out to export the built-in "
                        "default model.", flag_values=fv)
    flags.DEFINE_string("weights", None, "The biLM's weights.hdf5. With --options.",
                        flag_values=fv)
    flags.DEFINE_string("output-dir", "exported", "Root directory of the exports.",
                        flag_values=fv)
    flags.DEFINE_string("name", "elmo", "The model's directory name under --output-dir.",
                        flag_values=fv)
    flags.DEFINE_bool("archive", False, "Also write <output-dir>/<name>-<version>.tar.gz "
                      "(TF Hub's compressed format).", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Replace an existing version (and archive).",
                      flag_values=fv)
    flags.DEFINE_enum("trainable", "mix", ["mix", "all"], "What fine-tuning may change: "
                      "'mix' (the layer-mix weights and scale: four scalars for two LSTM "
                      "layers) or 'all' (every biLM variable too, TF Hub version 1's "
                      "behaviour).", flag_values=fv)
    flags.DEFINE_bool("layer-norm", False, "Normalise each layer over a sentence's tokens "
                      "before mixing (weight_layers' do_layer_norm).", flag_values=fv)
    flags.DEFINE_list("scalar-mix-init", None, "Initial layer-mix weights before the "
                      "softmax, one per layer, token layer first, e.g. 0,0,1 (AllenNLP's "
                      "scalar_mix_parameters).", flag_values=fv)
    flags.DEFINE_bool("freeze-mix", False, "Make the mix weights and scale non-trainable.",
                      flag_values=fv)
    flags.DEFINE_float("l2-coef", 0.0, "L2 regularization coefficient on the mix weights "
                       "(exposed as the module's regularization_losses).", flag_values=fv)
    flags.DEFINE_float("dropout", 0.0, "Dropout rate on `elmo` when the module is called "
                       "with training=True.", flag_values=fv)
    flags.DEFINE_integer("projection-dim", None, "Add a trainable projection of `elmo` and "
                         "`default` to this width.", lower_bound=1, flag_values=fv)
    flags.DEFINE_string("vocab", None, "A vocabulary file (one token a line): the token "
                        "representation of every word in it is precomputed into a frozen "
                        "table inside the module; other tokens still go through the char "
                        "CNN.", flag_values=fv)
    flags.DEFINE_enum("compute-dtype", "float32", ["float32", "bfloat16"], "Precision of "
                      "the biLM's matrix products: float32 equals the reference; bfloat16 is "
                      "about 1e-2 off, and faster only on CPUs with bfloat16 instructions "
                      "(see benchmarks/RESULTS.md).", flag_values=fv)
    flags.DEFINE_bool("warmup", True, "Write TF Serving warm-up requests into "
                      "assets.extra/tf_serving_warmup_requests.", flag_values=fv)
    flags.DEFINE_string("warmup-file", None, "A UTF-8 text file of your own warm-up "
                        "sentences, one per line.", flag_values=fv)
    flags.DEFINE_bool("quiet", False, "No progress display on stderr.", flag_values=fv)


def check(fv: flags.FlagValues) -> None:
    if fv.version is None:
        raise UsageError("--version is required: the version number to export, e.g. --version 3")
    if (fv.options is None) != (fv.weights is None):
        raise UsageError("--options and --weights go together: give both, or neither for the "
                         f"built-in default model (got --options={fv.options}, "
                         f"--weights={fv.weights})")


def main(fv: flags.FlagValues) -> int:
    from hub_export.export.elmo_module import ExportConfig
    from hub_export.export.exporter import export
    from hub_export.progress import Progress
    from hub_export.serving.warmup import read_sentences_file

    warmup_sentences = read_sentences_file(fv["warmup-file"].value) if fv["warmup-file"].value else None
    mix_init = fv["scalar-mix-init"].value
    if mix_init is not None:
        try:
            mix_init = tuple(float(v) for v in mix_init)
        except ValueError:
            raise HubExportError(f"--scalar-mix-init: expected numbers like 0,0,1, got "
                                 f"{','.join(mix_init)}") from None
    config = ExportConfig(trainable=fv.trainable, layer_norm=fv["layer-norm"].value,
                          scalar_mix_init=mix_init, freeze_mix=fv["freeze-mix"].value,
                          l2_coef=fv["l2-coef"].value, dropout=fv.dropout,
                          projection_dim=fv["projection-dim"].value,
                          compute_dtype=fv["compute-dtype"].value)
    steps = 3 + bool(fv.archive) + bool(fv.vocab)
    progress = Progress(steps, stream=None if fv.quiet else sys.stderr)
    result = export(fv.version, fv.options, fv.weights, output_dir=fv["output-dir"].value,
                    name=fv.name, config=config, archive=fv.archive, overwrite=fv.overwrite,
                    progress=progress, warmup_sentences=warmup_sentences,
                    write_warmup=fv.warmup, vocab_path=fv.vocab)
    print(result.path)
    if result.archive:
        print(result.archive)
    return 0
