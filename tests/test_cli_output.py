"""What `python -m hub_export` prints: its own lines only (progress, results, errors),
none of TensorFlow's start-up log, library warnings or absl log lines, unless --verbose."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

import hub_export.cli as cli

PROGRESS = re.compile(r"\[(\d)/3\] (.+) \.\.\. done \(\d+\.\d s\)")
STEPS = ["reading options and weights into the biLM", "tracing the signatures",
         "saving to exported/elmo/3"]


def run_cli(cwd, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The CLI as a user's shell runs it: no TF_CPP_MIN_LOG_LEVEL (the test process sets
    one), no HUB_EXPORT_VERBOSE unless given."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ("TF_CPP_MIN_LOG_LEVEL", cli.VERBOSE_ENV)}
    return subprocess.run([sys.executable, "-m", "hub_export", *args], cwd=cwd,
                          env={**environ, **env}, capture_output=True, text=True, timeout=300)


def test_export_prints_only_its_own_lines(tmp_path):
    proc = run_cli(tmp_path, "--version", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["exported/elmo/3"]
    lines = proc.stderr.splitlines()
    assert len(lines) == 3, proc.stderr
    for k, (line, step) in enumerate(zip(lines, STEPS), start=1):
        match = PROGRESS.fullmatch(line)
        assert match and match.groups() == (str(k), step), line


@pytest.fixture
def damaged_module(tmp_path, small_export):
    """A module whose variables TensorFlow cannot read, and a corpus to embed with it."""
    module = tmp_path / "damaged"
    shutil.copytree(small_export[0].path, module)
    (module / "variables" / "variables.data-00000-of-00001").write_bytes(b"")
    (tmp_path / "corpus.txt").write_text("the cat sat\n")
    return tmp_path


ERROR = r"error: --module: damaged: cannot load the SavedModel: \S.*"
EMBED = ("embed", "--module", "damaged", "--input", "corpus.txt", "--output", "out.hdf5")


def test_tensorflow_error_still_reported(damaged_module):
    """With the log quiet, TensorFlow's error still comes out: the one line that names
    the module and gives TensorFlow's reason."""
    proc = run_cli(damaged_module, *EMBED)
    assert proc.returncode == 2
    assert proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert re.fullmatch(ERROR, line), line


def test_verbose_gives_tensorflow_lines_back(damaged_module):
    """The same run with --verbose: TensorFlow's start-up log is back (on a machine
    without a GPU, at least cudart_stub's "Could not find cuda drivers"; with one, the
    devices it creates), and the error line is still there. (HUB_EXPORT_VERBOSE=1 sets
    the same switch: test_verbose_environment_variable_values.)"""
    proc = run_cli(damaged_module, *EMBED, "--verbose")
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert re.fullmatch(ERROR, lines[-1]), lines[-1]
    assert len(lines) > 1, proc.stderr


@pytest.mark.parametrize("error, line", [
    (tf.errors.InvalidArgumentError(None, None, "bad value\n\t [[{{node Something}}]]"),
     "error: TensorFlow InvalidArgumentError: bad value"),
    (tf.errors.NotFoundError(None, None, "out/.tmp-3/variables; No such file or directory\n\t "
                             "[[{{node SaveV2}}]]"),
     "error: out/.tmp-3/variables: No such file or directory"),
], ids=["no OS reason", "an OS reason"])
def test_uncaught_tensorflow_error_is_one_line(monkeypatch, capsys, error, line):
    """An error TensorFlow raises that no command words itself: one line, the path and
    the OS's reason when it carries one, else its class and first line."""
    def fail(fv):
        raise error

    from hub_export.cli import embed

    monkeypatch.setattr(embed, "check", lambda fv: None)
    monkeypatch.setattr(embed, "main", fail)
    assert cli.main(["embed", "--verbose"]) == 2  # (--verbose: no quieting of this process)
    assert capsys.readouterr().err == line + "\n"


def test_verbose_environment_variable_values():
    assert cli.verbose_requested(True, {})
    assert cli.verbose_requested(False, {cli.VERBOSE_ENV: "1"})
    assert not cli.verbose_requested(False, {cli.VERBOSE_ENV: "0"})
    assert not cli.verbose_requested(False, {cli.VERBOSE_ENV: ""})
    assert not cli.verbose_requested(False, {})
