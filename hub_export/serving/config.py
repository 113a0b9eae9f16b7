"""`models.config` and `batching.config` for TF Serving.

TF Serving watches `<base_path>` (`exported/<name>`) and serves the numbered version
directories its version policy selects; labels (`stable=3`) let clients ask for a
version by name. `write_config` writes that `ModelServerConfig` text proto after checking
that every version it names holds a SavedModel.

`write_batching` writes the server's `--batching_parameters_file`, a `BatchingParameters`
text proto. With `--enable_batching` the server merges concurrent requests of a signature
into one batch along their first dimension. `tokens` requests of different lengths are
padded to the longest (`pad_variable_length_inputs`) with each request's first token, a
real word: `sequence_len`, which the module masks by, is what keeps those positions out
of every output.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from hub_export import atomic
from hub_export.errors import HubExportError

CONFIG_NAME = "models.config"
BATCHING_NAME = "batching.config"


def _batching_parameters_class() -> type:
    """TF Serving's `BatchingParameters` message, declared here through protobuf's public
    descriptor API: tensorflow-serving-api ships `apis/` and `config/` only, not the
    `session_bundle_config.proto` that holds it. Each field has the name, number and type
    the server's message gives it (the ones hub_export writes, and the rest of that
    message's fields); a text proto names no package, so the server reads this file as
    its own. The declaration lives in its own pool, never clashing with another."""
    field = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="hub_export/batching_parameters.proto", package="hub_export.tf_serving",
        syntax="proto3", dependency=[wrappers_pb2.DESCRIPTOR.name])
    message = file.message_type.add(name="BatchingParameters")
    for name, number, wrapper in (
            ("max_batch_size", 1, "Int64Value"), ("batch_timeout_micros", 2, "Int64Value"),
            ("max_enqueued_batches", 3, "Int64Value"), ("num_batch_threads", 4, "Int64Value"),
            ("thread_pool_name", 5, "StringValue"),
            ("enable_large_batch_splitting", 8, "BoolValue"),
            ("max_execution_batch_size", 9, "Int64Value")):
        message.field.add(name=name, number=number, label=field.LABEL_OPTIONAL,
                          type=field.TYPE_MESSAGE, type_name=f".google.protobuf.{wrapper}")
    message.field.add(name="allowed_batch_sizes", number=6, label=field.LABEL_REPEATED,
                      type=field.TYPE_INT64)
    message.field.add(name="pad_variable_length_inputs", number=7, label=field.LABEL_OPTIONAL,
                      type=field.TYPE_BOOL)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("hub_export.tf_serving.BatchingParameters"))


BatchingParameters = _batching_parameters_class()


@dataclasses.dataclass(frozen=True)
class Batching:
    """What `batching.config` says; None leaves a value to the server's default.

    The defaults come from `benchmarks/bench.py`'s batch-size curve for the original ELMo
    architecture (the figures are in `benchmarks/RESULTS.md`; `python benchmarks/bench.py`
    measures them again): tokens/s rise several-fold from batch 1 to batch 16 and still
    rise to 64, the largest batch measured. Batches only grow when requests queue up,
    which is when throughput counts, so a batch may hold 64 sentences (a request of more
    is refused, so 64 is also the largest request). The first request of a batch waits
    at most 10 ms for others: a small fraction of the time one sentence takes alone
    there. `num_batch_threads` and `max_enqueued_batches` are left to the server (its own
    CPU count, and TF Serving's default queue length).

    Args:
        max_batch_size: int. Sentences in a batch, and in one request at most.
        batch_timeout_micros: int. How long a batch waits to fill.
        num_batch_threads: int or None. Batches run at once.
        max_enqueued_batches: int or None. Batches that may wait; more requests are refused.
    """

    max_batch_size: int = 64
    batch_timeout_micros: int = 10_000
    num_batch_threads: int | None = None
    max_enqueued_batches: int | None = None

    def to_proto(self) -> BatchingParameters:
        """Raises HubExportError naming the flag whose value is wrong."""
        params = BatchingParameters(pad_variable_length_inputs=True)
        for name, value in dataclasses.asdict(self).items():
            if value is None:
                continue
            least = 0 if name == "batch_timeout_micros" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise HubExportError(f"--{name.replace('_', '-')}: must be an integer >= "
                                     f"{least}, got {value!r}")
            getattr(params, name).value = value
        return params


def write_batching(base: str | os.PathLike, batching: Batching = Batching()) -> Path:
    """Writes `<base>/batching.config` (see `Batching`)."""
    params = batching.to_proto()
    base = Path(base)
    if not base.is_dir():
        raise HubExportError(f"--base: {base} is not a directory (export a model there first)")
    return _write_text(base / BATCHING_NAME, text_format.MessageToString(params))


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
    return _write_text(Path(base) / CONFIG_NAME, text_format.MessageToString(config))


def _write_text(path: Path, text: str) -> Path:
    # The file describes the disk, so a new one replaces the old, atomically: a server
    # reading it, or a second serving-config at the same time, sees one whole file.
    atomic.write_text(path, text, overwrite=True)
    return path
