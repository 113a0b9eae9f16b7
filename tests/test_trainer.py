"""Training in TF2: a tiny run learns, restarts where it stopped, and dumps weights that the
exporter turns into a module computing what the trainer computes."""

from __future__ import annotations

import json
import os
import random
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from hub_export.errors import HubExportError, OutputExistsError
from hub_export.model.char_ids import BOS_TOKEN, EOS_TOKEN, token_char_ids
from hub_export.model.options import load_options
from hub_export.model.vocab import write_vocab
from hub_export.train.data import corpus_stats, data_files
from hub_export.train.trainer import (
    TrainConfig,
    TrainingError,
    dump_weights,
    evaluate,
    load_checkpoint,
    train,
)

import forked_cli
from helpers import export_model

OPTIONS = {
    "char_cnn": {"embedding": {"dim": 4}, "filters": [[1, 8], [2, 8], [3, 16]], "n_highway": 1,
                 "activation": "relu", "n_characters": 261, "max_characters_per_token": 20},
    "lstm": {"dim": 32, "projection_dim": 16, "n_layers": 2, "cell_clip": 3, "proj_clip": 3,
             "use_skip_connections": True},
}
# 6 epochs of 87 steps.
CONFIG = TrainConfig(batch_size=16, unroll_steps=10, n_epochs=6, n_negative_samples=100,
                     checkpoint_every=200, log_every=100, seed=1)
SUBJECTS = ["the cat", "a dog", "the old man", "my sister", "the children", "a bird"]
VERBS = ["saw", "liked", "chased", "found", "painted", "heard"]
OBJECTS = ["the ball", "a red house", "the river", "some apples", "the moon", "a small boat"]


def write_corpus(folder, seed=0, n_train=2000, n_test=200):
    """A small generated language with structure to learn (subject, verb, object)."""
    rng = random.Random(seed)

    def sentence():
        s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
        return s + (" yesterday ." if rng.random() < 0.5 else " .")

    (folder / "train").mkdir(parents=True)
    (folder / "test").mkdir()
    for k in range(2):
        (folder / "train" / f"part{k}.txt").write_text(
            "\n".join(sentence() for _ in range(n_train // 2)) + "\n")
    (folder / "test" / "test.txt").write_text("\n".join(sentence() for _ in range(n_test)) + "\n")
    stats = corpus_stats(data_files(str(folder / "train" / "*.txt"), "x"), "x")
    write_vocab(folder / "vocab.txt", stats.counts)
    (folder / "options.json").write_text(json.dumps(OPTIONS))
    return {"train": str(folder / "train" / "*.txt"), "test": str(folder / "test" / "*.txt"),
            "vocab": str(folder / "vocab.txt"), "options": str(folder / "options.json")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    save_dir = str(tmp_path_factory.mktemp("run") / "ckpt")
    result = train(corpus["train"], corpus["vocab"], save_dir, corpus["options"], CONFIG,
                   test_prefix=corpus["test"], log=None)
    return save_dir, result


def test_tiny_run_lowers_held_out_perplexity(trained):
    _, result = trained
    (first_step, first), (last_step, last) = result.held_out[0], result.held_out[-1]
    print(f"\nheld-out perplexity: step {first_step} {first:.2f} -> step {last_step} {last:.2f} "
          f"({1 - last / first:.0%} lower); training {result.tokens_per_second:,.0f} tok/s")
    assert (first_step, last_step) == (0, 6 * 87)
    assert last <= 0.7 * first
    assert np.isfinite(result.train_perplexity)


def test_restart_continues_from_the_saved_step(trained, corpus, tmp_path):
    save_dir, result = trained
    copy = tmp_path / "ckpt"
    subprocess.run(["cp", "-r", save_dir, str(copy)], check=True)
    saved, _ = evaluate(corpus["test"], corpus["vocab"], save_dir=str(copy),
                        batch_size=CONFIG.batch_size, unroll_steps=CONFIG.unroll_steps)
    more = dataclass_replace(CONFIG, n_epochs=7)
    again = train(corpus["train"], corpus["vocab"], str(copy), config=more, restart=True,
                  test_prefix=corpus["test"], log=None)
    # It starts from the checkpoint (same held-out perplexity at the saved step) and runs
    # only the steps of the 7th epoch.
    assert again.held_out[0][0] == result.step == 522
    assert again.held_out[0][1] == pytest.approx(saved, rel=1e-6)
    assert again.step == 7 * 87
    assert tf.train.latest_checkpoint(str(copy)).endswith(f"ckpt-{7 * 87}")


def dataclass_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def trainer_top(model, sentence):
    """The trainer's own forward pass over one sentence from zero state: its training
    path (distinct-token rows, the reversed stream for the backward LM), no dropout."""
    forward = [BOS_TOKEN] + sentence
    backward = [EOS_TOKEN] + sentence[::-1]
    rows = sorted(set(forward + backward))
    C = model.options.char_cnn.max_characters_per_token
    char_rows = np.stack([np.zeros(C, np.int32)] + [token_char_ids(w, C) for w in rows])
    index = {w: i + 1 for i, w in enumerate(rows)}
    token_rows = np.array([[[index[w] for w in forward]], [[index[w] for w in backward]]], np.int32)
    weights = np.ones([1, len(forward)], np.float32)
    top, _ = model.top_outputs(char_rows, token_rows, weights, model.zero_state(1))
    return top.numpy()[:, 0]  # [2, n + 1, P]


def test_dumped_weights_export_to_the_trainers_biLM(trained, tmp_path):
    import tensorflow_hub as hub

    save_dir, _ = trained
    weights = tmp_path / "weights.hdf5"
    options = tmp_path / "options.json"
    dump_weights(save_dir, str(weights), options_out=str(options))
    assert json.loads(options.read_text())["char_cnn"]["n_characters"] == 262
    result = export_model(tmp_path / "exported", options, weights)
    module = hub.load(str(result.path))
    model, _, _ = load_checkpoint(save_dir)
    sentences = [["the", "cat", "saw", "the", "moon", "."], ["my", "sister", "painted", "zebras"],
                 ["a"]]
    width = max(map(len, sentences))
    tokens = tf.constant([s + [""] * (width - len(s)) for s in sentences])
    out = module.signatures["tokens"](tokens=tokens, sequence_len=tf.constant([len(s) for s in sentences]))
    P = OPTIONS["lstm"]["projection_dim"]
    for k, sentence in enumerate(sentences):
        top = trainer_top(model, sentence)
        n = len(sentence)
        module_top = out["lstm_outputs2"].numpy()[k, :n]
        # Forward LM output at token i is its top output after reading <S> w1..wi; the
        # backward LM's after reading </S> wn..wi.
        np.testing.assert_allclose(module_top[:, :P], top[0, 1:], atol=1e-5, rtol=0)
        np.testing.assert_allclose(module_top[:, P:], top[1, 1:][::-1], atol=1e-5, rtol=0)


def test_dump_weights_is_the_standard_layout(trained, tmp_path):
    import h5py

    from hub_export.model.weights import weight_specs

    save_dir, _ = trained
    path = tmp_path / "w.hdf5"
    dump_weights(save_dir, str(path))
    options = load_options(os.path.join(save_dir, "options.json"))
    with h5py.File(path, "r") as f:
        names = set()
        f.visititems(lambda n, o: names.add(n) if isinstance(o, h5py.Dataset) else None)
        assert names == {s.name for s in weight_specs(options)}
        assert f["char_embed"].shape == (261, 4)  # no padding row


def test_fine_tuning_starts_from_the_weight_file(trained, corpus, tmp_path):
    save_dir, _ = trained
    weights, options = tmp_path / "w.hdf5", tmp_path / "o.json"
    dump_weights(save_dir, str(weights), options_out=str(options), include_softmax=True)
    from_file, _ = evaluate(corpus["test"], corpus["vocab"], options_path=str(options),
                            weights_path=str(weights), batch_size=16, unroll_steps=10)
    from_ckpt, _ = evaluate(corpus["test"], corpus["vocab"], save_dir=save_dir,
                            batch_size=16, unroll_steps=10)
    assert from_file == pytest.approx(from_ckpt, rel=1e-6)
    tuned = train(corpus["train"], corpus["vocab"], str(tmp_path / "tuned"),
                  config=dataclass_replace(CONFIG, n_epochs=1), max_steps=20,
                  restart_from_weights=(str(options), str(weights)), test_prefix=corpus["test"],
                  log=None)
    assert tuned.held_out[0] == (0, pytest.approx(from_file, rel=1e-6))
    assert tuned.step == 20


# Bad input: a clear message, and nothing written or overwritten.

def snapshot(folder):
    return {p: os.stat(os.path.join(folder, p)).st_mtime_ns for p in sorted(os.listdir(folder))}


def test_options_that_disagree_with_the_checkpoint(trained, corpus, tmp_path):
    save_dir, _ = trained
    before = snapshot(save_dir)
    other = json.loads(json.dumps(OPTIONS))
    other["lstm"]["dim"] = 48
    path = tmp_path / "other.json"
    path.write_text(json.dumps(other))
    with pytest.raises(TrainingError, match=r"disagrees with the checkpoint in .*lstm\.dim is 32 "
                                            r"in the checkpoint, 48 in the given options"):
        train(corpus["train"], corpus["vocab"], save_dir, str(path), CONFIG, restart=True, log=None)
    assert snapshot(save_dir) == before


def test_existing_checkpoint_needs_restart(trained, corpus):
    save_dir, _ = trained
    before = snapshot(save_dir)
    with pytest.raises(TrainingError, match=r"already holds a checkpoint; pass --restart"):
        train(corpus["train"], corpus["vocab"], save_dir, corpus["options"], CONFIG, log=None)
    assert snapshot(save_dir) == before


def test_restart_with_another_vocabulary(trained, corpus, tmp_path):
    save_dir, _ = trained
    words = open(corpus["vocab"]).read().split("\n")
    other = tmp_path / "vocab.txt"
    other.write_text("\n".join(words[:3] + words[4:]))
    with pytest.raises(TrainingError, match=r"is not the vocabulary the checkpoint .* was trained with"):
        train(corpus["train"], str(other), save_dir, config=CONFIG, restart=True, log=None)


def test_evaluate_needs_a_softmax(trained, corpus, tmp_path):
    save_dir, _ = trained
    dump_weights(save_dir, str(tmp_path / "w.hdf5"), options_out=str(tmp_path / "o.json"))
    with pytest.raises(TrainingError, match=r"has no softmax/W: a perplexity needs the output softmax"):
        evaluate(corpus["test"], corpus["vocab"], options_path=str(tmp_path / "o.json"),
                 weights_path=str(tmp_path / "w.hdf5"))


def test_dump_weights_refuses_to_overwrite(trained, tmp_path):
    save_dir, _ = trained
    out = tmp_path / "w.hdf5"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match=r"--outfile: .*w.hdf5 already exists; pass --overwrite"):
        dump_weights(save_dir, str(out))
    assert out.read_bytes() == b"keep me"


def test_missing_save_dir_and_empty_training_files(corpus, tmp_path):
    with pytest.raises(TrainingError, match=r"holds no training checkpoint"):
        evaluate(corpus["test"], corpus["vocab"], save_dir=str(tmp_path))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("\n\n")
    with pytest.raises(HubExportError, match=r"hold no sentence"):
        train(str(tmp_path / "empty" / "*.txt"), corpus["vocab"], str(tmp_path / "ck"),
              corpus["options"], CONFIG, log=None)
    assert not (tmp_path / "ck").exists()


def test_unsorted_vocabulary_is_refused_before_anything_is_written(corpus, tmp_path):
    words = open(corpus["vocab"]).read().split()
    swapped = words[:3] + [words[4], words[3]] + words[5:]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(swapped) + "\n")
    with pytest.raises(HubExportError, match=r"line 4: .* comes after|line 5: .* comes after"):
        train(corpus["train"], str(path), str(tmp_path / "ck"), corpus["options"], CONFIG, log=None)
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize("field,value,message", [
    ("batch_size", 0, r"--batch-size: expected an integer >= 1, got 0"),
    ("dropout", 1.0, r"--dropout: expected a rate in \[0, 1\), got 1.0"),
    ("learning_rate", float("nan"), r"--learning-rate: expected a number > 0"),
    ("n_negative_samples", 0, r"--n-negative-samples: expected an integer >= 1"),
])
def test_bad_config(field, value, message):
    with pytest.raises(TrainingError, match=message):
        TrainConfig(**{field: value})


def test_cli_train_dump_fine_tune(corpus, tmp_path):
    """train, dump-weights and fine-tuning as a user runs them, with bad inputs."""
    def cli(*args):
        return forked_cli.run(list(args), tmp_path, timeout=300)

    save = str(tmp_path / "ckpt")
    ok = cli("train", "--train-prefix", corpus["train"], "--vocab", corpus["vocab"], "--options",
             corpus["options"], "--save-dir", save, "--batch-size", "8", "--unroll-steps", "5",
             "--max-steps", "6", "--log-every", "3", "--n-negative-samples", "10")
    assert ok.returncode == 0, ok.stderr
    assert f"{save}: step 6" in ok.stdout
    assert "step 6/6  loss" in ok.stderr and "tok/s" in ok.stderr
    # (`evaluate` and a plain `dump-weights` run in tests/test_readme.py, as the README
    # spells them.)
    usage = cli("train", "--vocab", corpus["vocab"])
    assert usage.returncode == 1 and "train needs --train-prefix, --save-dir" in usage.stderr
    arity = cli("train", "--train-prefix", corpus["train"], "--vocab", corpus["vocab"], "--save-dir",
                save, "--restart-from-weights", "only-one.json")
    assert arity.returncode == 1 and "--restart-from-weights takes OPTIONS WEIGHTS" in arity.stderr
    # Fine-tuning, spelt as bilm-tf's README spells it: --restart-from-weights O W.
    dumped = cli("dump-weights", "--save-dir", save, "--outfile", str(tmp_path / "w2.hdf5"),
                 "--options-out", str(tmp_path / "o2.json"), "--include-softmax")
    assert dumped.returncode == 0, dumped.stderr
    again = cli("dump-weights", "--save-dir", save, "--outfile", str(tmp_path / "w2.hdf5"))
    assert again.returncode == 2 and "exists; pass --overwrite" in again.stderr
    assert "Traceback" not in again.stderr
    tuned = cli("train", "--train-prefix", corpus["train"], "--vocab", corpus["vocab"],
                "--restart-from-weights", str(tmp_path / "o2.json"), str(tmp_path / "w2.hdf5"),
                "--save-dir", str(tmp_path / "tuned"), "--batch-size", "8", "--unroll-steps", "5",
                "--max-steps", "2", "--n-negative-samples", "10")
    assert tuned.returncode == 0, tuned.stderr
    assert f"{tmp_path / 'tuned'}: step 2" in tuned.stdout
