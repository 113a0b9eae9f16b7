"""weights.hdf5: one table of every dataset, read once and shape-checked.

The dataset names are those of bilm-tf's `dump_weights` (and of every published ELMo
weight file). `weight_specs` lists, for given options, each dataset, the shape the options
imply and the variable it fills; `read_weights` reads exactly those datasets, each once,
and refuses a file with missing, extra, misshapen or non-finite ones. The layout
conventions (padding row, forget bias, conv kernel rank) are applied where the variables
are made, in the model part that owns them.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
from typing import Mapping

import h5py
import numpy as np

from hub_export.errors import WeightsError
from hub_export.options import BiLMOptions

LSTM_PREFIX = "RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"
DIRECTIONS = ("forward", "backward")  # RNN_0 is the forward stack, RNN_1 the backward one
# The language model's output softmax. bilm-tf leaves it out of weight files; `dump-weights
# --include-softmax` adds it so that a file alone can be evaluated or trained further.
# Readers that look datasets up by name (bilm-tf, AllenNLP, this exporter) ignore it.
SOFTMAX_W = "softmax/W"
SOFTMAX_B = "softmax/b"


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """One dataset of the weight file.

    Args:
        name: str. Dataset path inside the hdf5 file.
        shape: tuple of int. The shape the options imply.
        fills: str. The hub_export variable this dataset becomes.
    """

    name: str
    shape: tuple[int, ...]
    fills: str


def weight_specs(options: BiLMOptions) -> list[WeightSpec]:
    """Every dataset a weight file for `options` must hold, and nothing else."""
    cnn, lstm = options.char_cnn, options.lstm
    F, P, D = cnn.n_filters, lstm.projection_dim, lstm.dim
    specs = [
        # One row fewer than n_characters: id 0 (padding) gets a zero row at load.
        WeightSpec("char_embed", (cnn.n_characters - 1, cnn.embedding_dim), "char_cnn/char_embed"),
    ]
    for i, (width, channels) in enumerate(cnn.filters):
        specs += [
            WeightSpec(f"CNN/W_cnn_{i}", (1, width, cnn.embedding_dim, channels),
                       f"char_cnn/conv_{i}/kernel"),
            WeightSpec(f"CNN/b_cnn_{i}", (channels,), f"char_cnn/conv_{i}/bias"),
        ]
    for k in range(cnn.n_highway):
        for part in ("carry", "transform"):
            specs += [
                WeightSpec(f"CNN_high_{k}/W_{part}", (F, F), f"highway_{k}/{part}_kernel"),
                WeightSpec(f"CNN_high_{k}/b_{part}", (F,), f"highway_{k}/{part}_bias"),
            ]
    if options.has_projection:
        specs += [
            WeightSpec("CNN_proj/W_proj", (F, P), "projection/kernel"),
            WeightSpec("CNN_proj/b_proj", (P,), "projection/bias"),
        ]
    for d, direction in enumerate(DIRECTIONS):
        for layer in range(lstm.n_layers):
            prefix = LSTM_PREFIX.format(direction=d, layer=layer)
            target = f"lstm_{layer}/{direction}"
            # Every layer reads P wide inputs: the token representation or the layer below.
            specs += [
                WeightSpec(f"{prefix}/W_0", (P + P, 4 * D), f"{target}/kernel"),
                WeightSpec(f"{prefix}/B", (4 * D,), f"{target}/bias"),
                WeightSpec(f"{prefix}/W_P_0", (D, P), f"{target}/projection"),
            ]
    return specs


def _open_failure(path: str, error: OSError) -> str:
    """A message for a file h5py cannot open, without HDF5's internal wording."""
    if os.path.isdir(path):
        return f"{path}: is a folder, expected an HDF5 weight file"
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError:
        is_hdf5 = False
    if not is_hdf5:
        return f"{path}: not an HDF5 file (no HDF5 signature found); expected a bilm-tf weight file"
    # HDF5 says e.g. "truncated file: eof = 34712, sblock->base_addr = 0, stored_eof = 69424".
    found = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", str(error))
    if found:
        return (f"{path}: HDF5 file is truncated: it has {found.group(1)} bytes, its header "
                f"says {found.group(2)} (an incomplete download or copy?)")
    return f"{path}: HDF5 file cannot be opened; it may be damaged ({error})"


def _list_datasets(f: h5py.File) -> list[str]:
    names = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


class WeightReader(Mapping):
    """A weight file opened and checked against the options, read one dataset at a time.

    Opening checks everything that needs no data: the file is HDF5, it holds exactly the
    datasets of `weight_specs(options)`, each of the expected shape and a float dtype.
    `reader[name]` then reads that dataset (float32, checked finite) and keeps no copy,
    so a model can turn each weight into its variable while holding one array at a time.
    Use as a context manager, or call `close()`.

    Raises:
        WeightsError: naming the file and the dataset, with expected and found shapes.
    """

    def __init__(self, path: str | os.PathLike, options: BiLMOptions):
        self.path = path = os.fspath(path)
        self.options = options
        self.specs = {s.name: s for s in weight_specs(options)}
        if not os.path.exists(path):
            raise WeightsError(f"{path}: weight file not found")
        try:
            self._file = h5py.File(path, "r")
        except OSError as e:
            raise WeightsError(_open_failure(path, e)) from None
        try:
            self._check(options)
        except BaseException:
            self._file.close()
            raise

    def _check(self, options: BiLMOptions) -> None:
        f, path = self._file, self.path
        try:
            present = set(_list_datasets(f))
        except (OSError, RuntimeError) as e:
            raise WeightsError(f"{path}: cannot list the datasets (truncated file?): {e}") from None
        missing = [s for n, s in self.specs.items() if n not in present]
        extra = sorted(present - set(self.specs) - {SOFTMAX_W, SOFTMAX_B})
        if missing or extra:
            lines = [f"{path}: the datasets do not match the options"]
            lines += [f"  missing dataset {s.name}, expected shape {s.shape}" for s in missing]
            lines += [f"  unexpected dataset {n}, shape {f[n].shape}" for n in extra]
            if not options.has_projection and any(n.startswith("CNN_proj/") for n in extra):
                lines.append(
                    f"  (the filters give {options.char_cnn.n_filters} channels, equal to "
                    "lstm.projection_dim, so these options have no CNN_proj)")
            raise WeightsError("\n".join(lines))
        for spec in self.specs.values():
            ds = f[spec.name]
            if tuple(ds.shape) != spec.shape:
                raise WeightsError(
                    f"{path}: dataset {spec.name} has shape {tuple(ds.shape)}, expected "
                    f"{spec.shape} (from the options; it fills {spec.fills})")
            if ds.dtype.kind != "f":
                raise WeightsError(f"{path}: dataset {spec.name} has dtype {ds.dtype}, expected a float type")

    def __getitem__(self, name: str) -> np.ndarray:
        spec = self.specs[name]
        path = self.path
        try:
            value = np.asarray(self._file[spec.name][()], dtype=np.float32)
        except (OSError, RuntimeError, ValueError) as e:
            raise WeightsError(f"{path}: cannot read dataset {spec.name} (truncated file?): {e}") from None
        finite = np.isfinite(value)
        if not finite.all():
            n_nan = int(np.count_nonzero(np.isnan(value)))
            n_inf = int(value.size - np.count_nonzero(finite)) - n_nan
            first = tuple(int(i) for i in np.argwhere(~finite)[0])
            raise WeightsError(
                f"{path}: dataset {spec.name} has non-finite values ({n_nan} NaN, "
                f"{n_inf} Inf; the first at index {list(first)}); expected finite weights")
        return value

    def read_block(self, name: str, rows: slice, columns: slice) -> np.ndarray:
        """`reader[name][rows, columns]` (float32, checked finite), reading only that
        block of the file: for a caller that streams a large dataset in pieces."""
        spec = self.specs[name]
        try:
            value = np.asarray(self._file[spec.name][rows, columns], dtype=np.float32)
        except (OSError, RuntimeError, ValueError) as e:
            raise WeightsError(f"{self.path}: cannot read dataset {spec.name} (truncated file?): {e}") from None
        if not np.isfinite(value).all():
            self[name]  # raises, with the whole dataset's counts and first bad index
            raise WeightsError(f"{self.path}: dataset {spec.name} has non-finite values")
        return value

    def softmax(self) -> dict[str, np.ndarray] | None:
        """`softmax/W` [V, P] and `softmax/b` [V] when the file has them (else None)."""
        f, path = self._file, self.path
        present = [n for n in (SOFTMAX_W, SOFTMAX_B) if n in f]
        if not present:
            return None
        if len(present) == 1:
            missing = SOFTMAX_B if present[0] == SOFTMAX_W else SOFTMAX_W
            raise WeightsError(f"{path}: has {present[0]} but no {missing}")
        P = self.specs[f"{LSTM_PREFIX.format(direction=0, layer=0)}/W_P_0"].shape[1]
        w, b = f[SOFTMAX_W], f[SOFTMAX_B]
        if len(w.shape) != 2 or w.shape[1] != P or tuple(b.shape) != (w.shape[0],):
            raise WeightsError(f"{path}: {SOFTMAX_W} has shape {tuple(w.shape)} and {SOFTMAX_B} "
                               f"{tuple(b.shape)}, expected [vocab_size, {P}] and [vocab_size]")
        arrays = {}
        for name in (SOFTMAX_W, SOFTMAX_B):
            value = np.asarray(f[name][()], dtype=np.float32)
            if not np.isfinite(value).all():
                raise WeightsError(f"{path}: dataset {name} has non-finite values")
            arrays[name] = value
        return arrays

    def __iter__(self):
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "WeightReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_weights(path: str | os.PathLike, options: BiLMOptions) -> dict[str, np.ndarray]:
    """Reads every dataset of `weight_specs(options)` from an hdf5 file, once, into memory.

    Returns:
        dict from dataset name to a float32 array of the spec's shape.

    Raises:
        WeightsError: naming the file and the dataset, with expected and found shapes.
    """
    with WeightReader(path, options) as reader:
        return {name: reader[name] for name in reader}


def write_weights(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes arrays to an hdf5 file in the bilm-tf layout (dataset names as in the specs).

    The file is made in memory and then written out, so that a full disk is an OSError of
    this write: h5py crashes (SIGSEGV) closing a file that HDF5 failed to write.
    """
    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        for name, value in arrays.items():
            f.create_dataset(name, data=np.asarray(value, dtype=np.float32))
    with open(path, "wb") as out:
        out.write(image.getbuffer())


def random_weights(options: BiLMOptions, seed: int) -> dict[str, np.ndarray]:
    """Seeded random weights of the right shapes, scaled so activations stay in range.

    Used for tests of other architectures and for benchmarks; the numbers mean nothing,
    but every run with the same seed gives the same bytes.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in weight_specs(options):
        leaf = spec.name.rsplit("/", 1)[-1]
        if leaf.startswith("b_") or leaf == "B":
            value = rng.uniform(-0.1, 0.1, spec.shape)
        elif leaf == "char_embed":
            value = rng.uniform(-1.0, 1.0, spec.shape)
        else:
            fan_in = int(np.prod(spec.shape[:-1]))
            limit = np.sqrt(3.0 / fan_in)  # unit variance out for unit variance in
            value = rng.uniform(-limit, limit, spec.shape)
        arrays[spec.name] = value.astype(np.float32)
    return arrays
