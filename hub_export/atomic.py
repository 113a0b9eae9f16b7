"""Writing outputs so that nobody sees half of one, and saying plainly why the OS refused.

Every command writes its results the same way:

* Into a *staging* directory beside the output (`.<output name>.tmp-<random>`, or
  `.tmp-<version>-<random>` for an export): the same file system, so that one rename or
  link publishes the result. The writing process holds the directory with flock(2)
  while it works; the lock goes with the process, so a staging directory that nobody
  holds is what a killed process left, and the next command writing beside it removes
  it (or, if it was marked `ready`, first publishes what is missing of it: see below).
* Published by an operation that refuses an existing target, so that of several
  writers exactly one wins, whatever the timing: `os.link` for a file (EEXIST), and for
  a directory `os.rename`, which fails onto a non-empty directory (ENOTEMPTY/EEXIST; an
  empty one holds nothing and is replaced). With overwrite, a file is replaced by
  `os.replace`, and a directory is moved aside and the new one renamed in; concurrent
  overwrites publish one at a time (a lock on the parent), so a target is always one
  writer's complete result.
* A result of several outputs is published part after part, so a kill can come between
  two parts. For files (weights and their options) the next command writing there takes
  back the part that was put in place (it is still linked from the staging directory)
  and writes the whole result again. An export's version and archive share one staging
  directory, marked `ready` before the version is renamed in: the next export of that
  version puts the archive in place beside it (`recover` calls back to do so).
* An OSError, an h5py error or a TensorFlow error that carries an OS reason (ENOSPC,
  EDQUOT, EROFS, EACCES, ...) becomes one `WriteError` naming the output and the reason;
  what was written of it is removed with the staging directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

from hub_export.errors import HubExportError, OutputExistsError, WriteError

READY = ".ready"  # in a staging directory: every part is complete; publishing has begun
GROUP = ".group"  # in a staging directory: its file is one of several published together
# How to recover from an OS failure: nothing of the output was kept, so the same command.
AGAIN = " (nothing of it was kept; free space or fix the folder, and run the command again)"

# The OS reasons looked for in the text of errors that carry no errno (TensorFlow's
# "...; No space left on device", h5py's "errno = 28", an OSError rebuilt from a message
# by Apache Beam). The most specific first.
_REASONS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
            errno.EIO, errno.EXDEV, errno.ENAMETOOLONG, errno.EMFILE, errno.ENOTDIR,
            errno.EISDIR, errno.ENOENT)


# --------------------------------------------------------------------------- messages


def os_reason(error: BaseException) -> str | None:
    """The OS's reason ("No space left on device") that `error` carries, or None.

    Understands OSError, h5py's errors (an OSError or RuntimeError whose text holds
    "errno = 28") and TensorFlow's (whose text ends "; No space left on device").
    """
    if not isinstance(error, (OSError, RuntimeError)) and not _is_tf_error(error):
        return None
    code = getattr(error, "errno", None)
    if isinstance(code, int) and code > 0:
        return os.strerror(code)
    text = str(error)
    match = re.search(r"errno = (\d+)", text)
    if match and int(match.group(1)) > 0:
        return os.strerror(int(match.group(1)))
    for code in _REASONS:
        if os.strerror(code) in text:
            return os.strerror(code)
    return None


def _is_tf_error(error: BaseException) -> bool:
    tf = sys.modules.get("tensorflow")  # never imported here just to ask
    return tf is not None and isinstance(error, tf.errors.OpError)


def failure_message(error: BaseException) -> str | None:
    """`<path>: <reason>` for an OS failure that no command translated; None otherwise."""
    reason = os_reason(error)
    if reason is None:
        return None
    path = getattr(error, "filename", None)
    if path is None:
        # h5py: "filename = '/x/y.hdf5'"; TensorFlow: "/x/y/part-0...; No space left".
        match = (re.search(r"filename = '([^']+)'", str(error))
                 or re.search(r"(\S+?);? " + re.escape(reason), str(error)))
        path = match.group(1) if match else None
    return f"{path}: {reason}" if path else reason


@contextlib.contextmanager
def reported(path: str | os.PathLike, action: str = "write it", advice: str = "") -> Iterator[None]:
    """Turns an OS failure inside the block into WriteError: `<path>: cannot <action>: <reason>`.

    Errors that carry no OS reason, and hub_export's own, pass unchanged.
    """
    try:
        yield
    except HubExportError:
        raise
    except Exception as e:
        reason = os_reason(e)
        if reason is None:
            raise
        raise WriteError(f"{path}: cannot {action}: {reason}{advice}") from None


class ReportedStream:
    """A text stream (stdout, stderr) whose failed writes are WriteError naming it:
    "standard output: No space left on device"."""

    def __init__(self, stream, name: str):
        self._stream = stream
        self._name = name

    def _do(self, method, *args):
        try:
            return method(*args)
        except OSError as e:
            raise WriteError(f"{self._name}: {e.strerror or e}") from None

    def write(self, text: str) -> int:
        return self._do(self._stream.write, text)

    def flush(self) -> None:
        self._do(self._stream.flush)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def drop_unwritable_streams() -> None:
    """Points stdout or stderr at /dev/null when it can no longer be written (a full
    disk under a redirection), so that the interpreter's last flush does not fail and
    change the exit status."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
            with contextlib.suppress(OSError):
                stream.flush()


def exists_message(path: str | os.PathLike, flag: str | None, hint: str = "") -> str:
    where = f"{flag}: {path}" if flag else str(path)
    return f"{where} already exists; pass --overwrite to replace it{hint}"


# --------------------------------------------------------------------------- durability


def fsync_path(path: str | os.PathLike) -> None:
    """Puts a file's (or a directory's entries') data on disk. A rename is atomic, but
    without this a power cut could leave a renamed file whose data never got there."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_path(os.path.join(folder, name))
        fsync_path(folder)


def reserve(path: str | os.PathLike, nbytes: int) -> None:
    """Allocates the first `nbytes` of the file at `path` on disk now, so that a full disk
    is met here, as an OSError, and not later by a library that does not survive it."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # no preallocation here
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def new_hdf5(path: str | os.PathLike, data_bytes: int, n_datasets: int) -> Iterator:
    """A new hdf5 file, open for writing, with the space of `data_bytes` of values in
    `n_datasets` datasets reserved (`reserve`). It is made, reserved, then opened again:
    libhdf5 trims a file that it opened larger than its contents when it closes it, so the
    file ends up its real size. (Reserved while open, the unused space would stay.)"""
    import h5py

    h5py.File(path, "w").close()
    reserve(path, hdf5_size(data_bytes, n_datasets))
    with h5py.File(path, "r+") as f:
        yield f


def hdf5_size(data_bytes: int, n_datasets: int) -> int:
    """A generous estimate of an hdf5 file's size: its data and, for each dataset and the
    groups above it, a few KB of headers, heaps and B-trees."""
    return data_bytes + (64 << 10) + n_datasets * (8 << 10)


# --------------------------------------------------------------------------- locks


def _try_lock(fd: int) -> bool | None:
    """True: locked; False: someone else holds it; None: this file system has no flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:  # e.g. NFS, where flock needs a file open for writing
        return None


@contextlib.contextmanager
def held(directory: Path, busy_message: str) -> Iterator[None]:
    """Holds `directory` with flock(2) until the block ends; HubExportError(busy_message)
    if another process holds it. On a file system without flock it is not held."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _try_lock(fd) is False:
            raise HubExportError(busy_message)
        yield
    finally:
        os.close(fd)  # the lock goes with it, and with the process if it is killed


@contextlib.contextmanager
def publishing(parent: Path) -> Iterator[None]:
    """Publishers of outputs in `parent` take turns (they wait: publishing is quick)."""
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # no flock here: the renames and links alone still refuse a second writer
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- staging


class Staging:
    """A new directory `<parent>/<prefix><random>`, held by this process (see the module doc).

    Attributes:
        path: Path. Write the result's parts in it.
    """

    def __init__(self, parent: Path, prefix: str):
        while True:
            path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:  # taken for a killed run's and removed: make another
                continue
            # A remover that saw it before it was held holds it now, or has removed it.
            if _try_lock(fd) is not False and _same_inode(fd, path):
                break
            os.close(fd)
        self.path = path
        self._fd = fd

    def mark_ready(self, overwrite: bool) -> None:
        """Every part is complete and on disk: from now on a kill leaves them to be
        published by the next writer (replacing what is there if `overwrite`)."""
        fsync_tree(self.path)
        with open(self.path / READY, "x") as f:
            f.write("overwrite\n" if overwrite else "")
        fsync_path(self.path)

    def close(self) -> None:
        """Removes the directory with whatever is still in it, and lets go of it."""
        if self._fd is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            os.close(self._fd)
            self._fd = None


def _same_inode(fd: int, path: Path) -> bool:
    try:
        a, b = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextlib.contextmanager
def staging(parent: Path, prefix: str,
            on_stale: Callable[[Path], None] | None = None) -> Iterator[Staging]:
    """A Staging in `parent`, removed when the block ends; the ones killed processes left
    with this prefix are dealt with first (`recover`)."""
    recover(parent, prefix, on_stale)
    stage = Staging(parent, prefix)
    try:
        yield stage
    finally:
        stage.close()


def recover(parent: Path, prefix: str, on_stale: Callable[[Path], None] | None = None) -> None:
    """Removes the staging directories in `parent` that nobody holds (their process was
    killed), calling `on_stale(path)` on each first, with its lock held (to finish or
    take back what its run was publishing)."""
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith(prefix) and e.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return  # nothing written there yet
    for entry in entries:
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue
        try:
            if _try_lock(fd) is not True or not _same_inode(fd, Path(entry.path)):
                continue  # its process is at work (or this file system cannot tell)
            path = Path(entry.path)
            if on_stale is not None:
                on_stale(path)
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- publishing


def publish_file(tmp: Path, final: Path, overwrite: bool, flag: str | None = None) -> None:
    """Puts the complete file `tmp` at `final`: refused if `final` exists, unless `overwrite`.

    Raises:
        OutputExistsError: `final` exists and `overwrite` is False.
    """
    if overwrite:
        os.replace(tmp, final)
    else:
        try:
            os.link(tmp, final)
        except FileExistsError:
            raise OutputExistsError(exists_message(final, flag)) from None
    fsync_path(final.parent)


def publish_dir(tmp: Path, final: Path, overwrite: bool, aside: Path,
                exists: Callable[[], str] | None = None) -> None:
    """Renames the complete directory `tmp` to `final`; an existing `final` is refused,
    or with `overwrite` moved to `aside` first (call under `publishing(final.parent)`).

    Raises:
        OutputExistsError: `final` is there and `overwrite` is False.
    """
    while True:
        try:
            os.rename(tmp, final)
            break
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            if not overwrite:
                raise OutputExistsError(exists() if exists else exists_message(final, None)) from None
        try:
            os.rename(final, aside)
        except FileNotFoundError:  # gone meanwhile (not a hub_export writer): try again
            pass
    fsync_path(final.parent)


def withdraw(final: Path, published: Path) -> None:
    """Removes `final` if it is the file `published` (the same inode: linked from it)."""
    with contextlib.suppress(OSError):
        if os.path.samefile(final, published):
            os.unlink(final)


def _staging_prefix(final: Path) -> str:
    return f".{final.name}.tmp-"


def ready_to_overwrite(stale: Path) -> bool:
    """Whether the killed writer that marked `stale` ready was replacing its outputs."""
    return (stale / READY).read_text().strip() == "overwrite"


def _take_back(final: Path) -> Callable[[Path], None]:
    """For `recover`: a killed run that published `final` as one of several files, and
    died before it was done, has its file taken back (the next run writes them all)."""
    def take_back(stale: Path) -> None:
        if (stale / GROUP).exists():
            withdraw(final, stale / final.name)
    return take_back


def recover_file(final: Path) -> None:
    """Deals with what killed writers of `final` left beside it (see `recover`)."""
    recover(final.parent, _staging_prefix(final), _take_back(final))


def check_new_file(final: Path, flag: str | None, overwrite: bool, advice: str = AGAIN) -> None:
    """Before the work that makes `final`: deals with what killed writers of it left,
    refuses an existing `final` early (unless `overwrite`; the refusal that holds
    against a concurrent writer is the link in `new_files`), and fails now, naming the
    OS's reason, where nothing can be written."""
    recover_file(final)
    if not overwrite and final.exists():
        raise OutputExistsError(exists_message(final, flag))
    check_writable(final, advice)


def check_writable(final: Path, advice: str = AGAIN) -> None:
    """Fails now, with WriteError naming the OS's reason, if `final` could not be written
    (its folder is read-only, not the user's to write, or out of inodes), rather than
    after the work that makes it. Makes the folder if it is missing."""
    recover_file(final)
    with reported(final, "write it", advice):
        final.parent.mkdir(parents=True, exist_ok=True)
        Staging(final.parent, _staging_prefix(final)).close()


@contextlib.contextmanager
def new_files(finals: Sequence[tuple[Path, str | None]], overwrite: bool,
              advice: str | None = AGAIN) -> Iterator[list[Path]]:
    """Yields a temporary path for each of `finals` ((path, flag) pairs); when the block
    ends without an error, publishes them all (in order), or none: a refused one takes
    back those published before it, and so does the next writer after a kill between two.

    Every OS failure is reported as WriteError naming the output it was for (in the
    block: the first output), followed by `advice`; with `advice=None` it is raised as it
    is, for a caller that words it itself. Nothing of a failed or refused run stays (its
    staging directories are removed).

    Raises:
        OutputExistsError: an output exists and `overwrite` is False.
        WriteError: the OS refused (full disk, read-only, no permission...).
    """
    finals = [(Path(path), flag) for path, flag in finals]

    def report(final: Path):
        return contextlib.nullcontext() if advice is None else reported(final, "write it", advice)

    with contextlib.ExitStack() as stack:
        stages, tmps = [], []
        for final, flag in finals:
            with report(final):
                final.parent.mkdir(parents=True, exist_ok=True)
                stage = stack.enter_context(staging(final.parent, _staging_prefix(final),
                                                    _take_back(final)))
                if len(finals) > 1:
                    (stage.path / GROUP).touch()
            stages.append(stage)
            tmps.append(stage.path / final.name)
        with report(finals[0][0]):
            yield tmps
        for (final, _), tmp in zip(finals, tmps):
            with report(final):
                fsync_path(tmp)
        published: list[tuple[Path, Path]] = []
        try:
            for (final, flag), tmp in zip(finals, tmps):
                with report(final):
                    publish_file(tmp, final, overwrite, flag)
                published.append((final, tmp))
        except BaseException:
            for final, tmp in published:
                withdraw(final, tmp)
            raise
        for stage in stages:  # all in place: nothing to take back any more
            (stage.path / GROUP).unlink(missing_ok=True)


def write_text(path: Path, text: str, flag: str | None = None, overwrite: bool = True,
               advice: str | None = AGAIN) -> None:
    """Writes a small text file atomically (complete or absent), replacing by default."""
    with new_files([(Path(path), flag)], overwrite, advice) as (tmp,):
        tmp.write_text(text, encoding="utf-8")
