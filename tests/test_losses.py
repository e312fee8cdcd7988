"""losses.py against numpy formulas, run in a tf.compat.v1 graph session."""
import numpy as np
import pytest
import tensorflow as tf

import losses


def run_loss(loss, predictions, labels, **params):
    with tf.Graph().as_default():
        value = loss.calculate_loss(tf.constant(predictions), tf.constant(labels), **params)
        assert value.dtype == tf.float32 and value.shape.rank == 0
        with tf.compat.v1.Session() as sess:
            return float(sess.run(value))


def random_batch(seed, batch=16, classes=50):
    rng = np.random.default_rng(seed)
    labels = rng.random((batch, classes)) < 0.1
    labels[0] = False  # a video without labels
    labels[1, 3] = True
    predictions = rng.random((batch, classes)).astype(np.float32)
    predictions[2, :5] = [0.0, 1.0, 1e-9, 1 - 1e-7, 0.5]  # near the log's edges
    return predictions, labels


@pytest.mark.parametrize("label_dtype", [bool, np.float32, np.int64])
def test_cross_entropy(label_dtype):
    p, y = random_batch(1)
    yf = y.astype(np.float64)
    pf = p.astype(np.float64)
    eps = 1e-5
    want = -(yf * np.log(pf + eps) + (1 - yf) * np.log(1 - pf + eps)).sum(axis=1).mean()
    got = run_loss(losses.CrossEntropyLoss(), p, y.astype(label_dtype))
    assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("b", [1.0, 0.5])
def test_hinge(b):
    p, y = random_batch(2)
    p = p * 3 - 1.5  # hinge predictions live around [-1, 1]
    sign = 2 * y.astype(np.float64) - 1
    want = np.maximum(0.0, b - sign * p).sum(axis=1).mean()
    params = {} if b == 1.0 else {"b": b}
    got = run_loss(losses.HingeLoss(), p, y, **params)
    assert got == pytest.approx(want, rel=1e-5)


def test_softmax():
    p, y = random_batch(3)
    logits = p.astype(np.float64) * 8 - 4
    yf = y.astype(np.float64)
    normalised = yf / np.maximum(yf.sum(axis=1, keepdims=True), 1e-7)
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    want = -(normalised * log_softmax).sum(axis=1).mean()
    got = run_loss(losses.SoftmaxLoss(), logits.astype(np.float32), y)
    assert got == pytest.approx(want, rel=1e-5)


def test_softmax_stays_finite_for_extreme_logits():
    logits = np.array([[200.0, -200.0, 0.0], [-200.0, 200.0, 0.0]], dtype=np.float32)
    labels = np.array([[True, False, False], [True, False, True]])
    # Row 0: log_softmax[0] = 0; row 1: -(1/2)(-400 + -200) = 300.
    assert run_loss(losses.SoftmaxLoss(), logits, labels) == pytest.approx(150.0, rel=1e-6)


def test_base_loss_is_abstract():
    with pytest.raises(NotImplementedError):
        losses.BaseLoss().calculate_loss(None, None)


def _numpy_cross_entropy(p, y):
    return np.mean(-np.sum(y * np.log(p + 1e-5) + (1 - y) * np.log(1 - p + 1e-5), axis=1))


@pytest.mark.parametrize("weight,temperature", [(0.0, 1.0), (0.5, 1.0), (0.7, 3.0), (1.0, 2.0)])
def test_distillation_loss_is_the_mixed_cross_entropy(weight, temperature):
    """(1 - w) CE(p, y) + w T^2 CE(s(p), s(q)), s(x) = sigmoid(logit(x) / T)."""
    rng = np.random.default_rng(3)
    p, q = rng.uniform(0.01, 0.99, size=(2, 5, 7))
    y = (rng.uniform(size=(5, 7)) < 0.3).astype(np.float64)

    def soften(x):
        return 1 / (1 + np.exp(-np.log(x / (1 - x)) / temperature))

    expected = ((1 - weight) * _numpy_cross_entropy(p, y)
                + weight * temperature ** 2 * _numpy_cross_entropy(soften(p), soften(q)))
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        got = sess.run(losses.distillation_loss(
            losses.CrossEntropyLoss(), tf.constant(p, tf.float32), tf.constant(y, tf.float32),
            tf.constant(q, tf.float32), weight, temperature))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
