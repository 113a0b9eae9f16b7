"""The whole hub_export.model.bilm.BiLM against the numpy reference on many small architectures."""

import copy

import numpy as np
import pytest

from hub_export.model.bilm import BiLM
from hub_export.model.char_ids import batch_sentences
from hub_export.model.options import parse_options

from helpers import SMALL_OPTIONS, random_weights
from numpy_bilm import np_bilm

ATOL = 1e-5

SENTENCES = [
    ["The", "cat", "sat", "on", "the", "mat", "."],
    [],
    ["naïve", "café", "日本語", "😀"],
    ["a"],
    ["Ünïcödé", "x" * 60, "ß" * 30, "<S>", "</S>"],
]

# A second and third batch (same batch size) for the stateful replay.
REPLAY = [
    SENTENCES,
    [["b", "c"], ["one", "two", "three", "four", "five", "six", "seven", "eight"], [], ["é"], ["z"] * 3],
    [[], ["q"], ["Straße", "ok"], ["é", "è", "ê"], ["last", "one"]],
]


def variant(**changes):
    raw = copy.deepcopy(SMALL_OPTIONS)
    for key, value in changes.items():
        section, name = key.split("__")
        if section == "embedding":
            raw["char_cnn"]["embedding"][name] = value
        else:
            raw[section][name] = value
    return raw


ARCHITECTURES = {
    "small": variant(),
    "tanh": variant(char_cnn__activation="tanh"),
    "no_highway": variant(char_cnn__n_highway=0),
    "three_highway": variant(char_cnn__n_highway=3),
    "one_layer": variant(lstm__n_layers=1),
    "three_layers": variant(lstm__n_layers=3),
    "three_layers_no_skip": variant(lstm__n_layers=3, lstm__use_skip_connections=False),
    "no_skip": variant(lstm__use_skip_connections=False),
    "clip_null": variant(lstm__cell_clip=None, lstm__proj_clip=None),
    "clip_zero": variant(lstm__cell_clip=0, lstm__proj_clip=0),
    "clip_small": variant(lstm__cell_clip=0.5, lstm__proj_clip=0.5),
    "cell_clip_only": variant(lstm__cell_clip=0.25, lstm__proj_clip=None),
    "no_projection": variant(char_cnn__filters=[[1, 2], [2, 2], [4, 4]]),  # 8 == P
    "n_characters_261": variant(char_cnn__n_characters=261),
    "wide": variant(lstm__dim=12, lstm__projection_dim=6, embedding__dim=3,
                    char_cnn__filters=[[1, 3], [5, 7]], char_cnn__activation="tanh",
                    char_cnn__n_highway=2, lstm__n_layers=3),
}


def build(raw, seed=0):
    options = parse_options(raw)
    arrays = random_weights(options, seed)
    return options, arrays, BiLM(options, arrays)


def assert_same(got, want):
    np.testing.assert_array_equal(got["sequence_len"].numpy(), want["sequence_len"])
    mask = got["mask"].numpy()
    np.testing.assert_array_equal(mask, np.arange(mask.shape[1])[None, :] < want["sequence_len"][:, None])
    np.testing.assert_allclose(got["word_emb"].numpy(), want["word_emb"], atol=ATOL, rtol=0)
    assert len(got["lstm_outputs"]) == len(want["lstm_outputs"])
    for l, (g, w) in enumerate(zip(got["lstm_outputs"], want["lstm_outputs"])):
        np.testing.assert_allclose(g.numpy(), w, atol=ATOL, rtol=0, err_msg=f"layer {l}")
    assert len(got["final_state"]) == len(want["final_state"])
    for l, ((gc, gh), (wc, wh)) in enumerate(zip(got["final_state"], want["final_state"])):
        np.testing.assert_allclose(gc.numpy(), wc, atol=ATOL, rtol=0, err_msg=f"c layer {l}")
        np.testing.assert_allclose(gh.numpy(), wh, atol=ATOL, rtol=0, err_msg=f"h layer {l}")


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_bilm_matches_numpy(name):
    raw = ARCHITECTURES[name]
    options, arrays, bilm = build(raw, seed=len(name))
    ids = batch_sentences(SENTENCES)
    got = bilm(ids)
    want = np_bilm(arrays, options, ids)
    B, T = len(SENTENCES), max(len(s) for s in SENTENCES)
    P = options.lstm.projection_dim
    assert got["word_emb"].shape == (B, T, P)
    assert [o.shape for o in got["lstm_outputs"]] == [(B, T, 2 * P)] * options.lstm.n_layers
    assert_same(got, want)
    # Zeros past each row's end (the empty sentence is all zeros).
    assert not want["word_emb"][1].any()
    assert not got["lstm_outputs"][-1].numpy()[3, 1:].any()


def test_config_details():
    assert parse_options(ARCHITECTURES["n_characters_261"]).char_cnn.n_characters == 262
    assert random_weights(parse_options(ARCHITECTURES["n_characters_261"]), 0)["char_embed"].shape[0] == 261
    assert not parse_options(ARCHITECTURES["no_projection"]).has_projection
    for name in ("clip_null", "clip_zero"):
        lo = parse_options(ARCHITECTURES[name]).lstm
        assert lo.cell_clip is None and lo.proj_clip is None


@pytest.mark.parametrize("clipped,unclipped", [("clip_small", "clip_null"),
                                               ("cell_clip_only", "clip_null"),
                                               ("small", "clip_null")])
def test_clipping_really_triggers(clipped, unclipped):
    # Same weights, same inputs: the clip values must change the numbers (so the
    # clipped architectures above really test clipping), except the loose clip of 3.
    ids = batch_sentences(SENTENCES)
    options_c, arrays, bilm_c = build(ARCHITECTURES[clipped], seed=1)
    options_u = parse_options(ARCHITECTURES[unclipped])
    bilm_u = BiLM(options_u, arrays)
    got_c, got_u = bilm_c(ids), bilm_u(ids)
    assert_same(got_c, np_bilm(arrays, options_c, ids))
    diff = max(np.abs(a.numpy() - b.numpy()).max()
               for a, b in zip(got_c["lstm_outputs"], got_u["lstm_outputs"]))
    if clipped == "small":
        # cell_clip = proj_clip = 3 never bind with these weights.
        assert diff < 1e-6
    else:
        assert diff > 1e-2
    zero = BiLM(parse_options(ARCHITECTURES["clip_zero"]), arrays)(ids)
    for a, b in zip(zero["lstm_outputs"], got_u["lstm_outputs"]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


def test_backward_starts_at_each_rows_end():
    # A row's outputs do not depend on how much padding the batch adds after it.
    options, arrays, bilm = build(ARCHITECTURES["small"], seed=2)
    alone = bilm(batch_sentences([SENTENCES[3]]))
    padded = bilm(batch_sentences([SENTENCES[3], SENTENCES[0]]))
    for a, b in zip(alone["lstm_outputs"], padded["lstm_outputs"]):
        np.testing.assert_allclose(a.numpy()[0], b.numpy()[0, :1], atol=1e-6)
    for (ac, ah), (bc, bh) in zip(alone["final_state"], padded["final_state"]):
        np.testing.assert_allclose(ac.numpy()[:, 0], bc.numpy()[:, 0], atol=1e-6)
        np.testing.assert_allclose(ah.numpy()[:, 0], bh.numpy()[:, 0], atol=1e-6)


@pytest.mark.parametrize("name", ["small", "three_layers_no_skip", "clip_small"])
def test_stateful_replay(name):
    options, arrays, bilm = build(ARCHITECTURES[name], seed=3)
    tf_state = np_state = None
    first_outputs = None
    for k, sentences in enumerate(REPLAY):
        ids = batch_sentences(sentences)
        got = bilm(ids, initial_state=tf_state)
        want = np_bilm(arrays, options, ids, initial_state=np_state)
        assert_same(got, want)
        tf_state, np_state = got["final_state"], want["final_state"]
        if k == 0:
            first_outputs = got
    # Carrying the state changes the numbers: the first batch again, from the last state.
    again = bilm(batch_sentences(REPLAY[0]), initial_state=tf_state)
    assert_same(again, np_bilm(arrays, options, batch_sentences(REPLAY[0]), initial_state=np_state))
    diff = np.abs(again["lstm_outputs"][0].numpy() - first_outputs["lstm_outputs"][0].numpy()).max()
    assert diff > 1e-3
