"""The fast paths of eval_util: the grouped k-th largest score and the in-graph top-k.

References are plain numpy (np.partition, a full sort) and the benchmark's
starter-code-style heap metrics, which share no code with eval_util.
"""
import numpy as np
import pytest
import tensorflow as tf

import eval_util
from benchmarks import heap_reference


@pytest.mark.parametrize("num_classes", [3, 20, 161, 3862])
@pytest.mark.parametrize("k", [1, 5, 20])
def test_kth_largest_matches_a_partition(num_classes, k):
    rng = np.random.default_rng(num_classes * 100 + k)
    scores = rng.random((37, num_classes))
    scores[::3, ::4] = 0.5  # many ties, some at the k-th place
    scores[5] = 0.25  # a row that is all ties
    k = min(k, num_classes)
    want = np.partition(scores, num_classes - k, axis=1)[:, num_classes - k]
    assert np.array_equal(eval_util._kth_largest(scores, k)[:, 0], want)
    float32 = scores.astype(np.float32)
    want32 = np.partition(float32, num_classes - k, axis=1)[:, num_classes - k]
    assert np.array_equal(eval_util._kth_largest(float32, k)[:, 0], want32)


def test_kth_largest_of_a_non_contiguous_array():
    scores = np.random.default_rng(3).random((400, 30)).T  # Fortran order, [30, 400]
    want = np.partition(scores, 400 - 20, axis=1)[:, 400 - 20]
    assert np.array_equal(eval_util._kth_largest(scores, 20)[:, 0], want)


def test_top_k_per_video_keeps_lower_classes_on_ties():
    scores = np.array([[0.1, 0.7, 0.7, 0.3, 0.7] + [0.0] * 40])
    got_scores, got_classes = eval_util.top_k_per_video(scores, 2)
    assert got_classes.tolist() == [[1, 2]] and got_scores.tolist() == [[0.7, 0.7]]


def _batches(seed, num_classes, sizes, ties):
    rng = np.random.default_rng(seed)
    for size in sizes:
        scores = rng.random((size, num_classes))
        if ties:
            scores = np.round(scores, 1)  # many equal scores
        labels = rng.random((size, num_classes)) < 0.1
        labels[0] = False  # a video without labels
        labels[1, :] = True  # more labels than top_k
        yield scores, labels


def _graph_metrics(num_classes, top_k, batches):
    metrics = eval_util.EvaluationMetrics(num_classes, top_k)
    with tf.Graph().as_default() as graph:
        predictions = tf.compat.v1.placeholder(tf.float64, [None, num_classes])
        labels = tf.compat.v1.placeholder(tf.bool, [None, num_classes])
        top = eval_util.graph_top_k(predictions, labels, top_k)
    with tf.compat.v1.Session(graph=graph) as sess:
        for scores, truth in batches:
            values = sess.run(top, {predictions: scores, labels: truth})
            assert values["scores"].shape[1] == min(num_classes, max(top_k, truth.sum(1).max()))
            metrics.accumulate_top_k(loss=1.5, **values)
    return metrics.get()


@pytest.mark.parametrize("ties", [False, True])
def test_graph_top_k_gives_what_accumulate_gives(ties):
    num_classes, top_k, sizes = 30, 4, [9, 16, 5]
    numpy_metrics = eval_util.EvaluationMetrics(num_classes, top_k)
    for scores, truth in _batches(7, num_classes, sizes, ties):
        numpy_metrics.accumulate(scores, truth, 1.5)
    want = numpy_metrics.get()
    got = _graph_metrics(num_classes, top_k, _batches(7, num_classes, sizes, ties))
    for key in ("avg_hit_at_one", "avg_perr", "avg_loss", "gap", "map", "num_examples"):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    np.testing.assert_allclose(got["aps"], want["aps"], atol=1e-12)


def test_graph_top_k_rejects_nan():
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        top = eval_util.graph_top_k(tf.constant([[0.5, np.nan, 0.1]]), tf.constant([[1, 0, 0]]), 2)
        with pytest.raises(tf.errors.InvalidArgumentError, match="NaN"):
            sess.run(top)


def test_heap_reference_agrees_with_evaluation_metrics():
    """The benchmark's reference computes the same GAP, mAP, Hit@1 and PERR (no ties)."""
    rng = np.random.default_rng(11)
    num_classes, top_k = 50, 5
    fast = eval_util.EvaluationMetrics(num_classes, top_k)
    slow = heap_reference.HeapEvaluationMetrics(num_classes, top_k)
    for size in (20, 7):
        scores = rng.random((size, num_classes))
        labels = rng.random((size, num_classes)) < 0.08
        labels[np.arange(size), rng.integers(0, num_classes, size)] = True
        fast.accumulate(scores, labels, 0.0)
        slow.accumulate(scores, labels)
    want, got = fast.get(), slow.get()
    for key in ("gap", "map", "avg_hit_at_one", "avg_perr"):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
