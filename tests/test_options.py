"""Tests for hub_export.model.options: one test per error, and the valid cases.

Every error test pins the message: it must name the options file and the key path.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path

import pytest

from hub_export.errors import OptionsError
from hub_export.model.options import (
    BiLMOptions,
    CharCNNOptions,
    LSTMOptions,
    load_options,
    parse_options,
)

from helpers import FULL_SIZE_OPTIONS, SMALL_OPTIONS


def write_options(tmp_path: Path, raw, name: str = "options.json") -> Path:
    """Writes `raw` (a dict to dump, or the exact text) and returns the path."""
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else json.dumps(raw))
    return path


def changed(edit) -> dict:
    """A deep copy of SMALL_OPTIONS after `edit(raw)`."""
    raw = copy.deepcopy(SMALL_OPTIONS)
    edit(raw)
    return raw


def at(path: Path, key: str) -> str:
    """The start of every key error: the file, then the key path."""
    return re.escape(f"{path}: {key}: ")


# ---------------------------------------------------------------------------- file errors


def test_file_not_found(tmp_path):
    path = tmp_path / "missing" / "options.json"
    with pytest.raises(OptionsError, match=re.escape(str(path)) + ": options file not found"):
        load_options(path)


def test_not_json(tmp_path):
    path = write_options(tmp_path, '{"char_cnn": {"embedding": ')
    with pytest.raises(OptionsError, match=re.escape(str(path)) + ": not valid JSON: .*line 1"):
        load_options(path)


def test_top_level_not_an_object(tmp_path):
    path = write_options(tmp_path, [SMALL_OPTIONS])
    with pytest.raises(OptionsError,
                       match=at(path, "<top level>") + "expected a JSON object, got list"):
        load_options(path)


# ----------------------------------------------------------------------------- key errors


def test_missing_key(tmp_path):
    path = write_options(tmp_path, changed(lambda r: r["lstm"].pop("proj_clip")))
    with pytest.raises(OptionsError, match=at(path, "lstm.proj_clip") + "missing required key"):
        load_options(path)


def test_unknown_nested_key(tmp_path):
    # A typo: "activaton". The message names the typo and lists the allowed keys.
    def typo(raw):
        raw["char_cnn"]["activaton"] = raw["char_cnn"].pop("activation")

    path = write_options(tmp_path, changed(typo))
    with pytest.raises(OptionsError, match=at(path, "char_cnn.activaton")
                       + "unknown key; allowed keys here: activation, embedding, filters"):
        load_options(path)


def test_unknown_top_level_key(tmp_path):
    path = write_options(tmp_path, changed(lambda r: r.update(learning_rate=0.2)))
    with pytest.raises(OptionsError, match=at(path, "learning_rate")
                       + "unknown key; allowed keys here: .*batch_size.*char_cnn.*lstm"):
        load_options(path)


# ---------------------------------------------------------------------------- type errors


def test_string_for_int(tmp_path):
    path = write_options(tmp_path, changed(lambda r: r["lstm"].update(dim="4096")))
    with pytest.raises(OptionsError, match=at(path, "lstm.dim")
                       + re.escape('expected an integer >= 1, got string "4096"')):
        load_options(path)


def test_bool_for_int(tmp_path):
    # JSON true is a Python bool, which is an int subclass: it must still be refused.
    path = write_options(tmp_path, changed(lambda r: r["char_cnn"].update(n_highway=True)))
    with pytest.raises(OptionsError, match=at(path, "char_cnn.n_highway")
                       + re.escape("expected an integer >= 0, got boolean true")):
        load_options(path)


def test_float_for_n_layers(tmp_path):
    path = write_options(tmp_path, changed(lambda r: r["lstm"].update(n_layers=2.0)))
    with pytest.raises(OptionsError, match=at(path, "lstm.n_layers")
                       + re.escape("expected an integer >= 1, got number 2.0")):
        load_options(path)


def test_null_for_int(tmp_path):
    path = write_options(tmp_path, changed(lambda r: r["lstm"].update(projection_dim=None)))
    with pytest.raises(OptionsError, match=at(path, "lstm.projection_dim")
                       + re.escape("expected an integer >= 1, got null") + "$"):
        load_options(path)


def test_filters_not_a_list(tmp_path):
    path = write_options(tmp_path, changed(lambda r: r["char_cnn"].update(filters={"1": 32})))
    with pytest.raises(OptionsError, match=at(path, "char_cnn.filters")
                       + re.escape('expected a non-empty list of [width, channels], got object')):
        load_options(path)


def test_malformed_filter_pair(tmp_path):
    path = write_options(tmp_path, changed(lambda r: r["char_cnn"].update(filters=[[1, 4], [2]])))
    with pytest.raises(OptionsError, match=at(path, "char_cnn.filters[1]")
                       + re.escape("expected [width, channels], got list [2]")):
        load_options(path)


def test_filter_wider_than_max_characters(tmp_path):
    path = write_options(tmp_path, changed(
        lambda r: r["char_cnn"].update(filters=[[1, 4], [51, 8]])))
    with pytest.raises(OptionsError, match=at(path, "char_cnn.filters[1][0] (width)")
                       + "width 51 is wider than max_characters_per_token 50"):
        load_options(path)


# --------------------------------------------------------------------------- value errors


def test_activation_not_allowed(tmp_path):
    path = write_options(tmp_path, changed(lambda r: r["char_cnn"].update(activation="sigmoid")))
    with pytest.raises(OptionsError, match=at(path, "char_cnn.activation")
                       + re.escape('got string "sigmoid"; allowed values: relu, tanh')):
        load_options(path)


def test_negative_clip(tmp_path):
    path = write_options(tmp_path, changed(lambda r: r["lstm"].update(cell_clip=-1)))
    with pytest.raises(OptionsError, match=at(path, "lstm.cell_clip")
                       + "expected a finite number >= 0 or null, got -1"):
        load_options(path)


def test_n_characters_not_allowed(tmp_path):
    path = write_options(tmp_path, changed(lambda r: r["char_cnn"].update(n_characters=300)))
    with pytest.raises(OptionsError, match=at(path, "char_cnn.n_characters")
                       + re.escape("got 300; allowed values: 262 (261 is read as 262)")):
        load_options(path)


def test_not_bidirectional(tmp_path):
    path = write_options(tmp_path, changed(lambda r: r.update(bidirectional=False)))
    with pytest.raises(OptionsError, match=at(path, "bidirectional")
                       + "a forward-only language model cannot make ELMo; expected true"):
        load_options(path)


def test_training_key_wrong_type(tmp_path):
    path = write_options(tmp_path, changed(lambda r: r.update(batch_size="128")))
    with pytest.raises(OptionsError, match=at(path, "batch_size")
                       + re.escape('expected integer, got string "128"')):
        load_options(path)


def test_parse_options_names_the_source():
    raw = changed(lambda r: r["lstm"].pop("dim"))
    with pytest.raises(OptionsError, match=re.escape("my/options.json: lstm.dim: missing")):
        parse_options(raw, source="my/options.json")


# ---------------------------------------------------------------------------- valid cases


def test_fixture_options(shared_fixture):
    options = load_options(shared_fixture / "options.json")
    assert options == BiLMOptions(
        char_cnn=CharCNNOptions(
            embedding_dim=4,
            filters=((1, 4), (2, 8), (3, 16), (4, 32), (5, 64)),
            n_highway=2,
            activation="relu",
            n_characters=262,
            max_characters_per_token=50,
        ),
        lstm=LSTMOptions(
            dim=64,
            projection_dim=16,
            n_layers=2,
            cell_clip=3.0,
            proj_clip=3.0,
            use_skip_connections=False,
        ),
        training=(),
    )
    assert options.char_cnn.n_filters == 4 + 8 + 16 + 32 + 64
    assert options.has_projection  # 124 filter channels, projection_dim 16


def test_options_are_frozen():
    options = parse_options(copy.deepcopy(SMALL_OPTIONS))
    with pytest.raises(AttributeError):
        options.lstm.dim = 1


def test_training_n_characters_read_as_262(tmp_path, caplog):
    path = write_options(tmp_path, changed(lambda r: r["char_cnn"].update(n_characters=261)))
    with caplog.at_level(logging.INFO, logger="hub_export.model.options"):
        options = load_options(path)
    assert options.char_cnn.n_characters == 262
    notes = [rec.getMessage() for rec in caplog.records if rec.name == "hub_export.model.options"]
    assert len(notes) == 1
    assert str(path) in notes[0] and "261" in notes[0] and "262" in notes[0]


@pytest.mark.parametrize("clip", [None, 0, 0.0])
def test_clip_null_or_zero_means_none(clip):
    options = parse_options(changed(lambda r: r["lstm"].update(cell_clip=clip, proj_clip=clip)))
    assert options.lstm.cell_clip is None
    assert options.lstm.proj_clip is None


def test_clip_is_float():
    options = parse_options(copy.deepcopy(SMALL_OPTIONS))
    assert options.lstm.cell_clip == 3.0 and isinstance(options.lstm.cell_clip, float)


def test_training_keys_accepted(tmp_path):
    training = {"batch_size": 128, "n_epochs": 10, "bidirectional": True, "dropout": 0.1,
                "all_clip_norm_val": None, "n_train_tokens": 768648884}
    path = write_options(tmp_path, changed(lambda r: r.update(training)))
    options = load_options(path)
    assert dict(options.training) == training
    assert options.lstm == parse_options(copy.deepcopy(SMALL_OPTIONS)).lstm


@pytest.mark.parametrize("raw", [SMALL_OPTIONS, FULL_SIZE_OPTIONS], ids=["small", "full_size"])
def test_to_dict_round_trip(raw):
    options = parse_options(copy.deepcopy(raw))
    again = parse_options(json.loads(json.dumps(options.to_dict())))
    assert again == options


def test_to_dict_round_trip_keeps_training_and_none_clip():
    raw = changed(lambda r: (r.update(batch_size=64), r["lstm"].update(cell_clip=None)))
    options = parse_options(raw)
    out = options.to_dict()
    assert out["batch_size"] == 64 and out["lstm"]["cell_clip"] is None
    assert parse_options(out) == options
