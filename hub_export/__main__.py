"""Export an ELMo biLM as a versioned TF-Hub-style SavedModel.

Usage:
    python -m hub_export --version 3
        the built-in default model (a small biLM trained by hub_export) -> exported/elmo/3/
    python -m hub_export --version 1 --options options.json --weights weights.hdf5 \
        --name elmo_en --archive
        your model -> exported/elmo_en/1/ and exported/elmo_en-1.tar.gz
    python -m hub_export serving-config --base exported --name elmo --label stable=3
        exported/models.config for TF Serving, covering the versions on disk
    python -m hub_export embed --module exported/elmo/3 --input corpus.txt --output embeddings.hdf5
        every line of a tokenized corpus embedded, in bilm-tf's hdf5 layout
    python -m hub_export dump-token-embeddings --options options.json --weights weights.hdf5 \
        --vocab vocab.txt --output tokens.hdf5
        bilm-tf's token-embedding file for a vocabulary
    python -m hub_export train --train-prefix 'data/train/*.txt' --vocab vocab.txt \
        --options options.json --save-dir ckpt/
        train a biLM (bilm-tf's scheme); --restart continues it
    python -m hub_export evaluate --test-prefix 'data/test/*.txt' --vocab vocab.txt --save-dir ckpt/
        held-out perplexity of a checkpoint (or of --options/--weights)
    python -m hub_export dump-weights --save-dir ckpt/ --outfile weights.hdf5 --options-out options.json
        the checkpoint as a weight file and inference options, ready to export

Errors in what you give are printed as one message naming the file, key, flag or
value: exit status 1 for a usage error (a flag's form), 2 for a bad file or value. What
the system refuses (a full disk, a read-only or forbidden folder) is one message naming
the path and the reason, exit status 2 (see the README's "What happens when things go
wrong").
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

from hub_export.atomic import ReportedStream, drop_unwritable_streams, failure_message  # noqa: E402
from hub_export.errors import HubExportError  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_integer("version", None, "Version number: the export goes to "
                     "<output_dir>/<name>/<version>/. A positive integer.", lower_bound=1)
flags.DEFINE_string("options", None, "The biLM's options.json (bilm-tf / AllenNLP layout). "
                    "With --weights; leave both out to export the built-in default model.")
flags.DEFINE_string("weights", None, "The biLM's weights.hdf5. With --options.")
flags.DEFINE_string("output_dir", "exported", "Root directory of the exports.")
flags.DEFINE_string("name", "elmo", "The model's directory name under --output_dir.")
flags.DEFINE_bool("archive", False, "Also write <output_dir>/<name>-<version>.tar.gz "
                  "(TF Hub's compressed format).")
flags.DEFINE_bool("overwrite", False, "Replace an existing version (and archive).")
flags.DEFINE_enum("trainable", "mix", ["mix", "all"], "What fine-tuning may change: 'mix' "
                  "(the layer-mix weights and scale: four scalars for two LSTM layers) or "
                  "'all' (every biLM variable too, TF Hub version 1's behaviour).")
flags.DEFINE_bool("layer_norm", False, "Normalise each layer over a sentence's tokens "
                  "before mixing (weight_layers' do_layer_norm).")
flags.DEFINE_list("scalar_mix_init", None, "Initial layer-mix weights before the softmax, "
                  "one per layer, token layer first, e.g. 0,0,1 (AllenNLP's "
                  "scalar_mix_parameters).")
flags.DEFINE_bool("freeze_mix", False, "Make the mix weights and scale non-trainable.")
flags.DEFINE_float("l2_coef", 0.0, "L2 regularization coefficient on the mix weights "
                   "(exposed as the module's regularization_losses).")
flags.DEFINE_float("dropout", 0.0, "Export: dropout rate on `elmo` when called with "
                   "training=True. train: dropout on the LSTM inputs and output (default 0.1).")
flags.DEFINE_integer("projection_dim", None, "Add a trainable projection of `elmo` and "
                     "`default` to this width.", lower_bound=1)
flags.DEFINE_string("vocab", None, "A vocabulary file (one token a line): the token "
                    "representation of every word in it is precomputed into a frozen table "
                    "inside the module; other tokens still go through the char CNN.")
flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16"], "Precision of the "
                  "biLM's matrix products: float32 equals the reference; bfloat16 is faster "
                  "on CPUs with bf16 units, about 1e-2 off (see benchmarks/RESULTS.md).")
flags.DEFINE_bool("quiet", False, "No progress display on stderr.")
flags.DEFINE_bool("warmup", True, "Write TF Serving warm-up requests into "
                  "assets.extra/tf_serving_warmup_requests (--no-warmup: don't).")
flags.DEFINE_string("warmup_file", None, "A UTF-8 text file of your own warm-up sentences, "
                    "one per line.")

# serving-config: python -m hub_export serving-config --base exported [--name elmo] ...
flags.DEFINE_string("base", "exported", "serving-config: the export root holding <name>/<version>/.")
flags.DEFINE_list("versions", None, "serving-config: serve exactly these versions, e.g. 2,3 "
                  "(default: every version found).")
flags.DEFINE_integer("latest", None, "serving-config: serve the newest N versions instead.",
                     lower_bound=1)
flags.DEFINE_multi_string("label", None, "serving-config: a version label, e.g. stable=3 "
                          "(repeatable).")
flags.DEFINE_string("serving_root", None, "serving-config: the path at which the server sees "
                    "--base (e.g. /models in the tensorflow/serving container); default: "
                    "--base's absolute path.")

# Flag names are also accepted with dashes (--output-dir), as the README writes them.
_DASHED = {name.replace("_", "-"): name for name in
           ("output_dir", "layer_norm", "scalar_mix_init", "freeze_mix", "l2_coef",
            "projection_dim", "warmup_file", "serving_root", "compute_dtype")}
_BOOLEANS = ("archive", "overwrite", "layer_norm", "freeze_mix", "quiet", "warmup")

# embed: python -m hub_export embed --module exported/elmo/3 --input corpus.txt --output out.hdf5
flags.DEFINE_string("module", None, "embed: an export's version directory, e.g. exported/elmo/3.")
flags.DEFINE_string("input", None, "embed: a UTF-8 text file, one tokenized sentence per line "
                    "(tokens split on whitespace, as bilm-tf).")
flags.DEFINE_string("output", None, "embed, dump-token-embeddings: the hdf5 file to write. embed "
                    "keeps its progress in <output>.parts/ until the output is complete.")
flags.DEFINE_enum("layers", "all", ["all", "elmo", "default"], "embed: what to write per line i: "
                  "'all': dataset str(i) of shape (3, n_tokens, 2P), [word_emb, word_emb] then "
                  "the two biLSTM layers (bilm-tf's layout); 'elmo': str(i) of shape "
                  "(n_tokens, E); 'default': row i of one dataset sentence_embeddings [n_lines, E].")
flags.DEFINE_integer("batch_size", 64, "embed: sentences per module call (lines are sorted by "
                     "length within a window first). dump-token-embeddings: words per call "
                     "(default 4096 there).", lower_bound=1)
flags.DEFINE_integer("max_tokens", 256, "embed: a line of more than N tokens is embedded in "
                     "consecutive pieces of at most N tokens, each run as a sentence of its own "
                     "(the LSTMs restart at every piece, so no context crosses a cut) and joined "
                     "back along the tokens; its `default` is the mean over all its tokens. A "
                     "batch thus never holds more than batch_size x N tokens.", lower_bound=1)
flags.DEFINE_integer("window", None, "embed: lines sorted by length and saved together (a kill "
                     "loses at most the windows in flight); default 8 x --batch-size.",
                     lower_bound=1)
flags.DEFINE_bool("resume", False, "embed: finish a run that was killed or stopped, from "
                  "<output>.parts/: lines already saved are neither recomputed nor rewritten.")
flags.DEFINE_string("runner", None, "embed: run the job as an Apache Beam pipeline on this runner "
                    "(DirectRunner, DataflowRunner, FlinkRunner, SparkRunner; needs the "
                    "hub_export[beam] extra); the parts it writes are merged into --output.")
flags.DEFINE_string("beam_options", "", "embed --runner: further Beam pipeline options, quoted, "
                    "e.g. '--project=p --region=r --temp_location=gs://b/tmp'.")

# train / evaluate / dump-weights (bilm-tf's training, in TF2)
flags.DEFINE_string("train_prefix", None, "train: a glob of training files, one tokenized "
                    "sentence per line, e.g. 'data/train/*.txt' (quote it).")
flags.DEFINE_string("test_prefix", None, "evaluate (and train, optionally): a glob of held-out "
                    "files; train evaluates them at the start and at every checkpoint.")
flags.DEFINE_string("save_dir", None, "train, evaluate, dump-weights: the checkpoint folder.")
flags.DEFINE_bool("restart", False, "train: continue from the latest checkpoint in --save-dir, "
                  "at its step.")
flags.DEFINE_list("restart_from_weights", None, "train: OPTIONS WEIGHTS (or OPTIONS,WEIGHTS): start "
                  "from an existing weight file (fine-tuning on new text) with its vocabulary "
                  "as --vocab.")
flags.DEFINE_integer("unroll_steps", 20, "train, evaluate: tokens per window (gradients are cut "
                     "at window boundaries; the LSTM state is carried).", lower_bound=1)
flags.DEFINE_integer("epochs", 10, "train: passes over --n-train-tokens.", lower_bound=1)
flags.DEFINE_integer("n_train_tokens", None, "train: words in the training data (bilm-tf's "
                     "n_train_tokens; one epoch is n_train_tokens / (batch x unroll) steps); "
                     "default: counted from the files.", lower_bound=1)
flags.DEFINE_integer("n_negative_samples", 8192, "train: negatives of the sampled softmax; the "
                     "full softmax is used when the vocabulary is not larger.", lower_bound=1)
flags.DEFINE_float("learning_rate", 0.2, "train: Adagrad's learning rate.")
flags.DEFINE_float("clip_norm", 10.0, "train: global gradient-norm clip.")
flags.DEFINE_integer("seed", 0, "train: initial weights, data order, dropout, negatives.")
flags.DEFINE_integer("checkpoint_every", 1250, "train: steps between checkpoints.", lower_bound=1)
flags.DEFINE_integer("log_every", 100, "train: steps between progress lines.", lower_bound=1)
flags.DEFINE_integer("max_steps", None, "train: stop after this many steps in all.", lower_bound=1)
flags.DEFINE_bool("check_vocab_order", True, "train: refuse a vocabulary whose words are not "
                  "sorted by descending count in the training files.")
flags.DEFINE_string("outfile", None, "dump-weights: the weight file to write.")
flags.DEFINE_string("options_out", None, "dump-weights: also write the options for inference.")
flags.DEFINE_bool("include_softmax", False, "dump-weights: also write softmax/W and softmax/b "
                  "(ignored by readers of the standard layout; lets `evaluate --weights` and "
                  "`train --restart-from-weights` use the softmax).")

_DASHED.update({name.replace("_", "-"): name for name in (
    "batch_size", "max_tokens", "train_prefix", "test_prefix", "save_dir", "restart_from_weights",
    "unroll_steps", "n_train_tokens", "n_negative_samples", "learning_rate", "clip_norm",
    "checkpoint_every", "log_every", "max_steps", "check_vocab_order", "options_out",
    "include_softmax", "beam_options")})
_BOOLEANS = _BOOLEANS + ("resume", "restart", "check_vocab_order", "include_softmax")
_COMMANDS = ("serving-config", "embed", "dump-token-embeddings", "train", "evaluate", "dump-weights")


def _undash(argv: list[str]) -> list[str]:
    out = []
    argv = list(argv)
    for i, arg in enumerate(argv):
        # `--restart-from-weights O W`, as bilm-tf's README writes it, is one flag here.
        if (arg in ("--restart-from-weights", "--restart_from_weights") and i + 2 < len(argv)
                and not argv[i + 1].startswith("-") and not argv[i + 2].startswith("-")):
            argv[i:i + 3] = [f"--restart_from_weights={argv[i + 1]},{argv[i + 2]}", "", ""]
    for arg in (a for a in argv if a != ""):
        body, sep, value = arg.partition("=")
        if body.startswith("--no-") and body[5:].replace("-", "_") in _BOOLEANS:
            arg = "--no" + body[5:].replace("-", "_") + sep + value
        elif body.startswith("--") and body[2:] in _DASHED:
            arg = "--" + _DASHED[body[2:]] + sep + value
        out.append(arg)
    return out


def main(argv: list[str]) -> int:
    absl_logging.set_verbosity(absl_logging.WARNING)
    commands = {"serving-config": serving_config_main, "embed": embed_main,
                "dump-token-embeddings": dump_token_embeddings_main, "train": train_main,
                "evaluate": evaluate_main, "dump-weights": dump_weights_main}
    if len(argv) > 1 and (len(argv) > 2 or argv[1] not in commands):
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])} (the commands are "
                             f"{', '.join(_COMMANDS)}; an export takes flags only)")
    command = commands[argv[1]] if len(argv) > 1 else export_main
    # Every command reports bad input, and what the OS refuses (a full disk, a read-only
    # or unwritable folder; stdout or stderr redirected to a full disk too), the same way:
    # one line naming it, exit status 2.
    streams = sys.stdout, sys.stderr
    sys.stdout = ReportedStream(sys.stdout, "standard output")
    sys.stderr = ReportedStream(sys.stderr, "standard error")
    try:
        status = command()
        sys.stdout.flush()
        return status
    except HubExportError as e:
        message = str(e)
    except Exception as e:
        message = failure_message(e)
        if message is None:
            raise
    finally:
        sys.stdout, sys.stderr = streams
    return _fail(message)


def _fail(message: str) -> int:
    with contextlib.suppress(OSError):  # stderr itself may be on the full disk
        print(f"error: {message}", file=sys.stderr, flush=True)
    drop_unwritable_streams()
    return 2


def export_main() -> int:
    if FLAGS.version is None:
        raise app.UsageError("--version is required: the version number to export, e.g. --version 3")
    if (FLAGS.options is None) != (FLAGS.weights is None):
        raise app.UsageError("--options and --weights go together: give both, or neither "
                             f"for the built-in default model (got --options={FLAGS.options}, "
                             f"--weights={FLAGS.weights})")
    # Heavy imports after flag parsing, so that --help and usage errors are instant.
    from hub_export.elmo_module import ExportConfig
    from hub_export.export import export
    from hub_export.progress import Progress
    from hub_export.warmup import read_sentences_file

    warmup_sentences = read_sentences_file(FLAGS.warmup_file) if FLAGS.warmup_file else None
    mix_init = None
    if FLAGS.scalar_mix_init is not None:
        try:
            mix_init = tuple(float(v) for v in FLAGS.scalar_mix_init)
        except ValueError:
            raise HubExportError(f"--scalar-mix-init: expected numbers like 0,0,1, got "
                                 f"{','.join(FLAGS.scalar_mix_init)}") from None
    config = ExportConfig(trainable=FLAGS.trainable, layer_norm=FLAGS.layer_norm,
                          scalar_mix_init=mix_init, freeze_mix=FLAGS.freeze_mix,
                          l2_coef=FLAGS.l2_coef, dropout=FLAGS.dropout,
                          projection_dim=FLAGS.projection_dim,
                          compute_dtype=FLAGS.compute_dtype)
    steps = 3 + bool(FLAGS.archive) + bool(FLAGS.vocab)
    progress = Progress(steps, stream=None if FLAGS.quiet else sys.stderr)
    result = export(FLAGS.version, FLAGS.options, FLAGS.weights, output_dir=FLAGS.output_dir,
                    name=FLAGS.name, config=config, archive=FLAGS.archive,
                    overwrite=FLAGS.overwrite, progress=progress,
                    warmup_sentences=warmup_sentences, write_warmup=FLAGS.warmup,
                    vocab_path=FLAGS.vocab)
    print(result.path)
    if result.archive:
        print(result.archive)
    return 0


def serving_config_main() -> int:
    from hub_export.serving_config import parse_labels, write_config

    versions = None
    if FLAGS.versions:
        if not all(v.strip().isdigit() for v in FLAGS.versions):
            raise HubExportError(f"--versions: expected version numbers like 2,3, got "
                                 f"{','.join(FLAGS.versions)}")
        versions = [int(v) for v in FLAGS.versions]
    path = write_config(FLAGS.base, name=FLAGS.name, versions=versions, latest=FLAGS.latest,
                        labels=parse_labels(FLAGS.label), serving_root=FLAGS.serving_root)
    print(path)
    return 0


def embed_main() -> int:
    missing = [f"--{name}" for name in ("module", "input", "output") if getattr(FLAGS, name) is None]
    if missing:
        raise app.UsageError(f"embed needs {', '.join(missing)}, e.g. embed --module "
                             "exported/elmo/3 --input corpus.txt --output embeddings.hdf5")
    if FLAGS.runner is None:
        from hub_export.embed import embed
    else:  # the same job as a Beam pipeline
        import functools

        from hub_export.embed_beam import embed_beam

        embed = functools.partial(embed_beam, runner=FLAGS.runner, beam_options=FLAGS.beam_options)
    try:
        result = embed(FLAGS.module, FLAGS.input, FLAGS.output, layers=FLAGS.layers,
                       batch_size=FLAGS.batch_size, max_tokens=FLAGS.max_tokens,
                       window=FLAGS.window, resume=FLAGS.resume, overwrite=FLAGS.overwrite,
                       progress=None if FLAGS.quiet else sys.stderr)
    except KeyboardInterrupt:
        print(f"error: interrupted; what was embedded is kept in {FLAGS.output}.parts/: run "
              "again with --resume to finish", file=sys.stderr)
        return 130
    print(result.path)
    return 0


def dump_token_embeddings_main() -> int:
    missing = [f"--{name}" for name in ("options", "weights", "vocab", "output")
               if getattr(FLAGS, name) is None]
    if missing:
        raise app.UsageError(f"dump-token-embeddings needs {', '.join(missing)}, e.g. "
                             "--options options.json --weights weights.hdf5 --vocab vocab.txt "
                             "--output tokens.hdf5")
    from hub_export.progress import Progress
    from hub_export.token_embeddings import DEFAULT_BATCH_SIZE, dump_token_embeddings

    # --batch-size means sentences for embed; words are far cheaper, so batch more of them.
    batch_size = FLAGS.batch_size if FLAGS["batch_size"].present else DEFAULT_BATCH_SIZE
    path = dump_token_embeddings(FLAGS.vocab, FLAGS.options, FLAGS.weights, FLAGS.output,
                                 overwrite=FLAGS.overwrite, batch_size=batch_size,
                                 progress=Progress(2, stream=None if FLAGS.quiet else sys.stderr))
    print(path)
    return 0


def _require(command: str, names: tuple[str, ...], example: str) -> None:
    missing = [f"--{name.replace('_', '-')}" for name in names if getattr(FLAGS, name) is None]
    if missing:
        raise app.UsageError(f"{command} needs {', '.join(missing)}, e.g. {command} {example}")


def train_main() -> int:
    _require("train", ("train_prefix", "vocab", "save_dir"), "--train-prefix 'data/train/*.txt' "
             "--vocab vocab.txt --options options.json --save-dir ckpt/")
    restart_from = FLAGS.restart_from_weights
    if restart_from is not None and len(restart_from) != 2:
        raise app.UsageError("--restart-from-weights takes OPTIONS WEIGHTS, e.g. "
                             "--restart-from-weights options.json weights.hdf5")
    from hub_export.trainer import TrainConfig, train

    # bilm-tf's batch size; embed's default of 64 sentences is another quantity.
    batch_size = FLAGS.batch_size if FLAGS["batch_size"].present else TrainConfig.batch_size
    config = TrainConfig(batch_size=batch_size, unroll_steps=FLAGS.unroll_steps,
                         n_epochs=FLAGS.epochs, n_train_tokens=FLAGS.n_train_tokens,
                         n_negative_samples=FLAGS.n_negative_samples,
                         dropout=FLAGS.dropout if FLAGS["dropout"].present else TrainConfig.dropout,
                         learning_rate=FLAGS.learning_rate, clip_norm=FLAGS.clip_norm,
                         seed=FLAGS.seed, checkpoint_every=FLAGS.checkpoint_every,
                         log_every=FLAGS.log_every)
    result = train(FLAGS.train_prefix, FLAGS.vocab, FLAGS.save_dir, options_path=FLAGS.options,
                   config=config, restart=FLAGS.restart,
                   restart_from_weights=tuple(restart_from) if restart_from else None,
                   check_vocab_order=FLAGS.check_vocab_order, test_prefix=FLAGS.test_prefix,
                   max_steps=FLAGS.max_steps, log=None if FLAGS.quiet else sys.stderr)
    print(f"{result.save_dir}: step {result.step}")
    return 0


def evaluate_main() -> int:
    _require("evaluate", ("test_prefix", "vocab"), "--test-prefix 'data/test/*.txt' --vocab "
             "vocab.txt --save-dir ckpt/")
    from hub_export.trainer import evaluate

    perplexity, n_tokens = evaluate(FLAGS.test_prefix, FLAGS.vocab, save_dir=FLAGS.save_dir,
                                    options_path=FLAGS.options, weights_path=FLAGS.weights,
                                    batch_size=FLAGS.batch_size, unroll_steps=FLAGS.unroll_steps)
    print(f"perplexity {perplexity:.3f} over {n_tokens} tokens per direction")
    return 0


def dump_weights_main() -> int:
    _require("dump-weights", ("save_dir", "outfile"), "--save-dir ckpt/ --outfile weights.hdf5 "
             "--options-out options.json")
    from hub_export.trainer import dump_weights

    print(dump_weights(FLAGS.save_dir, FLAGS.outfile, options_out=FLAGS.options_out,
                       include_softmax=FLAGS.include_softmax, overwrite=FLAGS.overwrite))
    return 0


def run() -> None:
    # Our own notes (e.g. "n_characters 261 read as 262") go to stderr; TensorFlow's
    # INFO chatter about saving does not.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("note: %(message)s"))
    ours = logging.getLogger("hub_export")
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    app.run(main, argv=_undash(sys.argv))


if __name__ == "__main__":
    run()
