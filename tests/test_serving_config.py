"""`python -m hub_export serving-config`: models.config for TF Serving."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from hub_export.errors import HubExportError
from hub_export.serving_config import build_config, parse_labels, write_config


@pytest.fixture
def base(tmp_path, small_export):
    """exported/elmo/{2,3}: two copies of a real SavedModel, side by side."""
    root = tmp_path / "exported"
    for version in (2, 3):
        shutil.copytree(small_export[0].path, root / "elmo" / str(version))
    return root


def parse(path) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())


def test_all_versions_with_label(base):
    path = write_config(base, name="elmo", labels={"stable": 3})
    assert path == base / "models.config"
    config = parse(path)
    (model,) = config.model_config_list.config
    assert model.name == "elmo"
    assert model.base_path == str((base / "elmo").resolve())
    assert model.model_platform == "tensorflow"
    assert list(model.model_version_policy.specific.versions) == [2, 3]
    assert dict(model.version_labels) == {"stable": 3}


def test_latest_policy_and_serving_root(base):
    config = build_config(base, latest=1, serving_root="/models")
    (model,) = config.model_config_list.config
    assert model.base_path == "/models/elmo"
    assert model.model_version_policy.latest.num_versions == 1
    with pytest.raises(HubExportError, match=r"--label stable=2: version 2 is not among the served versions \(3\)"):
        build_config(base, latest=1, labels={"stable": 2})


def test_refuses_missing_version(base):
    with pytest.raises(HubExportError, match=r"version 4: .*elmo/4 does not exist \(found on disk: 2, 3\)"):
        build_config(base, versions=[3, 4])


def test_refuses_directory_without_saved_model(base):
    (base / "elmo" / "5").mkdir()
    with pytest.raises(HubExportError, match=r"version 5: .*elmo/5 holds no SavedModel"):
        build_config(base)
    assert not (base / "models.config").exists()


def test_refuses_label_to_absent_version(base):
    with pytest.raises(HubExportError, match=r"--label stable=9: version 9 is not among the served versions \(2, 3\)"):
        build_config(base, labels={"stable": 9})


def test_refuses_bad_label_syntax_and_missing_model(base, tmp_path):
    with pytest.raises(HubExportError, match=r"--label: expected NAME=VERSION like stable=3, got 'stable'"):
        parse_labels(["stable"])
    with pytest.raises(HubExportError, match=r"no version directories found"):
        build_config(base, name="other")
    with pytest.raises(HubExportError, match=r"--base: .*nowhere is not a directory"):
        build_config(tmp_path / "nowhere")


def test_cli(base):
    ok = subprocess.run([sys.executable, "-m", "hub_export", "serving-config", "--base", str(base),
                         "--versions", "2,3", "--label", "stable=3", "--label", "canary=2"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert dict(parse(base / "models.config").model_config_list.config[0].version_labels) == {
        "stable": 3, "canary": 2}
    bad = subprocess.run([sys.executable, "-m", "hub_export", "serving-config", "--base", str(base),
                          "--versions", "3,7"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "error: version 7:" in bad.stderr and "Traceback" not in bad.stderr
