"""The README's commands and usage snippets, run as written."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest

from hub_export.export import default_model
from hub_export.model.weights import write_weights

import forked_cli

README = Path(__file__).resolve().parents[1] / "README.md"
CI_RUN = Path(__file__).resolve().parents[1] / ".ci" / "run"


def blocks(section: str, language: str) -> list[str]:
    """The fenced `language` blocks under the `## section` heading (subsections included)."""
    text = README.read_text()
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"README has no '## {section}' section"
    return re.findall(rf"^```{language}\n(.*?)^```", match.group(1), re.S | re.M)


def test_quick_start_commands():
    setup, tests = blocks("Quick start", "bash")
    # The first command installs the project and exports the built-in model as version 3.
    assert "pip install -e '.[test,beam]'" in setup
    assert setup.strip().endswith("-m hub_export --version 3")
    # .ci/run runs the very same test command after a fresh install.
    assert tests.strip() in CI_RUN.read_text()
    assert "pip install -q -e '.[test,beam]'" in CI_RUN.read_text()


@pytest.fixture(scope="module")
def usage_dir(tmp_path_factory):
    """A directory with exported/elmo/3 (the built-in model) and its options + weights."""
    from helpers import export_model

    folder = tmp_path_factory.mktemp("readme")
    export_model(folder / "exported", None, None, version=3)
    options, arrays, _ = default_model.default_model()
    (folder / "options.json").write_text(json.dumps(options.to_dict()))
    write_weights(folder / "weights.hdf5", arrays)
    return folder


def check_prints(code: str, stdout: str) -> None:
    """Every `print(...)  # expected` comment in the snippet is checked against its output."""
    expected = [m.group(1).strip() for m in re.finditer(r"print\(.*\)[ \t]+# (.*)$", code, re.M)]
    printed = stdout.strip().splitlines()
    assert len(printed) == len(expected), stdout
    for got, want in zip(printed, expected):
        if want.startswith("("):
            assert got == want
        else:  # a list of names: each must appear
            for name in want.split(", "):
                assert name in got


@pytest.mark.parametrize("index", range(len(blocks("Usage", "python"))))
def test_usage_python_snippet(usage_dir, index):
    code = blocks("Usage", "python")[index]
    result = forked_cli.run([], usage_dir, code=code)  # as `python -c code`
    assert result.returncode == 0, result.stderr[-3000:]
    check_prints(code, result.stdout)


PORTING = "Porting TF1 code from the google/elmo cards"


def porting_blocks() -> tuple[list[str], list[str]]:
    """(the cards' TF1 snippets, shown as they are; the TF2 snippets, which are run)."""
    python = blocks(PORTING, "python")
    return ([b for b in python if "hub.Module(" in b], [b for b in python if "hub.Module(" not in b])


@pytest.fixture(scope="module")
def porting_dir(usage_dir):
    """usage_dir plus the section's `--trainable all` export, made in this process with the
    library call the command maps to (the CLI itself is run by test_usage_cli_commands)."""
    from hub_export.export.elmo_module import ExportConfig

    from helpers import export_model

    (command,) = blocks(PORTING, "bash")
    assert shlex.split(command) == ["python", "-m", "hub_export", "--version", "1", "--name",
                                    "elmo_all", "--trainable", "all", "--quiet"]
    export_model(usage_dir / "exported", None, None, version=1, name="elmo_all",
                 config=ExportConfig(trainable="all"))
    return usage_dir


def test_porting_shows_both_card_examples():
    tf1, tf2 = porting_blocks()
    assert len(tf1) == 2 and len(tf2) == 3
    assert 'signature="default"' in tf1[0] and 'signature="tokens"' in tf1[1]
    assert all('as_dict=True)["elmo"]' in b and "trainable=True" in b for b in tf1)


@pytest.mark.parametrize("index", range(len(porting_blocks()[1])))
def test_porting_tf2_snippet(porting_dir, index, monkeypatch):
    """Each TF2 snippet, run as written in this process (TensorFlow is loaded already)."""
    code = porting_blocks()[1][index]
    monkeypatch.chdir(porting_dir)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"README.md:{PORTING}:{index}", "exec"), {"__name__": "__main__"})
    check_prints(code, out.getvalue())


def test_usage_cli_commands(usage_dir):
    for command in blocks("Usage", "bash"):
        argv = shlex.split(command.replace("\\\n", " "))
        assert argv[:3] == ["python", "-m", "hub_export"]
        result = forked_cli.run(argv[3:], usage_dir)
        assert result.returncode == 0, result.stderr[-3000:]
    assert (usage_dir / "exported" / "my_elmo" / "1" / "saved_model.pb").exists()
    assert (usage_dir / "exported" / "my_elmo-1.tar.gz").exists()
    manifest = json.loads((usage_dir / "exported" / "my_elmo" / "2" / "assets.extra" /
                           "manifest.json").read_text())
    assert manifest["export_flags"]["projection_dim"] == 128
    assert manifest["export_flags"]["scalar_mix_init"] == [0.0, 0.0, 1.0]


def test_serving_rest_bodies_run_through_the_session_path(usage_dir):
    """The README's four REST bodies, fed as TF Serving would, on the session loader."""
    import numpy as np
    import tensorflow as tf
    import tensorflow_hub as hub

    from hub_export.serving.client import parse_rest_reply, rest_body, rest_body_to_feeds

    bodies = [json.loads(b) for b in blocks("Serving with TF Serving", "json")]
    assert len(bodies) == 4
    assert {(b["signature_name"], "instances" in b) for b in bodies} == {
        ("default", True), ("default", False), ("tokens", True), ("tokens", False)}
    path = str(usage_dir / "exported" / "elmo" / "3")
    served = []
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
        for body in bodies:
            signature = meta.signature_def[body["signature_name"]]
            feeds = rest_body_to_feeds(body, signature.inputs)
            names = sorted(signature.outputs)
            values = sess.run([signature.outputs[n].name for n in names],
                              {signature.inputs[k].name: v for k, v in feeds.items()})
            served.append((feeds, dict(zip(names, values))))
    module = hub.load(path)
    for body, (feeds, outputs) in zip(bodies, served):
        expected = module.signatures[body["signature_name"]](
            **{k: tf.constant(v) for k, v in feeds.items()})
        assert sorted(outputs) == sorted(expected)
        for name, value in outputs.items():
            np.testing.assert_allclose(value, expected[name].numpy(), atol=1e-6, rtol=0,
                                       err_msg=(body["signature_name"], name))
        # The client helper writes the same body from plain Python input.
        form = "instances" if "instances" in body else "inputs"
        if body["signature_name"] == "default":
            sentences = body.get("instances") or body["inputs"]["default"]
            assert rest_body(sentences=sentences, form=form) == body
        else:
            rows = ([i["tokens"][:i["sequence_len"]] for i in body["instances"]]
                    if form == "instances" else
                    [t[:n] for t, n in zip(body["inputs"]["tokens"], body["inputs"]["sequence_len"])])
            assert rest_body(tokens=rows, form=form) == body
        # ...and reads the reply back, in the column form TF Serving answers with.
        parsed = parse_rest_reply({"outputs": {n: v.tolist() for n, v in outputs.items()}})
        for name, value in outputs.items():
            np.testing.assert_array_equal(parsed[name], value)


def test_training_commands(tmp_path):
    """The README's train / evaluate / dump-weights / export commands, as written, on a
    small generated corpus laid out as they name it."""
    from test_trainer import write_corpus

    corpus = write_corpus(tmp_path / "data", n_train=600, n_test=60)
    (tmp_path / "data" / "test").rename(tmp_path / "data" / "heldout")
    for name in ("vocab.txt", "options.json"):
        (tmp_path / "data" / name).rename(tmp_path / name)
    del corpus
    block = blocks("Training a biLM", "bash")[0]
    commands = block.replace("\\\n", " ").strip().splitlines()
    assert [shlex.split(c)[:4] for c in commands] == [
        ["python", "-m", "hub_export", "train"], ["python", "-m", "hub_export", "evaluate"],
        ["python", "-m", "hub_export", "dump-weights"], ["python", "-m", "hub_export", "--version"]]
    outputs = []
    for command in commands:
        argv = shlex.split(command)
        result = forked_cli.run(argv[3:], tmp_path, timeout=600)
        assert result.returncode == 0, (command, result.stderr[-3000:])
        outputs.append(result)
    assert "held-out perplexity" in outputs[0].stderr
    assert outputs[1].stdout.startswith("perplexity ")
    assert float(outputs[1].stdout.split()[1]) > 1.0
    assert (tmp_path / "exported" / "my_elmo" / "1" / "saved_model.pb").exists()
