"""The built-in default model: a small biLM with seeded random weights.

`python -m hub_export --version N` without `--options/--weights` exports this model so
that the whole pipeline can be tried with no download. It is UNTRAINED: its
embeddings carry no meaning, and the module card says so.
"""

from __future__ import annotations

import hashlib

import numpy as np

from hub_export.options import BiLMOptions, parse_options
from hub_export.weights import random_weights, weight_specs

NAME = "hub_export built-in default model (untrained, seeded random weights)"
SEED = 20261124

# The original ELMo architecture scaled down: same filter widths, highway, clipping and
# skip connections, narrower everywhere.
OPTIONS = {
    "char_cnn": {
        "embedding": {"dim": 16},
        "filters": [[1, 16], [2, 16], [3, 32], [4, 32], [5, 32]],
        "n_highway": 2,
        "activation": "relu",
        "n_characters": 262,
        "max_characters_per_token": 50,
    },
    "lstm": {
        "dim": 256,
        "projection_dim": 128,
        "n_layers": 2,
        "cell_clip": 3,
        "proj_clip": 3,
        "use_skip_connections": True,
    },
}


def default_model() -> tuple[BiLMOptions, dict[str, np.ndarray], str]:
    """(options, weights, sha256 of the weights) of the built-in model; same every call."""
    options = parse_options(OPTIONS, source="built-in default model")
    arrays = random_weights(options, SEED)
    digest = hashlib.sha256()
    for spec in weight_specs(options):
        digest.update(spec.name.encode())
        digest.update(arrays[spec.name].tobytes())
    return options, arrays, digest.hexdigest()
