"""Writes a small YouTube-8M-format data set whose labels can be learned.

``python make_sample_data.py --output_dir=DIR`` writes frame-level
(``DIR/frame``, SequenceExample with uint8 ``rgb``/``audio`` frames) and
video-level (``DIR/video``, Example with ``mean_rgb``/``mean_audio``) shards of
the same videos, split into train, validate and test (test without labels), so
the whole workflow can be tried and tested without downloading the real data.

How the features carry the labels: every class has a random prototype in the
rgb and audio spaces.  A video's frames are noise plus a per-video background
plus, for each of its labels, the label's prototype during one stretch of
frames (15% to 100% of the video), plus weaker "distractor" classes it is NOT
labelled with, spread over every frame.  In the frame mean a short label and a
distractor look alike; a frame-level model sees the difference.  Labels
follow a long-tailed (Zipf-like) class distribution, about 3 per video.
"""
import quiet_startup  # noqa: F401  (first: before TensorFlow is imported)

import os
from typing import List, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import app, flags

import errors
from errors import UsageError

RGB_SIZE, AUDIO_SIZE = 1024, 128
SPLITS = ("train", "validate", "test")
# Dequantization (SPEC 3); quantizing is its inverse.
_SCALE = 4.0 / 255.0
_BIAS = 4.0 / 512.0 - 2.0
# Signal model, in dequantized units per dimension.
_NOISE, _BACKGROUND, _AMPLITUDE = 0.35, 0.2, 0.1
_MIN_FRACTION = 0.15               # shortest label stretch, as a fraction of the video
_DISTRACTORS, _DISTRACTOR_STRENGTH = 2, (0.1, 0.4)
_EXTRA_LABELS_MEAN, _MAX_LABELS = 2.0, 12   # labels = 1 + Poisson(2), at most 12
_ZIPF_OFFSET = 2.0                 # P(class c) ~ 1 / (c + offset)
_NOISE_FRAMES = 4096
_ID_ALPHABET = np.frombuffer(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", np.uint8)
_ID_LENGTH = 4


def _unique_ids(rng: np.random.Generator, count: int) -> List[bytes]:
    """`count` distinct 4-character ids such as b"Ab12"."""
    base = len(_ID_ALPHABET)
    if count > base ** _ID_LENGTH:
        raise UsageError(f"{count} videos is more than the {base ** _ID_LENGTH} possible ids")
    numbers = rng.choice(base ** _ID_LENGTH, size=count, replace=False)
    digits = numbers[:, None] // base ** np.arange(_ID_LENGTH)[::-1] % base
    return [row.tobytes() for row in _ID_ALPHABET[digits]]


def _sample_classes(rng: np.random.Generator, log_prior: np.ndarray,
                    videos: int) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """Per video: sorted label ids and distractor ids, drawn without replacement.

    Gumbel top-k: sorting log-prior + Gumbel noise samples without replacement
    in proportion to the prior.
    """
    num_classes = len(log_prior)
    counts = np.minimum(1 + rng.poisson(_EXTRA_LABELS_MEAN, size=videos),
                        min(_MAX_LABELS, num_classes))
    keys = log_prior + rng.gumbel(size=(videos, num_classes))
    top = min(num_classes, _MAX_LABELS + _DISTRACTORS)
    best = np.argpartition(-keys, top - 1, axis=1)[:, :top]
    best = np.take_along_axis(best, np.argsort(-np.take_along_axis(keys, best, 1), 1), 1)
    labels = [np.sort(row[:k]) for row, k in zip(best, counts, strict=True)]
    distractors = [row[k:k + _DISTRACTORS] for row, k in zip(best, counts, strict=True)]
    return labels, distractors


def _video_frames(rng: np.random.Generator, prototypes: np.ndarray, noise: np.ndarray,
                  labels: np.ndarray, distractors: np.ndarray, num_frames: int) -> np.ndarray:
    """[num_frames, 1152] uint8 quantized frames of one video.

    Frame noise is drawn from a fixed pool of noise frames: fresh Gaussian
    noise for every frame would dominate the run time, and the noise carries
    no label information either way.
    """
    weights = np.zeros((num_frames, len(labels) + len(distractors)), np.float32)
    lengths = np.maximum(1, np.rint(rng.uniform(_MIN_FRACTION, 1.0, len(labels))
                                    * num_frames).astype(int))
    starts = rng.integers(0, num_frames - lengths + 1)
    frame_index = np.arange(num_frames)[:, None]
    weights[:, :len(labels)] = _AMPLITUDE * ((frame_index >= starts)
                                             & (frame_index < starts + lengths))
    weights[:, len(labels):] = _AMPLITUDE * rng.uniform(*_DISTRACTOR_STRENGTH, len(distractors))
    frames = noise[rng.integers(0, len(noise), num_frames)]
    frames += rng.standard_normal(prototypes.shape[1], np.float32) * _BACKGROUND
    frames += weights @ prototypes[np.concatenate([labels, distractors])]
    return np.clip(np.rint((frames - _BIAS) / _SCALE), 0, 255).astype(np.uint8)


_LISTS = {"bytes_list": tf.train.BytesList, "int64_list": tf.train.Int64List,
          "float_list": tf.train.FloatList}


def _feature(values, kind: str) -> tf.train.Feature:
    return tf.train.Feature(**{kind: _LISTS[kind](value=values)})


def _records(video_id: bytes, labels: Sequence[int], frames: np.ndarray) -> Tuple[bytes, bytes]:
    """(SequenceExample, Example) serialized for one video; `labels` may be empty."""
    context = {"id": _feature([video_id], "bytes_list"),
               "labels": _feature(labels, "int64_list")}
    sequence = tf.train.SequenceExample(context=tf.train.Features(feature=context))
    for name, part in (("rgb", frames[:, :RGB_SIZE]), ("audio", frames[:, RGB_SIZE:])):
        feature_list = sequence.feature_lists.feature_list[name]
        for row in part:
            feature_list.feature.add().bytes_list.value.append(row.tobytes())
    mean = (frames.astype(np.float64) * _SCALE + _BIAS).mean(axis=0).astype(np.float32)
    video = dict(context, mean_rgb=_feature(mean[:RGB_SIZE], "float_list"),
                 mean_audio=_feature(mean[RGB_SIZE:], "float_list"))
    example = tf.train.Example(features=tf.train.Features(feature=video))
    return (sequence.SerializeToString(deterministic=True),
            example.SerializeToString(deterministic=True))


def _write_atomically(path: str, records: Sequence[bytes]) -> None:
    """Writes a TFRecord file under a temporary name in the same folder, then renames it."""
    folder, name = path.rsplit("/", 1)
    temporary = f"{folder}/.{name}.tmp-{os.getpid()}"
    try:
        with tf.io.TFRecordWriter(temporary) as writer:
            for record in records:
                writer.write(record)
        tf.io.gfile.rename(temporary, path, overwrite=True)
    finally:
        if tf.io.gfile.exists(temporary):
            tf.io.gfile.remove(temporary)


def _check_arguments(output_dir: str, num_classes: int, videos_per_shard: int,
                     shards: Sequence[int], min_video_frames: int, max_video_frames: int) -> None:
    if not output_dir:
        raise UsageError("--output_dir is required")
    if num_classes < 1:
        raise UsageError(f"--num_classes={num_classes} must be positive")
    if videos_per_shard < 1:
        raise UsageError(f"--videos_per_shard={videos_per_shard} must be positive")
    for split, count in zip(SPLITS, shards, strict=True):
        if count < 0:
            raise UsageError(f"--num_{split}_shards={count} must not be negative")
    if not 1 <= min_video_frames <= max_video_frames:
        raise UsageError(f"--min_video_frames={min_video_frames} and --max_video_frames="
                         f"{max_video_frames} must satisfy 1 <= min <= max")


def write_sample_data(output_dir: str, num_classes: int = 3862, videos_per_shard: int = 100,
                      num_train_shards: int = 4, num_validate_shards: int = 2,
                      num_test_shards: int = 2, min_video_frames: int = 120,
                      max_video_frames: int = 300, seed: int = 0) -> None:
    """Writes DIR/{frame,video}/{train,validate,test}NNNN.tfrecord; same arguments, same bytes."""
    shard_counts = (num_train_shards, num_validate_shards, num_test_shards)
    _check_arguments(output_dir, num_classes, videos_per_shard, shard_counts,
                     min_video_frames, max_video_frames)
    rng = np.random.default_rng(seed)
    prototypes = rng.standard_normal((num_classes, RGB_SIZE + AUDIO_SIZE), np.float32)
    noise = rng.standard_normal((_NOISE_FRAMES, RGB_SIZE + AUDIO_SIZE), np.float32) * _NOISE
    log_prior = -np.log(np.arange(num_classes) + _ZIPF_OFFSET)
    shards = [(split, index) for split, count in zip(SPLITS, shard_counts, strict=True)
              for index in range(count)]
    ids = _unique_ids(rng, len(shards) * videos_per_shard)
    output_dir = output_dir.rstrip("/")
    for kind in ("frame", "video"):
        tf.io.gfile.makedirs(f"{output_dir}/{kind}")
    for shard, (split, index) in enumerate(shards):
        labels, distractors = _sample_classes(rng, log_prior, videos_per_shard)
        lengths = rng.integers(min_video_frames, max_video_frames + 1, size=videos_per_shard)
        records = [
            _records(ids[shard * videos_per_shard + v], labels[v] if split != "test" else [],
                     _video_frames(rng, prototypes, noise, labels[v], distractors[v], lengths[v]))
            for v in range(videos_per_shard)]
        for kind, column in (("frame", 0), ("video", 1)):
            _write_atomically(f"{output_dir}/{kind}/{split}{index:04d}.tfrecord",
                              [pair[column] for pair in records])


def _main(argv: List[str]) -> None:
    del argv
    values = flags.FLAGS
    try:
        write_sample_data(values.output_dir, values.num_classes, values.videos_per_shard,
                          values.num_train_shards, values.num_validate_shards,
                          values.num_test_shards, values.min_video_frames,
                          values.max_video_frames, values.seed)
        shards = values.num_train_shards + values.num_validate_shards + values.num_test_shards
        print(f"Wrote {shards * values.videos_per_shard} videos ({values.num_classes} classes) "
              f"in {shards} files each to {values.output_dir}/frame and {values.output_dir}/video "
              f"(train, validate, test)", flush=True)
    except UsageError as error:
        errors.exit_with_message(str(error))
    except tf.errors.OpError as error:
        errors.exit_with_message(f"cannot write --output_dir={values.output_dir}: "
                                 f"{errors.disk_full_message(error) or error.message}")


def _define_flags() -> None:
    """Defined only when run as a script: the library use must not clash with app_flags."""
    flags.DEFINE_string("output_dir", None, "Folder to write frame/ and video/ into.")
    flags.DEFINE_integer("num_classes", 3862, "Number of classes.")
    flags.DEFINE_integer("videos_per_shard", 100, "Videos per TFRecord file.")
    flags.DEFINE_integer("num_train_shards", 4, "Files of the train split.")
    flags.DEFINE_integer("num_validate_shards", 2, "Files of the validate split.")
    flags.DEFINE_integer("num_test_shards", 2, "Files of the test split (no labels).")
    flags.DEFINE_integer("min_video_frames", 120, "Fewest frames of a video.")
    flags.DEFINE_integer("max_video_frames", 300, "Most frames of a video.")
    flags.DEFINE_integer("seed", 0, "Random seed; the same seed writes the same bytes.")
    flags.mark_flag_as_required("output_dir")


if __name__ == "__main__":
    _define_flags()
    app.run(_main)
