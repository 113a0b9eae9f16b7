"""Graph names for clients that run the `serve` MetaGraph without a signature: Spark NLP.

Spark NLP's `ElmoEmbeddings.loadSavedModel(path, spark)` loads an ELMo SavedModel as a
bundle with the tag `serve`, and its `Elmo.tag` then uses no signature: it feeds the
operations `tokens` (string [B, T], shorter rows padded with the one-space string " ")
and `sequence_len` (int32 [B]) and fetches output 0 of the operation named after the
pooling layer (`word_emb`, `lstm_outputs1`, `lstm_outputs2` or `elmo`), the names of
TF Hub's TF1 google/elmo module. Its `TensorflowWrapper` also uses TF1's saver names:
it feeds the checkpoint path to `save/Const` and runs `save/control_dependency` to write
the variables when the annotator is saved, and `save/restore_all` to read them back
when it is loaded again or shipped to an executor; and it looks up `init_all_tables`
when it loads a bundle.

`tf.saved_model.save` writes none of these names (its placeholders are
`<signature>_<input>`, its outputs `StatefulPartitionedCall_<k>:<i>`, its saver nodes
`saver_filename` and two more calls), and no public API names the nodes it writes. So
`add_graph_names` edits the saved `serve` MetaGraph's GraphDef through TF's own protobuf
classes, after the save:
- the `tokens` signature's two placeholders are renamed `tokens` and `sequence_len`, and
  the signature points at the new names, so TF Serving and Spark NLP feed the same nodes;
- `word_emb`, `lstm_outputs1`, ..., `elmo` and `default` are Identity nodes on outputs of
  the `tokens` signature's call: the same function call, no second copy of the biLM;
- `save/control_dependency` and `save/restore_all` call the saver's own save and restore
  functions (the MetaGraph's `saver_def`) with the path fed to `save/Const`;
- `init_all_tables` is a NoOp: the bundle loader runs the module's initializer itself.

TF2 loaders (`tf.saved_model.load`, `hub.load`, Keras' TFSMLayer) rebuild the module from
the object graph and the function library, not from these nodes, so they see no change.
"""

from __future__ import annotations

import os
from pathlib import Path

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

# TF's own writer of fingerprint.pb, which hashes saved_model.pb: no public API writes one
# (tf.saved_model.experimental has read_fingerprint only). tests/test_spark_nlp.py fails
# if the pinned TF moves it or its fingerprint no longer matches the edited file.
from tensorflow.python.saved_model import fingerprinting_utils

import signatures

# What Spark NLP feeds, and what it pads shorter rows of `tokens` with.
FEEDS = ("tokens", "sequence_len")
PADDING = " "
# TF1 saver names Spark NLP's TensorflowWrapper feeds and runs.
SAVER_PATH = "save/Const"
SAVER_SAVE = "save/control_dependency"
SAVER_RESTORE = "save/restore_all"
INIT_ALL_TABLES = "init_all_tables"


def fetch_names(output_names) -> list[str]:
    """The per-layer and pooled outputs that get an operation of their own: every output
    of the `tokens` signature but `sequence_len`, whose name is the input's."""
    return [name for name in output_names if name not in FEEDS]


def add_graph_names(export_dir: str | os.PathLike) -> None:
    """Adds Spark NLP's operation names to the `serve` MetaGraph of a saved export and
    rewrites saved_model.pb and fingerprint.pb in `export_dir`.

    Raises:
        ValueError: the SavedModel is not one `tf.saved_model.save` wrote for an
            `ElmoModule` (a name is taken already, or the signature is missing).
    """
    path = Path(export_dir) / tf.saved_model.SAVED_MODEL_FILENAME_PB
    saved_model = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    (meta_graph,) = [m for m in saved_model.meta_graphs
                     if tf.saved_model.SERVING in m.meta_info_def.tags]
    graph = meta_graph.graph_def
    signature = meta_graph.signature_def[signatures.tokens.NAME]
    taken = {node.name for node in graph.node}
    fetches = fetch_names(sorted(signature.outputs))
    wanted = [*FEEDS, *fetches, SAVER_PATH, SAVER_SAVE, SAVER_RESTORE, INIT_ALL_TABLES]
    clash = sorted(taken.intersection(wanted))
    if clash:
        raise ValueError(f"{path}: the graph already has operations named {', '.join(clash)}")

    # The signature's placeholders become `tokens` and `sequence_len`.
    renamed = {_op_name(signature.inputs[key].name): key for key in FEEDS}
    for node in graph.node:
        node.name = renamed.get(node.name, node.name)
        node.input[:] = [_rename_input(name, renamed) for name in node.input]
    for key in FEEDS:
        signature.inputs[key].name = f"{key}:0"

    # Output 0 of `elmo` etc. is that output of the signature's call.
    for key in fetches:
        info = signature.outputs[key]
        graph.node.append(_node("Identity", key, [info.name], T=tf.DType(info.dtype)))

    # Spark NLP's saver names, on the saver functions the SavedModel already has.
    saver = meta_graph.saver_def
    filename = _op_name(saver.filename_tensor_name)
    graph.node.append(_node("Const", SAVER_PATH, [], dtype=tf.string,
                            value=tf.make_tensor_proto("model")))
    by_name = {node.name: node for node in graph.node}
    for new_name, op in ((SAVER_SAVE, _op_name(saver.save_tensor_name)),
                         (SAVER_RESTORE, _op_name(saver.restore_op_name))):
        call = tf.compat.v1.NodeDef()
        call.CopyFrom(by_name[op])
        call.name = new_name
        call.input[:] = [_rename_input(name, {filename: SAVER_PATH}) for name in call.input]
        graph.node.append(call)
    graph.node.append(_node("NoOp", INIT_ALL_TABLES, []))

    # The export directory is a temporary one, renamed into place only when complete, so
    # rewriting the two files in place cannot leave a half-written version behind.
    path.write_bytes(saved_model.SerializeToString(deterministic=True))
    fingerprinting_utils.write_fingerprint(str(export_dir))


def _op_name(tensor_name: str) -> str:
    return tensor_name.lstrip("^").split(":")[0]


def _rename_input(name: str, renamed: dict[str, str]) -> str:
    """A NodeDef input ("op", "op:1" or "^op") with its op renamed."""
    control = name.startswith("^")
    op, sep, index = name.lstrip("^").partition(":")
    return ("^" if control else "") + renamed.get(op, op) + sep + index


def _node(op: str, name: str, inputs: list[str], **attrs) -> tf.compat.v1.NodeDef:
    node = tf.compat.v1.NodeDef(op=op, name=name, input=inputs)
    for key, value in attrs.items():
        if isinstance(value, tf.DType):
            node.attr[key].type = value.as_datatype_enum
        else:
            node.attr[key].tensor.CopyFrom(value)
    return node
