"""NeXtVLADModel: its variables, its parameter count formula, its predictions against
numpy equations written here, batch independence, learning, float16 storage."""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import frame_level_models  # noqa: E402
from errors import UsageError  # noqa: E402

V1 = tf.compat.v1
FRAMES, VOCAB = 6, 5
SIZES = dict(cluster_size=4, hidden_size=16, groups=4, expansion=2, gating_reduction=4)
MOE = dict(num_mixtures=2)


def build(is_training, **params):
    inputs = V1.placeholder(tf.float32, [None, FRAMES, 1152])
    num_frames = V1.placeholder(tf.int32, [None])
    with V1.variable_scope("tower"):
        out = frame_level_models.NeXtVLADModel().create_model(
            model_input=inputs, vocab_size=VOCAB, num_frames=num_frames,
            is_training=is_training,
            **{k: v for k, v in {**SIZES, **MOE, **params}.items() if v is not None})
    return inputs, num_frames, out["predictions"]


def videos(rng, batch):
    counts = rng.integers(1, FRAMES + 1, size=batch).astype(np.int32)
    frames = rng.normal(size=(batch, FRAMES, 1152))
    frames /= np.linalg.norm(frames, axis=2, keepdims=True)
    frames[np.arange(FRAMES)[None, :] >= counts[:, None]] = 0.0
    return frames.astype(np.float32), counts


def stream_variables(video: str, audio: str) -> dict:
    """Name -> shape of the rgb (K=4 clusters, G=4 groups) and audio (K/2, G/2) NeXtVLAD
    blocks at SIZES, under the prefixes ``video`` and ``audio``."""
    expected = {}
    for prefix, size, k, g in ((video, 1024, 4, 4), (audio, 128, 2, 2)):
        width = 2 * size
        expected.update({
            f"{prefix}fully_connected/weights": [size, width],
            f"{prefix}fully_connected/biases": [width],
            f"{prefix}fully_connected_1/weights": [width, g],
            f"{prefix}fully_connected_1/biases": [g],
            f"{prefix}cluster_weights": [width, g * k],
            f"{prefix}cluster_weights2": [1, width // g, k]})
        for stat in ("beta", "gamma", "moving_mean", "moving_variance"):
            expected[f"{prefix}cluster_bn/{stat}"] = [g * k]
            expected[f"{prefix}vlad_bn/{stat}"] = [k * width // g]
    return expected


def test_variable_names_and_shapes():
    """The public code's names; rgb: K clusters, G groups; audio: K/2, G/2."""
    with tf.Graph().as_default():
        build(is_training=True)
        shapes = {v.op.name[len("tower/"):]: v.shape.as_list() for v in V1.global_variables()}
    expected = stream_variables("video_VLAD/", "audio_VLAD/")
    vlad = 4 * 2048 // 4 + 2 * 256 // 2
    expected.update({"hidden1_weights": [vlad, 16], "gating_weights_1": [16, 4],
                     "gating_weights_2": [4, 16], "gates/weights": [16, VOCAB * 3],
                     "experts/weights": [16, VOCAB * 2], "experts/biases": [VOCAB * 2]})
    for scope, depth in (("hidden1_bn", 16), ("gating_bn", 4)):
        for stat in ("beta", "gamma", "moving_mean", "moving_variance"):
            expected[f"{scope}/{stat}"] = [depth]
    assert shapes == expected


@pytest.mark.parametrize("classifier", ["MoeModel", "LogisticModel"])
def test_parameter_count_formula_matches_the_graph(classifier):
    moe = classifier == "MoeModel"
    with tf.Graph().as_default():
        params = {} if moe else {"num_mixtures": None}
        build(is_training=True, video_level_classifier_model=classifier, **params)
        built = sum(int(np.prod(v.shape)) for v in V1.trainable_variables())
    assert built == frame_level_models.NeXtVLADModel.parameter_count(
        VOCAB, **SIZES, num_mixtures=2 if moe else None)


def test_float16_storage_of_the_large_matrices():
    with tf.Graph().as_default():
        build(is_training=False, float16_flag=True)
        half = sorted(v.op.name[len("tower/"):] for v in V1.global_variables()
                      if v.dtype.base_dtype == tf.float16)
    assert half == sorted(["audio_VLAD/cluster_weights", "audio_VLAD/fully_connected/weights",
                           "video_VLAD/cluster_weights", "video_VLAD/fully_connected/weights",
                           "experts/weights", "gates/weights", "gating_weights_1",
                           "gating_weights_2", "hidden1_weights"])


def test_bad_groups_are_usage_errors():
    with tf.Graph().as_default(), pytest.raises(UsageError, match="--expansion=1 --groups=6"):
        build(is_training=False, groups=6, expansion=1)


# --- numpy reference (inference mode) ------------------------------------------------


def _bn(x, values, scope, eps=1e-3):
    return ((x - values[f"{scope}/moving_mean"]) / np.sqrt(values[f"{scope}/moving_variance"]
                                                           + eps)
            * values[f"{scope}/gamma"] + values[f"{scope}/beta"])


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def numpy_nextvlad(x, mask, values, scope, k, g):
    """Eq. of the paper: x' = W x + b; a_g = sigmoid(w_g x' + b_g) (masked);
    alpha_gk = softmax_k(BN(x'_g-view W_c)); v_jk = sum_t,g a_g alpha_gk (x'_gj - c_kj);
    intra L2 over j; flatten j-major; BN."""
    v = {n[len(scope) + 1:]: a for n, a in values.items() if n.startswith(scope + "/")}
    expanded = x @ v["fully_connected/weights"] + v["fully_connected/biases"]  # [B,T,W]
    attention = _sigmoid(expanded @ v["fully_connected_1/weights"]
                         + v["fully_connected_1/biases"]) * mask[:, :, None]  # [B,T,G]
    batch, frames, width = expanded.shape
    logits = _bn(expanded @ v["cluster_weights"], v, "cluster_bn")  # [B,T,G*K]
    alpha = _softmax(logits.reshape(batch, frames, g, k)) * attention[..., None]
    groups = expanded.reshape(batch, frames, g, width // g)  # x'_g
    centres = v["cluster_weights2"][0]  # [W/G, K]
    vlad = (np.einsum("btgk,btgj->bjk", alpha, groups)
            - alpha.sum(axis=(1, 2))[:, None, :] * centres[None])
    vlad /= np.sqrt(np.maximum((vlad ** 2).sum(axis=1, keepdims=True), 1e-12))
    return _bn(vlad.reshape(batch, -1), v, "vlad_bn")


def numpy_model(frames, counts, values):
    mask = (np.arange(FRAMES)[None, :] < counts[:, None]).astype(np.float64)
    vlad = np.concatenate([
        numpy_nextvlad(frames[:, :, :1024], mask, values, "video_VLAD", 4, 4),
        numpy_nextvlad(frames[:, :, 1024:], mask, values, "audio_VLAD", 2, 2)], axis=1)
    hidden = _bn(vlad @ values["hidden1_weights"], values, "hidden1_bn")
    gates = np.maximum(_bn(hidden @ values["gating_weights_1"], values, "gating_bn"), 0)
    hidden = hidden * _sigmoid(gates @ values["gating_weights_2"])
    gating = _softmax((hidden @ values["gates/weights"]).reshape(-1, 3))
    experts = _sigmoid((hidden @ values["experts/weights"] + values["experts/biases"])
                       .reshape(-1, 2))
    return (gating[:, :2] * experts).sum(axis=1).reshape(-1, VOCAB)


def _randomise_variables(sess, rng):
    """Every variable random (moving variances positive), so batch norm is not identity."""
    values = {}
    for var in V1.global_variables():
        shape = var.shape.as_list()
        value = rng.normal(scale=0.5, size=shape)
        if "moving_variance" in var.op.name:
            value = rng.uniform(0.5, 2.0, size=shape)
        var.load(value.astype(np.float32), sess)
        values[var.op.name[len("tower/"):]] = value.astype(np.float32).astype(np.float64)
    return values


def test_predictions_match_numpy_and_do_not_depend_on_the_batch():
    rng = np.random.default_rng(0)
    frames, counts = videos(rng, 6)
    with tf.Graph().as_default():
        inputs, num_frames, predictions = build(is_training=False)
        with V1.Session() as sess:
            values = _randomise_variables(sess, rng)
            batch = sess.run(predictions, {inputs: frames, num_frames: counts})
            alone = [sess.run(predictions, {inputs: frames[i:i + 1], num_frames: counts[i:i + 1]})
                     for i in range(len(counts))]
    np.testing.assert_allclose(batch, numpy_model(frames.astype(np.float64), counts, values),
                               atol=1e-5)
    np.testing.assert_allclose(np.concatenate(alone), batch, atol=1e-5)


def test_training_lowers_the_loss():
    rng = np.random.default_rng(1)
    frames, counts = videos(rng, 8)
    labels = (rng.uniform(size=(8, VOCAB)) < 0.4).astype(np.float32)
    with tf.Graph().as_default():
        V1.set_random_seed(2)
        inputs, num_frames, predictions = build(is_training=True)
        p = tf.clip_by_value(predictions, 1e-6, 1 - 1e-6)
        loss = -tf.reduce_mean(labels * tf.math.log(p) + (1 - labels) * tf.math.log(1 - p))
        with tf.control_dependencies(V1.get_collection(V1.GraphKeys.UPDATE_OPS)):
            step = V1.train.AdamOptimizer(0.01).minimize(loss)
        feed = {inputs: frames, num_frames: counts}
        with V1.Session() as sess:
            sess.run(V1.global_variables_initializer())
            losses = [sess.run([loss, step], feed)[0] for _ in range(40)]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
