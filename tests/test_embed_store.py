"""`embed_store.Store`: each window written once into the output being assembled, a journal
of what is on disk, and a resume that keeps exactly what a killed run saved.

Synthetic windows (no module): what matters here is where the bytes go and what a resume
trusts, for each layout.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from hub_export.corpus.store import (
    JOURNAL,
    PARTIAL,
    SENTENCE_DATASET,
    EmbedError,
    Store,
    Window,
    journaled_lines,
    read_journal,
    write_part,
)

DEPTH, WIDTH, N_LINES = 3, 4, 40


def make_windows(layers: str, seed: int = 0, size: int = 7) -> list[Window]:
    """The corpus's lines in windows of `size`, with some empty lines, and their values."""
    rng = np.random.default_rng(seed)
    n_tokens = rng.integers(0, 6, N_LINES)
    n_tokens[[3, 17]] = 0
    windows = []
    for first in range(0, N_LINES, size):
        lines = np.arange(first, min(first + size, N_LINES))
        n = n_tokens[lines]
        rows = {"all": DEPTH * n.sum(), "elmo": n.sum(), "default": len(lines)}[layers]
        values = rng.standard_normal((rows, WIDTH)).astype(np.float32)
        windows.append(Window(lines=lines, n_tokens=n, values=values))
    return windows


def expected(windows: list[Window], layers: str) -> dict[str, np.ndarray]:
    """What the output must hold, from the windows' layout (see `Window`)."""
    if layers == "default":
        return {SENTENCE_DATASET: np.concatenate([w.values for w in windows])}
    out = {}
    for w in windows:
        at = 0
        for line, n in zip(w.lines, w.n_tokens):
            rows = DEPTH * n if layers == "all" else n
            block = w.values[at: at + rows]
            out[str(line)] = block.reshape(DEPTH, n, WIDTH) if layers == "all" else block
            at += rows
    return out


def assert_output(path, want: dict[str, np.ndarray]) -> None:
    with h5py.File(path, "r") as f:
        assert sorted(f.keys()) == sorted(want)
        for name, value in want.items():
            assert f[name].shape == value.shape, name
            np.testing.assert_array_equal(f[name][()], value, err_msg=name)


def new_store(parts, layers, resume=False, notes=None) -> Store:
    parts.mkdir(exist_ok=True)
    return Store(parts, layers, N_LINES, DEPTH, WIDTH, resume=resume,
                 note=(notes.append if notes is not None else lambda text: None))


def killed_after(parts, layers, windows: list[Window]) -> None:
    """A run that saved `windows` and was killed (no finish)."""
    store = new_store(parts, layers)
    for w in windows:
        store.add(w)
    store.close()


@pytest.mark.parametrize("layers", ["all", "elmo", "default"])
def test_windows_in_any_order_make_the_output(tmp_path, layers):
    windows = make_windows(layers)
    store = new_store(tmp_path / "parts", layers)
    for w in windows[::-1]:
        store.add(w)
    store.finish(tmp_path / "out.hdf5")
    store.close()
    assert not (tmp_path / "parts" / PARTIAL).exists()
    assert_output(tmp_path / "out.hdf5", expected(windows, layers))


@pytest.mark.parametrize("layers", ["all", "elmo", "default"])
def test_a_killed_run_resumes_with_what_it_saved(tmp_path, layers):
    windows = make_windows(layers)
    parts = tmp_path / "parts"
    killed_after(parts, layers, windows[:3])
    assert journaled_lines(parts) == 21
    again = new_store(parts, layers, resume=True)
    assert np.flatnonzero(again.done).tolist() == list(range(21))
    for w in windows[3:]:
        again.add(w)
    again.finish(tmp_path / "out.hdf5")
    again.close()
    assert_output(tmp_path / "out.hdf5", expected(windows, layers))


@pytest.mark.parametrize("layers", ["all", "default"])
def test_a_record_cut_short_is_dropped_and_its_lines_redone(tmp_path, layers):
    windows = make_windows(layers)
    parts = tmp_path / "parts"
    killed_after(parts, layers, windows[:3])
    journal = parts / JOURNAL
    journal.write_bytes(journal.read_bytes()[:-5])  # a kill in the middle of an append
    notes = []
    again = new_store(parts, layers, resume=True, notes=notes)
    assert np.flatnonzero(again.done).tolist() == list(range(14)) and notes == []
    # A damaged record (here: one flipped bit) ends the journal the same way.
    for w in windows[2:]:
        again.add(w)
    again.close()
    data = bytearray(journal.read_bytes())
    records, _ = read_journal(journal)
    assert len(records) == len(windows)
    data[-10] ^= 1
    journal.write_bytes(bytes(data))
    third = new_store(parts, layers, resume=True)
    assert int(third.done.sum()) == N_LINES - len(windows[-1].lines)
    third.add(windows[-1])
    third.finish(tmp_path / "out.hdf5")
    third.close()
    assert_output(tmp_path / "out.hdf5", expected(windows, layers))


def test_values_missing_from_the_file_are_redone(tmp_path):
    windows = make_windows("elmo")
    parts = tmp_path / "parts"
    killed_after(parts, "elmo", windows[:4])
    with h5py.File(parts / PARTIAL, "r+") as f:  # the file lost a line of the fourth window
        del f[str(windows[3].lines[2])]
    notes = []
    again = new_store(parts, "elmo", resume=True, notes=notes)
    assert np.flatnonzero(again.done).tolist() == list(range(21))
    assert len(notes) == 1 and "record 4 does not fit what was saved" in notes[0]
    with h5py.File(parts / PARTIAL, "r") as f:  # the rest of that window is gone too
        assert sorted(map(int, f)) == list(range(21))
    for w in windows[3:]:
        again.add(w)
    again.finish(tmp_path / "out.hdf5")
    again.close()
    assert_output(tmp_path / "out.hdf5", expected(windows, "elmo"))


@pytest.mark.parametrize("layers", ["all", "default"])
def test_an_unreadable_file_starts_over(tmp_path, layers):
    windows = make_windows(layers)
    parts = tmp_path / "parts"
    killed_after(parts, layers, windows[:2])
    with open(parts / PARTIAL, "r+b") as f:  # what a kill in the middle of a close could do
        f.write(b"\0" * 64)
    notes = []
    again = new_store(parts, layers, resume=True, notes=notes)
    assert not again.done.any()
    assert len(notes) == 1 and f"{PARTIAL} is damaged (" in notes[0], notes
    for w in windows:
        again.add(w)
    again.finish(tmp_path / "out.hdf5")
    again.close()
    assert_output(tmp_path / "out.hdf5", expected(windows, layers))


@pytest.mark.parametrize("layers", ["all", "default"])
def test_a_missing_or_foreign_file_starts_over(tmp_path, layers):
    windows = make_windows(layers)
    parts = tmp_path / "parts"
    killed_after(parts, layers, windows[:1])
    (parts / PARTIAL).unlink()
    notes = []
    again = new_store(parts, layers, resume=True, notes=notes)
    assert not again.done.any() and f"{PARTIAL} is missing; embedding every line again" in notes[0]
    again.add(windows[0])
    again.close()
    (parts / JOURNAL).write_bytes(b"something else entirely")
    third = new_store(parts, layers, resume=True)
    assert not third.done.any()
    for w in windows:
        third.add(w)
    third.finish(tmp_path / "out.hdf5")
    third.close()
    assert_output(tmp_path / "out.hdf5", expected(windows, layers))


def test_finish_names_the_missing_lines(tmp_path):
    windows = make_windows("all")
    store = new_store(tmp_path / "parts", "all")
    store.add(windows[0])
    with pytest.raises(EmbedError, match=r"parts: 33 lines are missing, the first line 7; run "
                                         r"again with --resume"):
        store.finish(tmp_path / "out.hdf5")
    store.close()
    assert not (tmp_path / "out.hdf5").exists()


def test_beam_parts_are_moved_in_once(tmp_path):
    windows = make_windows("all")
    parts = tmp_path / "parts"
    store = new_store(parts, "all")
    store.add(windows[0])
    paths = [write_part(parts, w, "all") for w in windows[1:]]
    store.add_part(paths[0])
    assert not paths[0].exists() and journaled_lines(parts) == 14
    # A run killed after journaling a part but before deleting it: the part goes, unread.
    copy = write_part(parts, windows[1], "all")
    store.add_part(copy)
    assert not copy.exists() and journaled_lines(parts) == 14
    # A part overlapping saved lines is refused by name.
    overlap = Window(lines=np.arange(12, 16), n_tokens=np.ones(4, np.int64),
                     values=np.zeros((DEPTH * 4, WIDTH), np.float32))
    bad = write_part(parts, overlap, "all")
    with pytest.raises(EmbedError, match=r"part-000000000012\.hdf5: holds lines that are saved "
                                         r"already, and others"):
        store.add_part(bad)
    bad.unlink()
    for path in paths[1:]:
        store.add_part(path)
    store.finish(tmp_path / "out.hdf5")
    store.close()
    assert_output(tmp_path / "out.hdf5", expected(windows, "all"))
