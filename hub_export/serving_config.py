"""`models.config` for TF Serving: the versions of one model found under a base path.

TF Serving watches `<base_path>` (`exported/<name>`) and serves the numbered version
directories its version policy selects; labels (`stable=3`) let clients ask for a
version by name. This writes that `ModelServerConfig` text proto after checking that
every version it names holds a SavedModel.
"""

from __future__ import annotations

import os
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from hub_export import atomic
from hub_export.errors import HubExportError

CONFIG_NAME = "models.config"


def is_saved_model(path: Path) -> bool:
    return (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file()


def versions_on_disk(model_dir: Path) -> list[int]:
    """Numbered subdirectories, ascending (what TF Serving's file-system source sees)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def parse_labels(labels: list[str] | None) -> dict[str, int]:
    """["stable=3", "canary=4"] -> {"stable": 3, "canary": 4}."""
    out = {}
    for item in labels or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value.strip().isdigit():
            raise HubExportError(f"--label: expected NAME=VERSION like stable=3, got {item!r}")
        if key in out:
            raise HubExportError(f"--label: {key!r} is given twice")
        out[key] = int(value)
    return out


def build_config(base: str | os.PathLike, name: str = "elmo", versions: list[int] | None = None,
                 latest: int | None = None, labels: dict[str, int] | None = None,
                 serving_root: str | None = None) -> model_server_config_pb2.ModelServerConfig:
    """Validates the request against the disk and returns the config.

    Args:
        base: the export root (`exported`); the model lives in `<base>/<name>/`.
        versions: serve exactly these (policy `specific`); default: all found on disk.
        latest: serve the newest N instead (policy `latest`).
        labels: label -> version; each must be a served version.
        serving_root: the path at which the server sees `base` (e.g. `/models` inside
            the tensorflow/serving container); default: `base`'s absolute path here.

    Raises:
        HubExportError: naming the directory, version or label that is wrong.
    """
    base = Path(base)
    model_dir = base / name
    if not base.is_dir():
        raise HubExportError(f"--base: {base} is not a directory (export a model there first)")
    found = versions_on_disk(model_dir)
    if not found:
        raise HubExportError(f"{model_dir}: no version directories found (expected e.g. "
                             f"{model_dir}/1 from `python -m hub_export --version 1 --name {name}`)")
    if versions is not None and latest is not None:
        raise HubExportError("--versions and --latest exclude each other: give one")
    if latest is not None:
        if latest < 1:
            raise HubExportError(f"--latest: must be a positive integer, got {latest}")
        served = found[-latest:]
    else:
        served = sorted(set(versions)) if versions else found
    for v in served:
        path = model_dir / str(v)
        if not path.is_dir():
            raise HubExportError(f"version {v}: {path} does not exist (found on disk: "
                                 f"{', '.join(map(str, found))})")
        if not is_saved_model(path):
            raise HubExportError(f"version {v}: {path} holds no SavedModel (no saved_model.pb)")
    for label, v in (labels or {}).items():
        if v not in served:
            raise HubExportError(f"--label {label}={v}: version {v} is not among the served "
                                 f"versions ({', '.join(map(str, served))})")

    root = Path(serving_root) if serving_root else base.resolve()
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = (root / name).as_posix()
    model.model_platform = "tensorflow"
    if latest is not None:
        model.model_version_policy.latest.num_versions = latest
    else:
        model.model_version_policy.specific.versions.extend(served)
    for label, v in sorted((labels or {}).items()):
        model.version_labels[label] = v
    return config


def write_config(base: str | os.PathLike, **kwargs) -> Path:
    """Builds the config (see `build_config`) and writes `<base>/models.config`, replacing
    the one there.

    Raises:
        HubExportError: as `build_config`; WriteError: the OS refused to write it.
    """
    config = build_config(base, **kwargs)
    path = Path(base) / CONFIG_NAME
    # The config describes the disk, so a new one replaces the old, atomically: a server
    # reading it, or a second serving-config at the same time, sees one whole file.
    atomic.write_text(path, text_format.MessageToString(config), overwrite=True)
    return path
