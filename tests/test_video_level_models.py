"""MoeModel and LogisticModel against an independent numpy version of SPEC 4.2."""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import model_config  # noqa: E402
import registry  # noqa: E402
import video_level_models  # noqa: E402

V1 = tf.compat.v1
B, D, V, M = 3, 5, 4, 2
BN_NAMES = ("beta", "gamma", "moving_mean", "moving_variance")


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _numpy_moe(x, w, *, prob_gating, prob_input, remove_diag, low_rank):
    """SPEC 4.2 in numpy (float64), inference-mode batch norm."""
    gate_logits = x @ w["gates1/weights"] @ w["gates2/weights"] if low_rank else (
        x @ w["gates/weights"])
    expert_logits = x @ w["experts/weights"] + w["experts/biases"]
    p = np.zeros([B, V])
    for b in range(B):
        for v in range(V):  # class-major layout: class v owns columns v*(M+1) ...
            g = gate_logits[b, v * (M + 1):(v + 1) * (M + 1)]
            g = np.exp(g - g.max())
            g /= g.sum()
            e = _sigmoid(expert_logits[b, v * M:(v + 1) * M])
            p[b, v] = np.sum(g[:M] * e)
    if prob_gating:
        wp = w["gating_prob_weights"]
        gates = (p if prob_input else x) @ wp
        if remove_diag and prob_input:
            gates = gates - np.diag(wp) * p
        bn = {k: w["gating_prob_bn/" + k] for k in BN_NAMES}
        gates = ((gates - bn["moving_mean"]) / np.sqrt(bn["moving_variance"] + 1e-3)
                 * bn["gamma"] + bn["beta"])
        p = p * _sigmoid(gates)
    return p


def _build_moe(**kwargs):
    x = V1.placeholder(tf.float32, [None, D])
    out = video_level_models.MoeModel().create_model(x, V, is_training=False, **kwargs)
    return x, out["predictions"]


def _variable_names():
    return sorted(v.op.name for v in V1.global_variables())


CASES = {  # name: (create_model kwargs, numpy reference kwargs)
    "plain": (dict(prob_gating=False), dict(prob_input=True, remove_diag=False)),
    "prob_gating": (dict(prob_gating=True), dict(prob_input=True, remove_diag=False)),
    "remove_diag": (dict(prob_gating=True, remove_diag=True),
                    dict(prob_input=True, remove_diag=True)),
    "hidden_input": (dict(prob_gating=True, prob_gating_input="hidden"),
                     dict(prob_input=False, remove_diag=False)),
    "low_rank": (dict(prob_gating=False, low_rank_gating=3),
                 dict(prob_input=True, remove_diag=False)),
}


@pytest.mark.parametrize("float16_flag", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_moe_matches_numpy(case, float16_flag):
    model_kwargs, ref_kwargs = CASES[case]
    rng = np.random.default_rng(7)
    x_val = rng.normal(size=[B, D]).astype(np.float32)
    with tf.Graph().as_default():
        x, predictions = _build_moe(num_mixtures=M, float16_flag=float16_flag, **model_kwargs)
        variables = {v.op.name: v for v in V1.global_variables()}
        values = {}
        for name, var in variables.items():
            shape = var.shape.as_list()
            if name.endswith("moving_variance"):
                value = rng.uniform(0.5, 2.0, size=shape)
            else:
                value = rng.normal(size=shape)
            if var.dtype.base_dtype == tf.float16:  # compare against the stored values
                value = value.astype(np.float16)
            values[name] = value.astype(np.float64)
        with V1.Session() as sess:
            for name, var in variables.items():
                var.load(values[name], sess)
            out = sess.run(predictions, {x: x_val})
    expected = _numpy_moe(x_val.astype(np.float64), values,
                          prob_gating=model_kwargs["prob_gating"],
                          low_rank="low_rank_gating" in model_kwargs, **ref_kwargs)
    assert out.shape == (B, V) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("float16_flag", [False, True])
def test_moe_variables_and_regularization(float16_flag):
    with tf.Graph().as_default():
        with V1.variable_scope("tower"):
            _build_moe(num_mixtures=M, float16_flag=float16_flag, prob_gating=True,
                       l2_penalty=0.5)
        variables = {v.op.name: v for v in V1.global_variables()}
        half = tf.float16 if float16_flag else tf.float32
        expected = {
            "tower/gates/weights": ([D, V * (M + 1)], half),
            "tower/experts/weights": ([D, V * M], half),
            "tower/experts/biases": ([V * M], tf.float32),
            "tower/gating_prob_weights": ([V, V], half),
            **{"tower/gating_prob_bn/" + k: ([V], tf.float32) for k in BN_NAMES},
        }
        assert sorted(variables) == sorted(expected)
        for name, (shape, dtype) in expected.items():
            assert variables[name].shape.as_list() == shape
            assert variables[name].dtype.base_dtype == dtype
        losses = V1.get_collection(V1.GraphKeys.REGULARIZATION_LOSSES)
        assert len(losses) == 2 and all(loss.dtype == tf.float32 for loss in losses)
        with V1.Session() as sess:
            sess.run(V1.global_variables_initializer())
            total, gates, experts = sess.run([tf.add_n(losses), variables["tower/gates/weights"],
                                              variables["tower/experts/weights"]])
    expected_loss = 0.5 * (np.sum(gates.astype(np.float64) ** 2)
                           + np.sum(experts.astype(np.float64) ** 2)) / 2
    np.testing.assert_allclose(total, expected_loss, rtol=1e-5)


def test_moe_low_rank_variables():
    with tf.Graph().as_default():
        _build_moe(num_mixtures=M, low_rank_gating=3, prob_gating=False)
        assert _variable_names() == ["experts/biases", "experts/weights",
                                     "gates1/weights", "gates2/weights"]
        assert len(V1.get_collection(V1.GraphKeys.REGULARIZATION_LOSSES)) == 3


def test_moe_settings_reach_the_model_and_explicit_false_wins():
    settings = model_config.ModelSettings(moe_prob_gating=True, moe_num_mixtures=3,
                                          float16_flag=True)
    arguments = registry.member_arguments(model_config.MemberConfig("MoeModel", 1.0, settings))
    with tf.Graph().as_default():
        _build_moe(**arguments)
        variables = {v.op.name: v for v in V1.global_variables()}
        assert "gating_prob_weights" in variables
        assert variables["gates/weights"].shape.as_list() == [D, V * 4]
        assert variables["gates/weights"].dtype.base_dtype == tf.float16
    with tf.Graph().as_default():
        _build_moe(prob_gating=False, float16_flag=False, num_mixtures=1)
        variables = {v.op.name: v for v in V1.global_variables()}
        assert sorted(variables) == ["experts/biases", "experts/weights", "gates/weights"]
        assert variables["gates/weights"].shape.as_list() == [D, V * 2]
        assert variables["gates/weights"].dtype.base_dtype == tf.float32


def test_moe_training_adds_prob_gating_batch_norm_updates():
    with tf.Graph().as_default():
        x = V1.placeholder(tf.float32, [None, D])
        video_level_models.MoeModel().create_model(x, V, is_training=True, prob_gating=True,
                                                   num_mixtures=M)
        assert len(V1.get_collection(V1.GraphKeys.UPDATE_OPS)) == 2


def test_logistic_model_matches_numpy():
    rng = np.random.default_rng(8)
    x_val = rng.normal(size=[B, D]).astype(np.float32)
    w_val = rng.normal(size=[D, V]).astype(np.float32)
    b_val = rng.normal(size=[V]).astype(np.float32)
    with tf.Graph().as_default():
        x = V1.placeholder(tf.float32, [None, D])
        predictions = video_level_models.LogisticModel().create_model(x, V)["predictions"]
        assert _variable_names() == ["fully_connected/biases", "fully_connected/weights"]
        losses = V1.get_collection(V1.GraphKeys.REGULARIZATION_LOSSES)
        variables = {v.op.name: v for v in V1.global_variables()}
        with V1.Session() as sess:
            variables["fully_connected/weights"].load(w_val, sess)
            variables["fully_connected/biases"].load(b_val, sess)
            out, loss = sess.run([predictions, losses[0]], {x: x_val})
    np.testing.assert_allclose(out, _sigmoid(x_val @ w_val + b_val), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss, 1e-8 * np.sum(w_val.astype(np.float64) ** 2) / 2, rtol=1e-5)
