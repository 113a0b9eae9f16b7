"""A TF checkpoint's index (its "tensor bundle"), read, and its checksums rewritten.

TF writes a checkpoint as data files holding every tensor's raw bytes and an index: a
LevelDB-style table from each checkpoint key to a `BundleEntryProto` (dtype, shape, shard,
offset, size, masked CRC-32C of the bytes). `deferred_weights` writes tensor bytes into a
saved data file after TF has written it, so it needs each tensor's place, and must then
set the checksum TF checks on restore. Only the table layout TF itself writes is handled:
uncompressed blocks, entries in key order.
"""

from __future__ import annotations

import dataclasses
import os
import struct

import google_crc32c
from tensorflow.core.protobuf import tensor_bundle_pb2

_MAGIC = 0xDB4775248B80FB57  # the table footer's last 8 bytes
_FOOTER_BYTES = 48  # two block handles padded to 40 bytes, then the magic
_MASK_DELTA = 0xA282EAD8


def mask(crc: int) -> int:
    """LevelDB's masked CRC (a CRC stored beside the bytes it covers is itself checksummed
    badly, so TF stores a rotated, offset form)."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


@dataclasses.dataclass
class _Entry:
    proto: tensor_bundle_pb2.BundleEntryProto
    value_at: int  # where the serialized proto lies in the index file
    value_len: int
    block: tuple[int, int]  # (offset, size) of the table block holding it


class BundleIndex:
    """The index of the checkpoint at `prefix` (`<prefix>.index`), held in memory.

    `entry(key)` gives a tensor's BundleEntryProto; `data_path(entry)` its data file;
    `set_checksum(key, crc)` records the CRC-32C of bytes written there, and `write()`
    saves the index with those checksums (and its own block checksums) updated.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = os.fspath(prefix)
        self.path = self.prefix + ".index"
        with open(self.path, "rb") as f:
            self._buf = bytearray(f.read())
        self._dirty_blocks: set[tuple[int, int]] = set()
        self._entries: dict[str, _Entry] = {}
        buf = self._buf
        if len(buf) < _FOOTER_BYTES or struct.unpack_from("<Q", buf, len(buf) - 8)[0] != _MAGIC:
            raise ValueError(f"{self.path}: not a TF checkpoint index (no table footer)")
        footer = bytes(buf[-_FOOTER_BYTES:])
        _, pos = _varint(footer, 0)  # metaindex offset: TF leaves that block empty
        _, pos = _varint(footer, pos)
        index_offset, pos = _varint(footer, pos)
        index_size, _ = _varint(footer, pos)
        for _, value_at, _ in self._block_entries(index_offset, index_size):
            block_offset, pos = _varint(buf, value_at)
            block_size, _ = _varint(buf, pos)
            for key, at, length in self._block_entries(block_offset, block_size):
                proto = tensor_bundle_pb2.BundleEntryProto()
                proto.ParseFromString(bytes(buf[at:at + length]))
                self._entries[key.decode("utf-8", "replace")] = _Entry(
                    proto, at, length, (block_offset, block_size))
        first = self._entries[""]  # the empty key holds the bundle's header
        header = tensor_bundle_pb2.BundleHeaderProto()
        header.ParseFromString(bytes(buf[first.value_at:first.value_at + first.value_len]))
        self.num_shards = header.num_shards

    def _block_entries(self, offset: int, size: int):
        """(key, value position, value length) of each entry of the block at `offset`."""
        buf = self._buf
        if buf[offset + size] != 0:
            raise ValueError(f"{self.path}: compressed table blocks are not supported")
        n_restarts = struct.unpack_from("<I", buf, offset + size - 4)[0]
        end = offset + size - 4 - 4 * n_restarts
        pos, key = offset, b""
        while pos < end:
            shared, pos = _varint(buf, pos)
            unshared, pos = _varint(buf, pos)
            value_len, pos = _varint(buf, pos)
            key = key[:shared] + bytes(buf[pos:pos + unshared])
            pos += unshared
            yield key, pos, value_len
            pos += value_len

    def keys(self) -> list[str]:
        return [k for k in self._entries if k]  # "" is the bundle's header

    def entry(self, key: str) -> tensor_bundle_pb2.BundleEntryProto:
        return self._entries[key].proto

    def data_path(self, entry: tensor_bundle_pb2.BundleEntryProto) -> str:
        return f"{self.prefix}.data-{entry.shard_id:05d}-of-{self.num_shards:05d}"

    def set_checksum(self, key: str, crc32c: int) -> None:
        """Records `crc32c` (plain CRC-32C, as `google_crc32c.value` gives) for `key`."""
        e = self._entries[key]
        e.proto.crc32c = mask(crc32c)
        value = e.proto.SerializeToString()
        # crc32c is a fixed32 field, so the entry keeps its length unless it was 0 (and so
        # left out) before or after; a masked CRC is 0 for one value in 2**32.
        if len(value) != e.value_len:
            raise ValueError(f"{self.path}: entry {key!r} would change length; cannot patch")
        self._buf[e.value_at:e.value_at + e.value_len] = value
        self._dirty_blocks.add(e.block)

    def write(self) -> None:
        """Saves the index (atomically) with the changed blocks' checksums recomputed."""
        for offset, size in self._dirty_blocks:
            # The block checksum covers the contents and the compression-type byte.
            crc = google_crc32c.value(bytes(self._buf[offset:offset + size + 1]))
            struct.pack_into("<I", self._buf, offset + size + 1, mask(crc))
        self._dirty_blocks.clear()
        tmp = f"{self.path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(self._buf)
        os.replace(tmp, self.path)
