"""Frame sampling and pooling shared by the frame-level models.

Inputs are zero-padded [batch, max_frames, features] with the true frame
count per video; samplers return [batch, num_samples, features].  Training
samples at random (data augmentation); eval and inference are deterministic
by default so a checkpoint always gets the same score (SPEC 4.1 step 1).
"""

import math
from typing import List, Sequence

import tensorflow as tf

from errors import UsageError


def _frame_counts(model_input: tf.Tensor, num_frames: tf.Tensor) -> tf.Tensor:
    """num_frames as int32 [batch, 1] (from any dtype, [batch] or [batch, 1]).

    Capped at the padded length so an index can never leave the tensor.
    """
    counts = tf.reshape(tf.cast(num_frames, tf.int32), [-1, 1])
    return tf.minimum(counts, tf.shape(model_input)[1])


def _gather(model_input: tf.Tensor, frame_index: tf.Tensor) -> tf.Tensor:
    return tf.gather(model_input, frame_index, axis=1, batch_dims=1)


def _uniform(num_frames: tf.Tensor, columns: int) -> tf.Tensor:
    """u ~ U[0, 1), one per video and column."""
    return tf.random.uniform(tf.stack([tf.shape(num_frames)[0], columns]))


def random_frames_index(model_input: tf.Tensor, num_frames: tf.Tensor,
                        num_samples: int) -> tf.Tensor:
    """Frames drawn uniformly with replacement: index = floor(u * num_frames)."""
    counts = _frame_counts(model_input, num_frames)
    index = tf.cast(_uniform(counts, num_samples) * tf.cast(counts, tf.float32), tf.int32)
    # float rounding could give exactly num_frames; a 0-frame video reads row 0.
    return tf.maximum(tf.minimum(index, counts - 1), 0)


def random_sequence_index(model_input: tf.Tensor, num_frames: tf.Tensor,
                          num_samples: int) -> tf.Tensor:
    """A random run: start = floor(u * (max(n - T, 0) + 1)), index_t = min(start + t, n - 1)."""
    counts = _frame_counts(model_input, num_frames)
    starts = tf.cast(_uniform(counts, 1) * tf.cast(tf.maximum(counts - num_samples, 0) + 1,
                                                   tf.float32), tf.int32)
    index = tf.minimum(starts + tf.range(num_samples)[tf.newaxis, :], counts - 1)
    return tf.maximum(index, 0)


def evenly_spaced_index(model_input: tf.Tensor, num_frames: tf.Tensor,
                        num_samples: int) -> tf.Tensor:
    """Deterministic frames floor(i * num_frames / num_samples), exact in integers."""
    counts = _frame_counts(model_input, num_frames)
    return (tf.range(num_samples)[tf.newaxis, :] * counts) // num_samples


def SampleRandomFrames(model_input: tf.Tensor, num_frames: tf.Tensor,
                       num_samples: int) -> tf.Tensor:
    """The 2018 sampler: frames at :func:`random_frames_index`."""
    return _gather(model_input, random_frames_index(model_input, num_frames, num_samples))


def SampleRandomSequence(model_input: tf.Tensor, num_frames: tf.Tensor,
                         num_samples: int) -> tf.Tensor:
    """The 2018 sampler: frames at :func:`random_sequence_index`."""
    return _gather(model_input, random_sequence_index(model_input, num_frames, num_samples))


def SampleEvenlySpacedFrames(model_input: tf.Tensor, num_frames: tf.Tensor,
                             num_samples: int) -> tf.Tensor:
    """The 2018 sampler: frames at :func:`evenly_spaced_index`."""
    return _gather(model_input, evenly_spaced_index(model_input, num_frames, num_samples))


def sample_index(model_input: tf.Tensor, num_frames: tf.Tensor, num_samples: int,
                 is_training: bool, random_frames: bool = True,
                 random_at_eval: bool = False) -> tf.Tensor:
    """[batch, num_samples] frame indices: random when training (or eval with
    ``random_at_eval``), else evenly spaced.

    ``random_frames`` picks frames with replacement, otherwise a contiguous run
    (the settings sample_random_frames / sample_random_frames_at_eval).
    """
    if not (is_training or random_at_eval):
        return evenly_spaced_index(model_input, num_frames, num_samples)
    if random_frames:
        return random_frames_index(model_input, num_frames, num_samples)
    return random_sequence_index(model_input, num_frames, num_samples)


def sample_frames(model_input: tf.Tensor, num_frames: tf.Tensor, num_samples: int,
                  is_training: bool, random_frames: bool = True,
                  random_at_eval: bool = False) -> tf.Tensor:
    """The frames :func:`sample_index` picks, [batch, num_samples, features]."""
    return _gather(model_input, sample_index(model_input, num_frames, num_samples, is_training,
                                             random_frames, random_at_eval))


def gather_feature_blocks(model_input: tf.Tensor, frame_index: tf.Tensor,
                          widths: Sequence[int]) -> List[tf.Tensor]:
    """The picked frames' features cut into column blocks of ``widths``, each as rows
    [batch * num_samples, width], in one gather per block.

    Gathering then splitting copies every feature twice; viewing each frame as
    chunks of gcd(widths) features lets one gather pick the frame and the
    columns together.
    """
    chunk = math.gcd(*widths)
    chunks_per_frame = sum(widths) // chunk
    batch = tf.shape(model_input)[0]
    chunked = tf.reshape(model_input, [batch, -1, chunk])
    blocks, start = [], 0
    for width in widths:
        offsets = tf.range(start // chunk, (start + width) // chunk)
        index = frame_index[:, :, tf.newaxis] * chunks_per_frame + offsets
        picked = tf.gather(chunked, tf.reshape(index, [batch, -1]), axis=1, batch_dims=1)
        blocks.append(tf.reshape(picked, [-1, width]))
        start += width
    return blocks


def FramePooling(frames: tf.Tensor, method: str) -> tf.Tensor:
    """Pools [batch, frames, features] over frames: 'average', 'max', or 'none' (flatten rows)."""
    if method == "average":
        return tf.reduce_mean(frames, axis=1)
    if method == "max":
        return tf.reduce_max(frames, axis=1)
    if method == "none":
        return tf.reshape(frames, [-1, int(frames.shape[-1])])
    raise UsageError(f"unknown frame pooling method {method!r} "
                     "(--dbof_pooling_method): use max, average or none")
