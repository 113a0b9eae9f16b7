"""The command line: one flag set per command, its help, and short usage errors.

Everything here runs before TensorFlow is imported (flag parsing and help), so it is
checked in-process through `hub_export.cli.main`, plus one real `python -m hub_export`
run to show the module entry point is the same thing.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest
from absl import flags

from hub_export import cli

COMMANDS = list(cli._commands())


def flag_set(command: str) -> flags.FlagValues:
    return cli.flag_values(cli._commands()[command])


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_top_level_help_lists_each_command_on_one_line(capsys):
    status, out, err = run(capsys, "--help")
    assert status == 0 and err == ""
    listed = re.findall(r"^  ([a-z-]+)  +\S", out, re.M)
    assert listed == COMMANDS
    assert "--batch-size" not in out and "--train-prefix" not in out


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_lists_its_own_flags_dashed(capsys, command):
    argv = [command, "--help"] if command != "export" else ["export", "--help"]
    status, out, err = run(capsys, *argv)
    assert status == 0 and err == ""
    shown = re.findall(r"^  --(?:\[no-\])?([a-z0-9-]+)", out, re.M)
    own = flags.FlagValues()
    cli._commands()[command].define(own)
    assert sorted(set(shown) - {"help"}) == sorted(set(own) | {"quiet", "verbose"})
    assert not [name for name in shown if "_" in name]


@pytest.mark.parametrize("command, default", [
    ("embed", 64), ("dump-token-embeddings", 4096), ("train", 128), ("evaluate", 64)])
def test_batch_size_shows_the_command_s_own_default(capsys, command, default):
    _, out, _ = run(capsys, command, "--help")
    block = out[out.index("--batch-size"):].split("\n  --")[0]
    assert f"(default: {default})" in block
    assert flag_set(command)["batch-size"].default == default


def test_train_defaults_are_train_config_s():
    from hub_export.train.trainer import TrainConfig

    fv = flag_set("train")
    names = {"n_epochs": "epochs"}
    for field in dataclasses.fields(TrainConfig):
        flag = names.get(field.name, field.name.replace("_", "-"))
        assert fv[flag].default == field.default, field.name


def test_dump_token_embeddings_default_is_the_library_s():
    from hub_export.cli import dump_token_embeddings
    from hub_export.corpus import token_embeddings

    assert dump_token_embeddings.DEFAULT_BATCH_SIZE == token_embeddings.DEFAULT_BATCH_SIZE


def test_dropout_means_one_thing_per_command():
    assert flag_set("export")["dropout"].default == 0.0
    assert flag_set("train")["dropout"].default == 0.1
    assert "dropout" not in flag_set("embed")


@pytest.mark.parametrize("argv, pattern, where", [
    (["embed", "--module", "exported/elmo/3"], r"embed needs --input, --output", "embed --help"),
    (["embed", "--bogus", "1"], r"Unknown command line flag 'bogus'", "embed --help"),
    (["embed", "--train-prefix", "x"], r"Unknown command line flag 'train-prefix'",
     "embed --help"),
    (["frobnicate"], r"unknown command 'frobnicate'; the commands are export, serving-config",
     "--help"),
    (["--version", "3", "stray"], r"unexpected argument 'stray'", "export --help"),
    (["train", "--batch-size", "0"], r"flag --batch-size=0: 0 is not a positive integer",
     "train --help"),
])
def test_usage_errors_are_short_and_name_the_help(capsys, argv, pattern, where):
    status, out, err = run(capsys, *argv)
    assert status == 1 and out == ""
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert re.search(pattern, lines[0]), err
    assert lines[1] == f"Run 'python -m hub_export {where}' for " + (
        "the commands." if where == "--help" else "its flags.")


@pytest.mark.parametrize("argv, name, value", [
    (["--version", "2", "--output_dir", "x"], "output-dir", "x"),
    (["--version", "2", "--no-warmup"], "warmup", False),
    (["--version", "2", "--nowarmup"], "warmup", False),
    (["--version", "2", "--no_warmup"], "warmup", False),
    (["--version", "2", "--layer_norm"], "layer-norm", True),
])
def test_underscores_and_no_prefix_are_accepted(argv, name, value):
    fv = flag_set("export")
    fv(["prog"] + cli._normalise(argv, fv))
    assert fv[name].value == value


def test_restart_from_weights_takes_two_words():
    from hub_export.cli import train

    fv = flag_set("train")
    fv(["prog"] + train.normalise(["--restart-from-weights", "o.json", "w.hdf5", "--seed", "3"]))
    assert fv["restart-from-weights"].value == ["o.json", "w.hdf5"] and fv.seed == 3


def test_module_entry_point_is_the_same(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hub_export", "embed", "--module", "m"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "error: embed needs --input, --output, e.g. python -m hub_export embed --module "
        "exported/elmo/3 --input corpus.txt --output embeddings.hdf5",
        "Run 'python -m hub_export embed --help' for its flags."]


@pytest.mark.parametrize("argv", [
    [], ["--version", "1", "--options", "o.json"], ["embed", "--module", "m"],
    ["train", "--vocab", "v.txt", "--restart-from-weights", "o.json"],
    ["serving-config", "--base", "b", "--no-batching", "--max-batch-size", "8"],
], ids=["export", "export-options-alone", "embed", "train", "serving-config"])
def test_usage_errors_come_before_tensorflow_is_imported(argv):
    """A usage error is instant: TensorFlow (seconds to import) is not loaded for it."""
    assert cli.main(list(argv)) == 1  # this process has TensorFlow: look in a fresh one
    code = ("import sys\nfrom hub_export.cli import main\n"
            f"status = main({list(argv)!r})\n"
            "print(status, 'tensorflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.split() == ["1", "False"], proc.stderr
