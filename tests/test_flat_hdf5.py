"""`FlatHdf5Writer` against libhdf5 (through h5py): what it writes reads back exactly, and
libhdf5 can go on writing to it, which needs its B-tree, heap and nodes to be right."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from hub_export.flat_hdf5 import FlatHdf5Writer


def write(path, values, lead, trail, seed=0, per_add=7):
    """Adds the datasets in a shuffled order, several per call, as embed's windows do."""
    writer = FlatHdf5Writer(path, len(values), lead, trail)
    order = np.random.default_rng(seed).permutation(len(values))
    for start in range(0, len(order), per_add):
        chunk = order[start: start + per_add]
        data = np.concatenate([values[i].ravel() for i in chunk] + [np.zeros(0, np.float32)])
        writer.add(chunk, [values[i].shape[len(lead)] for i in chunk], data)
    writer.close()


def random_values(n, lead, trail, seed=0):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 5, n)
    return [rng.standard_normal(lead + (int(m),) + trail).astype(np.float32) for m in sizes]


# Up to 8 names fill a symbol table node and 32 nodes a B-tree node: 300 datasets need
# two B-tree levels, 9,000 need three.
@pytest.mark.parametrize("n, lead, trail", [(0, (3,), (8,)), (1, (3,), (8,)), (8, (3,), (8,)),
                                            (9, (), (5,)), (300, (3,), (4,)), (9000, (2,), (1,))])
def test_every_dataset_reads_back(tmp_path, n, lead, trail):
    values = random_values(n, lead, trail)
    write(tmp_path / "f.hdf5", values, lead, trail)
    with h5py.File(tmp_path / "f.hdf5", "r") as f:
        assert sorted(f) == sorted(str(i) for i in range(n))
        for i, value in enumerate(values):
            assert f[str(i)].dtype == np.float32 and f[str(i)].shape == value.shape
            np.testing.assert_array_equal(f[str(i)][()], value)


def test_libhdf5_can_add_to_the_file(tmp_path):
    """Inserting names between ours makes libhdf5 search and split our nodes."""
    values = random_values(2000, (3,), (4,))
    path = tmp_path / "f.hdf5"
    write(path, values, (3,), (4,))
    extra = {f"{i}x": np.full(2, i, np.float32) for i in range(0, 2000, 13)}
    with h5py.File(path, "a") as f:
        for name, value in extra.items():
            f.create_dataset(name, data=value)
        f.attrs["note"] = "added by libhdf5"
    with h5py.File(path, "r") as f:
        assert len(f) == 2000 + len(extra) and f.attrs["note"] == "added by libhdf5"
        for i in range(0, 2000, 7):
            np.testing.assert_array_equal(f[str(i)][()], values[i])
        for name, value in extra.items():
            np.testing.assert_array_equal(f[name][()], value)


def test_object_headers_are_libhdf5s(tmp_path):
    """The same dataset written by libhdf5 ("earliest" format) has the same header bytes,
    but for the data's address."""
    value = np.arange(24, dtype=np.float32).reshape(3, 2, 4)
    with h5py.File(tmp_path / "lib.hdf5", "w", libver="earliest") as f:
        f.create_dataset("0", data=value)
        f.create_dataset("1", shape=(3, 0, 4), dtype=np.float32)
    write(tmp_path / "ours.hdf5", [value, np.zeros((3, 0, 4), np.float32)], (3,), (4,))

    def headers(path):
        with h5py.File(path, "r") as f:
            offset = f["0"].id.get_offset()
        raw = (path).read_bytes()
        node = raw.find(b"SNOD")
        addresses = [int.from_bytes(raw[node + 16 + 40 * e: node + 24 + 40 * e], "little")
                     for e in range(2)]
        return [raw[a: a + 272] for a in addresses], offset

    (lib0, lib1), lib_offset = headers(tmp_path / "lib.hdf5")
    (our0, our1), our_offset = headers(tmp_path / "ours.hdf5")
    address = slice(138, 146)  # the layout message's data address
    assert lib0[address] == lib_offset.to_bytes(8, "little")
    assert our0[address] == our_offset.to_bytes(8, "little")
    assert lib0[:138] + lib0[146:] == our0[:138] + our0[146:]
    assert lib1 == our1  # no storage: the undefined address in both


def test_refuses_missing_duplicate_and_misshapen_datasets(tmp_path):
    writer = FlatHdf5Writer(tmp_path / "f.hdf5", 3, (2,), (4,))
    writer.add([0], [1], np.zeros(8, np.float32))
    with pytest.raises(ValueError, match="added twice"):
        writer.add([0], [1], np.zeros(8, np.float32))
    with pytest.raises(ValueError, match=r"\(32 bytes\); the datasets need 64 bytes"):
        writer.add([1], [2], np.zeros(8, np.float32))
    with pytest.raises(ValueError, match="out of range"):
        writer.add([3], [0], np.zeros(0, np.float32))
    with pytest.raises(ValueError, match=r"2 datasets were never added \(the first: 1\)"):
        writer.close()


def test_goes_on_with_a_file_a_killed_writer_left(tmp_path):
    """`keep` keeps the data of the datasets `place` names and cuts off what came after."""
    values = random_values(30, (2,), (3,))
    path = tmp_path / "f.hdf5"
    first = FlatHdf5Writer(path, 30, (2,), (3,))
    starts = []
    for chunk in (range(0, 10), range(10, 20), range(20, 25)):
        data = np.concatenate([values[i].ravel() for i in chunk])
        starts.append(first.add(list(chunk), [values[i].shape[1] for i in chunk], data))
    first.abort()  # killed; say only the first two adds were known to be on disk
    with pytest.raises(ValueError, match=r"keep: 12 is before the first dataset's data"):
        FlatHdf5Writer(path, 30, (2,), (3,), keep=12)
    again = FlatHdf5Writer(path, 30, (2,), (3,), keep=starts[2])
    for chunk, start in zip((range(0, 10), range(10, 20)), starts):
        again.place(list(chunk), [values[i].shape[1] for i in chunk], start)
    with pytest.raises(ValueError, match=r"do not lie in the data written so far"):
        again.place([20], [values[20].shape[1] + 1000], starts[2] - 8)
    rest = range(20, 30)
    again.add(list(rest), [values[i].shape[1] for i in rest],
              np.concatenate([values[i].ravel() for i in rest]))
    again.close()
    with h5py.File(path, "r") as f:
        assert len(f) == 30
        for i, value in enumerate(values):
            np.testing.assert_array_equal(f[str(i)][()], value)


def test_an_add_of_empty_datasets_only(tmp_path):
    writer = FlatHdf5Writer(tmp_path / "f.hdf5", 3, (3,), (4,))
    writer.add([0, 1], [0, 0], np.zeros((0, 4), np.float32))
    writer.add([2], [1], np.ones((3, 4), np.float32))
    writer.close()
    with h5py.File(tmp_path / "f.hdf5", "r") as f:
        assert f["0"].shape == f["1"].shape == (3, 0, 4)
        np.testing.assert_array_equal(f["2"][()], np.ones((3, 1, 4), np.float32))
