"""Embed a corpus with an exported module, into the hdf5 layout of bilm-tf's dumps.

`embed(module, input, output)` is bilm-tf's `dump_bilm_embeddings`, batched and
restartable. The input holds one tokenized sentence per line; tokens are split on
whitespace, as bilm-tf's `line.strip().split()` does. Line i (counting from 0, empty
lines included) becomes, by `layers`:

    "all"      dataset str(i), float32 (L + 1, n_tokens, 2P): layer 0 is
               [word_emb, word_emb], then lstm_outputs1 .. lstm_outputsL
               (L = 2: the (3, n_tokens, 1024) of the original model)
    "elmo"     dataset str(i), float32 (n_tokens, E)
    "default"  row i of one dataset `sentence_embeddings`, float32 (n_lines, E)

An empty line gives n_tokens = 0 (and a zero `default` row). The numbers are the
module's `tokens` signature's. bilm-tf's biLM is stateful (each batch starts from the
LSTM states the previous one ended with); the exported module is not, so a sentence's
embedding does not depend on the lines before it or on what shares its batch.

Speed: lines are read `window` at a time, their sentences sorted by length and cut into
batches of `batch_size`, so little padding is computed. Each window's outputs are placed,
as the batches come, in the byte order of the output file, and written once, by a thread
whose file writes release the GIL while the module computes (see `corpus.store`). Memory
holds at most three windows (one computed, one queued, one being written), whatever the
corpus size; a written window's memory is used again for the next (`Buffers`).

Long lines: a line of more than `max_tokens` tokens is cut into consecutive pieces of at
most `max_tokens` tokens, each embedded as a sentence of its own (the LSTMs start from
zero at every piece, so no context crosses a cut), and the pieces' outputs are joined
along the tokens; its `default` is the mean over all of its tokens.

Surviving a kill: the output is written beside its final name, in `<output>.parts/`,
with a journal of the windows on disk, and appears, complete, only at the end (see
`corpus.store`); `resume=True` keeps what the journal records and embeds only the rest.
So `<output>` is absent, the previous complete file, or the new complete file, and never
half-written.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import hashlib
import json
import os
import queue
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Iterable, Iterator

import h5py
import numpy as np
import tensorflow as tf

from hub_export import atomic
from hub_export.corpus.store import (
    LOCK_FILE,
    PARTIAL,
    RUN_FILE,
    SENTENCE_DATASET,
    EmbedError,
    Store,
    Window,
    journaled_lines,
    locked,
    parts_dir,
    write_json,
)
from hub_export.errors import HubExportError, OutputExistsError
from hub_export.files import sha256_files
from hub_export.textfiles import decode_line, open_user_file

LAYER_CHOICES = ("all", "elmo", "default")
DEFAULT_BATCH_SIZE = 64
DEFAULT_MAX_TOKENS = 256
WINDOW_BATCHES = 8  # default window: this many batches' worth of lines
_RUN_FORMAT = 1
COMPLETE = "output.complete"  # in the parts directory: the finished output, then linked to --output


@dataclasses.dataclass(frozen=True)
class EmbedResult:
    """What `embed` did.

    Args:
        path: Path. The output file.
        lines: int. Lines in the input (all of them are in the output).
        embedded: int. Lines embedded by this call.
        resumed: int. Lines a killed run had already saved, kept rather than computed.
        tokens: int. Tokens embedded by this call.
        seconds: float. Wall time from the first batch to the output in place.
    """

    path: Path
    lines: int
    embedded: int
    resumed: int
    tokens: int
    seconds: float


# --------------------------------------------------------------------------- module


@dataclasses.dataclass(frozen=True)
class LoadedModule:
    """An exported module's `tokens` signature and the widths of its outputs.

    Args:
        path: Path. The version directory.
        fn: the `tokens` concrete function: (tokens string [B, T], sequence_len int32 [B])
            -> the `signatures.outputs` dict.
        word_dim: int. P, the width of `word_emb`.
        n_layers: int. L, the number of `lstm_outputs<k>`.
        elmo_dim: int. E, the width of `elmo` and `default`.
    """

    path: Path
    fn: object
    word_dim: int
    n_layers: int
    elmo_dim: int
    # The loaded SavedModel: the function's variables live as long as it does.
    owner: object = dataclasses.field(default=None, repr=False)

    def width(self, layers: str) -> int:
        """Last dimension of what `layers` writes."""
        return 2 * self.word_dim if layers == "all" else self.elmo_dim

    def run(self, sentences: list[list[str]], names: Iterable[str]) -> dict[str, np.ndarray]:
        """Token lists (at least one token each) -> the outputs `names`, as numpy."""
        lengths = np.fromiter((len(s) for s in sentences), np.int32, len(sentences))
        tokens = np.full((len(sentences), int(lengths.max())), "", dtype=object)
        for row, sentence in enumerate(sentences):
            tokens[row, : len(sentence)] = sentence
        out = self.fn(tokens=tf.constant(tokens, tf.string), sequence_len=tf.constant(lengths))
        # np.asarray, not .numpy(): a read-only view of the tensor's memory, where .numpy()
        # copies it (`python benchmarks/bench_embed.py` times embed against the module).
        return {name: np.asarray(out[name]) for name in names}


def check_module_dir(path: str | os.PathLike) -> Path:
    """Fails early, before a long corpus scan, on a path that cannot be a module."""
    path = Path(path)
    if not path.is_dir():
        raise EmbedError(f"--module: {path}: no such directory (give an export's version "
                         "directory, e.g. exported/elmo/3)")
    if not (path / "saved_model.pb").is_file():
        versions = sorted((int(p.name) for p in path.iterdir()
                           if p.name.isdigit() and (p / "saved_model.pb").is_file()))
        hint = (f"; it holds the version directories {', '.join(map(str, versions))}: give "
                f"one, e.g. --module {path / str(versions[-1])}" if versions else
                "; give an export's version directory, e.g. exported/elmo/3")
        raise EmbedError(f"--module: {path} is not an exported module (no saved_model.pb){hint}")
    return path


def load_module(path: str | os.PathLike) -> LoadedModule:
    """Loads an exported module (a version directory such as exported/elmo/3).

    Raises:
        EmbedError: the directory is missing, is not a SavedModel, or is a SavedModel
            without the `tokens` signature and the outputs of `signatures.outputs`.
    """
    path = check_module_dir(path)
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as e:  # TF raises a zoo of types for a damaged SavedModel
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EmbedError(f"--module: {path}: cannot load the SavedModel: {first}") from None
    fn = loaded.signatures.get("tokens")
    if fn is None:
        raise EmbedError(f"--module: {path} is a SavedModel but not a hub_export module: it has "
                         f"no 'tokens' signature (it has: {', '.join(sorted(loaded.signatures)) or 'none'})")
    outputs = fn.structured_outputs
    n_layers = 0
    while f"lstm_outputs{n_layers + 1}" in outputs:
        n_layers += 1
    missing = [k for k in ("word_emb", "elmo", "default") if k not in outputs]
    if missing or n_layers == 0:
        raise EmbedError(f"--module: {path}: the 'tokens' signature lacks the outputs "
                         f"{', '.join(missing or ['lstm_outputs1'])} (has: {', '.join(sorted(outputs))})")
    return LoadedModule(path=path, fn=fn, word_dim=int(outputs["word_emb"].shape[-1]),
                        n_layers=n_layers, elmo_dim=int(outputs["elmo"].shape[-1]), owner=loaded)


def module_fingerprint(path: Path) -> str:
    """sha256 over the SavedModel's graph and variables: which module made the parts."""
    return sha256_files([path / "saved_model.pb"] + sorted((path / "variables").glob("*")))


# --------------------------------------------------------------------------- corpus


@dataclasses.dataclass(frozen=True)
class CorpusInfo:
    """A checked corpus: every line is UTF-8.

    Args:
        path: Path.
        lines: int. Number of lines, as Python iterates them (a last line without a
            newline counts; the empty string after a final newline does not).
        sha256: str. Of the bytes, to tell a resumed run's input from another.
    """

    path: Path
    lines: int
    sha256: str


def _open_input(path: Path) -> IO[bytes]:
    return open_user_file(path, "--input", "text file", EmbedError)


def scan_corpus(path: str | os.PathLike) -> CorpusInfo:
    """Counts the lines and checks that they are UTF-8, in one streaming pass.

    Raises:
        EmbedError: the file is missing or unreadable, or a line is not UTF-8 (named
            with its line number and the offending byte).
    """
    path = Path(path)
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    newlines = 0
    last = b""
    with _open_input(path) as f:
        try:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
                try:
                    decoder.decode(block)
                except UnicodeDecodeError:
                    _raise_not_utf8(path)
                newlines += block.count(b"\n")
                last = block[-1:]
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                _raise_not_utf8(path)
        except OSError as e:
            raise EmbedError(f"--input: {path}: cannot read: {e.strerror or e}") from None
    lines = newlines + (1 if last not in (b"", b"\n") else 0)
    return CorpusInfo(path=path, lines=lines, sha256=digest.hexdigest())


def _raise_not_utf8(path: Path) -> None:
    # Found in a block; now find the line, reading line by line (rare, so slow is fine).
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            decode_line(line, number, path, "--input", EmbedError)
    raise EmbedError(f"--input: {path}: not UTF-8")


def read_corpus(path: str | os.PathLike) -> Iterator[tuple[int, list[str]]]:
    """(line index, tokens) for every line; tokens split on whitespace like bilm-tf."""
    with _open_input(Path(path)) as f:
        for index, line in enumerate(f):
            yield index, line.decode("utf-8").split()


# --------------------------------------------------------------------------- batching


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices of `lengths` sorted by length (ties in input order), cut into batches."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


class Buffers:
    """Memory for windows' values, used again once a window is written.

    A window's values are tens of MB. A new array of that size is pages the kernel must
    find and zero as the copies first touch them, for every window, while the module
    waits; an array a written window gave back is ready. (`python
    benchmarks/bench_embed.py` times embed against the module alone.) At most one array
    per window in flight is kept.
    """

    def __init__(self):
        self._free: queue.SimpleQueue = queue.SimpleQueue()

    def take(self, shape: tuple[int, int]) -> np.ndarray:
        """An uninitialised float32 array of `shape`."""
        size = shape[0] * shape[1]
        try:
            memory = self._free.get_nowait()
        except queue.Empty:
            memory = None
        if memory is None or memory.size < size:
            # Room for a somewhat larger window too, so that most windows find a fit.
            memory = np.empty(size + size // 4, np.float32)
        return memory[:size].reshape(shape)

    def give(self, values: np.ndarray) -> None:
        """Returns the memory of an array `take` gave, once nothing reads it any more."""
        self._free.put(values.base)  # `take` gives views of the memory it keeps


def embed_window(module: LoadedModule, window: list[tuple[int, list[str]]], layers: str,
                  batch_size: int, max_tokens: int, meter: "_Meter",
                  buffers: Buffers | None = None) -> Window:
    n_tokens = np.fromiter((len(tokens) for _, tokens in window), np.int64, len(window))
    offsets = np.concatenate([[0], np.cumsum(n_tokens)])  # line k's tokens start here
    width = module.width(layers)
    P = module.word_dim
    J = module.n_layers + 1
    # all: line after line, its [J, n, 2P] block (the bytes the output holds); elmo: its
    # [n, E] block; default: a row a line.
    rows = {"all": J * int(offsets[-1]), "elmo": int(offsets[-1]), "default": len(window)}[layers]
    values = (np.empty((rows, width), np.float32) if buffers is None
              else buffers.take((rows, width)))
    if layers == "default":
        values[:] = 0  # empty lines keep their zero row: the module's `default` of no tokens

    # Every piece of every line: its line (in the window), where it starts in the line,
    # and its tokens.
    piece_line, piece_start, piece_tokens = [], [], []
    for k, (_, tokens) in enumerate(window):
        for start in range(0, len(tokens), max_tokens):
            piece_line.append(k)
            piece_start.append(start)
            piece_tokens.append(tokens[start: start + max_tokens])
    piece_line = np.asarray(piece_line, np.int64)
    piece_start = np.asarray(piece_start, np.int64)
    piece_len = np.fromiter(map(len, piece_tokens), np.int64, len(piece_tokens))
    names = {"all": ["word_emb"] + [f"lstm_outputs{j}" for j in range(1, module.n_layers + 1)],
             "elmo": ["elmo"], "default": ["default"]}[layers]
    line_start, line_len = offsets.tolist(), n_tokens.tolist()
    for batch in length_batches(piece_len.tolist(), batch_size):
        batch = np.asarray(batch)
        n, k = piece_len[batch], piece_line[batch]
        out = module.run([piece_tokens[i] for i in batch], names)
        if layers == "default":
            whole = n == n_tokens[k]  # the line's only piece: the module's number, as is
            values[k[whole]] = out["default"][whole]
            # A piece of a long line: weighted by its tokens, divided by the line's below.
            np.add.at(values, k[~whole], out["default"][~whole] * n[~whole, None])
        else:
            # Each piece's rows, copied once into their place in the line's block (slices:
            # a copy of a few rows at a time, where a gather and a scatter of the batch's
            # rows would copy every value twice).
            outputs = [out[name] for name in names]
            for row, (line, start, m) in enumerate(zip(k.tolist(), piece_start[batch].tolist(),
                                                       n.tolist())):
                first, count = line_start[line], line_len[line]
                if layers == "elmo":
                    values[first + start: first + start + m] = outputs[0][row, :m]
                else:
                    block = values[J * first: J * (first + count)].reshape(J, count, width)
                    word = outputs[0][row, :m]
                    block[0, start: start + m, :P] = word
                    block[0, start: start + m, P:] = word
                    for layer in range(1, J):
                        block[layer, start: start + m] = outputs[layer][row, :m]
        meter.add(lines=int(np.sum(piece_start[batch] + n == n_tokens[k])), tokens=int(n.sum()))
    if layers == "default":
        split = n_tokens > max_tokens
        values[split] /= n_tokens[split, None].astype(np.float32)
    meter.add(lines=int(np.sum(n_tokens == 0)), tokens=0)
    lines = np.fromiter((index for index, _ in window), np.int64, len(window))
    return Window(lines=lines, n_tokens=n_tokens, values=values)


def _windows(lines: Iterable[tuple[int, list[str]]], done: np.ndarray | None,
             size: int) -> Iterator[list[tuple[int, list[str]]]]:
    window = []
    for index, tokens in lines:
        if done is not None and done[index]:
            continue
        window.append((index, tokens))
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


class _Writer(threading.Thread):
    """Saves each window (`Store.add`) off the main thread.

    A window's values are written once, into the output being assembled, by calls that
    release the GIL (a file write, a flush to disk), so the module's calls go on meanwhile.
    The queue holds one window: memory holds at most three, one being computed, one
    queued, one being written.
    """

    def __init__(self, parts: Path, store: Store, buffers: Buffers):
        super().__init__(name="hub_export-embed-writer", daemon=True)
        self.parts = parts
        self.store = store
        self.buffers = buffers
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.error: BaseException | None = None

    def run(self) -> None:
        while True:
            window = self.queue.get()
            if window is None:
                return
            try:
                self.store.add(window)
                self.buffers.give(window.values)
            except BaseException as e:  # handed to the main thread, raised there
                self.error = e
                return

    def put(self, window: Window | None) -> None:
        # A short timeout, so that a writer that died is noticed instead of waited for.
        while True:
            self._raise_error()
            try:
                self.queue.put(window, timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        self.put(None)
        self.join()
        self._raise_error()

    def _raise_error(self) -> None:
        if self.error is not None:
            e = self.error
            if isinstance(e, EmbedError):
                raise e
            reason = atomic.os_reason(e)
            if reason is not None:
                raise EmbedError(_cannot_write(self.parts, reason)) from None
            raise EmbedError(f"writing {self.parts}: {type(e).__name__}: {e}") from e


# --------------------------------------------------------------------------- progress


class _Meter:
    """`embed: 3,072/100,000 lines (3%)  2,310 sentences/s  57,400 tokens/s  ETA 0:42`.

    Redrawn in place at most 4 times a second on a terminal; elsewhere (a log file) a
    line every 10 seconds. Silent when `stream` is None.
    """

    def __init__(self, total: int, already: int, stream: IO[str] | None):
        self.total = total
        self.done = already
        self.lines = 0
        self.tokens = 0
        self.stream = stream
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self.last = 0.0

    def add(self, lines: int, tokens: int) -> None:
        self.lines += lines
        self.tokens += tokens
        self.done += lines
        now = time.perf_counter()
        if self.stream is not None and now - self.last >= (0.25 if self.tty else 10.0):
            self.last = now
            self._write(self._text(now), final=False)

    def finish(self) -> None:
        if self.stream is not None:
            self._write(self._text(time.perf_counter()), final=True)

    def _text(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.lines / elapsed
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        percent = 100.0 * self.done / self.total if self.total else 100.0
        return (f"embed: {self.done:,}/{self.total:,} lines ({percent:.0f}%)  "
                f"{rate:,.0f} sentences/s  {self.tokens / elapsed:,.0f} tokens/s  "
                f"ETA {int(left) // 60}:{int(left) % 60:02d}")

    def _write(self, text: str, final: bool) -> None:
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K" + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


# --------------------------------------------------------------------------- the run


def check_flags(layers: str, batch_size: int, max_tokens: int, window: int | None,
                 resume: bool, overwrite: bool) -> None:
    if layers not in LAYER_CHOICES:
        raise EmbedError(f"--layers: got {layers!r}; allowed: {', '.join(LAYER_CHOICES)}")
    for flag, value in (("--batch-size", batch_size), ("--max-tokens", max_tokens),
                        ("--window", window)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise EmbedError(f"{flag}: must be a positive integer, got {value!r}")
    if resume and overwrite:
        raise EmbedError("--resume and --overwrite contradict each other: --resume finishes an "
                         "interrupted run, --overwrite starts over")


def check_resumable(parts: Path, run: dict, saved: dict) -> None:
    """Refuses to resume a run that had another module, input or output flags."""
    for key, what in (("input_sha256", "input file"), ("input_lines", "input file"),
                      ("module_sha256", "module")):
        if saved.get(key) != run[key]:
            raise EmbedError(
                f"--resume: {parts} belongs to a run with another {what} ({saved.get(key.split('_')[0])}); "
                "resume with the same --input and --module, or pass --overwrite to start over")
    for key, flag in (("layers", "--layers"), ("max_tokens", "--max-tokens")):
        if saved.get(key) != run[key]:
            raise EmbedError(f"--resume: {parts} was started with {flag} {saved.get(key)}, this "
                             f"run asks for {flag} {run[key]}; use the same {flag}, or pass "
                             "--overwrite to start over")


def _check_complete_output(output: Path, layers: str, n_lines: int) -> None:
    """An existing output asked to be resumed: it must already hold every line."""
    try:
        with h5py.File(output, "r") as f:
            if layers == "default":
                ok = SENTENCE_DATASET in f and f[SENTENCE_DATASET].shape[0] == n_lines
            else:
                ok = len(f) == n_lines and all(str(i) in f for i in {0, n_lines - 1} if n_lines)
    except OSError as e:
        raise EmbedError(f"--resume: {output} exists but is not readable hdf5 ({e}); pass "
                         "--overwrite to replace it") from None
    if not ok:
        raise EmbedError(f"--resume: {output} exists and does not hold the {n_lines} lines of "
                         f"the input with --layers {layers}; pass --overwrite to replace it")


def _finished(output: Path, layers: str, n_lines: int, holding: bool = True) -> EmbedResult:
    """A resume of a run whose output is in place: check it, remove what is left of the
    run (if this process does not hold the parts' lock yet, only if it can take it: a
    run writing there now keeps its parts)."""
    _check_complete_output(output, layers, n_lines)
    parts = parts_dir(output)
    with contextlib.ExitStack() as lock:
        if not holding:
            if not parts.exists():
                return _resumed(output, n_lines)
            try:
                lock.enter_context(locked(parts))
            except EmbedError:
                return _resumed(output, n_lines)
        (parts / RUN_FILE).unlink(missing_ok=True)  # first: without it the rest is leftovers
        _discard(parts)
    return _resumed(output, n_lines)


def _resumed(output: Path, n_lines: int) -> EmbedResult:
    return EmbedResult(path=output, lines=n_lines, embedded=0, resumed=n_lines, tokens=0,
                       seconds=0.0)


def check_output(output: Path, resume: bool, overwrite: bool) -> bool:
    """Refuses an output that is a folder, or that exists or has an unfinished run while
    neither --resume nor --overwrite says what to do. Returns whether a run is unfinished."""
    has_run = (parts_dir(output) / RUN_FILE).is_file()
    if output.is_dir():
        raise EmbedError(f"--output: {output} is a directory; give a file name such as "
                         "embeddings.hdf5")
    if not (resume or overwrite):
        if has_run:
            raise EmbedError(f"--output: {output} is already being written: "
                             f"{parts_dir(output)} holds an unfinished run (killed, stopped, or "
                             "running now); pass --resume to finish it, or --overwrite to start "
                             "over")
        # An early refusal; the one that holds against a concurrent run is the link that
        # puts the output in place (`_publish`).
        if output.exists():
            raise OutputExistsError(atomic.exists_message(
                output, "--output", ", or --resume if it is this run's"))
    return has_run


def run_record(module: Path, corpus: CorpusInfo, layers: str, max_tokens: int,
               overwrite: bool = False) -> dict:
    """What `<output>.parts/run.json` records of a run: a resume must match it (and
    replaces an existing output only if the run was started with --overwrite)."""
    return {"format": _RUN_FORMAT, "module": str(module.resolve()),
            "module_sha256": module_fingerprint(module),
            "input": str(corpus.path.resolve()), "input_sha256": corpus.sha256,
            "input_lines": corpus.lines, "layers": layers, "max_tokens": max_tokens,
            "overwrite": overwrite}


def _cannot_write(where: Path, reason: str) -> str:
    return (f"--output: cannot write in {where}: {reason}; what was embedded is kept there: "
            "free space (or fix the folder) and run again with --resume")


@contextlib.contextmanager
def writing(parts: Path) -> Iterator[None]:
    """Reports an OS failure (full disk, read-only, no permission) while the output is
    assembled in `parts` as one EmbedError that says how to go on."""
    try:
        yield
    except HubExportError:
        raise
    except Exception as e:
        reason = atomic.os_reason(e)
        if reason is None:
            raise
        raise EmbedError(_cannot_write(parts, reason)) from None


def _publish(parts: Path, output: Path, overwrite: bool) -> None:
    """Puts the finished output (`<parts>/output.complete`) in place: a link, refused if
    the output exists (so that of several runs writing one output, one wins), or a
    replace with `overwrite`. A link made before a kill is recognised as this run's."""
    complete = parts / COMPLETE
    try:
        atomic.publish_file(complete, output, overwrite, "--output")
    except OutputExistsError:
        if not os.path.samefile(complete, output):
            raise


def _discard(parts: Path) -> None:
    """Removes a run's parts directory. It is renamed away first (under the run's lock),
    so that a run starting now makes a new one instead of sharing the one being removed."""
    trash = parts.with_name(f".{parts.name}.removed-{uuid.uuid4().hex}")
    try:
        os.rename(parts, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def start(output: str | os.PathLike, layers: str, batch_size: int, max_tokens: int,
          window: int | None, resume: bool, overwrite: bool) -> tuple[Path, Path, int, bool]:
    """The checks every run begins with, here or on Beam: (output, its parts directory,
    the window, whether an unfinished run is there)."""
    check_flags(layers, batch_size, max_tokens, window, resume, overwrite)
    output = Path(output)
    parts = parts_dir(output)
    has_run = check_output(output, resume, overwrite)
    atomic.check_writable(output, f"; what was embedded is kept in {parts}" if has_run
                          else "; nothing was embedded")
    return output, parts, window or WINDOW_BATCHES * batch_size, has_run


def start_afresh(parts: Path, run: dict) -> None:
    """Empties the (locked) parts directory and records the new run: nothing from before
    counts."""
    for entry in parts.iterdir():
        if entry.name != LOCK_FILE:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    write_json(parts / RUN_FILE, run)


def embed(module: str | os.PathLike, input: str | os.PathLike, output: str | os.PathLike,
          layers: str = "all", batch_size: int = DEFAULT_BATCH_SIZE,
          max_tokens: int = DEFAULT_MAX_TOKENS, window: int | None = None, resume: bool = False,
          overwrite: bool = False, progress: IO[str] | None = None) -> EmbedResult:
    """Embeds every line of `input` with the module and writes `output` (see the module doc).

    Args:
        module: an export's version directory (e.g. exported/elmo/3).
        input: a UTF-8 text file, one tokenized sentence per line.
        output: the hdf5 file to write.
        layers: "all", "elmo" or "default".
        batch_size: int. Sentences (or pieces of long lines) per module call.
        max_tokens: int. Longer lines are embedded in pieces of this many tokens.
        window: int or None. Lines sorted by length together, and saved together (a
            kill loses at most the windows in flight); None: 8 batches' worth.
        resume: finish the run a kill interrupted, from `<output>.parts`.
        overwrite: replace an existing output (only once the new one is complete).
        progress: stream for the progress line (sys.stderr); None for silence.

    Returns:
        EmbedResult.

    Raises:
        EmbedError: naming the flag, file, line or value that is wrong.
    """
    output, parts, window, has_run = start(output, layers, batch_size, max_tokens, window,
                                           resume, overwrite)
    check_module_dir(module)
    corpus = scan_corpus(input)
    if resume and output.exists() and not has_run:
        # The run was finished: its parts directory goes only after the output is in place.
        return _finished(output, layers, corpus.lines, holding=False)
    loaded = load_module(module)
    width = loaded.width(layers)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EmbedError(f"--output: cannot create {output.parent}: {e.strerror or e}") from None

    run = run_record(loaded.path, corpus, layers, max_tokens, overwrite)
    with writing(parts), locked(parts):
        if resume and has_run and not (parts / RUN_FILE).is_file():
            # Finished by a run that held the lock meanwhile.
            return _finished(output, layers, corpus.lines)
        if resume and has_run:
            saved = json.loads((parts / RUN_FILE).read_text())
            check_resumable(parts, run, saved)
            # Runs before the record said so replaced an existing output.
            overwrite = saved.get("overwrite", True)
            if (parts / COMPLETE).exists() and journaled_lines(parts) == corpus.lines:
                # Killed between completing the output and putting it in place.
                _publish(parts, output, overwrite)
                return _finished(output, layers, corpus.lines)
            if (output.exists() and not (parts / PARTIAL).exists()
                    and journaled_lines(parts) == corpus.lines):
                # Killed between putting the output in place and removing the parts.
                return _finished(output, layers, corpus.lines)
        else:
            start_afresh(parts, run)
        # What a kill left of a part or run.json being written (their staging folders).
        atomic.recover(parts, ".")

        note = (lambda text: progress.write(f"embed: {text}\n")) if progress is not None else (
            lambda text: None)
        store = Store(parts, layers, corpus.lines, loaded.n_layers + 1, width,
                      resume=resume and has_run, note=note)
        try:
            for path in sorted(parts.glob("part-*.hdf5")):  # saved by the Beam pipeline's workers
                store.add_part(path)
            done = store.done
            resumed = int(done.sum())
            if resumed and progress is not None:
                progress.write(f"embed: {resumed:,} of {corpus.lines:,} lines were already "
                               f"embedded in {parts}; embedding the rest\n")
            meter = _Meter(corpus.lines, resumed, progress)
            buffers = Buffers()
            writer = _Writer(parts, store, buffers)
            writer.start()
            try:
                for lines in _windows(read_corpus(corpus.path), done.copy() if resumed else None, window):
                    writer.put(embed_window(loaded, lines, layers, batch_size, max_tokens, meter,
                                            buffers))
                writer.close()
            finally:
                if writer.is_alive():  # stopped by an error: let it drain, keep what it saved
                    writer.queue.put(None)
                    writer.join()
            store.finish(parts / COMPLETE)
        finally:
            store.close()
        meter.finish()
        try:
            _publish(parts, output, overwrite)
        except OutputExistsError:
            # Another run put its output in place first: this one's is not wanted.
            (parts / RUN_FILE).unlink()
            _discard(parts)
            raise
        # run.json goes first: a parts directory without it is only leftovers.
        (parts / RUN_FILE).unlink()
        _discard(parts)
    return EmbedResult(path=output, lines=corpus.lines, embedded=meter.lines,
                       resumed=resumed, tokens=meter.tokens,
                       seconds=time.perf_counter() - meter.start)

