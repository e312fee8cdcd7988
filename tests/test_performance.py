"""The speed options (performance.py) and the cheaper gradient clipping of train.py."""
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import rewriter_config_pb2

import performance
import train
from errors import UsageError
from model_config import TrainingConfig

ON = rewriter_config_pb2.RewriterConfig.ON


def test_defaults_leave_tensorflow_defaults():
    config = performance.session_config(TrainingConfig())
    assert config.intra_op_parallelism_threads == 0 == config.inter_op_parallelism_threads
    assert config.graph_options.optimizer_options.global_jit_level == 0
    rewrites = config.graph_options.rewrite_options
    assert rewrites.auto_mixed_precision != ON
    assert rewrites.auto_mixed_precision_onednn_bfloat16 != ON


def test_settings_reach_the_session_config():
    training = TrainingConfig(mixed_precision="bfloat16", xla=True, intra_op_threads=2,
                              inter_op_threads=1)
    base = tf.compat.v1.ConfigProto(allow_soft_placement=True)
    config = performance.session_config(training, base)
    assert config is base and config.allow_soft_placement
    assert (config.intra_op_parallelism_threads, config.inter_op_parallelism_threads) == (2, 1)
    assert config.graph_options.optimizer_options.global_jit_level == (
        tf.compat.v1.OptimizerOptions.ON_1)
    assert config.graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16 == ON
    float16 = performance.session_config(TrainingConfig(mixed_precision="float16"))
    assert float16.graph_options.rewrite_options.auto_mixed_precision == ON


@pytest.mark.parametrize("name,value", [("mixed_precision", "half"), ("intra_op_threads", -1)])
def test_bad_values_name_the_flag(name, value):
    with pytest.raises(UsageError, match=f"--{name}"):
        TrainingConfig(**{name: value}).validate()


def test_float16_wraps_the_optimizer_with_loss_scaling():
    with tf.Graph().as_default():
        optimizer = tf.compat.v1.train.AdamOptimizer(0.1)
        assert performance.wrap_optimizer(optimizer, "none") is optimizer
        assert performance.wrap_optimizer(optimizer, "bfloat16") is optimizer
        wrapped = performance.wrap_optimizer(optimizer, "float16")
        assert isinstance(wrapped, tf.compat.v1.mixed_precision.MixedPrecisionLossScaleOptimizer)


def test_float16_loss_scaling_skips_overflowing_steps():
    """An infinite gradient leaves the weights alone; a finite one updates them."""
    with tf.Graph().as_default():
        weight = tf.compat.v1.get_variable("w", initializer=np.float32(1.0))
        scale = tf.compat.v1.placeholder(tf.float32, [])
        optimizer = performance.wrap_optimizer(tf.compat.v1.train.GradientDescentOptimizer(0.5),
                                               "float16")
        grads = optimizer.compute_gradients(weight * scale, [weight])
        step = optimizer.apply_gradients(train._clip(grads, 1.0))
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(step, {scale: np.float32(np.inf)})
            assert sess.run(weight) == 1.0
            sess.run(step, {scale: 3.0})
            assert sess.run(weight) == pytest.approx(0.5)  # clipped to norm 1, times 0.5


def test_clip_matches_clip_by_norm():
    rng = np.random.default_rng(2)
    values = [rng.standard_normal((300, 7)).astype(np.float32) * s for s in (0.001, 1.0, 50.0)]
    values.append(np.zeros((4, 4), np.float32))
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        grads = [(tf.constant(v), None) for v in values]
        got = sess.run([g for g, _ in train._clip(grads, 1.5)])
        want = sess.run([tf.clip_by_norm(tf.constant(v), 1.5) for v in values])
        assert train._clip(grads, 0.0) is grads
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-12)
