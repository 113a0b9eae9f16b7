"""Where `embed` keeps its results until the output is complete, so that a kill costs nothing.

The output is never written under its final name. `<output>.parts/` holds:

* `output.partial`: the output being written, through h5py, each window's values written
  once, where they stay: one dataset a line (`all`, `elmo`), or the rows of the one dataset
  `[n_lines, E]` of `default`, made up front. It has the suffix because it is not the
  output until every line is in.
* `journal`: a record per window whose values are in `output.partial` and on disk: its
  lines and their token counts. A record cut short by a kill, or one whose values the
  file does not hold, ends the journal; the lines after it are embedded again.
* `run.json`: the module, the input and the flags; a resume with other ones is refused
  rather than mixing two runs' numbers. It is written before anything else and removed
  right after the output is in place, so a parts directory without it holds nothing of
  value.
* `part-<first line>.hdf5`: a window saved by a worker of the Beam pipeline (`corpus.beam`),
  written in a staging folder, synced and renamed into place (`atomic.new_files`), so a
  part is complete or absent.
  `embed --resume` moves each into `output.partial` (its record journaled, then the part
  deleted).

Why a kill cannot spoil what the journal records: libhdf5 keeps a file's metadata (its
B-trees, heaps and object headers) in a cache and may write it back at any time,
updating structures in place, so a file killed while open for writing can be unreadable.
Here a window is written with the file open only for that window, with the cache told
not to evict (`_no_evictions`: nothing of the metadata is written before the file is
closed), then the file is closed, synced to disk, and only then journaled. New datasets'
values go to space the file did not use before, so what a kill leaves between two
closes is the file as the last close left it, plus bytes nothing points to. A kill in the
middle of a close can still damage it: a resume checks every journaled line in the file
and, if the file cannot be read, embeds every line again (the numbers are the same; only
the time is lost).

So a resume keeps the windows of `output.partial` up to the last good record, removes
any dataset after it, and embeds only the lines that no record holds. When every line is
in, the file is synced and renamed to `<output>`.
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

from hub_export import atomic
from hub_export.errors import EmbedError

SENTENCE_DATASET = "sentence_embeddings"  # the one dataset of layers="default"
PART_FORMAT = "hub_export.corpus.embed.part/2"
RUN_FILE = "run.json"
LOCK_FILE = "lock"
PARTIAL = "output.partial"
JOURNAL = "journal"
# /2: the values are in an hdf5 file written through h5py (/1 was a file of our own layout).
JOURNAL_MAGIC = b"hub_export.corpus.embed.journal/2\n"
_RECORD = struct.Struct("<4sIQQ")  # b"WIN1", k lines, 0 (unused), bytes of their values
_RECORD_TAG = b"WIN1"
# The oldest file format, h5py's default and what bilm-tf itself writes: readable by every
# HDF5 reader. (`python benchmarks/bench_embed.py --model default` times embed against the
# module alone.)
LIBVER = "earliest"


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


def write_json(path: Path, value: dict) -> None:
    """Writes (or replaces) `path` atomically; an OS failure is raised as it is (the
    embed run says how to go on: `embed.writing`)."""
    atomic.write_text(path, json.dumps(value, indent=2) + "\n", advice=None)


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
    # Complete or absent (an OS failure is raised as it is, as in `write_json`); the space
    # first, so that a full disk is met there and not inside HDF5 (`atomic.new_hdf5`).
    with atomic.new_files([(final, None)], overwrite=True, advice=None) as (tmp,):
        with atomic.new_hdf5(tmp, window.values.nbytes + 16 * len(window.lines), 3) as f:
            f.attrs["format"] = PART_FORMAT
            f.attrs["layers"] = layers
            f.create_dataset("line_index", data=window.lines)
            f.create_dataset("n_tokens", data=window.n_tokens)
            f.create_dataset("values", data=window.values)
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


def _no_evictions(f: h5py.File) -> None:
    """Tells libhdf5 to keep all of `f`'s metadata in its cache until the file is closed.

    libhdf5 documents `evictions_enabled = False` (which needs the cache's automatic
    resizing off) as: no entry leaves the cache, so none is written, before a flush or
    close. A window's metadata is a few hundred kB, and the file is closed after each.
    """
    config = f.id.get_mdc_config()
    # 0 is H5C_incr__off, H5C_flash_incr__off and H5C_decr__off (h5py names none of them).
    config.incr_mode = config.flash_incr_mode = config.decr_mode = 0
    config.evictions_enabled = False
    f.id.set_mdc_config(config)


def _dataset_plist() -> h5py.h5p.PropDCID:
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_obj_track_times(False)  # no times: the same values give the same file
    return dcpl


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
        self.done = np.zeros(n_lines, bool)
        self.journal = None
        records, journal_end = read_journal(parts / JOURNAL) if resume else ([], 0)
        kept = self._reopen(records, note) if records else None
        if kept is None:
            self._create()
            journal_end = 0
        else:
            journal_end = kept
        if journal_end:
            self.journal = open(parts / JOURNAL, "r+b")
            self.journal.truncate(journal_end)
            self.journal.seek(journal_end)
        else:
            self.journal = open(parts / JOURNAL, "wb")
            self.journal.write(JOURNAL_MAGIC)
            self._sync_journal()

    def _shape(self, n_tokens: int) -> tuple[int, ...]:
        return self.lead + (int(n_tokens), self.width)

    @contextlib.contextmanager
    def _open(self, mode: str = "r+") -> Iterator[h5py.File]:
        """`output.partial` for one window's writes; closed and on disk after the block."""
        with h5py.File(self.path, mode, libver=LIBVER) as f:
            _no_evictions(f)
            yield f
        atomic.fsync_path(self.path)

    def _create(self) -> None:
        with self._open("w") as f:
            if self.layers == "default":
                # The dataset's storage is allocated now, so that writing its rows changes
                # no metadata; rows not yet written read as zeros (the `default` of an
                # empty line).
                dcpl = _dataset_plist()
                dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
                space = h5py.h5s.create_simple((self.n_lines, self.width))
                h5py.h5d.create(f.id, SENTENCE_DATASET.encode(), h5py.h5t.IEEE_F32LE, space,
                                dcpl=dcpl)
        if self.layers == "default":
            # Every row's space now, so that a full disk is met here and not inside HDF5.
            atomic.reserve(self.path, self.path.stat().st_size)
        atomic.fsync_path(self.parts)

    def _reopen(self, records: list, note: Callable[[str], None]) -> int | None:
        """Takes over what a killed run saved: the end of the journal's good records, or
        None if nothing of it can be used."""
        if not self.path.exists():
            note(f"{self.path} is missing; embedding every line again")
            return None
        try:
            with h5py.File(self.path, "r") as f:
                if self.layers == "default":
                    shape = f[SENTENCE_DATASET].shape
                    if shape != (self.n_lines, self.width):
                        raise ValueError(f"shape {shape}")
                    good = self._good_records(records, lambda lines, n_tokens: True, note)
                else:
                    good = self._good_records(records, lambda lines, n_tokens: all(
                        self._holds(f, line, n) for line, n in zip(lines, n_tokens)), note)
                    extra = len(f) - int(self.done.sum())
        except (OSError, KeyError, ValueError) as e:
            self.done[:] = False
            note(f"{self.path} is damaged ({e}); embedding every line again")
            return None
        if self.layers != "default" and extra:
            # Datasets of windows written but not journaled (a kill between the two), or
            # of records that did not fit: their lines are embedded again.
            with self._open() as f:
                for name in [name for name in f if not self.done[int(name)]]:
                    del f[name]
        return len(JOURNAL_MAGIC) + sum(_RECORD.size + 16 * len(lines) + 4
                                        for lines, _, _, _ in records[:good])

    def _good_records(self, records: list, held: Callable, note: Callable[[str], None]) -> int:
        """How many records, from the first, fit this run and the file; marks their lines."""
        for good, (lines, n_tokens, _, _) in enumerate(records):
            fits = (len(lines) > 0 and lines.min() >= 0 and lines.max() < self.n_lines
                    and np.all(np.diff(lines) > 0) and np.all(n_tokens >= 0)
                    and not self.done[lines].any() and held(lines, n_tokens))
            if not fits:
                note(f"{self.parts / JOURNAL}: record {good + 1} does not fit what was saved; "
                     "embedding its lines and those after it again")
                return good
            self.done[lines] = True
        return len(records)

    def _holds(self, f: h5py.File, line: int, n_tokens: int) -> bool:
        dataset = f.get(str(int(line)))
        return isinstance(dataset, h5py.Dataset) and dataset.shape == self._shape(n_tokens)

    def add(self, window: Window) -> None:
        """Writes a window's values, puts them on disk, then journals them."""
        values = np.ascontiguousarray(window.values, np.float32)
        if self.layers != "default":  # (default's rows have their space from the start)
            # A full disk is met here, as an OSError, not inside HDF5 (`atomic.reserve`).
            atomic.reserve(self.path, self.path.stat().st_size
                           + atomic.hdf5_size(values.nbytes, len(window.lines)))
        with self._open() as f:
            if self.layers == "default":
                dataset = f[SENTENCE_DATASET]
                # Consecutive lines go in as one write (a window is usually a single run).
                breaks = np.flatnonzero(np.diff(window.lines) != 1) + 1
                for rows in np.split(np.arange(len(window.lines)), breaks):
                    first = int(window.lines[rows[0]])
                    dataset[first: first + len(rows)] = values[rows[0]: rows[-1] + 1]
            else:
                self._add_lines(f, window.lines, window.n_tokens, values.reshape(-1))
        self.journal.write(_record(window.lines, window.n_tokens, 0, values.nbytes))
        self._sync_journal()
        self.done[window.lines] = True

    def _add_lines(self, f: h5py.File, lines: np.ndarray, n_tokens: np.ndarray,
                   flat: np.ndarray) -> None:
        # h5py's low-level calls: the high-level `create_dataset` spends most of its time
        # on argument handling that these fixed float32 datasets do not need. One dataspace
        # per shape, and the memory type given: h5py would otherwise make both anew for
        # every line, about a quarter of the time a line takes here (`python
        # benchmarks/bench_embed.py` times embed against the module alone).
        dcpl = _dataset_plist()
        per_token = int(np.prod(self.lead, dtype=np.int64)) * self.width
        spaces: dict[int, h5py.h5s.SpaceID] = {}
        at = 0
        for line, n in zip(lines.tolist(), n_tokens.tolist()):
            space = spaces.get(n)
            if space is None:
                space = spaces[n] = h5py.h5s.create_simple(self._shape(n))
            dataset = h5py.h5d.create(f.id, str(line).encode(), h5py.h5t.IEEE_F32LE, space,
                                      dcpl=dcpl)
            if n:
                dataset.write(space, space, flat[at: at + n * per_token],
                              mtype=h5py.h5t.NATIVE_FLOAT)
                at += n * per_token

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
        """Renames the complete file (every line must be in) to `output`."""
        if not self.done.all():
            raise EmbedError(f"{self.parts}: {int((~self.done).sum())} lines are missing, the "
                             f"first line {int(np.argmin(self.done))}; run again with --resume")
        os.replace(self.path, output)  # on disk already: each window's close synced it
        atomic.fsync_path(output.parent)

    def close(self) -> None:
        """Lets go of the journal, finished or not (the hdf5 file is open only in `add`)."""
        if self.journal is not None:
            self.journal.close()
            self.journal = None

    def _sync_journal(self) -> None:
        self.journal.flush()
        os.fdatasync(self.journal.fileno())
