"""Training, evaluation, restart and weight dump of biLMs (bilm-tf's `training.py`, in TF2).

A save folder holds what a run needs to go on and nothing else:
    options.json         the architecture and the training options (n_characters 261)
    vocab.json           size and sha256 of the vocabulary trained with
    checkpoint, ckpt-N.* TF checkpoints: biLM, softmax, Adagrad accumulators, step

Training (see `train.data` for the data scheme): windows of `unroll_steps` tokens from
`batch_size` sentence streams per direction; the LSTM state is carried from window to
window and gradients stop at window boundaries (truncated backpropagation); the loss is
the mean of the forward and backward cross-entropies, with a sampled softmax when the
vocabulary is larger than `n_negative_samples`; dropout on every LSTM input and on the
top output; Adagrad (learning rate 0.2, accumulators from 1.0) on gradients clipped to a
global norm of 10: bilm-tf's choices and defaults. One epoch is n_train_tokens / (batch
x unroll_steps) steps, as in bilm-tf.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import IO, Sequence

import numpy as np
import tensorflow as tf

from hub_export import atomic
from hub_export.errors import TrainingError
from hub_export.model.options import TRAINING_N_CHARACTERS, BiLMOptions, load_options
from hub_export.model.vocab import Vocabulary
from hub_export.model.weights import WeightReader, write_weights
from hub_export.train.data import WindowBatcher, corpus_stats, data_files, sentence_stream
from hub_export.train.language_model import LanguageModel, initial_softmax, initial_weights

OPTIONS_FILE = "options.json"
VOCAB_FILE = "vocab.json"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters; the defaults are bilm-tf's.

    Args:
        batch_size: int. Sentence streams (rows) per step.
        unroll_steps: int. Tokens per window (truncated backpropagation length).
        n_epochs: int. Passes over n_train_tokens.
        n_train_tokens: int or None. Words in the training data; None counts them.
        n_negative_samples: int. Negatives of the sampled softmax; the full softmax is
            used when the vocabulary is not larger.
        dropout: float in [0, 1).
        learning_rate: float. Adagrad's.
        clip_norm: float. Global gradient norm clip.
        seed: int. Initial weights, data order, dropout and negative samples.
        checkpoint_every: int. Steps between checkpoints (one is also written at the end).
        log_every: int. Steps between progress lines.
    """

    batch_size: int = 128
    unroll_steps: int = 20
    n_epochs: int = 10
    n_train_tokens: int | None = None
    n_negative_samples: int = 8192
    dropout: float = 0.1
    learning_rate: float = 0.2
    clip_norm: float = 10.0
    seed: int = 0
    checkpoint_every: int = 1250
    log_every: int = 100

    def __post_init__(self):
        for name in ("batch_size", "unroll_steps", "n_epochs", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TrainingError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {value!r}")
        if self.n_train_tokens is not None and (not isinstance(self.n_train_tokens, int)
                                                or self.n_train_tokens < 1):
            raise TrainingError(f"--n-train-tokens: expected an integer >= 1, got {self.n_train_tokens!r}")
        if not isinstance(self.n_negative_samples, int) or self.n_negative_samples < 1:
            raise TrainingError(f"--n-negative-samples: expected an integer >= 1, got "
                                f"{self.n_negative_samples!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise TrainingError(f"--dropout: expected a rate in [0, 1), got {self.dropout!r}")
        for name in ("learning_rate", "clip_norm"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise TrainingError(f"--{name.replace('_', '-')}: expected a number > 0, got {value!r}")


class Adagrad(tf.Module):
    """TF1's AdagradOptimizer (bilm-tf's): acc += g^2; var -= lr * g / sqrt(acc)."""

    def __init__(self, variables: Sequence[tf.Variable], learning_rate: float,
                 initial_accumulator: float = 1.0):
        super().__init__(name="adagrad")
        self.learning_rate = learning_rate
        with self.name_scope:
            self.accumulators = [tf.Variable(tf.fill(v.shape, initial_accumulator), trainable=False,
                                             name=v.name.split(":")[0].replace("/", "_"))
                                 for v in variables]

    def apply(self, gradients, variables) -> None:
        for g, v, acc in zip(gradients, variables, self.accumulators):
            if isinstance(g, tf.IndexedSlices):
                # Sparse gradients (char embedding, sampled softmax) touch only their rows;
                # repeated rows are summed first, as a dense gradient would hold them.
                rows, where = tf.unique(g.indices)
                values = tf.math.unsorted_segment_sum(g.values, where, tf.shape(rows)[0])
                acc.scatter_add(tf.IndexedSlices(values * values, rows))
                step = self.learning_rate * values * tf.math.rsqrt(tf.gather(acc, rows))
                v.scatter_sub(tf.IndexedSlices(step, rows))
            else:
                acc.assign_add(g * g)
                v.assign_sub(self.learning_rate * g * tf.math.rsqrt(acc))


def _vocab_digest(vocab: Vocabulary) -> str:
    return hashlib.sha256("\n".join(vocab.words).encode("utf-8")).hexdigest()


def training_options_dict(options: BiLMOptions, config: TrainConfig, vocab_size: int,
                          n_train_tokens: int) -> dict:
    """options.json of a save folder: architecture as bilm-tf trains it, plus training keys."""
    out = options.to_dict()
    out["char_cnn"]["n_characters"] = TRAINING_N_CHARACTERS
    out.update(bidirectional=True, dropout=config.dropout, n_epochs=config.n_epochs,
               n_train_tokens=n_train_tokens, batch_size=config.batch_size,
               n_tokens_vocab=vocab_size, unroll_steps=config.unroll_steps,
               n_negative_samples_batch=config.n_negative_samples,
               all_clip_norm_val=config.clip_norm,
               sample_softmax=config.n_negative_samples < vocab_size)
    return out


def _architecture(options: BiLMOptions) -> dict:
    d = options.to_dict()
    return {"char_cnn": d["char_cnn"], "lstm": d["lstm"]}


def _differences(a: dict, b: dict, where: str, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        path = f"{prefix}{key}"
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            out += _differences(a[key], b[key], where, path + ".")
        elif a.get(key) != b.get(key):
            out.append(f"{path} is {json.dumps(a.get(key))} in {where}, "
                       f"{json.dumps(b.get(key))} in the given options")
    return out


def _check_same_architecture(expected: BiLMOptions, options_path: str | None, source: str,
                             where: str) -> None:
    """Refuses --options whose architecture differs from what is being continued."""
    if options_path is None:
        return
    diffs = _differences(_architecture(expected), _architecture(load_options(options_path)), where)
    if diffs:
        raise TrainingError(f"--options: {options_path} disagrees with {source}: " + "; ".join(diffs))


def _read_with_softmax(weights_path: str, options: BiLMOptions):
    """(biLM arrays, softmax arrays or None) of a weight file, each dataset read once."""
    with WeightReader(weights_path, options) as reader:
        return {name: reader[name] for name in reader}, reader.softmax()


class TrainingRun:
    """A language model with its optimizer and step counter, bound to a save folder."""

    def __init__(self, model: LanguageModel, learning_rate: float, save_dir: str | None):
        self.model = model
        self.variables = list(model.trainable_variables)
        self.optimizer = Adagrad(self.variables, learning_rate)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=self.optimizer, step=self.step)
        self.manager = (tf.train.CheckpointManager(self.checkpoint, save_dir, max_to_keep=3)
                        if save_dir else None)


def read_save_dir(save_dir: str) -> tuple[BiLMOptions, dict]:
    """(options, vocab.json) of a save folder; errors name what is missing."""
    if not os.path.isdir(save_dir):
        raise TrainingError(f"--save-dir: {save_dir}: no such folder")
    options_path = os.path.join(save_dir, OPTIONS_FILE)
    vocab_path = os.path.join(save_dir, VOCAB_FILE)
    if tf.train.latest_checkpoint(save_dir) is None or not os.path.exists(options_path):
        raise TrainingError(f"--save-dir: {save_dir} holds no training checkpoint (expected "
                            f"{OPTIONS_FILE} and ckpt-N files written by `hub_export train`)")
    options = load_options(options_path)
    try:
        with open(vocab_path, encoding="utf-8") as f:
            vocab_info = json.load(f)
    except (OSError, ValueError) as e:
        raise TrainingError(f"--save-dir: {vocab_path}: cannot read ({e})") from None
    return options, vocab_info


def load_checkpoint(save_dir: str, learning_rate: float = TrainConfig.learning_rate
                    ) -> tuple[LanguageModel, TrainingRun, dict]:
    """The latest checkpoint of a save folder, restored (with an optimizer at
    `learning_rate`, for going on with training)."""
    options, vocab_info = read_save_dir(save_dir)
    size = int(vocab_info["size"])
    P = options.lstm.projection_dim
    model = LanguageModel(options, initial_weights(options, 0), initial_softmax(size, P, 0))
    run = TrainingRun(model, learning_rate, save_dir)
    status = run.checkpoint.restore(run.manager.latest_checkpoint)
    try:
        status.assert_existing_objects_matched()
    except AssertionError as e:
        raise TrainingError(f"--save-dir: {run.manager.latest_checkpoint} does not match "
                            f"{os.path.join(save_dir, OPTIONS_FILE)}: {e}") from None
    return model, run, vocab_info


def _check_vocab(vocab: Vocabulary, vocab_info: dict, save_dir: str, vocab_path: str) -> None:
    if vocab.size != int(vocab_info["size"]) or _vocab_digest(vocab) != vocab_info["sha256"]:
        raise TrainingError(
            f"--vocab: {vocab_path} ({vocab.size} words) is not the vocabulary the checkpoint "
            f"in {save_dir} was trained with ({vocab_info['size']} words, sha256 "
            f"{vocab_info['sha256'][:12]}...); the softmax rows follow that file's order")


def make_train_step(model: LanguageModel, run: TrainingRun, config: TrainConfig):
    n_negative = config.n_negative_samples

    def train_step(char_rows, token_rows, targets, weights, state, seed):
        with tf.GradientTape() as tape:
            top, final_state = model.top_outputs(char_rows, token_rows, weights, state,
                                                 config.dropout, seed)
            losses = model.token_losses(top, targets, n_negative, seed=config.seed)
            loss = tf.reduce_sum(losses * weights) / (2.0 * tf.reduce_sum(weights))
        grads = tape.gradient(loss, run.variables)
        grads, norm = tf.clip_by_global_norm(grads, config.clip_norm)
        run.optimizer.apply(grads, run.variables)
        run.step.assign_add(1)
        # The state goes on to the next window as a value: gradients stop at the boundary.
        return loss, norm, [(tf.stop_gradient(c), tf.stop_gradient(h)) for c, h in final_state]

    return traced_once(train_step)


def make_eval_step(model: LanguageModel):
    def eval_step(char_rows, token_rows, targets, weights, state):
        top, final_state = model.top_outputs(char_rows, token_rows, weights, state)
        losses = model.token_losses(top, targets)
        return tf.reduce_sum(losses * weights), final_state

    return traced_once(eval_step)


def traced_once(step):
    """`step(char_rows, ...)` as a tf.function traced once, at its first call: for that
    call's shapes, except the number of distinct tokens (the first dimension of
    `char_rows`), which varies from batch to batch. (Left to find that out itself, with
    reduce_retracing, TensorFlow traces twice.) The model's code is plain graph code, as
    the export traces it: autograph's conversion would only add time."""
    traced = None

    def call(*args):
        nonlocal traced
        if traced is None:
            specs = [tf.nest.map_structure(lambda x: tf.TensorSpec(x.shape, x.dtype), a)
                     for a in args]
            specs[0] = tf.TensorSpec([None, *args[0].shape[1:]], args[0].dtype)
            traced = tf.function(step, input_signature=specs, autograph=False)
        return traced(*args)

    return call


def evaluate_model(model: LanguageModel, files: list[str], vocab: Vocabulary, flag: str,
                   batch_size: int = 128, unroll_steps: int = 20,
                   eval_step=None) -> tuple[float, int]:
    """Held-out perplexity: exp of the mean full-softmax cross-entropy over both directions,
    every (input, next token) pair of every sentence counted once, state carried.
    `eval_step`: `make_eval_step(model)`, made once for several evaluations.

    Returns:
        (perplexity, tokens scored per direction).
    """
    batcher = WindowBatcher(sentence_stream(files, flag, shuffle=False, repeat=False), vocab,
                            batch_size, unroll_steps, model.options.char_cnn.max_characters_per_token)
    eval_step = eval_step or make_eval_step(model)
    state = model.zero_state(batch_size)
    total, count = 0.0, 0
    for batch in batcher:
        loss_sum, state = eval_step(batch.char_rows, batch.token_rows, batch.targets,
                                     batch.weights, state)
        total += float(loss_sum)
        count += batch.n_tokens
    return float(np.exp(total / (2 * count))), count


@dataclasses.dataclass(frozen=True)
class TrainResult:
    step: int
    train_perplexity: float
    tokens_per_second: float
    held_out: tuple[tuple[int, float], ...]  # (step, held-out perplexity), step 0 first
    save_dir: str


def train(train_prefix: str, vocab_path: str, save_dir: str, options_path: str | None = None,
          config: TrainConfig = TrainConfig(), restart: bool = False,
          restart_from_weights: tuple[str, str] | None = None, check_vocab_order: bool = True,
          test_prefix: str | None = None, max_steps: int | None = None,
          log: IO[str] | None = sys.stderr) -> TrainResult:
    """Trains a biLM (see the module doc); every input is checked before anything is written.

    Args:
        train_prefix: glob of the training files.
        vocab_path: the vocabulary (`Vocabulary.check_training`'s rules).
        save_dir: folder for options, checkpoints; must hold no checkpoint unless `restart`.
        options_path: the architecture (options.json); optional with `restart` or
            `restart_from_weights`, where it must agree with what is restored.
        config: TrainConfig.
        restart: continue from the latest checkpoint in `save_dir`, at its step.
        restart_from_weights: (options.json, weights.hdf5) to start from: bilm-tf's
            fine-tuning on new text. The softmax comes from the file when it has one
            (`dump-weights --include-softmax`), else starts fresh.
        check_vocab_order: refuse a vocabulary not sorted by the training files' counts.
        test_prefix: held-out files, evaluated at every checkpoint.
        max_steps: stop after this many steps in total even if the epochs are not done.
        log: progress lines (loss, perplexity, tokens/s); None for silence.
    """
    if restart and restart_from_weights:
        raise TrainingError("--restart and --restart-from-weights exclude each other: the first "
                            "continues a checkpoint, the second starts a new run from a weight file")
    train_files = data_files(train_prefix, "--train-prefix")
    test_files = data_files(test_prefix, "--test-prefix") if test_prefix else None
    stats = corpus_stats(train_files, "--train-prefix")
    # A vocabulary from elsewhere (restart, fine-tuning) need not follow these counts.
    ordered = check_vocab_order and not restart and not restart_from_weights
    vocab = Vocabulary(vocab_path).check_training(stats.counts if ordered else None)
    n_train_tokens = config.n_train_tokens or stats.n_tokens

    weights = softmax = None
    if restart:
        saved_options, vocab_info = read_save_dir(save_dir)
        _check_same_architecture(saved_options, options_path, f"the checkpoint in {save_dir}",
                                 "the checkpoint")
        _check_vocab(vocab, vocab_info, save_dir, vocab_path)
        options = saved_options
    else:
        if restart_from_weights:
            weights_options_path, weights_path = restart_from_weights
            options = load_options(weights_options_path)
            _check_same_architecture(options, options_path, weights_options_path,
                                     "the weights' options")
            weights, softmax = _read_with_softmax(weights_path, options)
            if softmax is not None and softmax["softmax/W"].shape[0] != vocab.size:
                raise TrainingError(
                    f"--vocab: {vocab_path} has {vocab.size} words but the softmax in "
                    f"{weights_path} has {softmax['softmax/W'].shape[0]} rows: fine-tune with "
                    "the vocabulary the weights were trained with")
        else:
            if options_path is None:
                raise TrainingError("--options is required to train a new biLM")
            options = load_options(options_path)
            weights = initial_weights(options, config.seed)
        if os.path.exists(save_dir) and not os.path.isdir(save_dir):
            raise TrainingError(f"--save-dir: {save_dir} exists and is not a folder")

    with atomic.reported(save_dir, "create the save folder", atomic.AGAIN):
        os.makedirs(save_dir, exist_ok=True)
    # One run at a time writes a save folder: what is there is checked, and written,
    # under its lock (a second `train` started on it at the same time is refused).
    with atomic.held(Path(save_dir), f"--save-dir: {save_dir} is already in use: another "
                     "`train` is writing it; let it finish, or choose another folder (nothing "
                     "was changed)"):
        return _train_holding(save_dir, train_files, test_files, stats, vocab, vocab_path,
                              n_train_tokens, options, weights, softmax,
                              config, max_steps, log)


def _train_holding(save_dir: str, train_files: list[str], test_files: list[str] | None,
                   stats, vocab: Vocabulary, vocab_path: str, n_train_tokens: int,
                   options: BiLMOptions, weights: dict | None, softmax: dict | None,
                   config: TrainConfig, max_steps: int | None, log: IO[str] | None) -> TrainResult:
    """`train`, once the inputs are checked and the save folder is held: a restart when
    `weights` is None, else a new run from `weights` (and `softmax`, or a fresh one)."""
    restart = weights is None
    _remove_unfinished_checkpoints(save_dir)
    P = options.lstm.projection_dim
    if restart:
        model, run, _ = load_checkpoint(save_dir, config.learning_rate)
    else:
        if tf.train.latest_checkpoint(save_dir):
            raise TrainingError(f"--save-dir: {save_dir} already holds a checkpoint; pass "
                                "--restart to continue it, or choose another folder (nothing "
                                "was overwritten)")
        if softmax is None:
            softmax = initial_softmax(vocab.size, P, config.seed)
        model = LanguageModel(options, weights, softmax)
        atomic.write_text(Path(save_dir, OPTIONS_FILE), json.dumps(
            training_options_dict(options, config, vocab.size, n_train_tokens), indent=2))
        atomic.write_text(Path(save_dir, VOCAB_FILE), json.dumps(
            {"size": vocab.size, "sha256": _vocab_digest(vocab),
             "path": os.path.abspath(vocab_path)}, indent=2))
        run = TrainingRun(model, config.learning_rate, save_dir)
        # Step 0 too, so that `--restart` continues a run killed before its first
        # checkpoint (from its start, with its seed) like any other.
        _save_checkpoint(run, save_dir, 0)

    steps_per_epoch = max(1, n_train_tokens // (config.batch_size * config.unroll_steps))
    total_steps = config.n_epochs * steps_per_epoch
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
    start = int(run.step.numpy())
    # A restarted run sees a fresh data order: the seed moves with the step.
    batches = WindowBatcher(sentence_stream(train_files, "--train-prefix", shuffle=True, repeat=True,
                                            seed=config.seed + start),
                            vocab, config.batch_size, config.unroll_steps,
                            options.char_cnn.max_characters_per_token)
    train_step = make_train_step(model, run, config)
    state = model.zero_state(config.batch_size)
    sampled = config.n_negative_samples < vocab.size

    def say(text: str) -> None:
        if log is not None:
            log.write(text + "\n")
            log.flush()

    say(f"training {sum(int(np.prod(v.shape)) for v in run.variables):,} parameters on "
        f"{stats.n_tokens:,} words ({len(train_files)} file(s)), vocabulary {vocab.size:,}"
        f"{' (sampled softmax, ' + str(config.n_negative_samples) + ' negatives)' if sampled else ''}; "
        f"steps {start} -> {total_steps} ({steps_per_epoch} per epoch)")
    held_out = []
    eval_step = make_eval_step(model)

    def evaluate_held_out(step: int) -> None:
        perplexity, n = evaluate_model(model, test_files, vocab, "--test-prefix",
                                       config.batch_size, config.unroll_steps, eval_step)
        held_out.append((step, perplexity))
        say(f"step {step}: held-out perplexity {perplexity:.2f} over {n:,} tokens")

    if test_files and start < total_steps:
        evaluate_held_out(start)
    window_loss, window_tokens, window_start = 0.0, 0, time.perf_counter()
    train_perplexity, speed = float("nan"), 0.0
    tokens_done, train_time = 0, 0.0
    for step in range(start + 1, total_steps + 1):
        batch = next(batches)
        t0 = time.perf_counter()
        loss, norm, state = train_step(batch.char_rows, batch.token_rows, batch.targets,
                                       batch.weights, state,
                                       tf.constant([config.seed, step], tf.int32))
        loss = float(loss)
        train_time += time.perf_counter() - t0
        if not np.isfinite(loss):
            raise TrainingError(f"step {step}: the loss is {loss}; lower --learning-rate or "
                                "--clip-norm (the last checkpoint is kept)")
        tokens_done += batch.n_tokens
        window_loss += loss * batch.n_tokens
        window_tokens += batch.n_tokens
        if step % config.log_every == 0 or step == total_steps:
            elapsed = time.perf_counter() - window_start
            train_perplexity = float(np.exp(window_loss / window_tokens))
            speed = window_tokens / elapsed
            eta = (total_steps - step) * elapsed / max(1, window_tokens // batch.weights.size)
            say(f"step {step}/{total_steps}  loss {window_loss / window_tokens:.3f}  train "
                f"perplexity {train_perplexity:.1f}{' (sampled)' if sampled else ''}  "
                f"{speed:,.0f} tok/s  eta {eta / 60:.1f} min")
            window_loss, window_tokens, window_start = 0.0, 0, time.perf_counter()
        if step % config.checkpoint_every == 0 or step == total_steps:
            _save_checkpoint(run, save_dir, step)
            if test_files:
                evaluate_held_out(step)
            window_start = time.perf_counter()
    if start >= total_steps:
        say(f"nothing to do: the checkpoint is at step {start}, the run ends at {total_steps}")
    return TrainResult(step=int(run.step.numpy()), train_perplexity=train_perplexity,
                       tokens_per_second=tokens_done / train_time if train_time else 0.0,
                       held_out=tuple(held_out), save_dir=save_dir)


def _checkpoint_prefix(path: str) -> str:
    """`ckpt-12` of `ckpt-12.index`, `ckpt-12.data-00000-of-00001`, `ckpt-12_temp`."""
    return path.split(".", 1)[0].removesuffix("_temp")


def _remove_unfinished_checkpoints(save_dir: str) -> None:
    """Removes what a checkpoint write that failed or was killed left: TensorFlow's
    `ckpt-N_temp/` shards, a `ckpt-N.*` that the `checkpoint` file does not list (it
    lists a checkpoint only once its files are complete), a `checkpoint.tmp*`."""
    state = tf.train.get_checkpoint_state(save_dir)
    listed = {os.path.basename(p) for p in (state.all_model_checkpoint_paths if state else [])}
    for name in os.listdir(save_dir):
        if name.startswith("checkpoint.tmp") or (
                name.startswith("ckpt-") and _checkpoint_prefix(name) not in listed):
            path = os.path.join(save_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)


def _save_checkpoint(run: TrainingRun, save_dir: str, step: int) -> None:
    """Saves checkpoint `step`; an OS failure (full disk...) is one WriteError saying
    which checkpoint is the last complete one, and the partial one is removed."""
    try:
        run.manager.save(checkpoint_number=step)
    except Exception as e:
        reason = atomic.os_reason(e)
        if reason is None:
            raise
        _remove_unfinished_checkpoints(save_dir)
        last = tf.train.latest_checkpoint(save_dir)
        then = (f"the last complete checkpoint is {os.path.basename(last)}: free space and run "
                "again with --restart" if last else "no checkpoint was written: free space and "
                "run the same command again")
        raise atomic.WriteError(f"--save-dir: {save_dir}: cannot write checkpoint {step}: "
                                f"{reason}; {then}") from None


def evaluate(test_prefix: str, vocab_path: str, save_dir: str | None = None,
             options_path: str | None = None, weights_path: str | None = None,
             batch_size: int = 128, unroll_steps: int = 20) -> tuple[float, int]:
    """Held-out perplexity of a checkpoint (`save_dir`) or a weight file with its softmax.

    Returns:
        (perplexity, tokens scored per direction).
    """
    if (save_dir is None) == (options_path is None or weights_path is None):
        raise TrainingError("evaluate takes --save-dir, or --options with --weights")
    files = data_files(test_prefix, "--test-prefix")
    vocab = Vocabulary(vocab_path).check_training()
    if save_dir is not None:
        model, _, vocab_info = load_checkpoint(save_dir)
        _check_vocab(vocab, vocab_info, save_dir, vocab_path)
    else:
        options = load_options(options_path)
        weights, softmax = _read_with_softmax(weights_path, options)
        if softmax is None:
            raise TrainingError(
                f"--weights: {weights_path} has no softmax/W: a perplexity needs the output "
                "softmax, which weight files leave out; dump it with `dump-weights "
                "--include-softmax`, or evaluate the checkpoint with --save-dir")
        if softmax["softmax/W"].shape[0] != vocab.size:
            raise TrainingError(f"--vocab: {vocab_path} has {vocab.size} words but the softmax "
                                f"in {weights_path} has {softmax['softmax/W'].shape[0]} rows")
        model = LanguageModel(options, weights, softmax)
    for name, value in (("--batch-size", batch_size), ("--unroll-steps", unroll_steps)):
        if value < 1:
            raise TrainingError(f"{name}: expected an integer >= 1, got {value}")
    return evaluate_model(model, files, vocab, "--test-prefix", batch_size, unroll_steps)


def dump_weights(save_dir: str, outfile: str, options_out: str | None = None,
                 include_softmax: bool = False, overwrite: bool = False) -> str:
    """The latest checkpoint as a weight file (bilm-tf's layout, `char_embed` without the
    padding row) and, optionally, an options file for inference (n_characters 262).

    Both are written beside their names and put in place together at the end (`atomic`):
    a failed or interrupted dump leaves neither, and of two dumps to one file without
    `overwrite` one wins.

    Raises:
        TrainingError: the save folder holds no usable checkpoint. OutputExistsError:
            an output exists and `overwrite` is False. WriteError: the OS refused.
    """
    outputs = [(Path(outfile), "--outfile")]
    if options_out:
        outputs.append((Path(options_out), "--options-out"))
    for path, _ in outputs:  # all before any refusal: a killed dump may have left both
        atomic.recover_file(path)
    for path, flag in outputs:
        atomic.check_new_file(path, flag, overwrite)
    model, _, _ = load_checkpoint(save_dir)
    arrays = model.weight_arrays(include_softmax=include_softmax)
    with atomic.new_files(outputs, overwrite) as tmps:
        write_weights(tmps[0], arrays)
        if options_out:
            tmps[1].write_text(json.dumps(_architecture(model.options), indent=2), encoding="utf-8")
    return outfile
