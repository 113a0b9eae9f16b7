"""Weight matrices that go from the weight file into the saved checkpoint without ever
being held whole in memory.

Why: an export of the full-size model used to hold every weight in a TF variable while TF
wrote the SavedModel, so its peak memory was TensorFlow (~540 MB) plus the weights
(~360 MB) plus TF's save buffers. Here the large matrices are variables of the right shape
whose memory is allocated but never written (`tf.raw_ops.Empty(init=False)`: untouched
pages cost no RSS), TF traces and saves the module as usual, and afterwards each matrix
is streamed from the HDF5 file into its place in the checkpoint's data file, a few MB at
a time, and its checksum set in the index (`tensor_bundle`). The files that come out are
the same bytes an export holding the weights writes.

A deferred matrix is what a model part's constructor gets for a dataset; it supports the
two things the parts do with their matrices (take a block of rows, transpose) and becomes
its variable in `precision.matrix_variable`. Nothing may compute with such a variable
before `fill` has run, and then only through the saved files.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Collection, Iterator, Mapping

import google_crc32c
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2, trackable_object_graph_pb2
# TF's own writer of fingerprint.pb (no public API writes one).
from tensorflow.python.saved_model import fingerprinting_utils

from hub_export.tensor_bundle import BundleIndex
from hub_export.weights import WeightReader

# Bytes of a matrix handled at a time: small against the export's ~700 MB, large enough
# that HDF5 reads and file writes stay cheap.
CHUNK_BYTES = 4 << 20
_CRC_IN_C = google_crc32c.implementation == "c"


@dataclasses.dataclass(frozen=True)
class DeferredMatrix:
    """Rows `rows` of 2-D dataset `name`, transposed if `transposed`, not yet read."""

    source: "DeferredWeights"
    name: str
    rows: tuple[int, int]
    transposed: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        n_rows = self.rows[1] - self.rows[0]
        n_cols = self.source.specs[self.name].shape[1]
        return (n_cols, n_rows) if self.transposed else (n_rows, n_cols)

    def __getitem__(self, rows: slice) -> "DeferredMatrix":
        if self.transposed or not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError(f"{self.name}: a deferred matrix only takes a block of rows")
        start, stop, _ = rows.indices(self.shape[0])
        return dataclasses.replace(self, rows=(self.rows[0] + start, self.rows[0] + max(start, stop)))

    @property
    def T(self) -> "DeferredMatrix":
        return dataclasses.replace(self, transposed=not self.transposed)

    def variable(self, trainable: bool, name: str) -> tf.Variable:
        """A float32 variable of this shape, allocated but not written (see the module doc)."""
        empty = tf.raw_ops.Empty(shape=list(self.shape), dtype=tf.float32, init=False)
        variable = tf.Variable(empty, trainable=trainable, name=name)
        self.source.pending.append((variable, self))
        return variable

    def blocks(self, reader: WeightReader) -> Iterator[np.ndarray]:
        """The value, read from `reader`'s file, as C-ordered float32 blocks of whole rows,
        top to bottom."""
        n_rows, n_cols = self.shape
        step = max(1, CHUNK_BYTES // (4 * n_cols))
        first = self.rows[0]
        for start in range(0, n_rows, step):
            stop = min(n_rows, start + step)
            if self.transposed:
                block = reader.read_block(self.name, slice(first, first + n_cols),
                                          slice(start, stop)).T
            else:
                block = reader.read_block(self.name, slice(first + start, first + stop), slice(None))
            yield np.ascontiguousarray(block)


class DeferredWeights(Mapping):
    """A `WeightReader`'s datasets, those named in `deferred` as `DeferredMatrix`.

    After the module holding the variables is saved, `fill(directory)` reopens the weight
    file and writes their values there, reading each once (and checking it finite then,
    block by block). Use it only for float32 variables (`precision.matrix_variable`
    refuses the rest).
    """

    def __init__(self, reader: WeightReader, deferred: Collection[str]):
        self._reader = reader
        self.path, self.options, self.specs = reader.path, reader.options, reader.specs
        for name in deferred:
            if len(reader.specs[name].shape) != 2:
                raise ValueError(f"{name}: only 2-D datasets can be deferred")
        self.deferred = frozenset(deferred)
        self.pending: list[tuple[tf.Variable, DeferredMatrix]] = []

    def __getitem__(self, name: str):
        if name in self.deferred:
            return DeferredMatrix(self, name, (0, self.specs[name].shape[0]))
        return self._reader[name]

    def __iter__(self):
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def fill(self, saved_model_dir: str | os.PathLike) -> None:
        """Writes every deferred variable's value into the SavedModel at `saved_model_dir`.

        Args:
            saved_model_dir: where `tf.saved_model.save` wrote the module.

        Raises:
            WeightsError: a dataset cannot be read or has non-finite values.
        """
        saved_model_dir = Path(saved_model_dir)
        keys = _checkpoint_keys(saved_model_dir)
        index = BundleIndex(saved_model_dir / "variables" / "variables")
        with WeightReader(self.path, self.options) as reader:
            for variable, matrix in self.pending:
                key = keys.get(variable.name.split(":")[0])
                if key is None:
                    raise RuntimeError(f"{saved_model_dir}: no single saved variable named {variable.name}")
                _write_value(index, key, matrix, reader)
        index.write()
        # The fingerprint hashes the checkpoint index, which has just changed.
        fingerprinting_utils.write_fingerprint(str(saved_model_dir))


def _write_value(index: BundleIndex, key: str, matrix: DeferredMatrix, reader: WeightReader) -> None:
    """Writes `matrix` over the bytes of checkpoint entry `key` and sets its checksum."""
    entry = index.entry(key)
    shape = tuple(d.size for d in entry.shape.dim)
    if entry.dtype != tf.float32.as_datatype_enum or shape != matrix.shape:
        raise RuntimeError(f"{index.path}: {key} is saved as dtype {entry.dtype} shape {shape}, "
                           f"not float32 {matrix.shape}")
    crc, at = 0, entry.offset
    fd = os.open(index.data_path(entry), os.O_WRONLY)
    try:
        for block in matrix.blocks(reader):
            block.flags.writeable = False  # the C extension takes only read-only buffers
            # Its pure-Python fallback (no wheel for this platform) iterates what it is
            # given, so give it bytes, not float32 elements.
            crc = google_crc32c.extend(crc, block if _CRC_IN_C else block.tobytes())
            if os.pwrite(fd, block, at) != block.nbytes:
                raise OSError(f"{index.data_path(entry)}: short write")
            at += block.nbytes
    finally:
        os.close(fd)
    if at - entry.offset != entry.size:
        raise RuntimeError(f"{index.path}: {key} has {entry.size} bytes, {at - entry.offset} were written")
    index.set_checksum(key, crc)


def _checkpoint_keys(saved_model_dir: Path) -> dict[str, str]:
    """Variable name -> checkpoint key, for the names that occur once.

    The SavedModel's object graph and its checkpoint's object graph number the same
    objects the same way, so a variable node's position gives its checkpoint key.
    """
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((saved_model_dir / "saved_model.pb").read_bytes())
    nodes = saved.meta_graphs[0].object_graph_def.nodes
    reader = tf.train.load_checkpoint(str(saved_model_dir / "variables" / "variables"))
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    if len(graph.nodes) != len(nodes):
        raise RuntimeError(f"{saved_model_dir}: the object graphs of the SavedModel and its "
                           f"checkpoint differ ({len(nodes)} against {len(graph.nodes)} nodes)")
    keys: dict[str, str] = {}
    seen: set[str] = set()
    for node, saved_node in zip(graph.nodes, nodes):
        if saved_node.WhichOneof("kind") != "variable":
            continue
        name = saved_node.variable.name
        values = [a.checkpoint_key for a in node.attributes if a.name == "VARIABLE_VALUE"]
        if name in seen or len(values) != 1:
            keys.pop(name, None)
        else:
            keys[name] = values[0]
        seen.add(name)
    return keys
