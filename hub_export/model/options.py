"""options.json, parsed once into frozen dataclasses.

The file layout is the one bilm-tf writes and AllenNLP reads:

    {"char_cnn": {"embedding": {"dim": 16}, "filters": [[1, 32], ...], "n_highway": 2,
                  "activation": "relu", "n_characters": 262, "max_characters_per_token": 50},
     "lstm": {"dim": 4096, "projection_dim": 512, "n_layers": 2, "cell_clip": 3,
              "proj_clip": 3, "use_skip_connections": true}}

Files written by bilm-tf's training also carry training keys at the top level
(`batch_size`, `n_epochs`, ...); they are checked for type and kept in `training`.
Everything else is an error that names the file and the key path.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Mapping

from hub_export.errors import OptionsError

logger = logging.getLogger(__name__)

ACTIVATIONS = ("relu", "tanh")

# bilm-tf trains with 261 characters and its README says to use 262 at inference: the
# extra id is the padding id 0 that the +1 offset of the char ids frees up.
TRAINING_N_CHARACTERS = 261
N_CHARACTERS = 262

# Top-level keys of a bilm-tf training options file that inference does not use.
# Value: the allowed Python types (bool is excluded from ints explicitly below).
_TRAINING_KEYS = {
    "bidirectional": (bool,),
    "dropout": (int, float),
    "n_epochs": (int,),
    "n_train_tokens": (int,),
    "batch_size": (int,),
    "n_tokens_vocab": (int,),
    "unroll_steps": (int,),
    "n_negative_samples_batch": (int,),
    "all_clip_norm_val": (int, float, type(None)),
    "sample_softmax": (bool,),
    "share_embedding_softmax": (bool,),
}


@dataclasses.dataclass(frozen=True)
class CharCNNOptions:
    """The character CNN that makes a token representation.

    Args:
        embedding_dim: int. Width of each character embedding.
        filters: tuple of (width, channels) pairs, one per convolution.
        n_highway: int. Number of highway layers after the convolutions.
        activation: str. "relu" or "tanh", applied after max-pooling each filter.
        n_characters: int. Size of the char-id vocabulary (always 262 here).
        max_characters_per_token: int. Char ids per token, begin/end-of-word included.
    """

    embedding_dim: int
    filters: tuple[tuple[int, int], ...]
    n_highway: int
    activation: str
    n_characters: int
    max_characters_per_token: int

    @property
    def n_filters(self) -> int:
        return sum(channels for _, channels in self.filters)


@dataclasses.dataclass(frozen=True)
class LSTMOptions:
    """The stacked LSTMs with projection, one stack per direction.

    Args:
        dim: int. Cell size D.
        projection_dim: int. Projected output size P (also the token representation size).
        n_layers: int. Layers per direction.
        cell_clip: float or None. Clip of the cell state; None means no clipping.
        proj_clip: float or None. Clip of the projected output; None means no clipping.
        use_skip_connections: bool. Add each layer's input to its output from layer 1 on.
    """

    dim: int
    projection_dim: int
    n_layers: int
    cell_clip: float | None
    proj_clip: float | None
    use_skip_connections: bool


@dataclasses.dataclass(frozen=True)
class BiLMOptions:
    """All options of one biLM. Build with `load_options` or `parse_options`."""

    char_cnn: CharCNNOptions
    lstm: LSTMOptions
    training: tuple[tuple[str, Any], ...] = ()

    @property
    def has_projection(self) -> bool:
        # bilm-tf only creates CNN_proj when the filters do not already give P channels.
        return self.char_cnn.n_filters != self.lstm.projection_dim

    def to_dict(self) -> dict:
        """The options in options.json layout (what `parse_options` reads back)."""
        c, l = self.char_cnn, self.lstm
        out = dict(self.training)
        out["char_cnn"] = {
            "embedding": {"dim": c.embedding_dim},
            "filters": [list(f) for f in c.filters],
            "n_highway": c.n_highway,
            "activation": c.activation,
            "n_characters": c.n_characters,
            "max_characters_per_token": c.max_characters_per_token,
        }
        out["lstm"] = {
            "dim": l.dim,
            "projection_dim": l.projection_dim,
            "n_layers": l.n_layers,
            "cell_clip": l.cell_clip,
            "proj_clip": l.proj_clip,
            "use_skip_connections": l.use_skip_connections,
        }
        return out


class _Reader:
    """Walks a parsed JSON object, naming the file and key path in every error."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, problem: str) -> OptionsError:
        return OptionsError(f"{self.source}: {path}: {problem}")

    def section(
        self, obj: Any, path: str, keys: tuple[str, ...], optional: tuple[str, ...] = ()
    ) -> Mapping[str, Any]:
        if not isinstance(obj, Mapping):
            raise self.fail(path or "<top level>", f"expected a JSON object, got {_show(obj)}")
        prefix = f"{path}." if path else ""
        unknown = sorted(set(obj) - set(keys) - set(optional))
        if unknown:
            raise self.fail(
                prefix + unknown[0],
                f"unknown key; allowed keys here: {', '.join(sorted(keys + optional))}",
            )
        for key in keys:
            if key not in obj:
                raise self.fail(prefix + key, "missing required key")
        return obj

    def integer(self, value: Any, path: str, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"expected an integer >= {minimum}, got {_show(value)}")
        if value < minimum:
            raise self.fail(path, f"expected an integer >= {minimum}, got {value}")
        return value

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"expected true or false, got {_show(value)}")
        return value

    def clip(self, value: Any, path: str) -> float | None:
        # A clip of null or 0 means "no clipping", as in bilm-tf (it tests `if cell_clip`).
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(path, f"expected a number >= 0 or null, got {_show(value)}")
        if not value >= 0 or value == float("inf"):
            raise self.fail(path, f"expected a finite number >= 0 or null, got {value}")
        return float(value) if value > 0 else None


# JSON names of the Python types json.loads makes, for messages about options.json.
_JSON_TYPE_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string",
                    list: "list", tuple: "list", dict: "object", type(None): "null"}


def _show(value: Any) -> str:
    """`value` as a user of options.json would name it: its JSON type and its text."""
    kind = _JSON_TYPE_NAMES.get(type(value), type(value).__name__)
    if value is None:
        return kind
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):  # parse_options was given a non-JSON Python object
        text = str(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{kind} {text}"


def parse_options(raw: Any, source: str = "options") -> BiLMOptions:
    """Validates a decoded options object.

    Args:
        raw: the decoded JSON.
        source: str. Name used in error messages (the file path).

    Raises:
        OptionsError: naming `source` and the key path of the first problem.
    """
    r = _Reader(source)
    top = r.section(raw, "", ("char_cnn", "lstm"), optional=tuple(_TRAINING_KEYS))

    training = []
    for key, types in _TRAINING_KEYS.items():
        if key not in top:
            continue
        value = top[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            names = [_JSON_TYPE_NAMES[t] for t in types if not (t is int and float in types)]
            allowed = " or ".join(names)
            raise r.fail(key, f"expected {allowed}, got {_show(value)}")
        training.append((key, value))
    if dict(training).get("bidirectional") is False:
        raise r.fail("bidirectional", "a forward-only language model cannot make ELMo; expected true")

    cnn_keys = ("embedding", "filters", "n_highway", "activation", "n_characters",
                "max_characters_per_token")
    cnn = r.section(top["char_cnn"], "char_cnn", cnn_keys)
    embedding = r.section(cnn["embedding"], "char_cnn.embedding", ("dim",))
    max_chars = r.integer(cnn["max_characters_per_token"], "char_cnn.max_characters_per_token", 3)

    raw_filters = cnn["filters"]
    if not isinstance(raw_filters, list) or not raw_filters:
        raise r.fail("char_cnn.filters", f"expected a non-empty list of [width, channels], got {_show(raw_filters)}")
    filters = []
    for i, pair in enumerate(raw_filters):
        path = f"char_cnn.filters[{i}]"
        if not isinstance(pair, list) or len(pair) != 2:
            raise r.fail(path, f"expected [width, channels], got {_show(pair)}")
        width = r.integer(pair[0], path + "[0] (width)", 1)
        if width > max_chars:
            raise r.fail(path + "[0] (width)",
                         f"width {width} is wider than max_characters_per_token {max_chars}")
        filters.append((width, r.integer(pair[1], path + "[1] (channels)", 1)))

    activation = cnn["activation"]
    if activation not in ACTIVATIONS:
        raise r.fail("char_cnn.activation",
                     f"got {_show(activation)}; allowed values: {', '.join(ACTIVATIONS)}")

    n_characters = r.integer(cnn["n_characters"], "char_cnn.n_characters", 1)
    if n_characters == TRAINING_N_CHARACTERS:
        logger.info("%s: char_cnn.n_characters is %d (the training value); using %d, "
                    "as bilm-tf does at inference", source, n_characters, N_CHARACTERS)
        n_characters = N_CHARACTERS
    if n_characters != N_CHARACTERS:
        raise r.fail("char_cnn.n_characters",
                     f"got {n_characters}; allowed values: {N_CHARACTERS} ({TRAINING_N_CHARACTERS} "
                     "is read as 262): char ids are UTF-8 bytes plus 5 markers plus padding")

    char_cnn = CharCNNOptions(
        embedding_dim=r.integer(embedding["dim"], "char_cnn.embedding.dim", 1),
        filters=tuple(filters),
        n_highway=r.integer(cnn["n_highway"], "char_cnn.n_highway", 0),
        activation=activation,
        n_characters=n_characters,
        max_characters_per_token=max_chars,
    )

    lstm_keys = ("dim", "projection_dim", "n_layers", "cell_clip", "proj_clip",
                 "use_skip_connections")
    ls = r.section(top["lstm"], "lstm", lstm_keys)
    lstm = LSTMOptions(
        dim=r.integer(ls["dim"], "lstm.dim", 1),
        projection_dim=r.integer(ls["projection_dim"], "lstm.projection_dim", 1),
        n_layers=r.integer(ls["n_layers"], "lstm.n_layers", 1),
        cell_clip=r.clip(ls["cell_clip"], "lstm.cell_clip"),
        proj_clip=r.clip(ls["proj_clip"], "lstm.proj_clip"),
        use_skip_connections=r.boolean(ls["use_skip_connections"], "lstm.use_skip_connections"),
    )
    return BiLMOptions(char_cnn=char_cnn, lstm=lstm, training=tuple(training))


def load_options(path: str | os.PathLike) -> BiLMOptions:
    """Reads and validates an options.json file.

    Raises:
        OptionsError: the file is missing, unreadable, not JSON, or invalid; the
            message names the file and the key path.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        raise OptionsError(f"{path}: options file not found") from None
    except OSError as e:
        raise OptionsError(f"{path}: cannot read options file: {e.strerror or e}") from None
    try:
        raw = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OptionsError(f"{path}: not valid JSON: {e}") from None
    return parse_options(raw, source=path)
