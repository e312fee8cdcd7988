"""Frame samplers and pooling: index formulas checked through frames that encode their index."""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import model_utils  # noqa: E402
from errors import UsageError  # noqa: E402

V1 = tf.compat.v1
MAX_FRAMES, FEATURES = 12, 3
COUNTS = np.array([12, 7, 1, 3, 10], np.int32)


def _frames(counts=COUNTS):
    """Zero-padded input whose frame t holds t + 1 (so a sample reveals its index)."""
    x = np.zeros([len(counts), MAX_FRAMES, FEATURES], np.float32)
    for b, n in enumerate(counts):
        x[b, :n] = np.arange(1, n + 1)[:, None]
    return x


def _indices(sampler, num_samples, counts=COUNTS, runs=1, **kwargs):
    """Runs the sampler ``runs`` times in one graph; returns the sampled indices [runs, B, T]."""
    with tf.Graph().as_default():
        x = V1.placeholder(tf.float32, [None, MAX_FRAMES, FEATURES])
        n = V1.placeholder(tf.int32, [None])
        out = sampler(x, n, num_samples, **kwargs)
        assert out.shape.as_list() == [None, num_samples, FEATURES]
        with V1.Session() as sess:
            values = np.stack([sess.run(out, {x: _frames(counts), n: counts})
                               for _ in range(runs)])
    assert np.all(values == values[..., :1])  # whole frames were gathered
    return values[..., 0].astype(np.int64) - 1


@pytest.mark.parametrize("num_samples", [1, 4, 5, 30])
def test_evenly_spaced_matches_floor_formula(num_samples):
    got = _indices(model_utils.SampleEvenlySpacedFrames, num_samples)[0]
    i = np.arange(num_samples)
    expected = np.floor(i[None, :] * COUNTS[:, None] / num_samples).astype(np.int64)
    np.testing.assert_array_equal(got, expected)


def test_random_frames_in_range_and_cover_all_frames():
    got = _indices(model_utils.SampleRandomFrames, 200)[0]
    for b, n in enumerate(COUNTS):
        assert got[b].min() >= 0 and got[b].max() < n
        assert set(got[b]) == set(range(n))  # 200 draws hit every frame


def test_random_sequence_is_a_contiguous_run():
    num_samples = 4
    got = _indices(model_utils.SampleRandomSequence, num_samples, runs=20)
    for run in got:
        for b, n in enumerate(COUNTS):
            start = run[b, 0]
            assert 0 <= start <= max(n - num_samples, 0)
            expected = np.minimum(start + np.arange(num_samples), n - 1)
            np.testing.assert_array_equal(run[b], expected)
    starts = got[:, 0, 0]  # n = 12: start is uniform over 0..8
    assert len(set(starts)) > 1


def test_zero_frame_video_reads_padding():
    for sampler in (model_utils.SampleRandomFrames, model_utils.SampleRandomSequence,
                    model_utils.SampleEvenlySpacedFrames):
        got = _indices(sampler, 3, counts=np.array([0, 2], np.int32))
        np.testing.assert_array_equal(got[0, 0], [-1, -1, -1])  # row 0 holds zeros
        assert np.all((got[0, 1] >= 0) & (got[0, 1] < 2))


def test_sample_frames_eval_is_deterministic_even_spacing():
    got = _indices(model_utils.sample_frames, 5, runs=3, is_training=False)
    expected = np.floor(np.arange(5)[None, :] * COUNTS[:, None] / 5).astype(np.int64)
    for run in got:
        np.testing.assert_array_equal(run, expected)


@pytest.mark.parametrize("is_training,random_at_eval", [(True, False), (False, True)])
def test_sample_frames_random_modes(is_training, random_at_eval):
    seq = _indices(model_utils.sample_frames, 30, runs=3, is_training=is_training,
                   random_frames=False, random_at_eval=random_at_eval)
    for run in seq:  # random run: contiguous, saturating at n - 1
        expected = np.minimum(run[:, :1] + np.arange(30), COUNTS[:, None] - 1)
        np.testing.assert_array_equal(run, expected)
    frames = _indices(model_utils.sample_frames, 30, runs=3, is_training=is_training,
                      random_frames=True, random_at_eval=random_at_eval)
    assert np.all((frames >= 0) & (frames < COUNTS[None, :, None]))
    assert not np.all(frames == frames[:1])  # random draws differ between runs


def test_frame_pooling():
    x_val = np.random.default_rng(9).normal(size=[2, 4, 3]).astype(np.float32)
    with tf.Graph().as_default():
        x = tf.constant(x_val)
        pooled = {m: model_utils.FramePooling(x, m) for m in ("average", "max", "none")}
        with V1.Session() as sess:
            out = sess.run(pooled)
    np.testing.assert_allclose(out["average"], x_val.mean(1), rtol=1e-6)
    np.testing.assert_array_equal(out["max"], x_val.max(1))
    np.testing.assert_array_equal(out["none"], x_val.reshape(8, 3))
    with pytest.raises(UsageError, match="median"):
        model_utils.FramePooling(tf.constant(x_val), "median")


def test_gather_feature_blocks_equals_gather_then_split():
    """One gather per column block gives the same rows as gathering whole frames and splitting."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=[4, 9, 1152]).astype(np.float32)
    index = rng.integers(0, 9, size=[4, 6]).astype(np.int32)
    with tf.Graph().as_default():
        blocks = model_utils.gather_feature_blocks(
            V1.placeholder_with_default(x, [None, 9, 1152]), tf.constant(index), [1024, 128])
        with V1.Session() as sess:
            video, audio = sess.run(blocks)
    picked = np.take_along_axis(x, index[:, :, None], axis=1).reshape(-1, 1152)
    np.testing.assert_array_equal(video, picked[:, :1024])
    np.testing.assert_array_equal(audio, picked[:, 1024:])
