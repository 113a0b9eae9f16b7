"""Export a biLM as a versioned TF-Hub-style SavedModel: `<output_dir>/<name>/<version>/`.

The library behind `python -m hub_export`. An export is atomic (see `atomic`): it is
written in a staging directory beside the target (`.tmp-<version>-*`, with the archive)
and renamed into place at the end, so an interrupted or failed export leaves no
`<version>` directory, and an existing version is only replaced with `overwrite=True`,
even by exports of the same version running at the same time.

Layout of a version directory:
    saved_model.pb, variables/        the SavedModel (signatures: see `signatures/`)
    assets.extra/README.md           the module card
    assets.extra/manifest.json       the same facts, machine-readable
    assets.extra/tf_serving_warmup_requests   PredictRequests TF Serving replays at load
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import re
import tarfile
import tempfile
from pathlib import Path

import tensorflow as tf

from hub_export import atomic
from hub_export.errors import HubExportError, OutputExistsError
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
_TMP_PREFIX = ".tmp-"  # + version + "-": the staging directory of an export (see `atomic`)
_SAVED = "export"  # the SavedModel's directory inside it
# How to recover, said after an OS failure.
_AGAIN = " (nothing of the export was kept; free space or fix the folder, and run the command again)"
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
    if output_dir.exists() and not output_dir.is_dir():
        raise HubExportError(f"--output-dir: {output_dir} exists and is not a directory")
    target = output_dir / name / str(version)
    archive_path = output_dir / f"{name}-{version}.tar.gz"
    # What a killed export of this version left is dealt with first: it may have been
    # publishing (then its missing part is put in place), otherwise it is removed.
    atomic.recover(target.parent, _staging_prefix(version), _finish_publishing(target, archive_path))
    if not overwrite:
        # An early refusal, before minutes of building; the refusal that holds against a
        # concurrent export of the same version is the rename at the end (`_publish`).
        for existing in (target, archive_path if archive else None):
            if existing is not None and existing.exists():
                raise OutputExistsError(_exists_message(existing))
    # Fail now, not after the build, where nothing can be written (read-only, no
    # permission, no inodes left).
    with atomic.reported(target, "write the export", _AGAIN):
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic.Staging(target.parent, _staging_prefix(version)).close()
    return target, archive_path


def _exists_message(path: Path) -> str:
    return atomic.exists_message(path, None, ", or choose another --version")


def _staging_prefix(version: int) -> str:
    return f"{_TMP_PREFIX}{version}-"


def _publish(staged: Path, target: Path, archive_path: Path | None, overwrite: bool) -> None:
    """Puts the version directory (then its archive) in place; call under
    `atomic.publishing(target.parent)`. The version decides: of several exports of one
    version without `overwrite`, the first to rename its own in wins and the others get
    OutputExistsError; an archive that is refused takes its version back out."""
    aside = Path(tempfile.mkdtemp(prefix="old-", dir=staged))
    atomic.publish_dir(staged / _SAVED, target, overwrite, aside, lambda: _exists_message(target))
    if archive_path is None or not (staged / archive_path.name).is_file():
        return
    try:
        atomic.publish_file(staged / archive_path.name, archive_path, overwrite)
    except OutputExistsError:
        os.rename(target, staged / _SAVED)
        raise OutputExistsError(_exists_message(archive_path)) from None


def _finish_publishing(target: Path, archive_path: Path):
    """For `atomic.recover`: publishes what an export killed while publishing left (its
    staging directory is marked ready: the version and the archive are complete)."""
    def finish(staged: Path) -> None:
        if not (staged / atomic.READY).exists():
            return  # killed before its result was complete: removed
        with atomic.publishing(target.parent):
            try:
                _publish(staged, target, archive_path, atomic.ready_to_overwrite(staged))
            except OutputExistsError:
                return  # another export has this version now: the killed one's is dropped
            except FileNotFoundError:  # the version was in place already: only the archive
                archive = staged / archive_path.name
                if archive.is_file():
                    with contextlib.suppress(OutputExistsError):
                        atomic.publish_file(archive, archive_path,
                                            atomic.ready_to_overwrite(staged))
        logging.getLogger(__name__).info(f"{target}: finished publishing what a killed "
                                         "export had completed")
    return finish


def write_archive(version_dir: Path, archive_path: Path) -> None:
    """TF Hub's compressed format: the SavedModel's files at the archive root."""
    with tarfile.open(archive_path, "w:gz") as tar:
        for path in sorted(version_dir.rglob("*")):
            if path.is_symlink():
                raise HubExportError(f"{path}: refusing to archive a symbolic link")
            # Relative names only: no absolute paths, no "..", nothing outside the module.
            tar.add(path, arcname=path.relative_to(version_dir).as_posix(), recursive=False)


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
            or value that is wrong. OutputExistsError: the version (or archive) exists
            and `overwrite` is False. WriteError: the OS refused to write it (full disk,
            read-only, no permission); nothing of the export is left.
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
    with atomic.reported(target, "write the export", _AGAIN):
        atomic.recover(parent, _staging_prefix(version), _finish_publishing(target, archive_path))
        stage = atomic.Staging(parent, _staging_prefix(version))
    tmp = stage.path / _SAVED
    try:
        with progress.step(f"saving to {target}"), atomic.reported(target, "write the export",
                                                                   _AGAIN):
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
        if archive:
            # Written before the version is published, so that a full disk here leaves
            # no version either, and a plain re-run does the whole job.
            with progress.step(f"archiving to {archive_path}"), atomic.reported(
                    archive_path, "write the archive", _AGAIN):
                write_archive(tmp, stage.path / archive_path.name)
        with atomic.reported(target, "write the export", _AGAIN):
            if archive:
                stage.mark_ready(overwrite)  # two outputs: a kill between them is finished later
            else:
                atomic.fsync_tree(tmp)
            with atomic.publishing(parent):
                _publish(stage.path, target, archive_path if archive else None, overwrite)
    finally:
        stage.close()
        scratch.cleanup()
    return ExportResult(path=target, archive=archive_path if archive else None, manifest=manifest)

