"""Where `embed` keeps its results until the output is complete, so that a kill costs nothing.

HDF5 keeps a file's metadata (B-trees, heaps, object headers) in a cache and writes it
back when it likes, updating structures in place; a process killed while a file is open
for writing can leave that file unreadable, even one flushed a moment before. So the
output is never written under its final name. `<output>.parts/` holds:

* `output.partial`: the output being written, each window's values written once, where
  they stay. For one dataset a line (`all`, `elmo`) it is a `FlatHdf5Writer` file: the
  values are appended and the datasets' headers come at the end. For `default` it is an
  hdf5 file made up front with its one dataset `[n_lines, E]` allocated, whose rows are
  written in place. It is not an hdf5 file until it is complete, hence the suffix.
* `journal`: a record per window whose values are in `output.partial` and on disk (the
  values are flushed to disk before their record is appended): its lines, their token
  counts and where their values start. A record cut short by a kill, or one that does not
  fit, ends the journal; the lines after it are embedded again.
* `run.json`: the module, the input and the flags; a resume with other ones is refused
  rather than mixing two runs' numbers. It is written before anything else and removed
  right after the output is in place, so a parts directory without it holds nothing of
  value.
* `part-<first line>.hdf5`: a window saved by a worker of the Beam pipeline (`embed_beam`),
  written under a temporary name, flushed and renamed, so a part is complete or absent.
  `embed --resume` moves each into `output.partial` (its record journaled, then the part
  deleted).

So a resume keeps what is in `output.partial` up to the last good record, cuts off the
rest, and embeds only the lines that no record holds. When every line is in, the
metadata is written, the file flushed to disk and renamed to `<output>`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Callable, Iterator

import h5py
import numpy as np

from hub_export.errors import HubExportError
from hub_export.flat_hdf5 import DATA_START, FlatHdf5Writer

SENTENCE_DATASET = "sentence_embeddings"  # the one dataset of layers="default"
PART_FORMAT = "hub_export.embed.part/2"
RUN_FILE = "run.json"
LOCK_FILE = "lock"
PARTIAL = "output.partial"
JOURNAL = "journal"
JOURNAL_MAGIC = b"hub_export.embed.journal/1\n"
_RECORD = struct.Struct("<4sIQQ")  # b"WIN1", k lines, offset of their values, their bytes
_RECORD_TAG = b"WIN1"
# The oldest file format, h5py's default and what bilm-tf itself writes: readable by every
# HDF5 reader, and (measured) no slower than the newer formats for 10^5 small datasets.
LIBVER = "earliest"


class EmbedError(HubExportError, ValueError):
    """A corpus, module, output or flag of `embed` is missing, unreadable or inconsistent."""


@dataclasses.dataclass
class Window:
    """Lines embedded and saved together.

    Args:
        lines: int64 [k], increasing. Their line indices.
        n_tokens: int64 [k].
        values: float32, the lines' outputs back to back, each in the output's layout:
            all: [J * sum n, W], line after line its [J, n, W] block (J = L + 1);
            elmo: [sum n, W]; default: [k, W]. None when read without values.
    """

    lines: np.ndarray
    n_tokens: np.ndarray
    values: np.ndarray | None


def parts_dir(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def fsync_path(path: Path) -> None:
    # A rename is atomic, but without this a power cut could leave a renamed file whose
    # data never reached the disk. (A killed process loses nothing the kernel has.)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


@contextlib.contextmanager
def locked(parts: Path) -> Iterator[None]:
    """Holds `<parts>/lock`, so that two runs never write the same parts at once."""
    parts.mkdir(parents=True, exist_ok=True)
    fd = os.open(parts / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EmbedError(f"{parts}: another embed run is already writing this output; let "
                             "it finish (or stop it) first") from None
        yield
    finally:
        os.close(fd)  # the lock goes with it, and with the process if it is killed


# --------------------------------------------------------------------------- Beam's parts


def write_part(parts: Path, window: Window, layers: str) -> Path:
    final = parts / f"part-{int(window.lines[0]):012d}.hdf5"
    tmp = parts / f".{final.name}.tmp-{os.getpid()}"
    with h5py.File(tmp, "w", libver=LIBVER) as f:
        f.attrs["format"] = PART_FORMAT
        f.attrs["layers"] = layers
        f.create_dataset("line_index", data=window.lines)
        f.create_dataset("n_tokens", data=window.n_tokens)
        f.create_dataset("values", data=window.values)
    fsync_path(tmp)
    os.replace(tmp, final)
    fsync_path(parts)
    return final


def read_part(path: Path, layers: str, n_lines: int, depth: int, width: int,
              values: bool = True) -> Window:
    """A saved part, checked against the run; EmbedError names the part if it does not fit.

    Args:
        depth: int. J, the layers a line's `all` block holds (L + 1).
    """
    advice = "delete it and run again with --resume to recompute its lines"
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != PART_FORMAT or f.attrs.get("layers") != layers:
                raise ValueError(f"format {f.attrs.get('format')!r}, layers {f.attrs.get('layers')!r}")
            window = Window(lines=f["line_index"][()], n_tokens=f["n_tokens"][()], values=None)
            shape = f["values"].shape
            if values:
                window.values = f["values"][()]
    except (OSError, KeyError, ValueError) as e:
        raise EmbedError(f"{path}: not a readable part of this run ({e}); {advice}") from None
    total = int(window.n_tokens.sum())
    expected = {"all": (depth * total, width), "elmo": (total, width),
                "default": (len(window.lines), width)}[layers]
    if (window.lines.shape != window.n_tokens.shape or shape != expected or len(window.lines) == 0
            or window.lines.min() < 0 or window.lines.max() >= n_lines
            or np.any(np.diff(window.lines) <= 0) or np.any(window.n_tokens < 0)):
        raise EmbedError(f"{path}: its datasets do not fit this run (lines "
                         f"{window.lines[:3].tolist()}..., values {shape}); {advice}")
    return window


# --------------------------------------------------------------------------- the journal


def _record(lines: np.ndarray, n_tokens: np.ndarray, offset: int, nbytes: int) -> bytes:
    body = (_RECORD.pack(_RECORD_TAG, len(lines), offset, nbytes)
            + np.ascontiguousarray(lines, "<i8").tobytes()
            + np.ascontiguousarray(n_tokens, "<i8").tobytes())
    return body + struct.pack("<I", zlib.crc32(body))


def read_journal(path: Path) -> tuple[list[tuple[np.ndarray, np.ndarray, int, int]], int]:
    """The whole records of a journal, in order, and the byte where they end.

    A record is (lines, n_tokens, offset, nbytes). Reading stops at the first record that
    is cut short or damaged (a kill mid-append); a missing or foreign file has none.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    if not data.startswith(JOURNAL_MAGIC):
        return [], 0
    records, at = [], len(JOURNAL_MAGIC)
    while at + _RECORD.size <= len(data):
        tag, k, offset, nbytes = _RECORD.unpack_from(data, at)
        end = at + _RECORD.size + 16 * k + 4
        if tag != _RECORD_TAG or end > len(data):
            break
        (crc,) = struct.unpack_from("<I", data, end - 4)
        if zlib.crc32(data[at: end - 4]) != crc:
            break
        arrays = np.frombuffer(data, "<i8", 2 * k, at + _RECORD.size).astype(np.int64)
        records.append((arrays[:k], arrays[k:], offset, nbytes))
        at = end
    return records, at


def journaled_lines(parts: Path) -> int:
    """How many lines the journal in `parts` records as saved."""
    records, _ = read_journal(parts / JOURNAL)
    return sum(len(lines) for lines, _, _, _ in records)


class Store:
    """The output being written, and its journal (see the module doc).

    Args:
        parts: Path. The run's parts directory (it exists and is locked).
        layers: "all", "elmo" or "default".
        n_lines: int. Lines in the input.
        depth: int. J, the layers of a line's `all` block (L + 1).
        width: int. The values' last dimension.
        resume: bool. Keep what a killed run saved; otherwise start afresh.
        note: called with a sentence when part of what a killed run left cannot be used
            (its lines are embedded again).

    After construction, `done` marks the lines already saved.
    """

    def __init__(self, parts: Path, layers: str, n_lines: int, depth: int, width: int,
                 resume: bool, note: Callable[[str], None] = lambda text: None):
        self.parts = parts
        self.layers = layers
        self.n_lines = n_lines
        self.depth = depth
        self.width = width
        self.path = parts / PARTIAL
        # One dataset a line: a line's [J, n, W] (all) or [n, W] (elmo) block.
        self.lead = (depth,) if layers == "all" else ()
        self.token_bytes = int(np.prod(self.lead + (width,))) * 4  # a token's values in it
        self.done = np.zeros(n_lines, bool)
        self.lines: FlatHdf5Writer | None = None  # all, elmo
        self.table_fd: int | None = None  # default: the file, and where its dataset starts
        self.table_offset: int | None = None
        self.journal = None
        records, journal_end = read_journal(parts / JOURNAL) if resume else ([], 0)
        kept = self._reopen(records, note) if records else None
        if kept is None:
            self._create()
            records, journal_end = [], 0
        else:
            records, journal_end = kept
        if journal_end:
            self.journal = open(parts / JOURNAL, "r+b")
            self.journal.truncate(journal_end)
            self.journal.seek(journal_end)
        else:
            self.journal = open(parts / JOURNAL, "wb")
            self.journal.write(JOURNAL_MAGIC)
            self._sync_journal()

    def _create(self) -> None:
        if self.layers != "default":
            self.lines = FlatHdf5Writer(self.path, self.n_lines, self.lead, (self.width,))
            return
        # The dataset's storage is allocated now and never filled: rows not yet written
        # are holes in the file, read as zeros, the `default` of an empty line.
        with h5py.File(self.path, "w", libver=LIBVER) as f:
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            space = h5py.h5s.create_simple((self.n_lines, self.width))
            dataset = h5py.h5d.create(f.id, SENTENCE_DATASET.encode(), h5py.h5t.IEEE_F32LE, space,
                                      dcpl=dcpl)
            self.table_offset = dataset.get_offset()  # None without rows
        self.table_fd = os.open(self.path, os.O_WRONLY)

    def _reopen(self, records: list, note: Callable[[str], None]) -> tuple[list, int] | None:
        """Takes over what a killed run saved; None if nothing of it can be used."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            note(f"{self.path} is missing; embedding every line again")
            return None
        if self.layers == "default":
            try:
                with h5py.File(self.path, "r") as f:
                    dataset = f[SENTENCE_DATASET]
                    if dataset.shape != (self.n_lines, self.width):
                        raise ValueError(f"shape {dataset.shape}")
                    self.table_offset = dataset.id.get_offset()
            except (OSError, KeyError, ValueError) as e:
                note(f"{self.path} is damaged ({e}); embedding every line again")
                return None
        end = DATA_START
        good, journal_end = 0, len(JOURNAL_MAGIC)
        for lines, n_tokens, offset, nbytes in records:
            fits = (len(lines) > 0 and lines.min() >= 0 and lines.max() < self.n_lines
                    and np.all(np.diff(lines) > 0) and np.all(n_tokens >= 0)
                    and not self.done[lines].any())
            if self.layers != "default":
                fits = (fits and offset == end and nbytes == int(n_tokens.sum()) * self.token_bytes
                        and offset + nbytes <= size)
            if not fits:
                note(f"{self.parts / JOURNAL}: record {good + 1} does not fit what was saved; "
                     "embedding its lines and those after it again")
                break
            self.done[lines] = True
            end = offset + nbytes
            good += 1
            journal_end += _RECORD.size + 16 * len(lines) + 4
        if self.layers == "default":
            self.table_fd = os.open(self.path, os.O_WRONLY)
        else:
            self.lines = FlatHdf5Writer(self.path, self.n_lines, self.lead, (self.width,), keep=end)
            for lines, n_tokens, offset, _ in records[:good]:
                self.lines.place(lines, n_tokens, offset)
        return records[:good], journal_end

    def add(self, window: Window) -> None:
        """Writes a window's values, puts them on disk, then journals them."""
        values = np.ascontiguousarray(window.values, np.float32)
        if self.table_fd is not None:
            offset, nbytes = 0, 0
            # Consecutive lines go in as one write (a window is usually a single run).
            breaks = np.flatnonzero(np.diff(window.lines) != 1) + 1
            for rows in np.split(np.arange(len(window.lines)), breaks):
                first = int(window.lines[rows[0]])
                os.pwrite(self.table_fd, memoryview(values[rows[0]: rows[-1] + 1]).cast("B"),
                          self.table_offset + first * self.width * 4)
            os.fdatasync(self.table_fd)
        else:
            offset = self.lines.add(window.lines, window.n_tokens, values)
            nbytes = values.nbytes
            self.lines.flush()
        self.journal.write(_record(window.lines, window.n_tokens, offset, nbytes))
        self._sync_journal()
        self.done[window.lines] = True

    def add_part(self, path: Path) -> None:
        """Moves a part a Beam worker saved into the output, then deletes it."""
        window = read_part(path, self.layers, self.n_lines, self.depth, self.width)
        saved = self.done[window.lines]
        if saved.any() and not saved.all():
            raise EmbedError(f"{path}: holds lines that are saved already, and others; delete it "
                             "and run again with --resume")
        if not saved.any():  # else moved in already, by a run killed before deleting it
            self.add(window)
        path.unlink()

    def finish(self, output: Path) -> None:
        """Completes the file (every line must be in) and renames it to `output`."""
        if not self.done.all():
            raise EmbedError(f"{self.parts}: {int((~self.done).sum())} lines are missing, the "
                             f"first line {int(np.argmin(self.done))}; run again with --resume")
        if self.table_fd is not None:
            os.fsync(self.table_fd)
            os.close(self.table_fd)
            self.table_fd = None
        else:
            self.lines.close()
            fsync_path(self.path)
        os.replace(self.path, output)
        fsync_path(output.parent)

    def close(self) -> None:
        """Lets go of the files, finished or not."""
        if self.table_fd is not None:
            os.close(self.table_fd)
            self.table_fd = None
        if self.lines is not None:
            self.lines.abort()
        if self.journal is not None:
            self.journal.close()

    def _sync_journal(self) -> None:
        self.journal.flush()
        os.fdatasync(self.journal.fileno())
