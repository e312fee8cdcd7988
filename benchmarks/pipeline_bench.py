"""Benchmark 2: the frame-level input pipeline vs reading the raw TFRecord bytes.

Parsed: input_pipeline.dataset_for exactly as train.py builds it (shuffled,
--num_readers files interleaved, batched parsing), counting videos per
second; the batches stay in the graph (only their size is fetched), as in
training.  Raw: tf.data.TFRecordDataset over the same files, batched, with
nothing parsed.  Both read files already in the page cache (a first pass
warms it).  The parse cost in CPU seconds per 1000 videos tells how much of a
small machine's cores the pipeline takes from the model.
"""
import os
import time
from typing import Dict, List

import tensorflow as tf

import app_flags
import input_pipeline
import performance
from benchmarks import common

_V1 = tf.compat.v1


def _rate(count: tf.Tensor, batches: int, rounds: int, warmup: int) -> Dict[str, object]:
    """Items per second over ``rounds`` blocks of ``batches`` fetches of ``count``."""
    rates, cpu = [], []
    config = performance.session_config(app_flags.training_config())
    with _V1.Session(graph=count.graph, config=config) as sess:
        for _ in range(warmup):
            sess.run(count)
        for _ in range(rounds):
            times = os.times()
            start = time.perf_counter()
            items = sum(int(sess.run(count)) for _ in range(batches))
            seconds = time.perf_counter() - start
            used = os.times()
            rates.append(items / seconds)
            cpu.append((used.user - times.user + used.system - times.system) / items * 1000)
    return dict(common.summarise(rates), cpu_seconds_per_1000=min(cpu))


def _raw(files: List[str], batch_size: int, batches: int, rounds: int,
         records: int) -> Dict[str, object]:
    with tf.Graph().as_default():
        dataset = tf.data.TFRecordDataset(files).repeat().batch(batch_size).prefetch(2)
        batch = _V1.data.make_one_shot_iterator(dataset).get_next()
        result = _rate(tf.size(batch), batches, rounds, warmup=batches)
    bytes_per_record = sum(tf.io.gfile.stat(path).length for path in files) / records
    result["megabytes_per_sec"] = result["best"] * bytes_per_record / 2**20
    return result


def _parsed(files: List[str], batch_size: int, batches: int, rounds: int) -> Dict[str, object]:
    with tf.Graph().as_default():
        dataset = input_pipeline.dataset_for(app_flags.data_config(), files, batch_size,
                                             shuffle=True, num_epochs=None,
                                             require_labels=True, seed=1)
        batch = _V1.data.make_one_shot_iterator(dataset).get_next()
        return _rate(tf.shape(batch["video_matrix"])[0], batches, rounds, warmup=2)


def measure(settings: common.Settings, files: List[str],
            training_examples_per_sec: float | None) -> Dict[str, object]:
    """Parsed vs raw videos/sec (flags already parsed), and vs the training step's rate."""
    videos = settings.shards * settings.videos_per_shard
    batches = max(2, videos // settings.batch_size)
    raw = _raw(files, settings.batch_size, batches, settings.rounds, videos)
    parsed = _parsed(files, settings.batch_size, batches, settings.rounds)
    result = {
        "batch_size": settings.batch_size,
        "frames_per_video": settings.frames,
        "raw_records_per_sec": raw,
        "parsed_videos_per_sec": parsed,
        "parsed_over_raw": parsed["best"] / raw["best"],
    }
    if training_examples_per_sec:
        result["parsed_over_training"] = parsed["best"] / training_examples_per_sec
    return result
