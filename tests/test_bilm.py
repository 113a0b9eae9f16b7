"""The whole biLM: parity with bilm-tf's activations, batch invariance, full-size shapes."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import tensorflow as tf

from hub_export.model.bilm import BiLM
from hub_export.model.char_ids import batch_sentences

ATOL = 1e-6  # the tolerance of bilm-tf's own tests


def compiled(bilm: BiLM):
    spec = tf.TensorSpec([None, None, bilm.options.char_cnn.max_characters_per_token], tf.int32)
    return tf.function(lambda ids: bilm(ids), input_signature=[spec])


@pytest.fixture(scope="module")
def fixture_model():
    from helpers import require_shared_fixture

    folder = require_shared_fixture()
    bilm = BiLM.from_files(folder / "options.json", folder / "lm_weights.hdf5")
    sentences = json.loads((folder / "lm_embeddings_sentences.json").read_text())
    expected = []
    for k in range(3):
        with h5py.File(folder / f"lm_embeddings_{k}.hdf5", "r") as f:
            # [2, n, P] forward/backward -> [n, 2P] as our layers lay them out.
            expected.append([np.concatenate(list(f[str(i)][()]), axis=-1) for i in range(10)])
    return bilm, sentences, expected


@pytest.mark.parametrize("rows", ["together", "one at a time"])
def test_parity_with_stateful_reference(fixture_model, rows):
    """Replays the 10 fixture batches with states carried as bilm-tf did: as its batches
    of 3, and row by row (batch 1 takes its own layout of the LSTM products)."""
    bilm, sentences, expected = fixture_model
    groups = [[0, 1, 2]] if rows == "together" else [[0], [1], [2]]
    states, worst = [None] * len(groups), 0.0
    for i in range(10):
        for g, group in enumerate(groups):
            batch = [sentences[k][i].split(" ") for k in group]
            out = bilm(batch_sentences(batch), initial_state=states[g])
            states[g] = out["final_state"]
            top = out["lstm_outputs"][-1].numpy()
            for row, k in enumerate(group):
                n = len(batch[row])
                assert n == expected[k][i].shape[0]
                np.testing.assert_allclose(top[row, :n], expected[k][i], atol=ATOL, rtol=0,
                                           err_msg=f"batch {i}, row {k}")
                worst = max(worst, float(np.abs(top[row, :n] - expected[k][i]).max()))
                assert not np.any(top[row, n:]), "positions past the sentence must be exactly 0"
    print(f"\nlargest |difference| to bilm-tf over 10 stateful batches, rows {rows}: {worst:.3g}")


def test_first_batch_from_zero_state(fixture_model):
    bilm, sentences, expected = fixture_model
    batch = [sentences[k][0].split(" ") for k in range(3)]
    top = compiled(bilm)(batch_sentences(batch))["lstm_outputs"][-1].numpy()
    for k in range(3):
        np.testing.assert_allclose(top[k, :len(batch[k])], expected[k][0], atol=ATOL, rtol=0)


def test_later_batches_differ_without_state(fixture_model):
    """Guards the replay test: the carried state really matters for batch 1."""
    bilm, sentences, expected = fixture_model
    batch = [sentences[k][1].split(" ") for k in range(3)]
    top = compiled(bilm)(batch_sentences(batch))["lstm_outputs"][-1].numpy()
    assert np.abs(top[0, :len(batch[0])] - expected[0][1]).max() > 1e-3


def _layers(out, row: int, n: int) -> list[np.ndarray]:
    return [out["word_emb"][row, :n].numpy()] + [h[row, :n].numpy() for h in out["lstm_outputs"]]


def test_batch_invariance(fixture_model):
    """A sentence's outputs do not depend on what else is in the batch, or on padding."""
    bilm, sentences, _ = fixture_model
    run = compiled(bilm)
    flat = [s.split(" ") for group in sentences for s in group]  # 30 sentences
    alone = [_layers(run(batch_sentences([s])), 0, len(s)) for s in flat]

    rng = np.random.default_rng(0)
    for order in (np.arange(len(flat)), rng.permutation(len(flat))):
        for start in range(0, len(flat), 7):
            idx = order[start:start + 7]
            ids = batch_sentences([flat[j] for j in idx])
            # 5 extra all-zero positions: padding the caller adds must change nothing.
            padded = np.pad(ids, [(0, 0), (0, 5), (0, 0)])
            for batch in (ids, padded):
                out = run(batch)
                for row, j in enumerate(idx):
                    n = len(flat[j])
                    for layer, (got, want) in enumerate(zip(_layers(out, row, n), alone[j])):
                        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0,
                                                   err_msg=f"sentence {j}, layer {layer}")
                    for h in [out["word_emb"]] + out["lstm_outputs"]:
                        assert not np.any(h[row, n:].numpy())


def test_outputs_zero_past_each_row_and_lengths(small_model):
    bilm = BiLM.from_files(*small_model)
    batch = [["a", "bb", "ccc"], [], ["é"]]
    out = bilm(batch_sentences(batch, max_length=5))
    np.testing.assert_array_equal(out["sequence_len"].numpy(), [3, 0, 1])
    for h in [out["word_emb"]] + out["lstm_outputs"]:
        assert h.shape[1] == 5
        for row, n in enumerate([3, 0, 1]):
            assert np.all(h[row, n:].numpy() == 0)
            assert np.all(np.abs(h[row, :n].numpy()).sum(axis=-1) > 0)


@pytest.mark.slow
def test_full_size_architecture(full_size_model):
    options_path, weights_path = full_size_model
    bilm = BiLM.from_files(options_path, weights_path)
    batch = [["The", "cat", "sat", "on", "the", "mat", "."], ["Hello", "wörld"]]
    out = bilm(batch_sentences(batch))
    assert out["word_emb"].shape == (2, 7, 512)
    assert [h.shape for h in out["lstm_outputs"]] == [(2, 7, 1024)] * 2
    for h in [out["word_emb"]] + out["lstm_outputs"]:
        assert np.all(np.isfinite(h.numpy()))
        assert np.abs(h[1, :2].numpy()).max() > 0
        assert not np.any(h[1, 2:].numpy())
    c, h = out["final_state"][0]
    assert c.shape == (2, 2, 4096) and h.shape == (2, 2, 512)
