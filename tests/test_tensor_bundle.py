"""tensor_bundle: a TF-written checkpoint index read back, and its checksums rewritten so
that TF restores bytes written into the data file afterwards."""

from __future__ import annotations

import google_crc32c
import numpy as np
import pytest
import tensorflow as tf

from hub_export.tensor_bundle import BundleIndex, mask


def save_checkpoint(directory, n_variables: int = 3):
    """A checkpoint of `n_variables` float32 variables of different shapes; returns
    (prefix, {checkpoint key: value})."""
    rng = np.random.default_rng(0)
    holder = tf.Module()
    holder.values = [rng.standard_normal((i + 2, 3 * i + 1)).astype(np.float32)
                     for i in range(n_variables)]
    holder.variables_ = [tf.Variable(v) for v in holder.values]
    prefix = tf.train.Checkpoint(holder=holder).write(str(directory / "ckpt"))
    keys = {f"holder/variables_/{i}/.ATTRIBUTES/VARIABLE_VALUE": v
            for i, v in enumerate(holder.values)}
    return prefix, keys


def test_entries_locate_each_tensor_and_its_checksum(tmp_path):
    prefix, values = save_checkpoint(tmp_path)
    index = BundleIndex(prefix)
    assert set(values) <= set(index.keys())
    for key, value in values.items():
        entry = index.entry(key)
        assert entry.dtype == tf.float32.as_datatype_enum
        assert tuple(d.size for d in entry.shape.dim) == value.shape
        with open(index.data_path(entry), "rb") as f:
            f.seek(entry.offset)
            raw = f.read(entry.size)
        np.testing.assert_array_equal(np.frombuffer(raw, np.float32).reshape(value.shape), value)
        assert entry.crc32c == mask(google_crc32c.value(raw))


def test_rewritten_bytes_restore_once_the_checksum_is_set(tmp_path):
    prefix, values = save_checkpoint(tmp_path)
    key = sorted(values)[1]
    index = BundleIndex(prefix)
    entry = index.entry(key)
    new = (np.arange(values[key].size, dtype=np.float32) - 7.5).reshape(values[key].shape)
    with open(index.data_path(entry), "r+b") as f:
        f.seek(entry.offset)
        f.write(new.tobytes())
    # TF checks the stored checksum on restore: without the new one it refuses.
    with pytest.raises(tf.errors.OpError, match="Checksum does not match"):
        tf.train.load_checkpoint(prefix).get_tensor(key)

    index.set_checksum(key, google_crc32c.value(new.tobytes()))
    index.write()
    reader = tf.train.load_checkpoint(prefix)
    np.testing.assert_array_equal(reader.get_tensor(key), new)
    for other in values:
        if other != key:
            np.testing.assert_array_equal(reader.get_tensor(other), values[other])
    assert BundleIndex(prefix).entry(key).crc32c == mask(google_crc32c.value(new.tobytes()))


def test_index_spanning_several_blocks(tmp_path):
    # TF starts a new table block every 256 KiB of entries: keys of 2,000 random letters
    # (no shared prefixes to compress) make 200 entries fill two, so the index block and
    # the checksum of a block other than the first are exercised.
    rng = np.random.default_rng(1)
    holder = tf.Module()
    names = [f"{i:03d}" + "".join(rng.choice(list("abcdefgh"), 2000)) for i in range(200)]
    holder.table = {n: tf.Variable(np.full((2,), i, np.float32)) for i, n in enumerate(names)}
    prefix = tf.train.Checkpoint(holder=holder).write(str(tmp_path / "ckpt"))
    index = BundleIndex(prefix)
    keys = [k for k in index.keys() if k.startswith("holder/table/")]
    assert len(keys) == 200
    blocks = sorted({index._entries[k].block for k in keys})
    assert len(blocks) > 1
    key = next(k for k in keys if index._entries[k].block == blocks[-1])
    entry = index.entry(key)
    new = np.array([-1.0, 3.5], np.float32)
    with open(index.data_path(entry), "r+b") as f:
        f.seek(entry.offset)
        f.write(new.tobytes())
    index.set_checksum(key, google_crc32c.value(new.tobytes()))
    index.write()
    reader = tf.train.load_checkpoint(prefix)
    np.testing.assert_array_equal(reader.get_tensor(key), new)
    untouched = next(k for k in keys if k != key)
    assert reader.get_tensor(untouched)[0] == names.index(untouched.split("/")[2])


def test_not_an_index(tmp_path):
    prefix = tmp_path / "junk"
    (tmp_path / "junk.index").write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match=r"junk\.index: not a TF checkpoint index"):
        BundleIndex(prefix)
