"""core_fp16 / layers_fp16 against numpy: names, dtypes, outputs, batch norm, losses."""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import core_fp16  # noqa: E402
import layers_fp16  # noqa: E402

V1 = tf.compat.v1
EPS = 1e-3


def _variables():
    return {v.op.name: v for v in V1.global_variables()}


def _run(fetches, feed=None, assign=None):
    """Initialises the graph's variables, assigns ``assign`` {var: value}, runs fetches."""
    with V1.Session() as sess:
        sess.run(V1.global_variables_initializer())
        for var, value in (assign or {}).items():
            var.load(value, sess)
        return sess.run(fetches, feed)


def _bytes(var):
    return int(np.prod(var.shape)) * var.dtype.size


@pytest.mark.parametrize("float16_flag", [False, True])
def test_fully_connected_variables(float16_flag):
    with tf.Graph().as_default():
        x = V1.placeholder(tf.float32, [None, 6])
        layers_fp16.fully_connected(x, 4, float16_flag=float16_flag)
        layers_fp16.fully_connected(x, 3, float16_flag=float16_flag)
        layers_fp16.fully_connected(x, 2, biases_initializer=None, scope="nobias",
                                    float16_flag=float16_flag)
        found = _variables()
    kernel_dtype = tf.float16 if float16_flag else tf.float32
    expected = {
        "fully_connected/weights": ([6, 4], kernel_dtype),
        "fully_connected/biases": ([4], tf.float32),
        "fully_connected_1/weights": ([6, 3], kernel_dtype),
        "fully_connected_1/biases": ([3], tf.float32),
        "nobias/weights": ([6, 2], kernel_dtype),
    }
    assert sorted(found) == sorted(expected)
    for name, (shape, dtype) in expected.items():
        assert found[name].shape.as_list() == shape
        assert found[name].dtype.base_dtype == dtype
        assert found[name].trainable
    assert _bytes(found["fully_connected/weights"]) == 6 * 4 * (2 if float16_flag else 4)


@pytest.mark.parametrize("float16_flag", [False, True])
@pytest.mark.parametrize("rank", [2, 3])
def test_fully_connected_matches_numpy(float16_flag, rank):
    rng = np.random.default_rng(0)
    shape = [5, 6] if rank == 2 else [2, 3, 6]
    x_val = rng.normal(size=shape).astype(np.float32)
    w_val = rng.normal(size=[6, 4]).astype(np.float32)
    b_val = rng.normal(size=[4]).astype(np.float32)
    with tf.Graph().as_default():
        x = V1.placeholder(tf.float32, [None] * (rank - 1) + [6])
        y = layers_fp16.fully_connected(x, 4, float16_flag=float16_flag)
        assert y.dtype == tf.float32
        assert y.shape.as_list()[-1] == 4
        found = _variables()
        out = _run(y, {x: x_val}, {found["fully_connected/weights"]: w_val,
                                   found["fully_connected/biases"]: b_val})
    w_ref = w_val.astype(np.float16).astype(np.float32) if float16_flag else w_val
    expected = np.maximum(x_val @ w_ref + b_val, 0.0)  # default activation relu
    assert out.shape == tuple(shape[:-1]) + (4,)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("float16_flag", [False, True])
def test_dense_names_reuse_and_rank3(float16_flag):
    rng = np.random.default_rng(1)
    x_val = rng.normal(size=[2, 3, 5]).astype(np.float32)
    with tf.Graph().as_default():
        x = V1.placeholder(tf.float32, [None, 3, 5])
        layer = core_fp16.Dense(4, activation=tf.tanh, float16_flag=float16_flag)
        y1, y2 = layer(x), layer(x)  # the second call reuses the variables
        core_fp16.Dense(2, use_bias=False)(x)
        core_fp16.Dense(2, name="named")(x)
        found = _variables()
        assert sorted(found) == ["dense/bias", "dense/kernel", "dense_1/kernel",
                                 "named/bias", "named/kernel"]
        kernel, bias = found["dense/kernel"], found["dense/bias"]
        assert kernel.dtype.base_dtype == (tf.float16 if float16_flag else tf.float32)
        assert bias.dtype.base_dtype == tf.float32
        w_val = rng.normal(size=[5, 4]).astype(np.float32)
        b_val = rng.normal(size=[4]).astype(np.float32)
        out1, out2 = _run([y1, y2], {x: x_val}, {kernel: w_val, bias: b_val})
    w_ref = w_val.astype(np.float16).astype(np.float32) if float16_flag else w_val
    expected = np.tanh(np.einsum("btd,dk->btk", x_val, w_ref) + b_val)
    np.testing.assert_allclose(out1, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out1, out2)


@pytest.mark.parametrize("float16_flag", [False, True])
def test_regularization_loss_float32_once_per_variable(float16_flag):
    rng = np.random.default_rng(2)
    w_val = rng.normal(size=[3, 2]).astype(np.float32)
    with tf.Graph().as_default():
        x = V1.placeholder(tf.float32, [None, 3])
        reg = layers_fp16.l2_regularizer(0.25)
        for reuse in (None, True):  # a second tower reuses the weights
            with V1.variable_scope("tower", reuse=reuse):
                layers_fp16.fully_connected(x, 2, weights_regularizer=reg, scope="fc",
                                            float16_flag=float16_flag)
        losses = V1.get_collection(V1.GraphKeys.REGULARIZATION_LOSSES)
        assert len(losses) == 1
        assert losses[0].dtype == tf.float32
        value = _run(losses[0], assign={_variables()["tower/fc/weights"]: w_val})
    w_ref = w_val.astype(np.float16).astype(np.float32) if float16_flag else w_val
    np.testing.assert_allclose(value, 0.25 * np.sum(w_ref ** 2) / 2, rtol=1e-6)
    assert layers_fp16.l2_regularizer(0.0)(tf.constant([1.0])) is None


def test_weight_variable_storage_and_init():
    with tf.Graph().as_default():
        w16 = layers_fp16.weight_variable("w16", [200, 100], 0.5, float16_flag=True)
        w32 = layers_fp16.weight_variable("w32", [200, 100], 0.5)
        assert w16.dtype == tf.float32 and w32.dtype == tf.float32
        found = _variables()
        assert found["w16"].dtype.base_dtype == tf.float16
        assert found["w32"].dtype.base_dtype == tf.float32
        assert _bytes(found["w16"]) * 2 == _bytes(found["w32"])
        v16, v32 = _run([w16, w32])
    for value in (v16, v32):
        assert abs(value.std() - 0.5) < 0.02 and abs(value.mean()) < 0.02


def test_batch_norm_variables():
    with tf.Graph().as_default():
        x = V1.placeholder(tf.float32, [None, 4])
        layers_fp16.batch_norm(x, True, "bn")
        found = _variables()
        assert sorted(found) == ["bn/beta", "bn/gamma", "bn/moving_mean", "bn/moving_variance"]
        trainable = {v.op.name for v in V1.trainable_variables()}
        moving = {v.op.name for v in V1.get_collection(V1.GraphKeys.MOVING_AVERAGE_VARIABLES)}
        assert trainable == {"bn/beta", "bn/gamma"}
        assert moving == {"bn/moving_mean", "bn/moving_variance"}
        assert all(v.dtype.base_dtype == tf.float32 and v.shape.as_list() == [4]
                   for v in found.values())
        assert len(V1.get_collection(V1.GraphKeys.UPDATE_OPS)) == 2
        inits = _run({name: v for name, v in found.items()})
    np.testing.assert_array_equal(inits["bn/beta"], np.zeros(4))
    np.testing.assert_array_equal(inits["bn/gamma"], np.ones(4))
    np.testing.assert_array_equal(inits["bn/moving_mean"], np.zeros(4))
    np.testing.assert_array_equal(inits["bn/moving_variance"], np.ones(4))


@pytest.mark.parametrize("shape", [[7, 4], [2, 5, 4]])
def test_batch_norm_training_and_moving_update(shape):
    rng = np.random.default_rng(3)
    x_val = (rng.normal(size=shape) * 3 + 2).astype(np.float32)
    beta_val = rng.normal(size=[4]).astype(np.float32)
    gamma_val = rng.normal(size=[4]).astype(np.float32)
    with tf.Graph().as_default():
        x = V1.placeholder(tf.float32, [None] * (len(shape) - 1) + [4])
        y = layers_fp16.batch_norm(x, True, "bn")
        found = _variables()
        update = V1.get_collection(V1.GraphKeys.UPDATE_OPS)
        with V1.Session() as sess:
            sess.run(V1.global_variables_initializer())
            found["bn/beta"].load(beta_val, sess)
            found["bn/gamma"].load(gamma_val, sess)
            out, _ = sess.run([y, update], {x: x_val})
            mean_after, var_after = sess.run([found["bn/moving_mean"],
                                              found["bn/moving_variance"]])
    rows = x_val.reshape(-1, 4).astype(np.float64)
    n = rows.shape[0]
    mean, var = rows.mean(0), rows.var(0)  # biased
    expected = (x_val - mean) / np.sqrt(var + EPS) * gamma_val + beta_val
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    decay = 0.999
    np.testing.assert_allclose(mean_after, 0 - (1 - decay) * (0 - mean), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(var_after, 1 - (1 - decay) * (1 - var * n / (n - 1)),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape", [[6, 3], [2, 4, 3]])
def test_batch_norm_inference_uses_moving_stats(shape):
    rng = np.random.default_rng(4)
    x_val = rng.normal(size=shape).astype(np.float32)
    stats = {name: rng.uniform(0.5, 2.0, size=[3]).astype(np.float32)
             for name in ("beta", "gamma", "moving_mean", "moving_variance")}
    with tf.Graph().as_default():
        x = V1.placeholder(tf.float32, [None] * (len(shape) - 1) + [3])
        y = layers_fp16.batch_norm(x, False, "bn")
        assert not V1.get_collection(V1.GraphKeys.UPDATE_OPS)
        found = _variables()
        out = _run(y, {x: x_val}, {found["bn/" + k]: v for k, v in stats.items()})
    expected = ((x_val - stats["moving_mean"]) / np.sqrt(stats["moving_variance"] + EPS)
                * stats["gamma"] + stats["beta"])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("own_scope", [True, False])
@pytest.mark.parametrize("remove_diag", [False, True])
def test_context_gating_with_batch_norm(own_scope, remove_diag):
    rng = np.random.default_rng(5)
    x_val = rng.normal(size=[4, 3]).astype(np.float32)
    w_val = rng.normal(size=[3, 3]).astype(np.float32)
    with tf.Graph().as_default():
        x = V1.placeholder(tf.float32, [None, 3])
        y = layers_fp16.context_gating(x, False, weights_in_own_scope=own_scope,
                                       remove_diag=remove_diag)
        found = _variables()
        w_name = "gating_weights/gating_weights" if own_scope else "gating_weights"
        assert sorted(found) == sorted([w_name] + [
            "gating_bn/" + k for k in ("beta", "gamma", "moving_mean", "moving_variance")])
        out = _run(y, {x: x_val}, {found[w_name]: w_val})
    gates = x_val @ w_val
    if remove_diag:
        gates -= np.diag(w_val) * x_val
    gates = gates / np.sqrt(1 + EPS)  # moving mean 0, variance 1, gamma 1, beta 0
    np.testing.assert_allclose(out, x_val / (1 + np.exp(-gates)), rtol=1e-5, atol=1e-6)


def test_context_gating_without_batch_norm_adds_biases():
    rng = np.random.default_rng(6)
    x_val = rng.normal(size=[4, 3]).astype(np.float32)
    w_val = rng.normal(size=[3, 3]).astype(np.float32)
    b_val = rng.normal(size=[3]).astype(np.float32)
    with tf.Graph().as_default():
        x = V1.placeholder(tf.float32, [None, 3])
        y = layers_fp16.context_gating(x, True, add_batch_norm=False,
                                       weights_name="gating_weights_2", weights_in_own_scope=False)
        found = _variables()
        assert sorted(found) == ["gating_biases", "gating_weights_2"]
        out = _run(y, {x: x_val}, {found["gating_weights_2"]: w_val,
                                   found["gating_biases"]: b_val})
    expected = x_val / (1 + np.exp(-(x_val @ w_val + b_val)))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_matmul_last_axis_gradients_match_numpy():
    """The kernel-first input gradient equals g @ W^T, the kernel gradient x^T @ g."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=[6, 40]).astype(np.float32)
    w = rng.normal(size=[40, 30]).astype(np.float32)
    g = rng.normal(size=[6, 30]).astype(np.float32)
    with tf.Graph().as_default():
        inputs, kernel = tf.constant(x), tf.constant(w)
        out = core_fp16.matmul_last_axis(inputs, kernel)
        grads = tf.gradients(out, [inputs, kernel], grad_ys=tf.constant(g))
        with tf.compat.v1.Session() as sess:
            value, (dx, dw) = sess.run([out, grads])
    np.testing.assert_allclose(value, x @ w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, g @ w.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, x.T @ g, rtol=1e-5, atol=1e-5)
