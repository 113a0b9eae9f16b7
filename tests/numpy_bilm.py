"""An independent float64 numpy biLM, written from ../shared/MODEL.md for the tests.

It deliberately does not share structure with the TF code in hub_export: it reads the
hdf5 arrays as they are stored (the padding row, the forget bias and the [x; h] split of
W_0 are handled here, at use), runs one sentence row and one direction at a time with
plain Python loops over time (all layers of a direction advanced together at each step),
and computes each convolution as explicit sliding windows. Slow, but only meant for
small test models.

`arrays` everywhere is the dict of `helpers.random_weights` / `read_weights`:
hdf5 dataset name -> array. `options` is a parsed `hub_export.model.options.BiLMOptions`.
"""

from __future__ import annotations

import numpy as np

FORGET_BIAS = 1.0


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _clip(value, limit):
    # null and 0 both mean "no clipping" (bilm-tf tests `if cell_clip:`).
    if not limit:
        return value
    return np.minimum(np.maximum(value, -float(limit)), float(limit))


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def _lstm_name(direction: int, layer: int, leaf: str) -> str:
    return f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell/{leaf}"


# ----------------------------------------------------------------------------------------
# Token representation
# ----------------------------------------------------------------------------------------

def np_char_cnn(arrays, options, char_ids):
    """char ids [..., C] -> [..., n_filters]: embed, valid conv, max, activation, concat."""
    cnn = options.char_cnn
    ids = np.asarray(char_ids)
    lead = ids.shape[:-1]
    C = ids.shape[-1]
    ids = ids.reshape(-1, C)
    stored = _f64(arrays["char_embed"])  # no row for id 0
    E = stored.shape[1]
    # Look up by hand: id 0 -> zeros, id k >= 1 -> stored row k - 1.
    emb = np.zeros((ids.shape[0], C, E))
    nonzero = ids > 0
    emb[nonzero] = stored[ids[nonzero] - 1]

    if cnn.activation == "relu":
        act = lambda v: np.maximum(v, 0.0)  # noqa: E731
    elif cnn.activation == "tanh":
        act = np.tanh
    else:
        raise ValueError(cnn.activation)

    pieces = []
    for k, (width, channels) in enumerate(cnn.filters):
        kernel = _f64(arrays[f"CNN/W_cnn_{k}"])  # [1, w, E, n] (conv2d over a 1 x C image)
        bias = _f64(arrays[f"CNN/b_cnn_{k}"])
        assert kernel.shape == (1, width, E, channels)
        best = np.full((ids.shape[0], channels), -np.inf)
        for start in range(C - width + 1):
            window = emb[:, start:start + width, :]  # [N, w, E]
            value = bias.copy()
            for offset in range(width):
                value = value + window[:, offset, :] @ kernel[0, offset]
            best = np.maximum(best, value)
        pieces.append(act(best))
    out = np.concatenate(pieces, axis=-1)
    return out.reshape(lead + (out.shape[-1],))


def np_highway(arrays, n_highway, x):
    """TF layout: g = sigmoid(x Wc + bc); y = g * relu(x Wt + bt) + (1 - g) * x."""
    y = _f64(x)
    for k in range(n_highway):
        carry = _sigmoid(y @ _f64(arrays[f"CNN_high_{k}/W_carry"]) + _f64(arrays[f"CNN_high_{k}/b_carry"]))
        transform = np.maximum(
            y @ _f64(arrays[f"CNN_high_{k}/W_transform"]) + _f64(arrays[f"CNN_high_{k}/b_transform"]), 0.0)
        y = carry * transform + (1.0 - carry) * y
    return y


def np_projection(arrays, options, x):
    """CNN_proj, or the identity when the filters already sum to projection_dim."""
    total = sum(channels for _, channels in options.char_cnn.filters)
    x = _f64(x)
    if total == options.lstm.projection_dim:
        assert "CNN_proj/W_proj" not in arrays
        return x
    return x @ _f64(arrays["CNN_proj/W_proj"]) + _f64(arrays["CNN_proj/b_proj"])


def np_token_embedding(arrays, options, char_ids):
    """char ids [..., C] -> token representation [..., P] (no masking)."""
    feats = np_char_cnn(arrays, options, char_ids)
    lead = feats.shape[:-1]
    flat = feats.reshape(-1, feats.shape[-1])
    flat = np_highway(arrays, options.char_cnn.n_highway, flat)
    flat = np_projection(arrays, options, flat)
    return flat.reshape(lead + (flat.shape[-1],))


# ----------------------------------------------------------------------------------------
# LSTM
# ----------------------------------------------------------------------------------------

def np_lstm_step(w0, b, wp, x, c_prev, h_prev, cell_clip, proj_clip):
    """One LSTMCell step for one row. w0 [in + P, 4D] rows [x; h]; b [4D] as stored."""
    D = wp.shape[0]
    z = np.concatenate([x, h_prev]) @ w0 + b
    i = z[0:D]
    j = z[D:2 * D]
    f = z[2 * D:3 * D] + FORGET_BIAS
    o = z[3 * D:4 * D]
    c = _sigmoid(f) * c_prev + _sigmoid(i) * np.tanh(j)
    c = _clip(c, cell_clip)
    h = (_sigmoid(o) * np.tanh(c)) @ wp
    h = _clip(h, proj_clip)
    return c, h


def np_lstm_direction(arrays, options, direction, inputs, initial_state=None):
    """One direction's stack on one row, in that direction's reading order.

    Args:
        arrays: the weight dict.
        options: BiLMOptions (or anything with `.lstm`).
        direction: 0 forward (RNN_0) or 1 backward (RNN_1).
        inputs: [n, P] the row's valid steps, already in reading order (the backward
            caller reverses them).
        initial_state: per layer (c [D], h [P]); zeros when None.

    Returns:
        (outputs, final): outputs per layer [n, P] in reading order (residual added from
        layer 1 on when skip connections are on); final per layer (c, h) after step n - 1
        (the initial state when n == 0).
    """
    lo = options.lstm
    D, P, L = lo.dim, lo.projection_dim, lo.n_layers
    inputs = _f64(inputs)
    n = inputs.shape[0]
    weights = [(_f64(arrays[_lstm_name(direction, l, "W_0")]),
                _f64(arrays[_lstm_name(direction, l, "B")]),
                _f64(arrays[_lstm_name(direction, l, "W_P_0")])) for l in range(L)]
    if initial_state is None:
        state = [(np.zeros(D), np.zeros(P)) for _ in range(L)]
    else:
        state = [(_f64(c).copy(), _f64(h).copy()) for c, h in initial_state]
    outputs = [np.zeros((n, P)) for _ in range(L)]
    for t in range(n):
        below = inputs[t]
        for l in range(L):
            w0, b, wp = weights[l]
            c, h = np_lstm_step(w0, b, wp, below, state[l][0], state[l][1],
                                lo.cell_clip, lo.proj_clip)
            state[l] = (c, h)
            out = h + below if (lo.use_skip_connections and l >= 1) else h
            outputs[l][t] = out
            below = out
    return outputs, state


# ----------------------------------------------------------------------------------------
# Whole biLM
# ----------------------------------------------------------------------------------------

def np_bilm(arrays, options, char_ids, initial_state=None):
    """Framed char ids [B, T+2, C] -> dict like hub_export.model.bilm.BiLM's output.

    Returns:
        dict with `word_emb` [B, T, P], `lstm_outputs` list of [B, T, 2P] (forward half
        first), `sequence_len` [B], `final_state` per layer (c [2, B, D], h [2, B, P]).
        Begin/end removed; zeros at t >= sequence_len.
    """
    lo = options.lstm
    D, P, L = lo.dim, lo.projection_dim, lo.n_layers
    ids = np.asarray(char_ids)
    B, T2, _ = ids.shape
    T = T2 - 2
    word_emb = np.zeros((B, T, P))
    lstm_outputs = [np.zeros((B, T, 2 * P)) for _ in range(L)]
    final_c = [np.zeros((2, B, D)) for _ in range(L)]
    final_h = [np.zeros((2, B, P)) for _ in range(L)]
    sequence_len = np.zeros(B, dtype=np.int64)

    for b in range(B):
        n_steps = 0
        for r in range(T2):
            if np.any(ids[b, r] != 0):
                n_steps += 1
        n_tokens = max(n_steps - 2, 0)
        sequence_len[b] = n_tokens
        emb = np_token_embedding(arrays, options, ids[b, :n_steps])  # [n_steps, P]
        word_emb[b, :n_tokens] = emb[1:1 + n_tokens]
        for d in (0, 1):
            start = None
            if initial_state is not None:
                start = [(np.asarray(c)[d, b], np.asarray(h)[d, b]) for c, h in initial_state]
            seq = emb if d == 0 else emb[::-1]
            outs, final = np_lstm_direction(arrays, options, d, seq, start)
            for l in range(L):
                o = outs[l] if d == 0 else outs[l][::-1]  # back to sentence order
                lstm_outputs[l][b, :n_tokens, d * P:(d + 1) * P] = o[1:1 + n_tokens]
                final_c[l][d, b] = final[l][0]
                final_h[l][d, b] = final[l][1]
    return {
        "word_emb": word_emb,
        "lstm_outputs": lstm_outputs,
        "sequence_len": sequence_len,
        "final_state": [(final_c[l], final_h[l]) for l in range(L)],
    }
