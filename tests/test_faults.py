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
import sys
import tarfile
import tempfile
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest

from hub_export.errors import WriteError

from forked_cli import FillAt, KillAt, KillAtCall, Run, kill_all, kill_when
from helpers import SMALL_OPTIONS, write_model

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
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    free = os.statvfs(self.path).f_bavail * os.statvfs(self.path).f_frsize
                    if free <= leave:
                        break
                    f.write(b"\0" * min(1 << 20, free - leave))
            except OSError:
                pass
        return filler

    def unmount(self) -> None:
        if subprocess.run(["umount", str(self.path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], check=True)


@pytest.fixture(autouse=True)
def no_command_outlives_its_test():
    yield
    kill_all()


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
        kill_all()  # a test that failed midway may have left a command writing there
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


# TensorFlow's and Beam's own log lines ("E0000 00:00:... cuda_platform.cc:52] ...") are
# not hub_export's messages; nor are its notes on the input ("note: ...").
_TF_LOG = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl|note: )")


def assert_one_error_line(stderr: str, pattern: str) -> None:
    """A clean failure: one line, `error: ...` matching `pattern`, and no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip() and not _TF_LOG.match(line)]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert re.fullmatch(pattern, lines[0]), lines[0]


def assert_one_winner(results: list, pattern: str) -> int:
    """Of runs racing on one target, exactly one exited 0 and every other exited 2 with
    one error line matching `pattern`; returns the winner's index."""
    assert sorted(code for code, _, _ in results) == [0] + [2] * (len(results) - 1), results
    for code, _, stderr in results:
        if code == 2:
            assert_one_error_line(stderr, pattern)
    return next(i for i, (code, _, _) in enumerate(results) if code == 0)


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


# --------------------------------------------------------------------------- messages


def test_the_os_reason_is_found_in_every_kind_of_error():
    """What a quota (EDQUOT) gives, through each library: no tmpfs quota can be mounted
    here, so the message is checked on the errors as each library raises them."""
    import tensorflow as tf

    from hub_export.atomic import failure_message, os_reason

    quota = "Disk quota exceeded"
    assert os_reason(OSError(122, quota, "/x/w.hdf5")) == quota
    assert failure_message(OSError(122, quota, "/x/w.hdf5")) == f"/x/w.hdf5: {quota}"
    h5 = RuntimeError("Can't decrement id ref count (file write failed: time = Tue Dec  1\n, "
                      "filename = '/x/t.hdf5', file descriptor = 3, errno = 122, error message "
                      f"= '{quota}', buf = 0x1)")
    assert failure_message(h5) == f"/x/t.hdf5: {quota}"
    saver = tf.errors.ResourceExhaustedError(
        None, None, "{{function_node __wrapped__SaveV2_dtypes_2_device_/job:localhost}} "
        f"/x/variables/variables_temp/part-00000-of-00001.data; {quota} [Op:SaveV2]")
    assert failure_message(saver) == f"/x/variables/variables_temp/part-00000-of-00001.data: {quota}"
    assert os_reason(ValueError(quota)) is None
    assert os_reason(tf.errors.InvalidArgumentError(None, None, "shapes differ")) is None


# --------------------------------------------------------------------------- export


def test_racing_exports_of_one_version_one_wins(models, tmp_path):
    """Three exports of version 1 (different weights, with archives) at once: one wins;
    the others exit 2 naming the version; the version and the archive are the winner's."""
    out = tmp_path / "exported"
    runs = [cli(tmp_path, *export_args(m, out, 1, "--archive")) for m in models]
    winner = assert_one_winner([r.wait() for r in runs],
                               rf"error: {re.escape(str(out / 'elmo' / '1'))} already exists; "
                               r"pass --overwrite to replace it, or choose another --version")
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


def export_failure(path: Path, what: str, reason: str) -> str:
    return (rf"error: {re.escape(str(path))}: cannot write the {what}: {reason} "
            r"\(nothing of the export was kept; .*\)")


def test_export_faulted_at_every_stage_then_rerun(models, tmp_path, tmpfs):
    """One export of version 1 with its archive, run again and again, each time stopped at
    a later stage: by a full disk at TensorFlow's saver (the issue's traceback), SIGKILL
    while the SavedModel is saved, a disk full of inodes at the warm-up file, SIGKILL in
    the middle of the archive, a full disk in the archive, SIGKILL between the version's
    rename and the archive's link. A failure is one line, exit 2; after each, neither a
    version nor an archive is in place (but after the last kill, a whole version); each
    run clears what the one before left; the last run completes the archive, and both are
    an export of the right weights."""
    fs = tmpfs("size=256k,nr_inodes=400")
    out = fs.path / "exported"
    version, archive = out / "elmo" / "1", out / "elmo-1.tar.gz"
    args = export_args(models[0], out, 1, "--archive")

    def nothing_in_place(what: str) -> None:
        assert not version.exists() and not archive.exists(), (what, leftovers(out / "elmo"))

    def fails(what: str, pattern: str, at=None) -> None:
        code, _, stderr = cli(tmp_path, *args, at=at).wait()
        assert code == 2, (what, stderr)
        assert_one_error_line(stderr, pattern)
        nothing_in_place(what)
        assert leftovers(out / "elmo") == [] and leftovers(out) == [], what
        for filler in fs.path.glob(".filler*"):
            filler.unlink()

    def killed(what: str, at=None, condition=None) -> None:
        run = cli(tmp_path, *args, at=at)
        if condition is not None:
            assert kill_when(run, condition), f"the export ended before {what}"
        code, _, stderr = run.wait()
        assert code == -9, (what, stderr)

    fails("saving", export_failure(version, "export", "No space left on device"))
    fs.remount("size=8m")
    killed("saving", condition=lambda: any((s / "export" / "variables").exists()
                                           for s in staging_dirs(out, 1)))
    nothing_in_place("saving")
    assert len(staging_dirs(out, 1)) == 1
    fails("the warm-up file", export_failure(version, "export", "No space left on device"),
          at=FillAt("open", "README.md", str(fs.path), inodes=True))
    killed("archiving", at=KillAt("open", "manifest.json", nth=2))
    nothing_in_place("archiving")
    fails("the archive", export_failure(archive, "archive", "No space left on device"),
          at=FillAt("open", "elmo-1.tar.gz", str(fs.path)))
    killed("publishing", at=KillAt("os.link", "exported/elmo-1.tar.gz"))
    assert version.is_dir() and not archive.exists()
    code, _, stderr = cli(tmp_path, *args).wait()
    assert code == 2 and "finished publishing what a killed export had completed" in stderr
    assert re.search(rf"error: {re.escape(str(version))} already exists", stderr), stderr
    assert_export_of(version, models[0])
    assert archived_manifest(archive) == manifest_of(version)
    assert leftovers(out / "elmo") == [] and leftovers(out) == []


def test_export_killed_before_publishing_is_finished_by_the_next_run(models, tmp_path):
    """SIGKILL when the version and its archive are complete, just before the version is
    renamed in: the next export of that version (other weights) puts the killed one's in
    place, whole, with its own archive, and then, the version existing, refuses."""
    out = tmp_path / "exported"
    code, _, stderr = cli(tmp_path, *export_args(models[0], out, 1, "--archive"),
                          at=KillAt("os.rename", "exported/elmo/1")).wait()
    assert code == -9, stderr
    assert not (out / "elmo" / "1").exists() and not (out / "elmo-1.tar.gz").exists()
    again = cli(tmp_path, *export_args(models[1], out, 1, "--archive")).wait()
    assert again[0] == 2, again
    assert "finished publishing what a killed export had completed" in again[2]
    assert "already exists" in again[2]
    assert_export_of(out / "elmo" / "1", models[0])
    assert archived_manifest(out / "elmo-1.tar.gz") == manifest_of(out / "elmo" / "1")
    assert leftovers(out / "elmo") == [] and leftovers(out) == []


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
    assert_one_error_line(stderr, export_failure(out / "elmo" / "1", "export", reason))
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
    from hub_export.corpus.embed import embed

    root = tmp_path_factory.mktemp("embed")
    corpus = write_corpus(root / "corpus.txt")
    module = small_export[0].path
    whole = embed(module, corpus, root / "whole.hdf5", batch_size=16, window=50)
    return module, corpus, whole.path


def embed_args(job, output: Path, *extra) -> list:
    module, corpus, _ = job
    return ["embed", "--quiet", "--module", module, "--input", corpus, "--output", output,
            "--batch-size", "16", "--window", "50", *extra]


def datasets(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def assert_same_embeddings(a: Path, b: Path) -> None:
    """Every dataset of two hdf5 files, value for value within 1e-6."""
    da, db = datasets(a), datasets(b)
    assert sorted(da) == sorted(db)
    for name in da:
        np.testing.assert_allclose(da[name], db[name], rtol=0, atol=1e-6, err_msg=name)


def test_racing_embeds_of_one_output_one_wins(embed_job, tmp_path):
    output = tmp_path / "out.hdf5"
    runs = [cli(tmp_path, *embed_args(embed_job, output)) for _ in range(3)]
    assert_one_winner([r.wait() for r in runs], rf"error: .*{re.escape(str(output))}.* already .*")
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
    # The Beam run's parts are merged by a local --resume as well (the same as the Beam
    # command with --resume, without starting a pipeline).
    code, _, stderr = cli(tmp_path, *embed_args(embed_job, output, "--resume")).wait()
    assert code == 0, stderr
    assert_same_embeddings(output, embed_job[2])
    assert os.listdir(fs.path) == ["out.hdf5"]


EMBED_MOMENTS = {
    # Some windows are saved, the rest not.
    "embedding": None,
    # The output is complete in the parts directory, not yet linked into place.
    "publishing": KillAt("os.link", "output.complete"),
    # The output is in place; the parts directory is not yet removed.
    "cleaning up": KillAt("os.remove", "parts/run.json"),
}


def test_embed_killed_at_several_moments_then_resume(embed_job, tmp_path):
    """SIGKILL at three moments: never an output that is not whole (at the end it is the
    complete file), and `embed --resume` finishes each with the uninterrupted values."""
    from hub_export.corpus.store import journaled_lines

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


# --------------------------------------------------------------------------- train


@pytest.fixture(scope="module")
def train_corpus(tmp_path_factory):
    from test_trainer import write_corpus as write_training_corpus

    return write_training_corpus(tmp_path_factory.mktemp("train_corpus"), n_train=400, n_test=50)


def train_args(corpus: dict, save_dir: Path, *extra) -> list:
    return ["train", "--train-prefix", corpus["train"], "--vocab", corpus["vocab"], "--options",
            corpus["options"], "--save-dir", save_dir, "--batch-size", "8", "--unroll-steps", "5",
            "--max-steps", "15", "--checkpoint-every", "5", "--log-every", "1",
            "--n-negative-samples", "10", *extra]


def listed_checkpoints(save_dir: Path) -> list[str]:
    """The checkpoints the `checkpoint` file lists, latest last (what a reader trusts)."""
    import tensorflow as tf

    state = tf.train.get_checkpoint_state(str(save_dir))
    return [os.path.basename(p) for p in state.all_model_checkpoint_paths] if state else []


def checkpoint_files(save_dir: Path) -> list[str]:
    return sorted(p.name for p in save_dir.iterdir() if p.name.startswith("ckpt-"))


def start_step(stderr: str) -> int:
    match = re.search(r"; steps (\d+) -> 15 ", stderr)
    assert match, stderr
    return int(match.group(1))


@pytest.fixture(scope="module")
def raced_train(train_corpus, tmp_path_factory):
    """Three `train` runs started at once on one new save folder: (folder, results)."""
    root = tmp_path_factory.mktemp("trained")
    save_dir = root / "ckpt"
    runs = [cli(root, *train_args(train_corpus, save_dir)) for _ in range(3)]
    return save_dir, [r.wait() for r in runs]


@pytest.fixture(scope="module")
def trained(raced_train):
    """A save folder after 15 steps (checkpoints 5, 10, 15), by the CLI."""
    return raced_train[0]


def test_racing_trains_on_one_save_folder_one_wins(raced_train):
    save_dir, results = raced_train
    assert_one_winner(results, rf"error: --save-dir: {re.escape(str(save_dir))} "
                               r"(is already in use|already holds a checkpoint).*")
    assert listed_checkpoints(save_dir) == ["ckpt-5", "ckpt-10", "ckpt-15"]


def test_train_log_onto_a_full_disk(train_corpus, tmp_path, tmpfs):
    """train's notes and progress lines (stderr) redirected to a full disk: the run stops
    with exit status 2 (the message has nowhere to go) and leaves no partial checkpoint."""
    fs = tmpfs("size=16k")
    fs.fill()
    save_dir = tmp_path / "ckpt"
    code, _, _ = cli(tmp_path, *train_args(train_corpus, save_dir),
                     stderr=fs.path / "train.log").wait()
    assert code == 2
    listed = listed_checkpoints(save_dir) if save_dir.is_dir() else []
    assert (checkpoint_files(save_dir) if save_dir.is_dir() else []) == sorted(f"{c}.{ext}" for c in listed
                                                for ext in ("data-00000-of-00001", "index"))


def test_train_killed_or_out_of_space_then_restart(train_corpus, tmp_path, tmpfs):
    """SIGKILL before the first checkpoint and twice between a checkpoint's files and its
    entry in the `checkpoint` file, and a disk full at the first checkpoint: that file
    always points to complete checkpoints, nothing partial is left, and the next run
    continues from the last of them."""
    fs = tmpfs("size=8m")
    save_dir = fs.path / "ckpt"
    # 1. Writing options.json, before any checkpoint.
    code, _, _ = cli(tmp_path, *train_args(train_corpus, save_dir),
                     at=KillAt("os.rename", "options.json")).wait()
    assert code == -9 and listed_checkpoints(save_dir) == []
    # 2. Room for options.json and vocab.json, not for checkpoint 0 (about 200 KB): there
    # is nothing to continue, so the message says to run the same command again.
    filler = fs.fill(leave=64 << 10)
    code, _, stderr = cli(tmp_path, *train_args(train_corpus, save_dir)).wait()
    assert code == 2
    assert_one_error_line(stderr, rf"error: --save-dir: {re.escape(str(save_dir))}: cannot write "
                                  r"checkpoint 0: No space left on device; no checkpoint was "
                                  r"written: free space and run the same command again")
    assert listed_checkpoints(save_dir) == [] and checkpoint_files(save_dir) == []
    filler.unlink()
    # 3. Checkpoint 0's files are written, the `checkpoint` file does not list them yet.
    code, _, _ = cli(tmp_path, *train_args(train_corpus, save_dir),
                     at=KillAtCall("update_checkpoint_state_internal")).wait()
    assert code == -9 and listed_checkpoints(save_dir) == []
    assert "ckpt-0.index" in checkpoint_files(save_dir)
    # 4. The same for checkpoint 5 (step 3's unlisted files were removed first).
    code, _, stderr = cli(tmp_path, *train_args(train_corpus, save_dir),
                          # Each save records the state twice: after its files, after the
                          # sweep of old ones. Call 3 is checkpoint 5's first.
                          at=KillAtCall("update_checkpoint_state_internal", nth=3)).wait()
    assert code == -9
    assert start_step(stderr) == 0
    assert listed_checkpoints(save_dir) == ["ckpt-0"] and "ckpt-5.index" in checkpoint_files(save_dir)
    # 5. --restart removes checkpoint 5's unlisted files, continues from 0 and finishes.
    code, stdout, stderr = cli(tmp_path, *train_args(train_corpus, save_dir, "--restart")).wait()
    assert code == 0, stderr
    assert start_step(stderr) == 0 and stdout.strip() == f"{save_dir}: step 15"
    assert listed_checkpoints(save_dir) == ["ckpt-5", "ckpt-10", "ckpt-15"]
    assert checkpoint_files(save_dir) == sorted(f"ckpt-{n}.{ext}" for n in (5, 10, 15)
                                                for ext in ("data-00000-of-00001", "index"))
    assert leftovers(save_dir) == []


def test_a_checkpoint_on_a_full_disk_names_the_last_complete_one(train_corpus, tmpfs):
    """Mid-run: checkpoint 5 meets a full disk after checkpoint 0 was written. The error
    says to --restart from ckpt-0, and checkpoint 5's partial files are gone."""
    from hub_export.model.options import load_options
    from hub_export.train.language_model import LanguageModel, initial_softmax, initial_weights
    from hub_export.train.trainer import TrainingRun, _save_checkpoint

    fs = tmpfs("size=4m")
    save_dir = fs.path / "ckpt"
    options = load_options(train_corpus["options"])
    model = LanguageModel(options, initial_weights(options, 0),
                          initial_softmax(30, options.lstm.projection_dim, 0))
    run = TrainingRun(model, 0.2, str(save_dir))
    _save_checkpoint(run, str(save_dir), 0)
    fs.fill()
    with pytest.raises(WriteError, match=re.escape(
            f"--save-dir: {save_dir}: cannot write checkpoint 5: No space left on device; the "
            "last complete checkpoint is ckpt-0: free space and run again with --restart")):
        _save_checkpoint(run, str(save_dir), 5)
    assert listed_checkpoints(save_dir) == ["ckpt-0"]
    assert checkpoint_files(save_dir) == ["ckpt-0.data-00000-of-00001", "ckpt-0.index"]


# --------------------------------------------------------------------------- dump-weights


@pytest.fixture(scope="module")
def dumped(trained, tmp_path_factory):
    """What an uninterrupted dump-weights of `trained` writes: (weights, options) paths."""
    from hub_export.train.trainer import dump_weights

    root = tmp_path_factory.mktemp("dumped")
    dump_weights(str(trained), str(root / "w.hdf5"), str(root / "o.json"))
    return root / "w.hdf5", root / "o.json"


def dump_args(trained: Path, folder: Path, *extra) -> list:
    return ["dump-weights", "--save-dir", trained, "--outfile", folder / "w.hdf5",
            "--options-out", folder / "o.json", *extra]


def assert_same_dump(folder: Path, dumped) -> None:
    assert_same_embeddings(folder / "w.hdf5", dumped[0])  # every dataset, to 1e-6 (here: equal)
    assert (folder / "o.json").read_text() == dumped[1].read_text()


def test_racing_dump_weights_one_wins(trained, dumped, tmp_path):
    out = tmp_path / "out"
    runs = [cli(tmp_path, *dump_args(trained, out)) for _ in range(3)]
    assert_one_winner([r.wait() for r in runs], r"error: --(outfile|options-out): .* already "
                                                r"exists; pass --overwrite to replace it")
    assert_same_dump(out, dumped)
    assert sorted(os.listdir(out)) == ["o.json", "w.hdf5"]


def test_dump_weights_on_a_full_disk_then_rerun(trained, dumped, tmp_path, tmpfs):
    fs = tmpfs("size=64k")
    out = fs.path / "out"
    code, _, stderr = cli(tmp_path, *dump_args(trained, out)).wait()
    assert code == 2
    assert_one_error_line(stderr, rf"error: {re.escape(str(out))}/(w\.hdf5|o\.json): cannot write "
                                  r"it: No space left on device \(nothing of it was kept; .*\)")
    assert os.listdir(out) == []
    fs.remount("size=2m")
    code, _, stderr = cli(tmp_path, *dump_args(trained, out)).wait()
    assert code == 0, stderr
    assert_same_dump(out, dumped)


@pytest.mark.parametrize("moment", [
    KillAtCall("create_dataset", nth=3),  # writing the weight file
    KillAt("os.link", "w.hdf5"),  # both complete, neither in place
    KillAt("os.link", "o.json"),  # the weights in place, the options not
], ids=["writing", "before-publishing", "between-the-two-files"])
def test_dump_weights_killed_then_rerun(trained, dumped, tmp_path, moment):
    """SIGKILL while writing, before the files are put in place, and between the two:
    never the options without the weights; a re-run takes back weights put in place
    alone, and writes both, equal to an uninterrupted dump."""
    out = tmp_path / "out"
    code, _, _ = cli(tmp_path, *dump_args(trained, out), at=moment).wait()
    assert code == -9
    assert not (out / "o.json").exists()
    assert (out / "w.hdf5").exists() == (getattr(moment, "text", None) == "o.json")
    code, _, stderr = cli(tmp_path, *dump_args(trained, out)).wait()
    assert code == 0, stderr
    assert_same_dump(out, dumped)
    assert sorted(os.listdir(out)) == ["o.json", "w.hdf5"]


# --------------------------------------------------------------------------- dump-token-embeddings


@pytest.fixture(scope="module")
def token_job(models, tmp_path_factory):
    """(model, vocabulary, an uninterrupted run's output)."""
    from hub_export.corpus.token_embeddings import dump_token_embeddings

    root = tmp_path_factory.mktemp("tokens")
    vocab = root / "vocab.txt"
    vocab.write_text("<S>\n</S>\n<UNK>\n" + "".join(f"w{k}\n" for k in range(3000)))
    whole = dump_token_embeddings(vocab, *models[0], root / "whole.hdf5", batch_size=256)
    return models[0], vocab, whole


def token_args(job, output: Path, *extra) -> list:
    (options, weights), vocab, _ = job
    return ["dump-token-embeddings", "--quiet", "--options", options, "--weights", weights,
            "--vocab", vocab, "--output", output, "--batch-size", "256", *extra]


def test_racing_token_dumps_one_wins(token_job, tmp_path):
    output = tmp_path / "tokens.hdf5"
    runs = [cli(tmp_path, *token_args(token_job, output)) for _ in range(3)]
    assert_one_winner([r.wait() for r in runs], rf"error: --output: {re.escape(str(output))} "
                                                r"already exists; pass --overwrite to replace it")
    assert_same_embeddings(output, token_job[2])
    assert sorted(os.listdir(tmp_path)) == ["logs", "tokens.hdf5"]


def test_token_dump_on_a_full_disk_then_rerun(token_job, tmp_path, tmpfs):
    fs = tmpfs("size=32k")
    output = fs.path / "tokens.hdf5"
    code, _, stderr = cli(tmp_path, *token_args(token_job, output)).wait()
    assert code == 2
    assert_one_error_line(stderr, rf"error: {re.escape(str(output))}: cannot write it: No space "
                                  r"left on device \(nothing of it was kept; .*\)")
    assert os.listdir(fs.path) == []
    fs.remount("size=1m")
    code, _, stderr = cli(tmp_path, *token_args(token_job, output)).wait()
    assert code == 0, stderr
    assert_same_embeddings(output, token_job[2])


@pytest.mark.parametrize("moment", [KillAtCall("token_embeddings", nth=3),
                                    KillAt("os.link", "tokens.hdf5"),
                                    # The first removal is of the check made before the work.
                                    KillAt("shutil.rmtree", ".tokens.hdf5.tmp-", nth=2)],
                         ids=["writing", "before-publishing", "after-publishing"])
def test_token_dump_killed_then_rerun(token_job, tmp_path, moment):
    """SIGKILL while the rows are written, when the file is complete but not in place, and
    once it is in place: either no output or the whole one; the re-run writes it, or
    clears what was left and finds it there."""
    output = tmp_path / "out" / "tokens.hdf5"
    code, _, _ = cli(tmp_path, *token_args(token_job, output), at=moment).wait()
    assert code == -9
    assert len(leftovers(output.parent)) == 1
    in_place = isinstance(moment, KillAt) and moment.event == "shutil.rmtree"
    assert output.exists() == in_place
    code, _, stderr = cli(tmp_path, *token_args(token_job, output)).wait()
    assert code == (2 if in_place else 0), stderr
    assert_same_embeddings(output, token_job[2])
    assert os.listdir(output.parent) == ["tokens.hdf5"]


# --------------------------------------------------------------------------- serving-config


def fake_versions(base: Path, versions=(1, 2)) -> None:
    for v in versions:
        (base / "elmo" / str(v)).mkdir(parents=True)
        (base / "elmo" / str(v) / "saved_model.pb").write_bytes(b"x")


def test_racing_serving_configs_leave_one_whole_file(tmp_path):
    """serving-config always replaces models.config (it describes the disk): four at once
    with different labels all succeed, and the file is one of them, whole."""
    base = tmp_path / "exported"
    fake_versions(base)
    runs = [cli(tmp_path, "serving-config", "--base", base, "--label", f"stable={v}")
            for v in (1, 2, 1, 2)]
    assert [r.wait()[0] for r in runs] == [0, 0, 0, 0]
    text = (base / "models.config").read_text()
    assert text.count("model_config_list") == 1 and re.search(r'key: "stable"\s+value: [12]', text)
    assert leftovers(base) == []


def test_serving_config_on_a_full_disk_keeps_the_old_file(tmp_path, tmpfs):
    """A real `python -m hub_export` (no TensorFlow to import): the old models.config stays
    as it was, and nothing else is left."""
    fs = tmpfs("size=64k")
    base = fs.path / "exported"
    fake_versions(base)
    (base / "models.config").write_text("the old config\n")
    fs.fill()
    done = subprocess.run([sys.executable, "-m", "hub_export", "serving-config", "--base", str(base)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert_one_error_line(done.stderr, rf"error: {re.escape(str(base / 'models.config'))}: cannot "
                                       r"write it: No space left on device \(.*\)")
    assert (base / "models.config").read_text() == "the old config\n"
    assert leftovers(base) == []


def test_result_line_onto_a_full_disk(tmp_path, tmpfs):
    """stdout redirected to a full disk: the command's result line cannot be written. One
    message, exit status 2 (not the interpreter's 120 for a failed final flush)."""
    base = tmp_path / "exported"
    fake_versions(base)
    fs = tmpfs("size=16k")
    fs.fill()
    with open(fs.path / "out.txt", "w") as stdout:
        done = subprocess.run([sys.executable, "-m", "hub_export", "serving-config", "--base",
                               str(base)], stdout=stdout, stderr=subprocess.PIPE, text=True,
                              timeout=120)
    assert done.returncode == 2
    assert_one_error_line(done.stderr, r"error: standard output: No space left on device")


def test_evaluate_prints_onto_a_full_disk(trained, train_corpus, tmp_path, tmpfs):
    fs = tmpfs("size=16k")
    fs.fill()
    run = cli(tmp_path, "evaluate", "--test-prefix", train_corpus["test"], "--vocab",
              train_corpus["vocab"], "--save-dir", trained, stdout=fs.path / "perplexity.txt")
    code, _, stderr = run.wait()
    assert code == 2
    assert_one_error_line(stderr, r"error: standard output: No space left on device")


def test_file_size_limit_without_mounting(token_job, tmp_path):
    """Where no file system can be mounted: a file-size limit (RLIMIT_FSIZE) makes the
    writes fail with EFBIG, and the dump reports it like a full disk."""
    output = tmp_path / "tokens.hdf5"
    code, _, stderr = cli(tmp_path, *token_args(token_job, output), file_size_limit=16 << 10).wait()
    assert code == 2
    assert_one_error_line(stderr, rf"error: {re.escape(str(output))}: cannot write it: File too "
                                  r"large \(nothing of it was kept; .*\)")
    assert os.listdir(tmp_path) == ["logs"]


# --------------------------------------------------------------------------- unwritable folders


@pytest.fixture
def readable_inputs(tmpfs, embed_job, token_job, trained, train_corpus):
    """A tmpfs holding a copy of every command's inputs that any user may read, and an
    empty `out/` that only root may write: (fs, inputs, out)."""
    fs = tmpfs("size=16m")
    inputs = fs.path / "inputs"
    shutil.copytree(embed_job[0], inputs / "module")
    shutil.copy(embed_job[1], inputs / "corpus.txt")
    (options, weights), vocab, _ = token_job
    for path in (options, weights, vocab):
        shutil.copy(path, inputs / Path(path).name)
    shutil.copytree(trained, inputs / "ckpt")
    shutil.copytree(Path(train_corpus["vocab"]).parent, inputs / "corpus")
    subprocess.run(["chmod", "-R", "a+rX", str(fs.path)], check=True)
    out = fs.path / "out"
    out.mkdir()
    return fs, inputs, out


COMMANDS = {
    "embed": lambda i, o: ["embed", "--quiet", "--module", i / "module", "--input",
                           i / "corpus.txt", "--output", o / "e.hdf5"],
    "dump-token-embeddings": lambda i, o: [
        "dump-token-embeddings", "--quiet", "--options", i / "options.json", "--weights",
        i / "weights.hdf5", "--vocab", i / "vocab.txt", "--output", o / "t.hdf5"],
    "train": lambda i, o: ["train", "--train-prefix", i / "corpus" / "train" / "*.txt",
                           "--vocab", i / "corpus" / "vocab.txt", "--options",
                           i / "corpus" / "options.json", "--save-dir", o / "ckpt"],
    "dump-weights": lambda i, o: ["dump-weights", "--save-dir", i / "ckpt", "--outfile",
                                  o / "w.hdf5"],
    # Its output, models.config, goes in --base: here `out/`, holding one version.
    "serving-config": lambda i, o: ["serving-config", "--base", o],
}


@pytest.mark.parametrize("fault", ["read-only", "not permitted"])
def test_every_command_refuses_a_folder_it_cannot_write(readable_inputs, tmp_path, fault):
    """EROFS (the file system remounted read-only) and EACCES (run as `nobody` in a
    folder of root's): embed, dump-token-embeddings, train, dump-weights and
    serving-config each stop with one line naming their output and the OS's reason, exit
    status 2, before any long work, and write nothing (export: its own test above)."""
    fs, inputs, out = readable_inputs
    fake_versions(out, versions=(1,))
    if fault == "read-only":
        fs.remount("ro")
    reason = "Read-only file system" if fault == "read-only" else "Permission denied"
    runs = {name: cli(tmp_path, *make(inputs, out),
                      user=NOBODY if fault == "not permitted" else None)
            for name, make in COMMANDS.items()}
    for name, run in runs.items():
        code, _, stderr = run.wait()
        assert code == 2, (name, stderr)
        assert_one_error_line(stderr, rf"error: .*{re.escape(str(out))}.*: {reason}.*")
    assert os.listdir(out) == ["elmo"]
