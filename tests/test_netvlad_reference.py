"""NetVLADModelLF and the pooling blocks against numpy written from SPEC 4.1-4.2 / ZOO.md.

Checks the checkpoint contract (the 32 variable names, shapes and dtypes of
SPEC 4.1), the inference predictions for random weights (moving statistics
included), float16 storage, and each pooling block's formula.
"""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import frame_level_models  # noqa: E402
import pooling  # noqa: E402

V1 = tf.compat.v1
BATCH, MAX_FRAMES, FEATURES = 4, 300, 1152
VOCAB, CLUSTERS, HIDDEN, MIXTURES, ITERATIONS = 10, 8, 8, 3, 5
BN_EPS = 1e-3


def spec_variables(k, h, v, m):
    """SPEC 4.1's list for gating + probability gating: {name: (shape, fp16 under the flag)}."""
    names = {}
    for scope, d, clusters in (("video_VLAD", 1024, k), ("audio_VLAD", 128, k // 2)):
        names[f"{scope}/conv2/cluster_weights"] = ([d, clusters], False)
        for stat in ("beta", "gamma", "moving_mean", "moving_variance"):
            names[f"{scope}/cluster_bn/{stat}"] = ([clusters], False)
        names[f"{scope}/cluster_weights2/cluster_weights2"] = ([1, d, clusters], False)
    names["hidden1_weights/hidden1_weights"] = ([1024 * k + 128 * (k // 2), h], True)
    names["hidden2_weights/hidden2_weights"] = ([h, 2 * h], False)
    names["hidden2_biases"] = ([2 * h], False)
    names["gating_weights/gating_weights"] = ([2 * h, 2 * h], False)
    names["gates/weights"] = ([2 * h, v * (m + 1)], True)
    names["experts/weights"] = ([2 * h, v * m], True)
    names["experts/biases"] = ([v * m], False)
    names["gating_prob_weights"] = ([v, v], True)
    for scope, depth in (("hidden1_bn", h), ("gating_bn", 2 * h), ("gating_prob_bn", v)):
        for stat in ("beta", "gamma", "moving_mean", "moving_variance"):
            names[f"{scope}/{stat}"] = ([depth], False)
    return names


def random_videos(rng, batch):
    """L2-normalised frames zero-padded to MAX_FRAMES, and random frame counts."""
    num_frames = rng.integers(1, MAX_FRAMES + 1, size=batch).astype(np.int32)
    frames = rng.normal(size=(batch, MAX_FRAMES, FEATURES))
    frames /= np.linalg.norm(frames, axis=2, keepdims=True)
    frames[np.arange(MAX_FRAMES)[None, :] >= num_frames[:, None]] = 0.0
    return frames.astype(np.float32), num_frames


def build_netvlad(is_training=False, **params):
    """NetVLADModelLF under tower/ on placeholders; returns (inputs, num_frames, predictions)."""
    inputs = V1.placeholder(tf.float32, [None, MAX_FRAMES, FEATURES])
    num_frames = V1.placeholder(tf.int32, [None])
    with V1.variable_scope("tower"):
        out = frame_level_models.NetVLADModelLF().create_model(
            inputs, VOCAB, num_frames, is_training=is_training, iterations=ITERATIONS,
            cluster_size=CLUSTERS, hidden_size=HIDDEN, num_mixtures=MIXTURES, **params)
    return inputs, num_frames, out["predictions"]


def model_variables():
    return {v.op.name[len("tower/"):]: v for v in V1.global_variables()}


def assign_random(sess, rng, variables, values=None):
    """Loads random values (BN statistics included) into the variables; returns them
    as float64 numpy, after the storage dtype's rounding.  ``values`` reuses given ones."""
    if values is None:
        values = {}
        for name, var in variables.items():
            shape = var.shape.as_list()
            if name.endswith("moving_variance"):
                values[name] = rng.uniform(0.5, 1.5, shape)
            elif name.endswith("gamma"):
                values[name] = rng.uniform(0.5, 1.5, shape)
            else:
                scale = 0.1 if len(shape) == 1 else 1 / np.sqrt(shape[-2])
                values[name] = rng.normal(scale=scale, size=shape)
    stored = {}
    for name, var in variables.items():
        value = values[name].astype(var.dtype.base_dtype.as_numpy_dtype)
        var.load(value, sess)
        stored[name] = value.astype(np.float64)
    return stored


# --- numpy references -------------------------------------------------------------------

def np_bn(x, p, scope):
    return ((x - p[scope + "/moving_mean"]) / np.sqrt(p[scope + "/moving_variance"] + BN_EPS)
            * p[scope + "/gamma"] + p[scope + "/beta"])


def np_l2(x, axis):
    return x / np.sqrt(np.maximum(np.sum(x * x, axis=axis, keepdims=True), 1e-12))


def np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


def np_cluster_logits(x, p, scope, weights_name="cluster_weights", add_bn=True):
    logits = x @ p[f"{scope}/{weights_name}"]
    return np_bn(logits, p, f"{scope}/cluster_bn") if add_bn else logits + p[
        f"{scope}/cluster_biases"]


def np_vlad(x, p, scope, variant, add_bn=True):
    """x [B, T, D] -> [B, D*K] for netvlad / lightvlad / vlagd."""
    weights = "conv2/cluster_weights" if variant == "netvlad" else "cluster_weights"
    a = np_softmax(np_cluster_logits(x, p, scope, weights, add_bn))
    v = np.einsum("btk,btd->bdk", a, x)
    if variant == "netvlad":
        v = v - a.sum(axis=1)[:, None, :] * p[f"{scope}/cluster_weights2/cluster_weights2"]
    if variant == "vlagd":
        v = v * np_sigmoid(p[f"{scope}/gate_weights"])[0].T[None]
    v = np_l2(v, 1).reshape(len(x), -1)
    return np_l2(v, 1)


def np_netvlad_model(frames, num_frames, p, variant="netvlad", add_bn=True, gating=True,
                     prob_gating=True):
    """SPEC 4.1-4.2 in inference mode (evenly spaced frames, moving statistics)."""
    index = (np.arange(ITERATIONS)[None, :] * num_frames[:, None].astype(np.int64)) // ITERATIONS
    x = frames.astype(np.float64)[np.arange(len(frames))[:, None], index]  # [B, T, F]
    vlad = np.concatenate([np_vlad(x[..., :1024], p, "video_VLAD", variant, add_bn),
                           np_vlad(x[..., 1024:], p, "audio_VLAD", variant, add_bn)], axis=1)
    h = np.clip(np_bn(vlad @ p["hidden1_weights/hidden1_weights"], p, "hidden1_bn"), 0, 6)
    h = h @ p["hidden2_weights/hidden2_weights"] + p["hidden2_biases"]
    if gating:
        g = h @ p["gating_weights/gating_weights"]
        g = np_bn(g, p, "gating_bn") if add_bn else g + p["gating_biases"]
        h = h * np_sigmoid(g)
    gates = np_softmax((h @ p["gates/weights"]).reshape(-1, MIXTURES + 1))
    experts = np_sigmoid((h @ p["experts/weights"] + p["experts/biases"]).reshape(-1, MIXTURES))
    probs = (gates[:, :MIXTURES] * experts).sum(axis=1).reshape(-1, VOCAB)
    if prob_gating:
        probs = probs * np_sigmoid(np_bn(probs @ p["gating_prob_weights"], p, "gating_prob_bn"))
    return probs


# --- NetVLADModelLF ---------------------------------------------------------------------

@pytest.mark.parametrize("float16_flag", [False, True])
def test_variables_are_spec_41_list(float16_flag):
    with tf.Graph().as_default():
        build_netvlad(is_training=True, gating=True, prob_gating=True,
                      float16_flag=float16_flag)
        got = {v.op.name: (v.shape.as_list(), v.dtype.base_dtype) for v in V1.global_variables()}
    expected = {
        "tower/" + name: (shape, tf.float16 if fp16 and float16_flag else tf.float32)
        for name, (shape, fp16) in spec_variables(CLUSTERS, HIDDEN, VOCAB, MIXTURES).items()}
    assert len(expected) == 32
    assert got == expected
    assert sum(dtype == tf.float16 for _, dtype in got.values()) == (4 if float16_flag else 0)


@pytest.mark.parametrize("variant,add_bn", [
    ("netvlad", True), ("lightvlad", True), ("vlagd", True), ("netvlad", False)])
def test_predictions_match_numpy(variant, add_bn):
    rng = np.random.default_rng(7)
    frames, num_frames = random_videos(rng, BATCH)
    with tf.Graph().as_default():
        inputs, counts, predictions = build_netvlad(
            gating=True, prob_gating=True, add_batch_norm=add_bn,
            lightvlad=variant == "lightvlad", vlagd=variant == "vlagd")
        with V1.Session() as sess:
            p = assign_random(sess, rng, model_variables())
            got = sess.run(predictions, {inputs: frames, counts: num_frames})
    want = np_netvlad_model(frames, num_frames, p, variant, add_bn)
    assert got.shape == (BATCH, VOCAB)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert np.ptp(want) > 1e-2  # the reference is not degenerate


def test_float16_storage_halves_bytes_and_keeps_predictions():
    rng = np.random.default_rng(3)
    frames, num_frames = random_videos(rng, BATCH)
    results, sizes, values = {}, {}, None
    for float16_flag in (False, True):
        with tf.Graph().as_default():
            inputs, counts, predictions = build_netvlad(gating=True, prob_gating=True,
                                                        float16_flag=float16_flag)
            variables = model_variables()
            with V1.Session() as sess:
                stored = assign_random(sess, rng, variables, values)
                values = values or stored
                results[float16_flag] = sess.run(predictions, {inputs: frames, counts: num_frames})
            sizes[float16_flag] = {name: var.dtype.base_dtype.size * var.shape.num_elements()
                                   for name, var in variables.items()}
            if float16_flag:
                np.testing.assert_allclose(results[True], np_netvlad_model(frames, num_frames,
                                                                           stored),
                                           rtol=0, atol=1e-5)
    fp16_names = [n for n, (_, fp16) in spec_variables(CLUSTERS, HIDDEN, VOCAB,
                                                       MIXTURES).items() if fp16]
    for name in fp16_names:
        assert sizes[True][name] * 2 == sizes[False][name]
    assert sum(sizes[True].values()) < sum(sizes[False].values())
    diff = np.abs(results[True] - results[False]).max()
    assert 0 < diff < 1e-3


# --- pooling blocks -----------------------------------------------------------------------

def np_dbof(x, p, activation):
    logits = np_cluster_logits(x, p, "b")
    if activation == "glu":
        half = logits.shape[-1] // 2
        units = logits[..., :half] * np_sigmoid(logits[..., half:])
    else:
        units = np.clip(logits, 0, 6)
    return np.concatenate([np_l2(units.mean(axis=1), 1), np_l2(units.max(axis=1), 1)], axis=1)


def np_soft_dbof(x, p, max_pool):
    a = np_softmax(np_cluster_logits(x, p, "b"))
    out = np_l2(a.sum(axis=1), 1)
    return np.concatenate([out, np_l2(a.max(axis=1), 1)], axis=1) if max_pool else out


def np_gated_dbof(x, p):
    a = np_softmax(np_cluster_logits(x, p, "b"))
    peaks = np_l2(a.max(axis=1), 1)
    gates = np_bn(peaks @ p["b/dim_red"] @ p["b/cluster_weights_2"], p, "b/cluster_bn_2")
    return np_l2(np_sigmoid(gates) * a.sum(axis=1), 1)


def np_netfv(x, p, couple, factor):
    w = p["b/cluster_weights"]
    sigma = p["b/covar_weights"] ** 2 + 1e-6
    a = np_softmax(np_cluster_logits(x, p, "b"))
    mass = a.sum(axis=1)[:, None, :]
    means = factor * w if couple else p["b/cluster_weights2"]
    fv1 = np.einsum("btk,btd->bdk", a, x)
    fv2 = np.einsum("btk,btd->bdk", a, x * x)
    fv2 = (mass * means ** 2 + fv2 - 2 * fv1 * means) / sigma ** 2 - mass
    fv1 = np_l2((fv1 - mass * means) / sigma, 1)
    b = len(x)
    return np.concatenate([np_l2(fv1.reshape(b, -1), 1), np_l2(fv2.reshape(b, -1), 1)], axis=1)


BLOCKS = {
    "dbof_relu": (lambda d, t, k: pooling.DBoF(d, t, k, "relu", True, False),
                  lambda x, p: np_dbof(x, p, "relu")),
    "dbof_glu": (lambda d, t, k: pooling.DBoF(d, t, k, "glu", True, False),
                 lambda x, p: np_dbof(x, p, "glu")),
    "soft_dbof": (lambda d, t, k: pooling.SoftDBoF(d, t, k, False, True, False),
                  lambda x, p: np_soft_dbof(x, p, False)),
    "soft_dbof_max": (lambda d, t, k: pooling.SoftDBoF(d, t, k, True, True, False),
                      lambda x, p: np_soft_dbof(x, p, True)),
    "gated_dbof": (lambda d, t, k: pooling.GatedDBoF(d, t, k, True, False), np_gated_dbof),
    "netfv": (lambda d, t, k: pooling.NetFV(d, t, k, True, False, True, 0.01),
              lambda x, p: np_netfv(x, p, True, 0.01)),
    "netfv_uncoupled": (lambda d, t, k: pooling.NetFV(d, t, k, True, False, False, 0.01),
                        lambda x, p: np_netfv(x, p, False, 0.01)),
}


@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_pooling_block_matches_numpy(block):
    make, reference = BLOCKS[block]
    rng = np.random.default_rng(11)
    batch, frames, dim, clusters = 3, 5, 16, 6
    x = rng.normal(size=(batch, frames, dim)).astype(np.float32)
    with tf.Graph().as_default():
        with V1.variable_scope("b"):
            out = make(dim, frames, clusters).forward(tf.constant(x.reshape(-1, dim)))
        with V1.Session() as sess:
            p = assign_random(sess, rng, {v.op.name: v for v in V1.global_variables()})
            got = sess.run(out)
    want = reference(x.astype(np.float64), p)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_dbof_relu_output_is_non_negative():
    """The 2018 code never applied the activation; relu6 units make every output >= 0."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6 * 4, 16)).astype(np.float32)
    with tf.Graph().as_default():
        out = pooling.DBoF(16, 4, 8, "relu", True, True).forward(tf.constant(x))
        with V1.Session() as sess:
            sess.run(V1.global_variables_initializer())
            got = sess.run(out)
    assert got.shape == (6, 16)
    assert got.min() >= 0 and got.max() > 0


def test_intra_and_global_l2_is_the_two_step_normalisation():
    rng = np.random.default_rng(2)
    v = rng.normal(size=(3, 7, 5))
    v[1, :, 2] = 0.0  # an empty cluster stays zero
    with tf.Graph().as_default(), V1.Session() as sess:
        got = sess.run(pooling.intra_and_global_l2(tf.constant(v)))
    want = np_l2(np_l2(v, 1).reshape(3, -1), 1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
