"""Spark NLP's contract, replayed through tf.compat.v1: what its `ElmoEmbeddings` does
with an export (`loadSavedModel`, `Elmo.tag`, saving the annotator and loading it back).

Spark NLP needs a JVM and its jar, which these machines cannot fetch; the replay feeds and
fetches exactly the names its Scala code does (`Elmo.scala`, `TensorflowWrapper.scala`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import fingerprint_pb2
from tensorflow.python.saved_model import fingerprinting_utils

from hub_export.export.spark_nlp import (
    FEEDS,
    INIT_ALL_TABLES,
    PADDING,
    SAVER_PATH,
    SAVER_RESTORE,
    SAVER_SAVE,
    fetch_names,
)

ATOL = 1e-6
LAYERS = ["word_emb", "lstm_outputs1", "lstm_outputs2", "elmo", "default"]
BATCHES = {
    "mixed lengths": [["the", "cat", "sat", "on", "the", "mat"], ["a", "dog"], ["hello"]],
    "equal lengths": [["the", "cat", "sat"], ["a", "dog", "barked"]],
    "batch of one": [["hello", "world", "again"]],
}


def spark_feeds(rows: list[list[str]]) -> dict:
    """`Elmo.tag`'s inputs: rows padded with " " to the longest, and their lengths."""
    width = max(len(r) for r in rows)
    tokens = np.array([r + [PADDING] * (width - len(r)) for r in rows], dtype=object)
    return {"tokens:0": tokens, "sequence_len:0": np.array([len(r) for r in rows], np.int32)}


def spark_tag(sess: tf.compat.v1.Session, rows: list[list[str]]) -> dict:
    """Output 0 of each pooling layer's operation, fetched by operation name."""
    # Spark NLP fetches by operation name, which TF Java reads as output 0 (`name:0`).
    return sess.run({name: f"{name}:0" for name in LAYERS}, feed_dict=spark_feeds(rows))


def tokens_signature(loaded, rows: list[list[str]]) -> dict:
    """The `tokens` signature through hub.load, rows padded with empty strings."""
    width = max(len(r) for r in rows)
    out = loaded.signatures["tokens"](
        tokens=tf.constant([r + [""] * (width - len(r)) for r in rows]),
        sequence_len=tf.constant([len(r) for r in rows], tf.int32))
    return {k: v.numpy() for k, v in out.items()}


def assert_layers_equal(got: dict, expected: dict, what: str) -> None:
    for name in LAYERS:
        assert np.abs(expected[name]).max() > 1e-3, f"{what}: {name} is trivially small"
        # Fetching by operation name gives the output itself: `Elmo.tag` reads the tensor
        # as it comes (no `:0` suffix, no shape fix-up).
        assert got[name].shape == expected[name].shape, (what, name)
        np.testing.assert_allclose(got[name], expected[name], atol=ATOL, rtol=0,
                                   err_msg=f"{what}: {name}")


@pytest.mark.parametrize("batch", list(BATCHES))
def test_elmo_tag_feeds_and_fetches_by_operation_name(session, loaded, batch):
    sess, _ = session  # loaded with the tag `serve`, as SavedModelBundle.load does
    rows = BATCHES[batch]
    assert_layers_equal(spark_tag(sess, rows), tokens_signature(loaded, rows), batch)


def test_operation_names_are_the_tokens_signature_call(session):
    """`tokens`/`sequence_len` are the signature's own placeholders and every fetched
    operation reads the signature's one call: no second copy of the biLM in the graph."""
    _, meta = session
    signature = meta.signature_def["tokens"]
    assert {k: signature.inputs[k].name for k in FEEDS} == {k: f"{k}:0" for k in FEEDS}
    nodes = {node.name: node for node in meta.graph_def.node}
    for name in FEEDS:
        assert nodes[name].op == "Placeholder", name
    call = signature.outputs["elmo"].name.split(":")[0]
    assert fetch_names(sorted(signature.outputs)) == sorted(LAYERS)
    for name in LAYERS:
        assert nodes[name].op == "Identity", name
        assert list(nodes[name].input) == [signature.outputs[name].name], name
        assert nodes[name].input[0].split(":")[0] == call
    function = nodes[call].attr["f"].func.name
    callers = [n.name for n in meta.graph_def.node
               if "f" in n.attr and n.attr["f"].func.name == function]
    assert callers == [call]
    assert nodes[INIT_ALL_TABLES].op == "NoOp"


def test_annotator_save_and_reload(session, loaded, tmp_path):
    """Saving the annotator writes the variables through `save/control_dependency`
    (`save/Const` fed with the path) and keeps the GraphDef; loading it again imports that
    GraphDef into a new graph and runs `save/restore_all` and `init_all_tables` (what
    `TensorflowWrapper.saveToFile` and `read` do, and each executor on a cluster)."""
    sess, _ = session
    folder = tmp_path / "annotator"
    folder.mkdir()
    prefix = str(folder / "variables")
    sess.run(SAVER_SAVE, feed_dict={f"{SAVER_PATH}:0": prefix})
    assert sorted(p.name for p in folder.iterdir()) == ["variables.data-00000-of-00001",
                                                        "variables.index"]
    graph_def = sess.graph.as_graph_def()

    rows = BATCHES["mixed lengths"]
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as fresh:
        tf.compat.v1.import_graph_def(graph_def, name="")
        scaling = "aggregation/scaling/Read/ReadVariableOp:0"
        with pytest.raises(tf.errors.FailedPreconditionError):  # guard: nothing restored yet
            fresh.run(scaling)
        fresh.run([SAVER_RESTORE, INIT_ALL_TABLES], feed_dict={f"{SAVER_PATH}:0": prefix})
        assert fresh.run(scaling) == sess.run(scaling)
        got = spark_tag(fresh, rows)
    assert_layers_equal(got, tokens_signature(loaded, rows), "reloaded annotator")


def test_fingerprint_describes_the_edited_saved_model(small_path, tmp_path):
    """fingerprint.pb hashes saved_model.pb, which the names were added to after the save:
    TF's own writer, run again on a copy, must give the same hashes (its `uuid` is new at
    every write)."""
    copy = tmp_path / "copy"
    shutil.copytree(small_path, copy)
    (copy / "fingerprint.pb").unlink()
    fingerprinting_utils.write_fingerprint(str(copy))
    written, fresh = (fingerprint_pb2.FingerprintDef.FromString((d / "fingerprint.pb").read_bytes())
                      for d in (Path(small_path), copy))
    assert written.uuid != fresh.uuid  # guard: the copy's file was written again
    written.ClearField("uuid")
    fresh.ClearField("uuid")
    assert written == fresh
    assert written.saved_model_checksum and written.graph_def_program_hash
