"""`python -m hub_export ...` in real processes that start in milliseconds.

Each command runs in its own process, forked from a server process that imported
TensorFlow and hub_export once (multiprocessing's forkserver), so a test can start
several at once, kill them with SIGKILL, or run them under another user or a file-size
limit, without paying for an import of TensorFlow each time. The child runs exactly
what `python -m hub_export` runs (`hub_export.__main__.run`), with its stdout and stderr
in files.

Kills at an exact moment use an audit hook (PEP 578) installed in the child: it sends
the child SIGKILL when Python is about to perform a given file operation (e.g. the
`os.link` that publishes an output), so "killed between writing and publishing" is hit
every time rather than by luck. The same hook can fill a real (tmpfs) file system at
such a moment, so that the disk is full exactly when, say, the archive is written.

`run` is the same as `subprocess.run`, for the tests that only need a command's result.
What only a fresh interpreter shows (TensorFlow's start-up lines kept quiet, a usage
error that never imports TensorFlow) is tested with real subprocesses
(`test_cli_output.py`, `test_cli.py`).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

_CONTEXT = multiprocessing.get_context("forkserver")
# Also modules imported lazily that a child running as another user could not read.
_CONTEXT.set_forkserver_preload([
    "tensorflow", "tensorflow_hub", "h5py", "numpy.random", "secrets", "hub_export.__main__",
    "hub_export.export.exporter", "hub_export.corpus.embed", "hub_export.train.trainer",
    "hub_export.corpus.token_embeddings", "hub_export.serving.config"])


@dataclasses.dataclass(frozen=True)
class KillAt:
    """SIGKILL the child when it is about to do audit event `event` (e.g. "os.link",
    "os.rename", "open") with an argument containing `text`, the `nth` time."""

    event: str
    text: str
    nth: int = 1


@dataclasses.dataclass(frozen=True)
class FillAt:
    """Fill the file system at `fs` when the child is about to do audit event `event`
    with an argument containing `text` (the `nth` time): every byte, or, with
    `inodes=True`, every inode but one (so the file being opened is the last one made)."""

    event: str
    text: str
    fs: str
    inodes: bool = False
    nth: int = 1


@dataclasses.dataclass(frozen=True)
class KillAtCall:
    """SIGKILL the child when a Python function named `name` is called the `nth` time
    (for moments inside a library that makes no file operation visible to Python)."""

    name: str
    nth: int = 1


def _install_call_killer(kill: KillAtCall) -> None:
    seen = 0

    def profile(frame, event, arg):
        nonlocal seen
        if event == "call" and frame.f_code.co_name == kill.name:
            seen += 1
            if seen == kill.nth:
                os.kill(os.getpid(), signal.SIGKILL)

    sys.setprofile(profile)


def _fill(fs: str, inodes: bool) -> None:
    if inodes:
        made = []
        try:
            while True:
                path = os.path.join(fs, f".filler-{len(made)}")
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
                made.append(path)
        except OSError:
            pass
        if made:
            os.unlink(made[-1])
        return
    fd = os.open(os.path.join(fs, ".filler"), os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
    try:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


def _install_hook(action: KillAt | FillAt) -> None:
    seen = 0
    busy = False

    def hook(event, args):
        nonlocal seen, busy
        if busy or event != action.event or not any(action.text in str(a) for a in args):
            return
        seen += 1
        if seen != action.nth:
            return
        if isinstance(action, KillAt):
            os.kill(os.getpid(), signal.SIGKILL)
        busy = True  # the filling opens files too
        _fill(action.fs, action.inodes)
        busy = False

    sys.addaudithook(hook)


def _child(argv: list[str], cwd: str, out: str, err: str, at: KillAt | FillAt | KillAtCall | None,
           user: int | None, file_size_limit: int | None, code: str | None) -> None:
    os.chdir(cwd)
    for path, fd in ((out, 1), (err, 2)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    if file_size_limit is not None:
        import resource

        # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG.
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
    if user is not None:
        os.setgid(user)
        os.setuid(user)
    if isinstance(at, KillAtCall):
        _install_call_killer(at)
    elif at is not None:
        _install_hook(at)
    if code is not None:  # `python -c code`
        sys.argv = ["-c", *argv]
        exec(compile(code, "<string>", "exec"), {"__name__": "__main__"})
        return
    from hub_export.__main__ import run

    sys.argv = ["hub_export", *argv]
    run()


_STARTED: list["Run"] = []


def kill_all() -> None:
    """SIGKILLs every command still running (a test that failed midway left it)."""
    while _STARTED:
        run = _STARTED.pop()
        if run.alive():
            run.kill()
        run.process.join()


class Run:
    """A running command. `wait()` gives (exit status, stdout, stderr); killed: -9.

    With `code`, the process runs that Python source instead (`python -c code`, `argv`
    in `sys.argv[1:]`)."""

    def __init__(self, argv: list[str], cwd: Path, logs: Path,
                 at: KillAt | FillAt | KillAtCall | None = None, user: int | None = None,
                 file_size_limit: int | None = None, stdout: Path | None = None,
                 stderr: Path | None = None, code: str | None = None):
        logs.mkdir(parents=True, exist_ok=True)
        stem = f"run-{time.monotonic_ns()}"
        self.out = stdout or logs / f"{stem}.out"
        self.err = stderr or logs / f"{stem}.err"
        self.argv = argv
        self.process = _CONTEXT.Process(target=_child, args=(
            [str(a) for a in argv], str(cwd), str(self.out), str(self.err), at, user,
            file_size_limit, code))
        self.process.start()
        _STARTED.append(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)

    def wait(self, timeout: float = 300) -> tuple[int, str, str]:
        self.process.join(timeout)
        if self.process.exitcode is None:
            self.kill()
            self.process.join()
            raise AssertionError(f"{self.argv} still running after {timeout} s")
        return (self.process.exitcode, self.out.read_text(errors="replace"),
                self.err.read_text(errors="replace"))

    def stderr(self) -> str:
        """What the command has written to stderr so far."""
        try:
            return self.err.read_text(errors="replace")
        except FileNotFoundError:  # not started yet
            return ""


def run(argv: list, cwd: Path, timeout: float = 300,
        code: str | None = None) -> subprocess.CompletedProcess:
    """`python -m hub_export *argv` (or `python -c code`) run to its end in `cwd`: what
    `subprocess.run(..., capture_output=True, text=True)` gives, in milliseconds more
    than the work rather than seconds."""
    with tempfile.TemporaryDirectory(prefix="forked-cli-") as logs:
        started = Run(argv, cwd, Path(logs), code=code)
        status, out, err = started.wait(timeout)
        _STARTED.remove(started)
    command = ["python", "-c", code] if code is not None else ["python", "-m", "hub_export"]
    return subprocess.CompletedProcess(command + [str(a) for a in argv], status, out, err)


def kill_when(run: Run, condition: Callable[[], bool], timeout: float = 300) -> bool:
    """SIGKILLs `run` as soon as `condition()` holds; False if the run ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            run.kill()
            run.wait()
            return True
        if not run.alive():
            return False
        time.sleep(0.001)
    run.kill()
    raise AssertionError(f"{run.argv}: the condition did not come within {timeout} s")
