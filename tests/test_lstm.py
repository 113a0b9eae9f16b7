"""hub_export.model.lstm.BiLSTM against the numpy reference, plus hand-computed gate checks."""

import copy

import numpy as np
import pytest
import tensorflow as tf

from hub_export.model.lstm import ROW_KERNELS, BiLSTM
from hub_export.model.options import LSTMOptions, parse_options

from helpers import SMALL_OPTIONS, random_weights
from numpy_bilm import np_lstm_direction

ATOL = 1e-5
P = 8


def make_options(**lstm):
    raw = copy.deepcopy(SMALL_OPTIONS)
    raw["lstm"].update(lstm)
    return parse_options(raw)


def prefix(d, layer):
    return f"RNN_{d}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"


def tf_inputs(x, lengths):
    """x [B, T, P] per row -> BiLSTM inputs [2, T, B, P] and mask [T, B].

    The backward frame holds each row's valid steps reversed, the padding left in place.
    """
    bw = x.copy()
    for b, n in enumerate(lengths):
        bw[b, :n] = x[b, :n][::-1]
    both = np.stack([x, bw]).transpose(0, 2, 1, 3)  # [2, T, B, P]
    mask = np.arange(x.shape[1])[:, None] < np.asarray(lengths)[None, :]
    return tf.constant(both, tf.float32), tf.constant(mask)


def run_tf(options, arrays, x, lengths, initial_state=None):
    lstm = BiLSTM(options.lstm, arrays)
    inputs, mask = tf_inputs(x, lengths)
    init = None
    if initial_state is not None:
        init = [(tf.constant(c, tf.float32), tf.constant(h, tf.float32)) for c, h in initial_state]
    outs, final = lstm(inputs, mask, init)
    return [o.numpy() for o in outs], [(c.numpy(), h.numpy()) for c, h in final]


def run_np(options, arrays, x, lengths, initial_state=None):
    """Per row and direction: outputs in the reading order, final (c, h) stacked like TF."""
    L, D = options.lstm.n_layers, options.lstm.dim
    B = x.shape[0]
    outs = {}
    final = [(np.zeros((2, B, D)), np.zeros((2, B, P))) for _ in range(L)]
    for b, n in enumerate(lengths):
        for d in (0, 1):
            seq = x[b, :n] if d == 0 else x[b, :n][::-1]
            start = None
            if initial_state is not None:
                start = [(c[d, b], h[d, b]) for c, h in initial_state]
            o, f = np_lstm_direction(arrays, options, d, seq, start)
            outs[b, d] = o
            for l in range(L):
                final[l][0][d, b] = f[l][0]
                final[l][1][d, b] = f[l][1]
    return outs, final


def compare(options, arrays, x, lengths, initial_state=None):
    got_out, got_final = run_tf(options, arrays, x, lengths, initial_state)
    want_out, want_final = run_np(options, arrays, x, lengths, initial_state)
    for l in range(options.lstm.n_layers):
        for b, n in enumerate(lengths):
            for d in (0, 1):
                np.testing.assert_allclose(got_out[l][d, :n, b], want_out[b, d][l],
                                           atol=ATOL, rtol=0, err_msg=f"layer {l} row {b} dir {d}")
        np.testing.assert_allclose(got_final[l][0], want_final[l][0], atol=ATOL, rtol=0)
        np.testing.assert_allclose(got_final[l][1], want_final[l][1], atol=ATOL, rtol=0)
    return got_out, got_final


def random_inputs(seed, B=4, T=7, scale=1.0):
    return np.random.default_rng(seed).normal(0, scale, (B, T, P)).astype(np.float32)


LENGTHS = [7, 3, 0, 5]


@pytest.mark.parametrize("n_layers", [1, 2, 3])
@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("clip", [None, 0, 3, 0.5])
def test_matches_numpy(n_layers, skip, clip):
    options = make_options(n_layers=n_layers, use_skip_connections=skip, cell_clip=clip,
                           proj_clip=clip)
    arrays = random_weights(options, seed=31)
    compare(options, arrays, random_inputs(0, scale=2.0), LENGTHS)


def test_initial_state_in_final_state_out():
    options = make_options(n_layers=3)
    arrays = random_weights(options, seed=32)
    rng = np.random.default_rng(1)
    init = [(rng.uniform(-2, 2, (2, 4, 24)), rng.uniform(-1, 1, (2, 4, P))) for _ in range(3)]
    _, final = compare(options, arrays, random_inputs(2), LENGTHS, init)
    # The empty row keeps its initial state in every layer and direction.
    for l in range(3):
        np.testing.assert_allclose(final[l][0][:, 2], init[l][0][:, 2], atol=1e-6)
        np.testing.assert_allclose(final[l][1][:, 2], init[l][1][:, 2], atol=1e-6)
    # And the initial state matters.
    zero_out, _ = run_tf(options, arrays, random_inputs(2), LENGTHS)
    init_out, _ = run_tf(options, arrays, random_inputs(2), LENGTHS, init)
    assert np.abs(zero_out[0][:, 0] - init_out[0][:, 0]).max() > 1e-3


def test_state_is_held_past_a_rows_length():
    options = make_options(n_layers=2)
    arrays = random_weights(options, seed=33)
    x = random_inputs(3)
    out, final = run_tf(options, arrays, x, LENGTHS)
    # Junk in the padding changes nothing at valid steps nor in the final state.
    junk = x.copy()
    for b, n in enumerate(LENGTHS):
        junk[b, n:] = 100.0
    out2, final2 = run_tf(options, arrays, junk, LENGTHS)
    for l in range(2):
        for b, n in enumerate(LENGTHS):
            np.testing.assert_allclose(out2[l][:, :n, b], out[l][:, :n, b], atol=1e-6)
        np.testing.assert_allclose(final2[l][0], final[l][0], atol=1e-6)
        np.testing.assert_allclose(final2[l][1], final[l][1], atol=1e-6)
    # The final state of a short row is the one of that row run alone, unpadded.
    for b, n in [(1, 3), (3, 5)]:
        _, alone = run_tf(options, arrays, x[b:b + 1, :n], [n])
        for l in range(2):
            np.testing.assert_allclose(final[l][0][:, b], alone[l][0][:, 0], atol=1e-6)
            np.testing.assert_allclose(final[l][1][:, b], alone[l][1][:, 0], atol=1e-6)
    compare(options, arrays, junk, LENGTHS)


def test_zero_and_null_clip_both_mean_off():
    assert make_options(cell_clip=0, proj_clip=0).lstm.cell_clip is None
    base = make_options(cell_clip=None, proj_clip=None)
    arrays = random_weights(base, seed=34)
    x = random_inputs(4, scale=3.0)
    off, _ = run_tf(base, arrays, x, LENGTHS)
    # LSTMOptions built directly with 0.0 (not through parse_options) also means off.
    zero = LSTMOptions(dim=24, projection_dim=P, n_layers=2, cell_clip=0.0, proj_clip=0.0,
                       use_skip_connections=True)
    zero_out = [o.numpy() for o in BiLSTM(zero, arrays)(*tf_inputs(x, LENGTHS))[0]]
    small = make_options(cell_clip=0.5, proj_clip=0.5)
    clipped, _ = run_tf(small, arrays, x, LENGTHS)
    for l in range(2):
        np.testing.assert_allclose(zero_out[l], off[l], atol=1e-6)
    assert np.abs(off[0]).max() > 0.5  # unclipped h exceeds the clip...
    assert np.abs(clipped[0]).max() <= 0.5 + 1e-6  # ...and the clipped one does not
    assert np.abs(clipped[1] - off[1]).max() > 1e-2


# ---- hand-computed single steps: D = P = 4, W_P_0 = identity, W_0 = 0 ----------------

C0 = np.array([0.8, -0.4, 0.2, 1.0])
GATES = ("i", "j", "f", "o")


def sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def hand_arrays(bias_blocks, proj_scale=1.0):
    """Weights of a 1-layer D = P = 4 model with W_0 = 0 and B = the given blocks."""
    options = parse_options({
        "char_cnn": SMALL_OPTIONS["char_cnn"],
        "lstm": {"dim": 4, "projection_dim": 4, "n_layers": 1, "cell_clip": None,
                 "proj_clip": None, "use_skip_connections": False}})
    arrays = random_weights(options, seed=35)
    for d in (0, 1):
        arrays[f"{prefix(d, 0)}/W_0"] = np.zeros((8, 16), np.float32)
        arrays[f"{prefix(d, 0)}/B"] = np.concatenate(
            [np.full(4, bias_blocks[g], np.float32) for g in GATES])
        arrays[f"{prefix(d, 0)}/W_P_0"] = (proj_scale * np.eye(4)).astype(np.float32)
    return options, arrays


def one_step(lstm_options, arrays):
    lstm = BiLSTM(lstm_options, arrays)
    x = tf.constant(np.random.default_rng(5).normal(size=(2, 1, 1, 4)), tf.float32)
    init = [(tf.constant(np.stack([C0, C0])[:, None, :], tf.float32), tf.zeros([2, 1, 4]))]
    outs, final = lstm(x, tf.ones([1, 1], tf.bool), init)
    return outs[0].numpy()[:, 0, 0], final[0][0].numpy()[:, 0], final[0][1].numpy()[:, 0]


def expected(blocks, cell_clip=None, proj_clip=None, proj_scale=1.0):
    c = sig(blocks["f"] + 1.0) * C0 + sig(blocks["i"]) * np.tanh(blocks["j"])
    if cell_clip:
        c = np.clip(c, -cell_clip, cell_clip)
    h = proj_scale * sig(blocks["o"]) * np.tanh(c)
    if proj_clip:
        h = np.clip(h, -proj_clip, proj_clip)
    return c, h


def test_forget_bias_is_added():
    blocks = dict(i=0.0, j=0.0, f=0.0, o=0.0)
    options, arrays = hand_arrays(blocks)
    out, c, h = one_step(options.lstm, arrays)
    want_c = sig(1.0) * C0  # the stored f bias is 0; 1.0 is added at load
    for d in (0, 1):
        np.testing.assert_allclose(c[d], want_c, atol=ATOL)
        np.testing.assert_allclose(h[d], 0.5 * np.tanh(want_c), atol=ATOL)
        np.testing.assert_allclose(out[d], h[d], atol=0)
    assert np.abs(want_c - 0.5 * C0).max() > 0.1  # without the bias it would be 0.5 * c0
    # The stored arrays are not changed by loading.
    assert (arrays[f"{prefix(0, 0)}/B"] == 0).all()


@pytest.mark.parametrize("gate", GATES)
def test_gate_order_i_j_f_o(gate):
    # Baseline: j = 0.5 (so the input gate has something to scale), the rest 0. Then one
    # block alone gets +2; each choice of block gives a different, hand-computed state.
    blocks = dict(i=0.0, j=0.5, f=0.0, o=0.0)
    blocks[gate] += 2.0
    options, arrays = hand_arrays(blocks)
    out, c, h = one_step(options.lstm, arrays)
    want_c, want_h = expected(blocks)
    for d in (0, 1):
        np.testing.assert_allclose(c[d], want_c, atol=ATOL)
        np.testing.assert_allclose(h[d], want_h, atol=ATOL)
    # The numpy reference agrees, and the four cases are distinguishable.
    _, final = np_lstm_direction(arrays, options, 0, np.zeros((1, 4)), [(C0, np.zeros(4))])
    np.testing.assert_allclose(final[0][0], want_c, atol=1e-12)
    others = []
    for g in GATES:
        alt = dict(i=0.0, j=0.5, f=0.0, o=0.0)
        alt[g] += 2.0
        others.append(np.concatenate(expected(alt)))
    for a in range(4):
        for b in range(a + 1, 4):
            assert np.abs(others[a] - others[b]).max() > 1e-2


def test_clips_by_hand():
    # f = +20: c ~ c0 + 0.5 tanh(0.5); W_P_0 = 5 I makes h large. Clip 0.5 / 1.0.
    blocks = dict(i=0.0, j=0.5, f=20.0, o=0.0)
    _, arrays = hand_arrays(blocks, proj_scale=5.0)
    for cell_clip, proj_clip in [(None, None), (0.5, None), (None, 1.0), (0.5, 1.0)]:
        lo = LSTMOptions(dim=4, projection_dim=4, n_layers=1, cell_clip=cell_clip,
                         proj_clip=proj_clip, use_skip_connections=False)
        _, c, h = one_step(lo, arrays)
        want_c, want_h = expected(blocks, cell_clip, proj_clip, proj_scale=5.0)
        np.testing.assert_allclose(c[0], want_c, atol=ATOL)
        np.testing.assert_allclose(h[0], want_h, atol=ATOL)
    unclipped_c, unclipped_h = expected(blocks, proj_scale=5.0)
    assert np.abs(unclipped_c).max() > 1.0 and np.abs(unclipped_h).max() > 1.5


def test_skip_connection_from_layer_one_only():
    on = make_options(n_layers=2, use_skip_connections=True)
    off = make_options(n_layers=2, use_skip_connections=False)
    arrays = random_weights(on, seed=36)
    x = random_inputs(6)
    out_on, _ = run_tf(on, arrays, x, LENGTHS)
    out_off, _ = run_tf(off, arrays, x, LENGTHS)
    # Layer 0: no residual, whatever the option. Layer 1: lstm(layer 0) + layer 0.
    np.testing.assert_allclose(out_on[0], out_off[0], atol=1e-6)
    np.testing.assert_allclose(out_on[1] - out_off[1], out_on[0], atol=1e-5)
    assert np.abs(out_on[0]).max() > 1e-2
    compare(on, arrays, x, LENGTHS)
    compare(off, arrays, x, LENGTHS)


def test_directions_use_their_own_weights():
    # Swapping RNN_0 and RNN_1 swaps the roles: forward of one = backward-weights run.
    options = make_options(n_layers=2)
    arrays = random_weights(options, seed=37)
    swapped = dict(arrays)
    for l in range(2):
        for leaf in ("W_0", "B", "W_P_0"):
            swapped[f"{prefix(0, l)}/{leaf}"] = arrays[f"{prefix(1, l)}/{leaf}"]
            swapped[f"{prefix(1, l)}/{leaf}"] = arrays[f"{prefix(0, l)}/{leaf}"]
    x = random_inputs(7)
    a, _ = run_tf(options, arrays, x, LENGTHS)
    b, _ = run_tf(options, swapped, x, LENGTHS)
    assert np.abs(a[1][0] - b[1][0]).max() > 1e-3
    compare(options, swapped, x, LENGTHS)


def row_copy(lstm, layer, d, key):
    """The [in, out] copy a frozen BiLSTM keeps for batch 1, or None before it is made."""
    handle = tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[None, None], container="",
                                    shared_name=f"{lstm.row_copies}/{layer}/{d}/{key}")
    if not tf.raw_ops.VarIsInitializedOp(resource=handle).numpy():
        return None
    return tf.raw_ops.ReadVariableOp(resource=handle, dtype=tf.float32).numpy()


def test_batch_one_takes_row_copies_made_once():
    """A frozen biLSTM runs batch 1 on [in, out] copies of its step matrices, which the
    first call of batch 1 makes; one trace serves every batch size, a larger batch
    neither needs nor makes the copies, and the numbers are the reference's either way."""
    options = make_options(n_layers=2, cell_clip=3, proj_clip=0.5)
    arrays = random_weights(options, seed=38)
    lstm = BiLSTM(options.lstm, arrays)
    other = BiLSTM(options.lstm, random_weights(options, seed=40))
    fn = tf.function(lambda inputs, mask: lstm(inputs, mask), input_signature=[
        tf.TensorSpec([2, None, None, P], tf.float32), tf.TensorSpec([None, None], tf.bool)])
    keys = [(layer, d, key) for layer in range(2) for d in range(2) for key in ROW_KERNELS]
    x = random_inputs(8, scale=2.0)

    def check(rows, lengths):
        got_out, got_final = fn(*tf_inputs(x[rows], lengths))
        want_out, want_final = run_np(options, arrays, x[rows], lengths)
        for l in range(2):
            for b, n in enumerate(lengths):
                for d in (0, 1):
                    np.testing.assert_allclose(got_out[l].numpy()[d, :n, b], want_out[b, d][l],
                                               atol=ATOL, rtol=0)
            np.testing.assert_allclose(got_final[l][1].numpy(), want_final[l][1], atol=ATOL, rtol=0)
            np.testing.assert_allclose(got_final[l][0].numpy(), want_final[l][0], atol=ATOL, rtol=0)

    check(slice(None), LENGTHS)
    assert all(row_copy(lstm, *k) is None for k in keys)
    for b, n in enumerate(LENGTHS):
        check(slice(b, b + 1), [n])
    for layer, d, key in keys:
        np.testing.assert_array_equal(row_copy(lstm, layer, d, key), lstm.cells[layer][d][key].numpy().T)
        assert row_copy(other, layer, d, key) is None  # another biLM's copies are its own
    check(slice(None), LENGTHS)  # back to the feature-major loop
    assert not [v.name for v in lstm.variables if "rows" in v.name]


def test_a_trainable_bilstm_keeps_no_copies():
    """Copies of trainable matrices would go stale as they train."""
    options = make_options(n_layers=2)
    arrays = random_weights(options, seed=39)
    lstm = BiLSTM(options.lstm, arrays, trainable=True)
    assert lstm.row_copies is None
    x = random_inputs(9)[:1]
    got, _ = lstm(*tf_inputs(x, [5]))
    want, _ = run_np(options, arrays, x, [5])
    for d in (0, 1):
        np.testing.assert_allclose(got[1].numpy()[d, :5, 0], want[0, d][1], atol=ATOL, rtol=0)


def test_first_batch_one_calls_at_once():
    """Several first calls of batch 1 in threads at once (a server's first requests):
    each may make the copies, all get the reference's numbers."""
    from concurrent.futures import ThreadPoolExecutor

    options = make_options(n_layers=2)
    arrays = random_weights(options, seed=41)
    lstm = BiLSTM(options.lstm, arrays)
    fn = tf.function(lambda inputs, mask: lstm(inputs, mask)[0], input_signature=[
        tf.TensorSpec([2, None, 1, P], tf.float32), tf.TensorSpec([None, 1], tf.bool)])
    x = random_inputs(10, B=8)
    fn.get_concrete_function()
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda b: fn(*tf_inputs(x[b:b + 1], [7])), range(8)))
    for b, got in enumerate(outs):
        want, _ = run_np(options, arrays, x[b:b + 1], [7])
        for l in range(2):
            for d in (0, 1):
                np.testing.assert_allclose(got[l].numpy()[d, :, 0], want[0, d][l], atol=ATOL, rtol=0)
    assert row_copy(lstm, 1, 1, "projection") is not None
