"""Faults, not bad input: several writers of one output at once, a full or read-only disk,
and kill -9 at chosen moments, for every command that writes.

What each test shows: exactly one of several concurrent writers of an output wins and the
others exit 2 with "already exists"; a full disk (a small tmpfs mounted here), a read-only
one, a directory the user may not write, or a file-size limit stop a command with one
line naming the path and the OS's reason, exit status 2, no traceback and nothing
half-written; and after a fault, or a SIGKILL at several moments, the documented
recovery finishes the job with the numbers of an uninterrupted run.

The commands run in processes forked from one that imported TensorFlow once
(`forked_cli`), so that racing, killing and re-running them is cheap. Mounting needs
root (CI runs as root); without it the tmpfs tests skip and say so, and the file-size
limit test still runs.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import SMALL_OPTIONS, write_model
from forked_cli import FillAt, KillAt, Run, kill_when

NOBODY = 65534


# --------------------------------------------------------------------------- fixtures


class Tmpfs:
    """A tmpfs mounted at `path` for one test: a real file system that fills up."""

    def __init__(self, path: Path, options: str):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}); "
                        "the full-disk tests need root, as in CI")
        os.chmod(path, 0o755)

    def remount(self, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], check=True)

    def fill(self, leave: int = 0) -> Path:
        """Fills the file system up to `leave` free bytes; returns the filler file."""
        filler = self.path / f"filler-{uuid.uuid4().hex}"
        with open(filler, "wb") as f:
            try:
                while True:
                    free = os.statvfs(self.path).f_bavail * os.statvfs(self.path).f_frsize
                    if free <= leave:
                        break
                    f.write(b"\0" * min(1 << 20, free - leave))
                    f.flush()
            except OSError:
                pass
        return filler

    def unmount(self) -> None:
        if subprocess.run(["umount", str(self.path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], check=True)


@pytest.fixture
def tmpfs():
    """Mounts tmpfs file systems (`tmpfs("size=1m")`), unmounted and removed after. They
    live in a fresh folder of /tmp that every user may enter (pytest's own are private),
    so that a command run as another user meets the folder's permissions, not those of
    the path to it."""
    root = Path(tempfile.mkdtemp(prefix="hub_export-faults-"))
    os.chmod(root, 0o755)
    mounts = []

    def mount(options: str) -> Tmpfs:
        fs = Tmpfs(root / f"fs{len(mounts)}", options)
        mounts.append(fs)
        return fs

    try:
        yield mount
    finally:
        for fs in reversed(mounts):
            fs.unmount()
        shutil.rmtree(root)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Three small models with different weights: racers export different results."""
    root = tmp_path_factory.mktemp("models")
    return [write_model(root / f"m{seed}", copy.deepcopy(SMALL_OPTIONS), seed=seed)
            for seed in range(3)]


def cli(tmp_path: Path, *argv, **kwargs) -> Run:
    return Run(list(argv), cwd=tmp_path, logs=tmp_path / "logs", **kwargs)


def export_args(model, out: Path, version: int, *extra) -> list:
    options, weights = model
    return ["--quiet", "--version", version, "--options", options, "--weights", weights,
            "--output-dir", out, *extra]


# TensorFlow's own C++ log lines at start-up ("E0000 00:00:... cuda_platform.cc:52] ...")
# are not hub_export's messages.
_TF_LOG = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl)")


def assert_one_error_line(stderr: str, pattern: str) -> None:
    """A clean failure: one line, `error: ...` matching `pattern`, and no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip() and not _TF_LOG.match(line)]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert re.fullmatch(pattern, lines[0]), lines[0]


def manifest_of(version_dir: Path) -> dict:
    return json.loads((version_dir / "assets.extra" / "manifest.json").read_text())


def archived_manifest(archive: Path) -> dict:
    with tarfile.open(archive) as tar:
        return json.loads(tar.extractfile("assets.extra/manifest.json").read())


def char_embed_of(version_dir: Path, rows: int, dim: int) -> np.ndarray:
    """The saved module's character embedding (the one [rows + 1, dim] variable; row 0 is
    padding), read back through TensorFlow's checkpoint reader."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(version_dir / "variables" / "variables"))
    names = [n for n, shape in reader.get_variable_to_shape_map().items()
             if shape == [rows + 1, dim]]
    assert len(names) == 1, names
    return reader.get_tensor(names[0])


def assert_export_of(version_dir: Path, model) -> None:
    """The version directory is a complete export of `model`'s weights."""
    assert manifest_of(version_dir)["source"]["weights"] == str(model[1])
    with h5py.File(model[1], "r") as f:
        expected = f["char_embed"][()]
    np.testing.assert_array_equal(char_embed_of(version_dir, *expected.shape)[1:], expected)


def leftovers(folder: Path) -> list[str]:
    """Hidden entries (staging directories, temporary files) left in a folder."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------- export


def test_racing_exports_of_one_version_one_wins(models, tmp_path):
    """Three exports of version 1 (different weights, with archives) at once: one wins;
    the others exit 2 naming the version; the version and the archive are the winner's."""
    out = tmp_path / "exported"
    runs = [cli(tmp_path, *export_args(m, out, 1, "--archive")) for m in models]
    results = [r.wait() for r in runs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2, 2], results
    winner = next(i for i, (code, _, _) in enumerate(results) if code == 0)
    for code, _, stderr in results:
        if code == 2:
            assert_one_error_line(stderr, rf"error: {re.escape(str(out / 'elmo' / '1'))} already "
                                          r"exists; pass --overwrite to replace it, or choose "
                                          r"another --version")
    version = out / "elmo" / "1"
    assert_export_of(version, models[winner])
    assert archived_manifest(out / "elmo-1.tar.gz") == manifest_of(version)
    assert leftovers(out / "elmo") == [] and leftovers(out) == []


def test_racing_overwrites_leave_one_complete_export(models, tmp_path):
    """Two --overwrite exports of an existing version at once: both succeed, and the
    version and its archive are one of them, whole: nothing of the old version, nothing
    of the other racer."""
    out = tmp_path / "exported"
    old = out / "elmo" / "1"
    old.mkdir(parents=True)
    (old / "saved_model.pb").write_bytes(b"an old version")
    (old / "only-in-the-old-version").write_text("x")
    (out / "elmo-1.tar.gz").write_bytes(b"an old archive")
    runs = [cli(tmp_path, *export_args(m, out, 1, "--archive", "--overwrite")) for m in models[:2]]
    results = [r.wait() for r in runs]
    assert [code for code, _, _ in results] == [0, 0], results
    weights = manifest_of(old)["source"]["weights"]
    winner = next(m for m in models[:2] if str(m[1]) == weights)
    assert_export_of(old, winner)
    assert not (old / "only-in-the-old-version").exists()
    assert archived_manifest(out / "elmo-1.tar.gz") == manifest_of(old)
    assert leftovers(out / "elmo") == [] and leftovers(out) == []


def staging_dirs(out: Path, version: int) -> list[Path]:
    return sorted((out / "elmo").glob(f".tmp-{version}-*"))


def test_export_killed_at_several_moments_then_rerun(models, tmp_path):
    """SIGKILL while the SavedModel is written, after it (writing the module card), and in
    the middle of the archive: no version, no archive; each next run clears what the
    killed one left, and the last one completes the export of the right weights."""
    out = tmp_path / "exported"
    args = export_args(models[0], out, 1, "--archive")
    moments = [
        ("saving the SavedModel", None,
         lambda: any((s / "export" / "variables").exists() for s in staging_dirs(out, 1))),
        ("writing the module card", KillAt("open", "manifest.json"), None),
        ("writing the archive", KillAt("open", "manifest.json", nth=2), None),
    ]
    for what, kill_at, condition in moments:
        run = cli(tmp_path, *args, at=kill_at)
        if condition is not None:
            assert kill_when(run, condition), f"the export ended before {what}"
        code, _, stderr = run.wait()
        assert code == -9, (what, stderr)
        assert not (out / "elmo" / "1").exists() and not (out / "elmo-1.tar.gz").exists(), what
        assert len(staging_dirs(out, 1)) == 1, (what, leftovers(out / "elmo"))
    code, stdout, stderr = cli(tmp_path, *args).wait()
    assert code == 0, stderr
    assert_export_of(out / "elmo" / "1", models[0])
    assert archived_manifest(out / "elmo-1.tar.gz") == manifest_of(out / "elmo" / "1")
    assert leftovers(out / "elmo") == [] and leftovers(out) == []


@pytest.mark.parametrize("moment", [KillAt("os.rename", "exported/elmo/1"),
                                    KillAt("os.link", "exported/elmo-1.tar.gz")],
                         ids=["before-the-version-is-renamed-in", "between-version-and-archive"])
def test_export_killed_while_publishing_is_finished_by_the_next_run(models, tmp_path, moment):
    """SIGKILL when the version and its archive are complete and being put in place: the
    next export of that version puts in place what is missing (the version stays whole,
    the archive is its own) and then, the version existing, refuses with exit 2."""
    out = tmp_path / "exported"
    code, _, stderr = cli(tmp_path, *export_args(models[0], out, 1, "--archive"),
                          at=moment).wait()
    assert code == -9, stderr
    assert not (out / "elmo-1.tar.gz").exists()
    again = cli(tmp_path, *export_args(models[1], out, 1, "--archive")).wait()
    assert again[0] == 2, again
    assert "finished publishing what a killed export had completed" in again[2]
    assert "already exists" in again[2]
    assert_export_of(out / "elmo" / "1", models[0])
    assert archived_manifest(out / "elmo-1.tar.gz") == manifest_of(out / "elmo" / "1")
    assert leftovers(out / "elmo") == [] and leftovers(out) == []


def export_failure(out: Path, reason: str) -> str:
    return (rf"error: {re.escape(str(out / 'elmo' / '1'))}: cannot write the export: {reason} "
            r"\(nothing of the export was kept; .*\)")


def test_export_onto_a_full_disk_then_after_freeing_space(models, tmp_path, tmpfs):
    """The issue's case: TensorFlow's saver hits a full disk. One line, exit 2, nothing
    left on the disk; once there is room a plain re-run exports the same weights."""
    fs = tmpfs("size=256k")
    out = fs.path / "exported"
    code, _, stderr = cli(tmp_path, *export_args(models[0], out, 1, "--archive")).wait()
    assert code == 2
    assert_one_error_line(stderr, export_failure(out, "No space left on device"))
    assert sorted(p.name for p in (out / "elmo").iterdir()) == [] and os.listdir(out) == ["elmo"]
    fs.remount("size=4m")
    code, _, stderr = cli(tmp_path, *export_args(models[0], out, 1, "--archive")).wait()
    assert code == 0, stderr
    assert_export_of(out / "elmo" / "1", models[0])
    assert archived_manifest(out / "elmo-1.tar.gz") == manifest_of(out / "elmo" / "1")


@pytest.mark.parametrize("where", ["warm-up file", "archive"])
def test_export_disk_full_at_the_warmup_file_or_the_archive(models, tmp_path, tmpfs, where):
    """The disk fills up just before the warm-up file (TensorFlow's record writer) or while
    the archive is written (tarfile): the same one line, and neither a version nor an
    archive nor a staging directory is left."""
    fs = tmpfs("size=4m,nr_inodes=400")
    out = fs.path / "exported"
    fill = (FillAt("open", "README.md", str(fs.path), inodes=True) if where == "warm-up file"
            else FillAt("open", "elmo-1.tar.gz", str(fs.path)))
    code, _, stderr = cli(tmp_path, *export_args(models[0], out, 1, "--archive"), at=fill).wait()
    assert code == 2
    path = out / "elmo" / "1" if where == "warm-up file" else out / "elmo-1.tar.gz"
    what = "export" if where == "warm-up file" else "archive"
    assert_one_error_line(stderr, rf"error: {re.escape(str(path))}: cannot write the {what}: "
                                  r"No space left on device \(nothing of the export was kept; .*\)")
    assert os.listdir(out / "elmo") == [] and os.listdir(out) == ["elmo"]


@pytest.mark.parametrize("fault", ["read-only", "not permitted"])
def test_export_into_a_folder_it_cannot_write(models, tmp_path, tmpfs, fault):
    """A read-only file system, or a folder the user may not write: refused at once,
    before the build, with the OS's reason."""
    fs = tmpfs("size=1m")
    out = fs.path / "exported"
    out.mkdir()
    if fault == "read-only":
        fs.remount("ro")
    run = cli(tmp_path, *export_args(models[0], out, 1),
              user=NOBODY if fault == "not permitted" else None)
    code, _, stderr = run.wait()
    assert code == 2
    reason = "Read-only file system" if fault == "read-only" else "Permission denied"
    assert_one_error_line(stderr, export_failure(out, reason))
    assert os.listdir(out) == []


# --------------------------------------------------------------------------- embed


def write_corpus(path: Path, n_lines: int = 600, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(list("abcdefghij"), rng.integers(1, 9))) for _ in range(300)]
    path.write_text("".join(" ".join(rng.choice(words, rng.integers(0, 30))) + "\n"
                            for _ in range(n_lines)))
    return path


@pytest.fixture(scope="module")
def embed_job(small_export, tmp_path_factory):
    """(module, corpus, flags, the output of an uninterrupted run) for the embed tests."""
    from hub_export.embed import embed

    root = tmp_path_factory.mktemp("embed")
    corpus = write_corpus(root / "corpus.txt")
    module = small_export[0].path
    whole = embed(module, corpus, root / "whole.hdf5", batch_size=16, window=50)
    return module, corpus, whole.path


def embed_args(job, output: Path, *extra) -> list:
    module, corpus, _ = job
    return ["embed", "--quiet", "--module", module, "--input", corpus, "--output", output,
            "--batch-size", "16", "--window", "50", *extra]


def assert_same_embeddings(a: Path, b: Path) -> None:
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert sorted(fa) == sorted(fb)
        for name in fa:
            np.testing.assert_allclose(fa[name][()], fb[name][()], rtol=0, atol=1e-6, err_msg=name)


def test_racing_embeds_of_one_output_one_wins(embed_job, tmp_path):
    output = tmp_path / "out.hdf5"
    runs = [cli(tmp_path, *embed_args(embed_job, output)) for _ in range(3)]
    results = [r.wait() for r in runs]
    assert sorted(code for code, _, _ in results) == [0, 2, 2], results
    for code, _, stderr in results:
        if code == 2:
            assert_one_error_line(stderr, rf"error: .*{re.escape(str(output))}.* already .*")
    assert_same_embeddings(output, embed_job[2])
    assert sorted(os.listdir(tmp_path)) == ["logs", "out.hdf5"]


@pytest.mark.parametrize("runner", ["local", "beam"])
def test_embed_on_a_full_disk_then_resume(embed_job, tmp_path, tmpfs, runner):
    """The disk fills up during the run: one line saying that what was embedded is kept
    and how to go on; no output; after freeing space --resume finishes with the values of
    an uninterrupted run."""
    fs = tmpfs("size=400k")
    output = fs.path / "out.hdf5"
    beam = ["--runner", "DirectRunner"] if runner == "beam" else []
    code, _, stderr = cli(tmp_path, *embed_args(embed_job, output, *beam)).wait()
    assert code == 2
    parts = re.escape(str(fs.path / "out.hdf5.parts"))
    assert_one_error_line(stderr, rf"error: --output: cannot write in {parts}: No space left on "
                                  r"device; what was embedded is kept there: free space \(or fix "
                                  r"the folder\) and run again with --resume")
    assert not output.exists()
    fs.remount("size=8m")
    code, _, stderr = cli(tmp_path, *embed_args(embed_job, output, *beam, "--resume")).wait()
    assert code == 0, stderr
    assert_same_embeddings(output, embed_job[2])
    assert os.listdir(fs.path) == ["out.hdf5"]


EMBED_MOMENTS = {
    # Some windows are saved, the rest not.
    "embedding": None,
    # The output is complete in the parts directory, not yet linked into place.
    "publishing": KillAt("os.link", "output.complete"),
    # The output is in place; the parts directory is not yet removed.
    "cleaning up": KillAt("os.remove", "run.json"),
}


def test_embed_killed_at_several_moments_then_resume(embed_job, tmp_path):
    """SIGKILL at three moments: never an output that is not whole (at the end it is the
    complete file), and `embed --resume` finishes each with the uninterrupted values."""
    from hub_export.embed_store import journaled_lines

    runs = {}
    for k, (moment, at) in enumerate(EMBED_MOMENTS.items()):
        output = tmp_path / f"out{k}.hdf5"
        runs[moment] = (output, cli(tmp_path, *embed_args(embed_job, output), at=at))
    output, run = runs["embedding"]
    assert kill_when(run, lambda: journaled_lines(Path(f"{output}.parts")) >= 100)
    for moment, (output, run) in runs.items():
        code, _, stderr = run.wait()
        assert code == -9, (moment, stderr)
        if moment == "cleaning up":
            assert_same_embeddings(output, embed_job[2])
        else:
            assert not output.exists(), moment
    resumed = [cli(tmp_path, *embed_args(embed_job, output, "--resume"))
               for output, _ in runs.values()]
    for moment, (output, _), run in zip(runs, runs.values(), resumed):
        code, _, stderr = run.wait()
        assert code == 0, (moment, stderr)
        assert_same_embeddings(output, embed_job[2])
        assert not Path(f"{output}.parts").exists(), moment
