"""The built-in default model: shipped as package data, made as its recipe says, and
meaningful: its sentence embeddings put a paraphrase nearer than an unrelated sentence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from hub_export.export import default_model
from hub_export.model.options import parse_options

from helpers import export_model

# (sentence, a paraphrase of it, an unrelated sentence), written for this test. A model
# this small ranks by shared words and structure more than by meaning: two first drafts
# whose paraphrases shared almost no content word ("Federal spending is far too high .")
# ranked the wrong way, so the paraphrases keep some content words, as most do.
TRIPLES = [
    ("The economy is growing and more people have jobs .",
     "Our economy is expanding and more Americans are finding work .",
     "The soldiers crossed the frozen river at night ."),
    ("We must cut taxes for working families .",
     "Taxes on working families should be reduced .",
     "The museum opened a new exhibit of old paintings ."),
    ("Congress should pass this bill without delay .",
     "The Congress must pass this bill promptly .",
     "She baked bread for her children every morning ."),
    ("Our schools need more good teachers .",
     "We must put better teachers in our classrooms .",
     "The ship sailed across the ocean to Europe ."),
    ("The war is over and peace has returned .",
     "Now that the fighting has ended , we are at peace again .",
     "Farmers grow wheat and corn on the great plains ."),
    ("The government spends too much money .",
     "Our government is spending far too much money .",
     "The children played in the snow all afternoon ."),
]


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    import tensorflow_hub as hub

    result = export_model(tmp_path_factory.mktemp("default"), None, None, version=3)
    return result, hub.load(str(result.path))


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_paraphrase_is_nearer_than_an_unrelated_sentence(module):
    """Cosine of `default` embeddings: the paraphrase must win for all pairs but at most
    one (the last pair is a near-tie, kept as a known weak spot of so small a model), and
    by a clear margin on average. (The same architecture untrained, with either
    initialisation, gives mean margins of 0.002-0.006 here: the margin is learnt.)"""
    _, elmo = module
    margins = []
    for sentence, paraphrase, unrelated in TRIPLES:
        e = unit(elmo.signatures["default"](default=tf.constant([sentence, paraphrase, unrelated]))
                 ["default"].numpy())
        near, far = float(e[0] @ e[1]), float(e[0] @ e[2])
        print(f"\nparaphrase {near:.3f}, unrelated {far:.3f}: {sentence!r}")
        margins.append(near - far)
    assert sum(m > 0 for m in margins) >= len(TRIPLES) - 1, margins
    assert np.mean(margins) > 0.03, margins


def test_shipped_files_match_the_recipe():
    folder = default_model.data_dir()
    weights = folder / "weights.hdf5"
    assert weights.stat().st_size <= 10 * 2**20
    options = json.loads((folder / "options.json").read_text())
    assert parse_options(options) == parse_options(default_model.OPTIONS)
    recipe = default_model.recipe()
    assert recipe["options"] == {**default_model.OPTIONS, "char_cnn": {
        **default_model.OPTIONS["char_cnn"], "n_characters": 261}}
    result = recipe["result"]
    # The recorded held-out perplexity is well below a unigram model's on the same text.
    assert result["held_out_perplexity"] < 0.6 * result["unigram_perplexity"]
    assert recipe["weights_sha256"] == default_model.default_model()[2]


def test_card_gives_the_recipe(module):
    result, _ = module
    card = (result.path / "assets.extra" / "README.md").read_text()
    recipe = default_model.recipe()
    assert "## Recipe" in card and "built-in default model" in card
    assert recipe["corpus"]["package"] in card
    assert f"{recipe['result']['held_out_perplexity']:.1f}" in card
    assert result.manifest["source"]["weights_sha256"] == recipe["weights_sha256"]
