"""Where `embed` keeps its results until the output is complete, so that a kill costs nothing.

HDF5 keeps a file's metadata (B-trees, heaps, object headers) in a cache and writes it
back when it likes, updating structures in place; a process killed while a file is open
for writing can leave that file unreadable, even one flushed a moment before. So no
hdf5 file here is ever written under its final name:

* Every finished window of lines is a part, `<output>.parts/part-<first line>.hdf5`,
  written under a temporary name, flushed to disk and renamed: a part is complete or
  absent. A part holds `line_index` int64 [k], `n_tokens` int64 [k] and `values`, the
  lines' outputs joined along the tokens (all: [L+1, sum n, 2P]; elmo: [sum n, E];
  default: [k, E]).
* The output is assembled in `<output>.parts/assembling.hdf5`, a scratch file, by a
  separate process (`python -m hub_export.embed_store`: h5py holds the GIL while it
  writes a part), then renamed to `<output>` once every line is in. The one-dataset-a-line
  layouts are written by `FlatHdf5Writer`, not libhdf5: at about 100 us of CPU a dataset,
  libhdf5 took a fifth of the module's speed on two cores.
* `<output>.parts/run.json` records the module, the input and the flags; a resume with
  other ones is refused rather than mixing two runs' numbers. It is written before any
  part and removed right after the output is in place, so a parts directory without it
  holds nothing of value.

A resume throws the scratch file away, rebuilds it from the parts (copying, not
recomputing) and embeds only the lines that no part holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from hub_export.errors import HubExportError
from hub_export.flat_hdf5 import FlatHdf5Writer

SENTENCE_DATASET = "sentence_embeddings"  # the one dataset of layers="default"
PART_FORMAT = "hub_export.embed.part/1"
RUN_FILE = "run.json"
LOCK_FILE = "lock"
ASSEMBLING = "assembling.hdf5"
# The oldest file format, h5py's default and what bilm-tf itself writes: readable by every
# HDF5 reader, and (measured) no slower than the newer formats for 10^5 small datasets.
LIBVER = "earliest"


class EmbedError(HubExportError, ValueError):
    """A corpus, module, output or flag of `embed` is missing, unreadable or inconsistent."""


@dataclasses.dataclass
class Window:
    """Lines embedded and saved together, in the part layout (see the module doc)."""

    lines: np.ndarray  # int64 [k], increasing
    n_tokens: np.ndarray  # int64 [k]
    values: np.ndarray | None  # None when read without values


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
            raise EmbedError(f"{parts}: another embed run is writing this output; let it "
                             "finish (or stop it) first") from None
        yield
    finally:
        os.close(fd)  # the lock goes with it, and with the process if it is killed


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


def read_part(path: Path, layers: str, n_lines: int, width: int, values: bool = True) -> Window:
    """A saved part, checked against the run; EmbedError names the part if it does not fit."""
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
    expected = {"all": (shape[0], total, width), "elmo": (total, width),
                "default": (len(window.lines), width)}[layers]
    if (window.lines.shape != window.n_tokens.shape or shape != expected or len(window.lines) == 0
            or window.lines.min() < 0 or window.lines.max() >= n_lines
            or np.any(np.diff(window.lines) <= 0)):
        raise EmbedError(f"{path}: its datasets do not fit this run (lines "
                         f"{window.lines[:3].tolist()}..., values {shape}); {advice}")
    return window


class Assembler:
    """Writes lines into the scratch file in the output layout.

    One dataset per line (`all`, `elmo`) goes through `FlatHdf5Writer`, which appends the
    values as they come and writes the datasets' metadata at the end.
    """

    def __init__(self, path: Path, layers: str, n_lines: int, width: int):
        self.path = path
        self.layers = layers
        self.n_lines = n_lines
        self.width = width
        self.file = None
        self.table = None
        self.lines = None  # FlatHdf5Writer, made at the first window (it gives L + 1)
        if layers == "default":
            self.file = h5py.File(path, "w", libver=LIBVER)
            # Rows never written keep the fill value 0 (only lines with no tokens).
            self.table = self.file.create_dataset(SENTENCE_DATASET, (n_lines, width), np.float32)

    def add(self, window: Window) -> None:
        if self.table is not None:
            # Consecutive lines go in as one slice (a window is usually a single run).
            breaks = np.flatnonzero(np.diff(window.lines) != 1) + 1
            for rows in np.split(np.arange(len(window.lines)), breaks):
                first = int(window.lines[rows[0]])
                self.table[first: first + len(rows)] = window.values[rows[0]: rows[-1] + 1]
            return
        values = window.values
        if self.lines is None:
            lead = (values.shape[0],) if self.layers == "all" else ()
            self.lines = FlatHdf5Writer(self.path, self.n_lines, lead, (self.width,))
        if self.layers == "all":
            values = _line_major(values, window.n_tokens)
        self.lines.add(window.lines, window.n_tokens, np.ascontiguousarray(values, np.float32))

    def finish(self) -> None:
        """Completes the file (every line must have been added)."""
        if self.table is not None:
            self.file.close()
            return
        if self.lines is None:  # an input without lines: a file without datasets
            self.lines = FlatHdf5Writer(self.path, self.n_lines, (), (self.width,))
        self.lines.close()

    def close(self) -> None:
        """Lets go of the file, finished or not."""
        if self.file is not None and self.file.id.valid:
            self.file.close()
        if self.lines is not None:
            self.lines.abort()


def _line_major(values: np.ndarray, n_tokens: np.ndarray) -> np.ndarray:
    """[J, sum n, W] (layers outermost) -> the lines' [J, n, W] blocks back to back."""
    J, total, width = values.shape
    out = np.empty((J * total, width), np.float32)
    line = np.repeat(np.arange(len(n_tokens)), n_tokens)  # each token's line
    first = np.concatenate([[0], np.cumsum(n_tokens)[:-1]])[line]  # its line's first token
    token = np.arange(total)
    # Token t of line k, layer j goes to row J * first_k + j * n_k + (t - first_k).
    for j in range(J):
        out[(J - 1) * first + j * n_tokens[line] + token] = values[j]
    return out


def _die_with_parent() -> None:
    # Linux: be killed when the embed process dies, even by SIGKILL, instead of writing on
    # into a scratch file that a resume is about to replace.
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _read_exactly(stream, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise EOFError("the embed process stopped mid-window")
    return data


def _assemble_main(argv: list[str]) -> int:
    """The assembling process: commands on stdin, one a line.

    `window <k> <shape of values>` followed by the window's line_index (int64 [k]),
    n_tokens (int64 [k]) and values (float32) as raw bytes: save the part, then add it.
    `add <part path>`: add a part saved by an earlier run. `finish`: close the scratch
    file, flush it to disk and reply `done` on stdout. On a failure: reply
    `error: ...` and exit with status 1. At end of input: stop without finishing.
    """
    path = Path(argv[0])
    layers, n_lines, width, parent = argv[1], int(argv[2]), int(argv[3]), int(argv[4])
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the line above took effect
        return 1
    # Ctrl-C reaches the whole process group; the embed process decides what happens, and
    # closing our input lets us save what we were sent before we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin = sys.stdin.buffer
    assembler = None
    try:
        assembler = Assembler(path, layers, n_lines, width)
        for line in stdin:
            command, _, argument = line.decode("utf-8").rstrip("\n").partition(" ")
            if command == "window":
                k, *shape = (int(v) for v in argument.split())
                lines = np.frombuffer(_read_exactly(stdin, 8 * k), np.int64)
                n_tokens = np.frombuffer(_read_exactly(stdin, 8 * k), np.int64)
                values = np.frombuffer(_read_exactly(stdin, 4 * math.prod(shape)), np.float32)
                window = Window(lines=lines, n_tokens=n_tokens, values=values.reshape(shape))
                write_part(path.parent, window, layers)
                assembler.add(window)
            elif command == "add":
                assembler.add(read_part(Path(argument), layers, n_lines, width))
            elif command == "finish":
                assembler.finish()
                fsync_path(path)
                print("done", flush=True)
                return 0
            else:
                raise EmbedError(f"assembler: unknown command {command!r}")
    except EOFError:
        return 1
    except HubExportError as e:
        print(f"error: {e}", flush=True)
        return 1
    except Exception as e:  # disk full, a permission: the parent reports it
        print(f"error: writing {path.parent}: {type(e).__name__}: {e}", flush=True)
        return 1
    finally:
        if assembler is not None:
            assembler.close()
    return 1


class AssemblerProcess:
    """The embed process's handle on the assembling process (see `_assemble_main`).

    Saving parts and assembling run there rather than in a thread: h5py holds the GIL
    for each of its calls, which would stall the module's calls. Data goes over a pipe,
    whose writes release the GIL.
    """

    def __init__(self, path: Path, layers: str, n_lines: int, width: int):
        self.path = path
        # The child imports hub_export (not TensorFlow); make sure it finds this copy.
        package_root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hub_export.embed_store", str(path), layers, str(n_lines),
             str(width), str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)

    def add(self, part: Path) -> None:
        """Adds a part an earlier run saved."""
        self._send(f"add {part}\n".encode())

    def save(self, window: Window) -> None:
        """Saves a window as a part, then adds it."""
        values = np.ascontiguousarray(window.values, np.float32)
        header = " ".join(map(str, (len(window.lines), *values.shape)))
        self._send(f"window {header}\n".encode(),
                   np.ascontiguousarray(window.lines, np.int64).data,
                   np.ascontiguousarray(window.n_tokens, np.int64).data, values.data)

    def finish(self, output: Path) -> None:
        """Waits for every part to be in, then renames the scratch file to `output`."""
        self._send(b"finish\n")
        reply = self.proc.stdout.readline().decode("utf-8", "replace").strip()
        self.proc.wait()
        if reply != "done":
            self._raise(reply)
        os.replace(self.path, output)
        fsync_path(output.parent)

    def close(self) -> None:
        """Stops the process if it still runs (after an error or an interrupt), letting it
        first save the windows it was sent: they need not be computed again."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # end of input: it saves what it has, then stops
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):
            self.proc.stdout.close()

    def _send(self, *chunks) -> None:
        if self.proc.poll() is not None:
            self._raise(self.proc.stdout.read().decode("utf-8", "replace").strip())
        try:
            for chunk in chunks:
                self.proc.stdin.write(chunk)
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.proc.wait()
            self._raise(self.proc.stdout.read().decode("utf-8", "replace").strip())

    def _raise(self, reply: str) -> None:
        message = reply[len("error: "):] if reply.startswith("error: ") else (
            f"the assembling process stopped (exit status {self.proc.poll()}) {reply}".strip())
        raise EmbedError(message)


if __name__ == "__main__":
    sys.exit(_assemble_main(sys.argv[1:]))
