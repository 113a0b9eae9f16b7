"""Export round trips: the output contract, values, export flags, card, atomicity, archive."""

from __future__ import annotations

import copy
import functools
import hashlib
import http.server
import json
import re
import shutil
import tarfile
import threading

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub

import signatures
from hub_export.errors import HubExportError
from hub_export.export.elmo_module import ExportConfig
from hub_export.model.bilm import BiLM
from hub_export.model.char_ids import batch_sentences

import forked_cli
from helpers import SMALL_OPTIONS, export_model, write_model

SENTENCES = ["The cat sat on the mat .", "Hello", "", "  spaced   out  words ", "naïve café"]
TOKENS = [s.split() for s in SENTENCES]


def token_inputs(rows: list[list[str]], extra: int = 0) -> dict:
    width = max(len(r) for r in rows) + extra
    padded = [r + ["<pad>"] * (width - len(r)) for r in rows]
    return {"tokens": tf.constant(padded, tf.string),
            "sequence_len": tf.constant([len(r) for r in rows], tf.int32)}


def all_outputs(module):
    """Yields (how, outputs) for every signature and both __call__ input forms."""
    tok = token_inputs(TOKENS)
    yield "signature default", module.signatures["default"](default=tf.constant(SENTENCES))
    yield "signature serving_default", module.signatures["serving_default"](default=tf.constant(SENTENCES))
    yield "signature tokens", module.signatures["tokens"](**tok)
    yield "__call__ sentences", module(tf.constant(SENTENCES))
    yield "__call__ tokens", module(tok)


def check_contract(module, P: int, L: int, elmo_dim: int | None = None):
    specs = signatures.output_specs(P, L, elmo_dim)
    for how, out in all_outputs(module):
        assert sorted(out) == sorted(s.name for s in specs), how
        for spec in specs:
            value = out[spec.name]
            assert value.dtype == spec.dtype, (how, spec.name)
            assert value.shape.rank == spec.rank, (how, spec.name)
            if spec.width is not None:
                assert value.shape[-1] == spec.width, (how, spec.name)
            assert value.shape[0] == len(SENTENCES), (how, spec.name)
    # Batch and time stay dynamic in the saved signatures; the last dimension is static.
    for name in ("default", "tokens"):
        structured = module.signatures[name].structured_outputs
        for spec in specs:
            assert structured[spec.name].shape.as_list() == list(spec.shape), (name, spec.name)


def test_contract_fixture_model(fixture_export):
    check_contract(hub.load(str(fixture_export.path)), P=16, L=2)


@pytest.mark.slow
def test_contract_full_size(full_size_model, tmp_path):
    result = export_model(tmp_path, *full_size_model)
    check_contract(hub.load(str(result.path)), P=512, L=2)
    assert result.manifest["trainable_scalars"] == 4


def test_values_equal_in_memory_bilm(small_export):
    result, options_path, weights_path = small_export
    module = hub.load(str(result.path))
    bilm = BiLM.from_files(options_path, weights_path)
    ref = bilm(batch_sentences(TOKENS))
    weights = tf.nn.softmax(tf.zeros(3) + 1.0 / 3).numpy()
    layers = [np.concatenate([ref["word_emb"].numpy()] * 2, axis=-1)]
    layers += [h.numpy() for h in ref["lstm_outputs"]]
    elmo = sum(w * x for w, x in zip(weights, layers))
    n = np.array([len(t) for t in TOKENS])
    for how, out in all_outputs(module):
        np.testing.assert_allclose(out["word_emb"], ref["word_emb"], atol=1e-6, rtol=0, err_msg=how)
        for layer in (1, 2):
            np.testing.assert_allclose(out[f"lstm_outputs{layer}"], ref["lstm_outputs"][layer - 1],
                                       atol=1e-6, rtol=0, err_msg=how)
        np.testing.assert_allclose(out["elmo"], elmo, atol=1e-6, rtol=0, err_msg=how)
        np.testing.assert_array_equal(out["sequence_len"], n)
        # default = the masked mean of elmo; an empty sentence gives zeros.
        mean = np.stack([out["elmo"][i, :k].numpy().mean(0) if k else np.zeros(16)
                         for i, k in enumerate(n)])
        np.testing.assert_allclose(out["default"], mean, atol=1e-6, rtol=0, err_msg=how)
        assert not np.any(out["default"][2].numpy())
        for name in ("word_emb", "lstm_outputs1", "lstm_outputs2", "elmo"):
            for i, k in enumerate(n):
                assert not np.any(out[name][i, k:].numpy()), (how, name, i)


def test_tokens_signature_keeps_max_length_and_ignores_padding(small_export):
    module = hub.load(str(small_export[0].path))
    plain = module.signatures["tokens"](**token_inputs(TOKENS))
    wide = module.signatures["tokens"](**token_inputs(TOKENS, extra=4))
    assert wide["elmo"].shape[1] == plain["elmo"].shape[1] + 4
    np.testing.assert_allclose(wide["elmo"][:, :plain["elmo"].shape[1]], plain["elmo"], atol=1e-6)
    assert not np.any(wide["elmo"][:, plain["elmo"].shape[1]:].numpy())


def test_four_trainable_scalars_rest_frozen(small_export):
    module = hub.load(str(small_export[0].path))
    trainable = module.trainable_variables
    assert sorted(v.name for v in trainable) == ["aggregation/scaling:0", "aggregation/weights:0"]
    assert sum(int(np.prod(v.shape)) for v in trainable) == 4
    trainable_names = {v.name for v in trainable}
    others = [v for v in module.variables if v.name not in trainable_names]
    assert len(others) > 10 and not any(v.trainable for v in others)
    assert [float(loss()) for loss in module.regularization_losses] == [0.0]


def test_signature_outputs_do_not_depend_on_batch(small_export):
    module = hub.load(str(small_export[0].path))
    together = module.signatures["default"](default=tf.constant(SENTENCES))
    for i, sentence in enumerate(SENTENCES):
        alone = module.signatures["default"](default=tf.constant([sentence]))
        for key in ("elmo", "default"):
            width = alone[key].shape[1] if key == "elmo" else None
            got = together[key][i, :width] if width is not None else together[key][i]
            np.testing.assert_allclose(got, alone[key][0], atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("flags_model"), copy.deepcopy(SMALL_OPTIONS))


def test_flags_scalar_mix_init_freeze_l2(small_files, tmp_path):
    config = ExportConfig(scalar_mix_init=(0.0, 1.0, -1.0), freeze_mix=True, l2_coef=0.5)
    module = hub.load(str(export_model(tmp_path, *small_files, config=config).path))
    assert [v.name for v in module.trainable_variables] == []
    out = module(tf.constant(["a b c"]))
    w = tf.nn.softmax(tf.constant([0.0, 1.0, -1.0]) + 1.0 / 3).numpy()
    layers = [np.concatenate([out["word_emb"]] * 2, -1), out["lstm_outputs1"], out["lstm_outputs2"]]
    np.testing.assert_allclose(out["elmo"], sum(a * x for a, x in zip(w, layers)), atol=1e-6)
    np.testing.assert_allclose([float(f()) for f in module.regularization_losses], [0.5 * 2.0], rtol=1e-6)


def test_flag_dropout_only_when_training(small_files, tmp_path):
    module = hub.load(str(export_model(tmp_path, *small_files,
                                       config=ExportConfig(dropout=0.5)).path))
    x = tf.constant(["the cat sat on the mat"])
    a, b = module(x)["elmo"].numpy(), module(x, training=False)["elmo"].numpy()
    np.testing.assert_array_equal(a, b)
    dropped = module(x, training=True)["elmo"].numpy()
    zeros = np.mean(dropped == 0)
    assert 0.3 < zeros < 0.7
    kept = dropped != 0
    np.testing.assert_allclose(dropped[kept], 2.0 * a[kept], rtol=1e-5)


def test_flag_projection_dim(small_files, tmp_path):
    result = export_model(tmp_path, *small_files, config=ExportConfig(projection_dim=5))
    module = hub.load(str(result.path))
    check_contract(module, P=8, L=2, elmo_dim=5)
    assert result.manifest["trainable_scalars"] == 4 + 16 * 5 + 5
    assert "projected to 5" in (result.path / "assets.extra" / "README.md").read_text()


def test_flag_layer_norm_per_sentence(small_files, tmp_path):
    module = hub.load(str(export_model(tmp_path, *small_files,
                                       config=ExportConfig(layer_norm=True)).path))
    out = module(tf.constant(["a b c d", "x"]))
    n = 4
    layers = [np.concatenate([out["word_emb"][0, :n]] * 2, -1), out["lstm_outputs1"][0, :n].numpy(),
              out["lstm_outputs2"][0, :n].numpy()]
    normed = [(x - x.mean()) / np.sqrt(x.var() + 1e-12) for x in layers]
    np.testing.assert_allclose(out["elmo"][0, :n], sum(normed) / 3, atol=1e-5)
    alone = module(tf.constant(["x"]))["elmo"]
    np.testing.assert_allclose(out["elmo"][1, :1], alone[0], atol=1e-6)


def test_flag_trainable_all(small_files, tmp_path):
    result = export_model(tmp_path, *small_files, config=ExportConfig(trainable="all"))
    module = hub.load(str(result.path))
    assert len(module.trainable_variables) == len(module.variables)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(module(tf.constant(["a b"]), training=True)["default"] ** 2)
    grads = tape.gradient(loss, module.trainable_variables)
    lstm = [g for v, g in zip(module.trainable_variables, grads) if "lstm_0" in v.name]
    assert lstm and all(g is not None and np.any(g.numpy()) for g in lstm)


def test_bad_export_flags_refused(small_files, tmp_path):
    with pytest.raises(HubExportError, match="--scalar-mix-init: got 2 values"):
        export_model(tmp_path, *small_files, config=ExportConfig(scalar_mix_init=(0.0, 1.0)))
    with pytest.raises(HubExportError, match=r"--dropout: must be in \[0, 1\), got 1.0"):
        export_model(tmp_path, *small_files, config=ExportConfig(dropout=1.0))
    assert not (tmp_path / "elmo").exists() or not any((tmp_path / "elmo").iterdir())


def test_module_card_and_manifest(small_export):
    result, options_path, weights_path = small_export
    extra = result.path / "assets.extra"
    manifest = json.loads((extra / "manifest.json").read_text())
    # hashed beside the tracing, in a thread: it must still be the whole file's hash
    assert manifest["source"]["weights_sha256"] == hashlib.sha256(weights_path.read_bytes()).hexdigest()
    assert manifest["options"] == json.loads(options_path.read_text()) | {
        "lstm": {**SMALL_OPTIONS["lstm"], "cell_clip": 3.0, "proj_clip": 3.0}}
    assert manifest["versions"]["tensorflow"] == tf.__version__
    assert manifest["trainable_scalars"] == 4
    card = (extra / "README.md").read_text()
    for name in signatures.signature_names():
        assert f"`{name}`" in card
    for spec in signatures.output_specs(8, 2):
        assert f"| `{spec.name}` | {spec.dtype.name} | {spec.shape_text()} |" in card
    assert manifest["source"]["weights_sha256"] in card
    assert "built-in default model" not in card  # that paragraph is the built-in model's


def test_builtin_default_model_exports_without_files(tmp_path):
    result = export_model(tmp_path, None, None, version=3)
    assert result.path == tmp_path / "elmo" / "3"
    again = export_model(tmp_path / "again", None, None, version=3)
    assert again.manifest["source"]["weights_sha256"] == result.manifest["source"]["weights_sha256"]
    assert result.manifest["source"]["recipe"]["weights_sha256"] == \
        result.manifest["source"]["weights_sha256"]


def test_existing_version_needs_overwrite(small_export, small_files, tmp_path):
    existing = tmp_path / "elmo" / "2"
    shutil.copytree(small_export[0].path, existing)  # an earlier export of version 2
    before = (existing / "saved_model.pb").read_bytes()
    with pytest.raises(HubExportError, match=r"elmo/2 already exists; pass --overwrite"):
        export_model(tmp_path, *small_files, version=2)
    assert (existing / "saved_model.pb").read_bytes() == before
    export_model(tmp_path, *small_files, version=2, overwrite=True)
    manifest = json.loads((existing / "assets.extra" / "manifest.json").read_text())
    assert manifest["source"]["weights"] == str(small_files[1])  # the new export's
    outputs = hub.load(str(existing)).signatures["default"](default=tf.constant(["a b"]))
    assert sorted(outputs) == sorted(s.name for s in signatures.output_specs(8, 2))
    assert sorted(p.name for p in (tmp_path / "elmo").iterdir()) == ["2"]


def test_killed_export_leaves_no_version(small_files, tmp_path):
    """SIGKILL while saving: no <version> directory; the next run succeeds."""
    options_path, weights_path = small_files
    run = forked_cli.Run(["--version", "7", "--options", options_path, "--weights",
                          weights_path, "--output-dir", tmp_path], tmp_path, tmp_path / "logs")
    parent = tmp_path / "elmo"
    # Kill as soon as tf.saved_model.save has started writing the temporary directory
    # (after the progress line "[3/3] saving to ...").
    assert forked_cli.kill_when(run, lambda: "saving to" in run.stderr() and any(
        parent.glob(".tmp-7-*")), timeout=120), run.stderr()
    leftovers = [p.name for p in parent.iterdir()]
    assert "7" not in leftovers, "the export finished before the kill; the test proved nothing"
    assert any(name.startswith(".tmp-7-") for name in leftovers), leftovers
    result = export_model(tmp_path, options_path, weights_path, version=7)
    assert (result.path / "saved_model.pb").exists()
    assert sorted(p.name for p in (tmp_path / "elmo").iterdir()) == ["7"]


def test_archive_served_over_http(small_export, tmp_path, monkeypatch):
    result, options_path, weights_path = small_export
    out = export_model(tmp_path, options_path, weights_path, version=4, archive=True)
    assert out.archive == tmp_path / "elmo-4.tar.gz"
    with tarfile.open(out.archive) as tar:
        names = tar.getnames()
        assert "saved_model.pb" in names and "variables/variables.index" in names
        assert all(not n.startswith(("/", "..")) and ".." not in n.split("/") for n in names)
        assert all(m.isfile() or m.isdir() for m in tar.getmembers())

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub_cache"))
        url = f"http://127.0.0.1:{server.server_address[1]}/elmo-4.tar.gz"
        remote = hub.load(url)
    finally:
        server.shutdown()
        server.server_close()
    local = hub.load(str(out.path))
    x = tf.constant(SENTENCES)
    a, b = remote.signatures["default"](default=x), local.signatures["default"](default=x)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_no_python_in_the_saved_graph(small_export):
    """TF Serving and other languages cannot run Python: no py_function ops anywhere."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((small_export[0].path / "saved_model.pb").read_bytes())
    ops = set()
    for meta in saved.meta_graphs:
        ops.update(node.op for node in meta.graph_def.node)
        for function in meta.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    assert "While" in ops or "StatelessWhile" in ops  # the walk reached the function bodies
    assert not ops & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}


def test_the_bilm_graph_is_saved_once(small_export):
    """Every endpoint (signatures, __call__ traces, Keras endpoints) calls one traced
    biLM: a single function of the saved library reaches all the LSTM loops (each
    layer's, in both of its layouts), not one copy per endpoint (which cost most of an
    export's time)."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((small_export[0].path / "saved_model.pb").read_bytes())
    library = saved.meta_graphs[0].graph_def.library.function

    def called(attr):  # the function names an attr value refers to
        names = [attr.func.name] + [f.name for f in attr.list.func]
        return {n for n in names if n}

    calls = {f.signature.name: {n for node in f.node_def for a in node.attr.values() for n in called(a)}
             for f in library}
    with_loops = {f.signature.name for f in library
                  if any(node.op in ("While", "StatelessWhile") for node in f.node_def)}

    def reach(name, seen=None):
        seen = set() if seen is None else seen
        for callee in calls.get(name, ()):
            if callee not in seen:
                seen.add(callee)
                reach(callee, seen)
        return seen

    reaches = {name: reach(name) | {name} for name in calls}
    holders = {name for name, r in reaches.items() if with_loops <= r}
    # The lowest function that reaches every loop: the traced biLM.
    bilm = [name for name in holders if not (reaches[name] - {name}) & holders]
    assert with_loops and len(bilm) == 1, (with_loops, bilm)
    callers = [name for name, callees in calls.items() if bilm[0] in callees]
    assert len(callers) >= 4, callers  # the four __call__ traces at least


def test_weight_file_unreadable_while_hashing(small_files, tmp_path, monkeypatch):
    """The manifest's hash runs in a thread; a read error there is reported by file name."""
    from hub_export.export import exporter as export_module

    def failing(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(export_module, "sha256_file", failing)
    options_path, weights_path = small_files
    with pytest.raises(HubExportError, match=re.escape(f"--weights: cannot read {weights_path} to hash it")):
        export_model(tmp_path, options_path, weights_path)
    assert not (tmp_path / "elmo" / "1").exists()


def test_the_saver_traces_nothing_again(tmp_path):
    """`elmo_module.build_saveable` relies on the private `save_context`: a function
    traced inside it is one `tf.saved_model.save` does not trace again. This fails when
    the pinned TensorFlow changes either side of that."""
    from tensorflow.python.saved_model import save_context

    from hub_export.export.elmo_module import SAVE_OPTIONS

    def saved_traces(in_context: bool) -> int:
        traces = []

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def double(x):
            traces.append(1)
            return 2 * x

        root = tf.Module()
        root.double = double
        if in_context:
            with save_context.save_context(SAVE_OPTIONS):
                double.get_concrete_function()
        else:
            double.get_concrete_function()
        before = len(traces)
        tf.saved_model.save(root, str(tmp_path / f"in_context_{in_context}"), options=SAVE_OPTIONS)
        return len(traces) - before

    assert saved_traces(in_context=True) == 0, (
        f"TensorFlow {tf.__version__}: tf.saved_model.save traces again a function traced in "
        "tensorflow.python.saved_model.save_context; hub_export/export/elmo_module.py's "
        "build_saveable no longer saves the tracing (look for a public API)")
    assert saved_traces(in_context=False) > 0, (
        f"TensorFlow {tf.__version__}: tf.saved_model.save no longer traces again a function "
        "traced outside its context; hub_export/export/elmo_module.py can drop its private "
        "save_context import")
