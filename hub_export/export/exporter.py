"""Export a biLM as a versioned TF-Hub-style SavedModel: `<output_dir>/<name>/<version>/`.

The library behind `python -m hub_export`. An export is atomic: it is written to a
temporary directory beside the target and renamed into place at the end, so an
interrupted export leaves no `<version>` directory, and an existing version is only
replaced with `overwrite=True`.

Layout of a version directory:
    saved_model.pb, variables/        the SavedModel (signatures: see `signatures/`)
    assets.extra/README.md           the module card
    assets.extra/manifest.json       the same facts, machine-readable
    assets.extra/tf_serving_warmup_requests   PredictRequests TF Serving replays at load
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

import tensorflow as tf

from hub_export.errors import HubExportError
from hub_export.export import default_model, module_card, spark_nlp
from hub_export.export.elmo_module import SAVE_OPTIONS, ElmoModule, ExportConfig, build_saveable
from hub_export.export.token_cache import TokenCache
from hub_export.files import sha256_file
from hub_export.model.bilm import BiLM
from hub_export.model.options import load_options
from hub_export.model.vocab import Vocabulary
from hub_export.model.weights import WeightReader
from hub_export.progress import Progress
from hub_export.serving import warmup

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TMP_PREFIX = ".tmp-"
WARMUP_FILE = "tf_serving_warmup_requests"


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """Where an export went. `archive` is None unless one was asked for."""

    path: Path
    archive: Path | None
    manifest: dict


def _check_target(output_dir: Path, name: str, version: int, overwrite: bool,
                  archive: bool) -> tuple[Path, Path]:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise HubExportError(f"--version: must be a positive integer, got {version!r}")
    if not _NAME_PATTERN.match(name or ""):
        raise HubExportError(
            f"--name: got {name!r}; use letters, digits, '.', '_' and '-' (a directory name)")
    target = output_dir / name / str(version)
    archive_path = output_dir / f"{name}-{version}.tar.gz"
    if not overwrite:
        for existing in (target, archive_path if archive else None):
            if existing is not None and existing.exists():
                raise HubExportError(
                    f"{existing} already exists; pass --overwrite to replace it, or choose "
                    "another --version")
    if output_dir.exists() and not output_dir.is_dir():
        raise HubExportError(f"--output-dir: {output_dir} exists and is not a directory")
    return target, archive_path


def _remove_stale_temporaries(parent: Path, version: int) -> None:
    """Removes what killed exports of this version left behind (their pid is gone)."""
    if not parent.is_dir():
        return
    for entry in parent.glob(f"{_TMP_PREFIX}{version}-*"):
        pid = entry.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_archive(version_dir: Path, archive_path: Path) -> None:
    """TF Hub's compressed format: the SavedModel's files at the archive root."""
    tmp = archive_path.with_name(f"{_TMP_PREFIX}{archive_path.name}-{os.getpid()}")
    with tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(version_dir.rglob("*")):
            if path.is_symlink():
                raise HubExportError(f"{path}: refusing to archive a symbolic link")
            # Relative names only: no absolute paths, no "..", nothing outside the module.
            tar.add(path, arcname=path.relative_to(version_dir).as_posix(), recursive=False)
    os.replace(tmp, archive_path)


def export(version: int, options_path: str | os.PathLike | None = None,
           weights_path: str | os.PathLike | None = None, output_dir: str | os.PathLike = "exported",
           name: str = "elmo", config: ExportConfig = ExportConfig(), archive: bool = False,
           overwrite: bool = False, progress: Progress | None = None,
           warmup_sentences: list[str] | None = None, write_warmup: bool = True,
           vocab_path: str | os.PathLike | None = None) -> ExportResult:
    """Builds the biLM from options + weights (or the built-in model) and saves it.

    Args:
        version: int >= 1. The version directory's name.
        options_path, weights_path: the model files; both None for the built-in model.
        output_dir: root of the exports.
        name: the model's directory name under `output_dir`.
        config: ExportConfig (mixing, training, projection options).
        archive: also write `<output_dir>/<name>-<version>.tar.gz`.
        overwrite: replace an existing version (and archive).
        progress: where to report the slow steps; None for silence.
        warmup_sentences: sentences for TF Serving's warm-up requests; None for a few
            built-in ones.
        write_warmup: write `assets.extra/tf_serving_warmup_requests` at all.
        vocab_path: a vocabulary file whose words' token representations are
            precomputed into the module (the token cache); None for none.

    Returns:
        ExportResult.

    Raises:
        HubExportError (OptionsError, WeightsError among them): naming the file, flag
            or value that is wrong.
    """
    if (options_path is None) != (weights_path is None):
        raise HubExportError("--options and --weights go together: give both, or neither "
                             "for the built-in default model")
    output_dir = Path(output_dir)
    target, archive_path = _check_target(output_dir, name, version, overwrite, archive)
    vocab_words = Vocabulary(vocab_path).distinct_words() if vocab_path is not None else None
    progress = progress or Progress(0, stream=None)

    weights_hash = None
    with progress.step("reading options and weights into the biLM"):
        kwargs = {"trainable": config.trainable == "all", "compute_dtype": config.compute_dtype}
        if options_path is None:
            options, arrays, weights_sha = default_model.default_model()
            config.validate(options.lstm.n_layers)
            source = {"model": default_model.NAME, "options": None, "weights": None,
                      "weights_sha256": weights_sha, "untrained": False,
                      "recipe": default_model.recipe()}
            bilm = BiLM(options, arrays, **kwargs)
            del arrays
        else:
            options = load_options(options_path)
            config.validate(options.lstm.n_layers)
            # The manifest's hash reads the weight file a second time: let it run beside
            # the build and the tracing (file reads and hashlib release the GIL).
            hashing = concurrent.futures.ThreadPoolExecutor(max_workers=1)
            weights_hash = hashing.submit(sha256_file, weights_path)
            hashing.shutdown(wait=False)
            # Each dataset becomes its variable as it is read, so the export never holds
            # a second copy of the weights (peak memory ~ one model, not two).
            with WeightReader(weights_path, options) as reader:
                bilm = BiLM(options, reader, **kwargs)
            source = {"model": str(weights_path), "options": str(options_path),
                      "weights": str(weights_path), "weights_sha256": None,
                      "untrained": False}

    scratch = tempfile.TemporaryDirectory(prefix="hub_export-")
    token_cache = None
    if vocab_words is not None:
        with progress.step(f"precomputing the token cache ({len(vocab_words)} words)"):
            token_cache = TokenCache(bilm, vocab_words, Path(scratch.name) / "vocab.txt")
            source["token_cache"] = {"vocab": str(vocab_path), "size": token_cache.size,
                                     "vocab_sha256": token_cache.sha256}

    with progress.step("tracing the signatures"):
        module = ElmoModule(bilm, config, token_cache=token_cache)
        root, fns = build_saveable(module)

    if weights_hash is not None:
        try:
            source["weights_sha256"] = weights_hash.result()
        except OSError as e:  # the file went away or became unreadable since it was read
            raise HubExportError(f"--weights: cannot read {weights_path} to hash it: {e}") from None
    manifest = module_card.manifest(name, version, options, config, source, module)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(parent, version)
    tmp = parent / f"{_TMP_PREFIX}{version}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with progress.step(f"saving to {target}"):
            tf.saved_model.save(root, str(tmp), signatures=fns, options=SAVE_OPTIONS)
            # Operation names for clients that use no signature (Spark NLP).
            spark_nlp.add_graph_names(tmp)
            extra = tmp / "assets.extra"
            extra.mkdir(exist_ok=True)
            (extra / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            (extra / "README.md").write_text(module_card.render(manifest))
            if write_warmup:
                # TF Serving replays these right after loading, so the first real request
                # does not pay for graph optimisation and memory allocation.
                warmup.write_warmup_file(extra / WARMUP_FILE,
                                         warmup_sentences or warmup.DEFAULT_SENTENCES,
                                         model_name=name)
            if target.exists():  # only reachable with overwrite=True
                old = parent / f"{_TMP_PREFIX}{version}-old-{os.getpid()}"
                os.rename(target, old)
                os.rename(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        scratch.cleanup()

    if archive:
        with progress.step(f"archiving to {archive_path}"):
            write_archive(target, archive_path)
    return ExportResult(path=target, archive=archive_path if archive else None, manifest=manifest)

