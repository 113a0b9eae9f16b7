"""Writes an hdf5 file of many float32 datasets named "0", "1", ... in the root group.

`embed`'s output is one dataset per corpus line (bilm-tf's layout), and through libhdf5
every dataset costs about 100 microseconds of CPU for its object header, its name, the
group's B-tree and the write. With a million lines that is minutes taken from the module
on the same cores. Here the datasets' bytes are appended to the file as they come, with
no per-dataset call, and the metadata of all of them is laid out in one go at the end,
with numpy, in the structures libhdf5 itself writes for `h5py.File(..., libver="earliest")`
(the format bilm-tf's files have), so every hdf5 reader reads the result unchanged:

    superblock v0 (96 bytes) | root group object header (40) | the datasets' data ...
    | root group local heap: the names | B-tree nodes (v1, group) | symbol table nodes
    | one 272-byte object header per dataset (dataspace, datatype, fill value, layout)

Each dataset is contiguous; an empty one has no storage (undefined address, size 0).
The names' heap offsets, the B-tree keys and the symbol table order follow libhdf5's
rules (names compared as C strings; a B-tree key bounds the names below it from the
right; the first key is the empty name), which `tests/test_flat_hdf5.py` checks by
reading every dataset back with h5py and by having libhdf5 add to the file afterwards.

Memory: 16 bytes a dataset (its address and its varying dimension) while writing; the
metadata is written in slices at the end.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

UNDEF = 0xFFFF_FFFF_FFFF_FFFF  # "no address" in the file format
SUPERBLOCK_SIZE = 96
ROOT_HEADER_SIZE = 40
DATA_START = SUPERBLOCK_SIZE + ROOT_HEADER_SIZE
# libhdf5's defaults, kept so that libhdf5 can go on adding to the file: a symbol table
# node holds up to 2 * 4 names, a group B-tree node up to 2 * 16 children.
LEAF_K = 4
INTERNAL_K = 16
SNOD_SIZE = 8 + 2 * LEAF_K * 40
TREE_SIZE = 24 + (2 * INTERNAL_K + 1) * 8 + 2 * INTERNAL_K * 8
# An object header as libhdf5 allocates it: a 16-byte prefix and 256 bytes of messages
# (what the four messages leave is a null message).
HEADER_SIZE = 16 + 256
_SLICE = 1 << 13  # datasets whose headers are built and written together


def _message(kind: int, flags: int, data: bytes) -> bytes:
    # v1 object header message: type, size, flags, 3 reserved bytes, data padded to 8.
    data = data + b"\0" * (-len(data) % 8)
    return kind.to_bytes(2, "little") + len(data).to_bytes(2, "little") + bytes([flags, 0, 0, 0]) + data


def _u64(values) -> np.ndarray:
    return np.asarray(values, dtype="<u8")


class FlatHdf5Writer:
    """Datasets named str(i), i < n, each float32 of shape lead + (m_i,) + trail.

    Args:
        path: the file to create (truncated).
        n: int. Number of datasets; every one must be added before `close`.
        lead, trail: tuple[int, ...]. The fixed dimensions before and after the varying one.
        keep: int or None. None: a new file. Otherwise go on with a file that a writer
            killed before `close` left: its first `keep` bytes stay (the rest is cut off),
            and `place` says which datasets they hold.
    """

    def __init__(self, path: str | os.PathLike, n: int, lead: tuple[int, ...], trail: tuple[int, ...],
                 keep: int | None = None):
        self.path = Path(path)
        self.n = n
        self.lead = tuple(int(d) for d in lead)
        self.trail = tuple(int(d) for d in trail)
        self.rank = len(self.lead) + 1 + len(self.trail)
        self.row_bytes = int(np.prod(self.lead + self.trail, dtype=np.int64)) * 4  # per unit of m
        self.n_snods = -(-n // (2 * LEAF_K))  # symbol table nodes the names fill
        self.addresses = np.full(n, UNDEF, dtype=np.uint64)
        self.sizes = np.full(n, -1, dtype=np.int64)  # the varying dimension; -1: not added
        if keep is None:
            self.file = open(self.path, "wb")
            self.file.write(b"\0" * DATA_START)  # superblock and root header, filled in by close
            self.end = DATA_START
        else:  # go on with a file a killed writer left: keep its first `keep` bytes
            if keep < DATA_START:
                raise ValueError(f"keep: {keep} is before the first dataset's data ({DATA_START})")
            self.file = open(self.path, "r+b")
            self.file.truncate(keep)
            self.file.seek(keep)
            self.end = keep

    def nbytes(self, sizes: np.ndarray) -> int:
        """Bytes of data that datasets of these varying dimensions take."""
        return int(np.asarray(sizes, np.int64).sum()) * self.row_bytes

    def place(self, indices: np.ndarray, sizes: np.ndarray, start: int) -> None:
        """Records that datasets `indices` lie back to back in the file from `start`."""
        indices = np.asarray(indices, np.int64)
        sizes = np.asarray(sizes, np.int64)
        nbytes = sizes * self.row_bytes
        if len(indices) and (indices.min() < 0 or indices.max() >= self.n):
            raise ValueError(f"dataset index out of range 0..{self.n - 1}")
        if np.any(self.sizes[indices] >= 0) or len(np.unique(indices)) != len(indices):
            raise ValueError("a dataset was added twice")
        if np.any(sizes < 0) or start < DATA_START or start + int(nbytes.sum()) > self.end:
            raise ValueError(f"datasets of sizes {sizes[:4].tolist()}... from byte {start} do not "
                             f"lie in the data written so far (up to byte {self.end})")
        starts = start + np.concatenate([[0], np.cumsum(nbytes)[:-1]])
        self.addresses[indices] = np.where(nbytes > 0, starts, UNDEF).astype(np.uint64)
        self.sizes[indices] = sizes

    def add(self, indices: np.ndarray, sizes: np.ndarray, data: np.ndarray) -> int:
        """Appends datasets whose values lie back to back in `data`, each in C order.

        Args:
            indices: int [k]. Which datasets (none added before).
            sizes: int [k]. Their varying dimension.
            data: float32, C-contiguous, holding exactly their values, in `indices` order.

        Returns:
            int. The file offset where `data` went.
        """
        if data.dtype != np.float32 or not data.flags.c_contiguous or data.nbytes != self.nbytes(sizes):
            raise ValueError(f"data: {data.dtype} {data.shape} ({data.nbytes} bytes); the datasets "
                             f"need {self.nbytes(sizes)} bytes of float32 in C order")
        start = self.end
        self.end += data.nbytes
        try:
            self.place(indices, sizes, start)
        except ValueError:
            self.end = start
            raise
        if data.nbytes:  # (a window of empty lines has no bytes, and no view of them)
            self.file.write(memoryview(data).cast("B"))
        return start

    def flush(self) -> None:
        """Puts the data added so far on disk (not only in the kernel's cache)."""
        self.file.flush()
        os.fdatasync(self.file.fileno())

    def close(self) -> None:
        """Writes the metadata and the superblock. Raises ValueError if a dataset is missing."""
        missing = np.flatnonzero(self.sizes < 0)
        if len(missing):
            self.file.close()
            raise ValueError(f"{len(missing)} datasets were never added (the first: {missing[0]})")
        names = np.arange(self.n).astype("S")
        heap_address = self.end
        heap_data, name_offsets = self._heap(names)
        # Local heap: data size, head of the free list (1 is libhdf5's "no free block"),
        # data address (right after this 32-byte header).
        self._write(b"HEAP\0\0\0\0" + _u64([len(heap_data), 1, heap_address + 32]).tobytes())
        self._write(heap_data)
        order = np.argsort(names, kind="stable")  # C string order (numpy compares bytes)
        # The nodes go after the B-tree, so their addresses are known before it is written.
        tree_levels = self._tree_shape(max(self.n_snods, 1))
        tree_address = self.end
        snod_address = tree_address + TREE_SIZE * sum(tree_levels)
        header_address = snod_address + SNOD_SIZE * self.n_snods
        self._write_tree(tree_levels, tree_address, snod_address, name_offsets, order)
        self._write_snods(order, name_offsets, header_address)
        for first in range(0, self.n, _SLICE):
            self._write(self._headers(first, min(first + _SLICE, self.n)))
        root = (b"\1\0\1\0\1\0\0\0" + (24).to_bytes(4, "little") + b"\0" * 4
                + _message(0x11, 0, _u64([tree_address, heap_address]).tobytes()))
        superblock = (b"\x89HDF\r\n\x1a\n" + bytes([0, 0, 0, 0, 0, 8, 8, 0])
                      + LEAF_K.to_bytes(2, "little") + INTERNAL_K.to_bytes(2, "little") + b"\0" * 4
                      + _u64([0, UNDEF, self.end, UNDEF]).tobytes()
                      # root symbol table entry: name offset, header, cache type 1 (a group,
                      # its B-tree and heap in the scratch pad)
                      + _u64([0, SUPERBLOCK_SIZE, 1, tree_address, heap_address]).tobytes())
        self.file.seek(0)
        self.file.write(superblock + root)
        self.file.close()

    def abort(self) -> None:
        """Closes the file without finishing it."""
        self.file.close()

    # ------------------------------------------------------------------ the pieces

    def _write(self, data) -> None:
        self.file.write(data)
        self.end += len(data)

    @staticmethod
    def _heap(names: np.ndarray) -> tuple[bytes, np.ndarray]:
        # Offset 0 holds the empty name (the B-tree's first key); each name is
        # NUL-terminated and padded to 8 bytes. Names are decimal numbers in increasing
        # order, so they come in runs of one padded length: 1-7 digits take 8 bytes, ...
        padded = (np.char.str_len(names) // 8 + 1) * 8 if len(names) else np.zeros(0, np.int64)
        offsets = 8 + np.concatenate([[0], np.cumsum(padded)[:-1]]).astype(np.int64)
        pieces = [b"\0" * 8]
        for width in np.unique(padded):
            pieces.append(names[padded == width].astype(f"S{width}").tobytes())
        return b"".join(pieces), offsets[: len(names)]

    @staticmethod
    def _tree_shape(n_children: int) -> list[int]:
        """Number of B-tree nodes per level, from the level above the symbol table nodes."""
        levels = []
        while True:
            nodes = -(-n_children // (2 * INTERNAL_K))
            levels.append(nodes)
            if nodes == 1:
                return levels
            n_children = nodes

    def _write_tree(self, levels: list[int], tree_address: int, snod_address: int,
                    name_offsets: np.ndarray, order: np.ndarray) -> None:
        # Written root first (the root's address is the group's), then down to level 0.
        n_snods = self.n_snods
        # Level 0's children are the symbol table nodes; a child's right key is the heap
        # offset of its last (largest) name.
        child_address = [snod_address + SNOD_SIZE * i for i in range(n_snods)]
        child_right = [int(name_offsets[order[min((i + 1) * 2 * LEAF_K, self.n) - 1]])
                       for i in range(n_snods)]
        # Node addresses per level: the root first in the file.
        first = [0] * len(levels)
        offset = 0
        for level in reversed(range(len(levels))):
            first[level] = tree_address + TREE_SIZE * offset
            offset += levels[level]
        nodes_by_level = []
        for level, count in enumerate(levels):
            nodes = []
            for j in range(count):
                children = list(range(j * 2 * INTERNAL_K, min((j + 1) * 2 * INTERNAL_K, len(child_address))))
                left_key = child_right[children[0] - 1] if children and children[0] > 0 else 0
                keys = [left_key] + [child_right[c] for c in children]
                nodes.append((level, [child_address[c] for c in children], keys,
                              first[level] + TREE_SIZE * (j - 1) if j > 0 else UNDEF,
                              first[level] + TREE_SIZE * (j + 1) if j + 1 < count else UNDEF))
            nodes_by_level.append(nodes)
            child_address = [first[level] + TREE_SIZE * j for j in range(count)]
            child_right = [node[2][-1] for node in nodes]
        for level in reversed(range(len(levels))):
            for level_, children, keys, left, right in nodes_by_level[level]:
                body = np.zeros(2 * (2 * INTERNAL_K) + 1, dtype="<u8")  # key, child, key, ...
                body[0:2 * len(children) + 1:2] = keys
                body[1:2 * len(children):2] = children
                self._write(b"TREE" + bytes([0, level_]) + len(children).to_bytes(2, "little")
                            + _u64([left, right]).tobytes() + body.tobytes())

    def _write_snods(self, order: np.ndarray, name_offsets: np.ndarray, header_address: int) -> None:
        per_node = 2 * LEAF_K
        n_snods = self.n_snods
        for first in range(0, n_snods, _SLICE):
            stop = min(first + _SLICE, n_snods)
            members = np.full((stop - first) * per_node, -1, np.int64)
            taken = order[first * per_node: stop * per_node]
            members[: len(taken)] = taken
            used = members >= 0
            # An entry: name offset, object header address, cache type 0, reserved, scratch.
            entries = np.zeros((len(members), 5), dtype="<u8")
            entries[used, 0] = name_offsets[members[used]]
            entries[used, 1] = header_address + HEADER_SIZE * members[used]
            nodes = np.zeros((stop - first, 8 + per_node * 40), np.uint8)
            nodes[:, :4] = np.frombuffer(b"SNOD", np.uint8)
            nodes[:, 4] = 1  # version
            counts = used.reshape(-1, per_node).sum(axis=1).astype("<u2")
            nodes[:, 6:8] = counts.view(np.uint8).reshape(-1, 2)
            nodes[:, 8:] = entries.view(np.uint8).reshape(stop - first, per_node * 40)
            self._write(nodes.tobytes())

    def _headers(self, first: int, stop: int) -> bytes:
        """The object headers of datasets first..stop-1, libhdf5's layout byte for byte."""
        rank = self.rank
        dims = np.zeros((stop - first, rank), dtype="<u8")
        dims[:, : len(self.lead)] = self.lead
        dims[:, len(self.lead)] = self.sizes[first:stop]
        dims[:, len(self.lead) + 1:] = self.trail
        # Dataspace v1 with maximum dimensions equal to the dimensions.
        space = _message(0x1, 0, bytes([1, rank, 1, 0]) + b"\0" * 4 + b"\0" * 16 * rank)
        # IEEE float32 little-endian: class 1 v1, sign at bit 31, exponent 23+8 (bias
        # 127), mantissa 0+23, implied leading one.
        dtype = _message(0x3, 1, bytes([0x11, 0x20, 0x1F, 0x00]) + (4).to_bytes(4, "little")
                         + bytes([0, 0, 32, 0, 23, 8, 0, 23]) + (127).to_bytes(4, "little"))
        # Fill value v2: allocated late, written if set, the default (zero) value.
        fill = _message(0x5, 1, bytes([2, 2, 2, 1]) + b"\0" * 4)
        # Data layout v3, contiguous: address and size follow the two leading bytes.
        layout = _message(0x8, 0, bytes([3, 1]) + b"\0" * 16)
        used = 16 + len(space) + len(dtype) + len(fill) + len(layout)
        null = _message(0x0, 0, b"\0" * (HEADER_SIZE - used - 8))
        prefix = bytes([1, 0]) + (5).to_bytes(2, "little") + (1).to_bytes(4, "little") \
            + (HEADER_SIZE - 16).to_bytes(4, "little") + b"\0" * 4
        template = np.frombuffer(prefix + space + dtype + fill + layout + null, np.uint8)
        assert len(template) == HEADER_SIZE
        out = np.tile(template, (stop - first, 1))
        dims_at = 16 + 8 + 8  # header prefix, message header, dataspace prefix
        dim_bytes = dims.view(np.uint8).reshape(stop - first, 8 * rank)
        out[:, dims_at: dims_at + 8 * rank] = dim_bytes
        out[:, dims_at + 8 * rank: dims_at + 16 * rank] = dim_bytes  # maximum dimensions
        layout_at = 16 + len(space) + len(dtype) + len(fill) + 8 + 2
        size = (self.sizes[first:stop] * self.row_bytes).astype("<u8")
        out[:, layout_at: layout_at + 8] = self.addresses[first:stop].astype("<u8").view(np.uint8).reshape(-1, 8)
        out[:, layout_at + 8: layout_at + 16] = size.view(np.uint8).reshape(-1, 8)
        return out.tobytes()
