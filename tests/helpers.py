"""Shared test helpers: run a script of the repo, write small TFRecord files."""
import glob
import json
import os
import re
import subprocess
import sys
import time
from typing import Dict, Iterable, Mapping

import numpy as np
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the `sample_data` fixture (conftest.py) writes.
SAMPLE_DATA_SETTINGS = dict(num_classes=20, videos_per_shard=24, num_train_shards=2,
                            num_validate_shards=1, num_test_shards=1, min_video_frames=10,
                            max_video_frames=40, seed=1)
NUM_CLASSES = SAMPLE_DATA_SETTINGS["num_classes"]
# Frame-level NetVLADModelLF at test sizes, without the member sizes
# (--netvlad_cluster_size, --netvlad_hidden_size: NETVLAD_SIZES or each test's own).
NETVLAD_FLAGS = [
    "--frame_features", "--feature_names=rgb,audio", "--feature_sizes=1024,128",
    "--model=NetVLADModelLF", "--iterations=8", "--moe_num_mixtures=2", "--gating=True",
    "--moe_prob_gating=True", "--netvlad_relu=False", f"--num_classes={NUM_CLASSES}",
]
NETVLAD_SIZES = ["--netvlad_cluster_size=4", "--netvlad_hidden_size=16"]
# Video-level LogisticModel on the sample data's mean features.
LOGISTIC_FLAGS = ["--feature_names=mean_rgb,mean_audio", "--feature_sizes=1024,128",
                  f"--num_classes={NUM_CLASSES}", "--model=LogisticModel"]


def run_script(script: str, *args: str, cwd: str | None = None, timeout: float = 600,
               env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs `python <repo>/<script>.py args...` (from the repo root unless `cwd`).

    `env` entries are added to the current environment.  The result carries
    text stdout and stderr; the return code is not checked.
    """
    return subprocess.run(
        [sys.executable, os.path.join(REPO, script + ".py"), *args],
        cwd=cwd or REPO, timeout=timeout, capture_output=True, text=True,
        env=None if env is None else {**os.environ, **env})


def json_record(result: subprocess.CompletedProcess) -> dict:
    """The one JSON line a successful eval.py / search run printed on stdout."""
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


def read_checkpoint(path: str) -> Dict[str, np.ndarray]:
    """Every tensor of a checkpoint, by name."""
    reader = tf.compat.v1.train.NewCheckpointReader(path)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def member_prefix(index: int) -> str:
    """Where ensemble member ``index``'s variables live."""
    return "tower/" if index == 0 else f"tower/model{index}/"


def _context(video: Mapping, id_key: str) -> Dict[str, tf.train.Feature]:
    video_id = video["id"]  # str, or bytes as they are (e.g. not UTF-8)
    features = {id_key: tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[video_id if isinstance(video_id, bytes) else video_id.encode()]))}
    if video.get("labels") is not None:
        features["labels"] = tf.train.Feature(int64_list=tf.train.Int64List(
            value=list(video["labels"])))
    return features


def _features(video: Mapping) -> Iterable:
    return ((name, value) for name, value in video.items() if name not in ("id", "labels"))


def write_sequence_examples(path: str, videos: Iterable[Mapping], id_key: str = "id") -> None:
    """Frame-level records.  Each video: "id" (str, or bytes written as they are), "labels"
    (ids; None leaves the key out) and feature name -> uint8 array [frames, size] or a list
    of per-frame byte strings."""
    with tf.io.TFRecordWriter(path) as writer:
        for video in videos:
            example = tf.train.SequenceExample(
                context=tf.train.Features(feature=_context(video, id_key)))
            for name, frames in _features(video):
                feature_list = example.feature_lists.feature_list[name]
                for frame in frames:
                    value = frame if isinstance(frame, bytes) else np.asarray(
                        frame, np.uint8).tobytes()
                    feature_list.feature.add().bytes_list.value.append(value)
            writer.write(example.SerializeToString())


def write_examples(path: str, videos: Iterable[Mapping], id_key: str = "id") -> None:
    """Video-level records.  Each video: "id", "labels" (None leaves the key out) and
    feature name -> float values."""
    with tf.io.TFRecordWriter(path) as writer:
        for video in videos:
            features = _context(video, id_key)
            for name, values in _features(video):
                features[name] = tf.train.Feature(float_list=tf.train.FloatList(
                    value=np.asarray(values, np.float32).ravel()))
            writer.write(tf.train.Example(
                features=tf.train.Features(feature=features)).SerializeToString())


def size_report_totals(stdout: str) -> tuple:
    """(bytes as stored, bytes all in float32) from checkpoint_size.py's report."""
    match = re.search(r"total as stored: ([\d,]+) bytes .*all float32: ([\d,]+) bytes", stdout)
    assert match, stdout
    return tuple(int(g.replace(",", "")) for g in match.groups())


def train_args(data: str, run_dir: str, *extra: str) -> list:
    return [f"--train_data_pattern={data}/video/train*.tfrecord", f"--train_dir={run_dir}",
            *LOGISTIC_FLAGS, "--batch_size=4", "--num_readers=2", "--num_epochs=100000",
            "--random_seed=1", *extra]


def start(script: str, args: list, log_dir: str, name: str) -> subprocess.Popen:
    """Runs `python <script>.py args` in the background, stdout and stderr to files."""
    stdout = open(os.path.join(log_dir, name + ".out"), "w")
    stderr = open(os.path.join(log_dir, name + ".err"), "w")
    with stdout, stderr:
        return subprocess.Popen([sys.executable, os.path.join(REPO, script + ".py"), *args],
                                cwd=REPO, stdout=stdout, stderr=stderr)


def read(log_dir: str, name: str) -> str:
    with open(os.path.join(log_dir, name)) as f:
        return f.read()


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 120) -> None:
    """Polls `condition` while `process` runs; fails if it ends or the time runs out."""
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, f"the process ended (rc {process.returncode}) before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def steps_on_disk(run_dir: str) -> list:
    """The N of every RUN/model.ckpt-N.index, sorted."""
    names = (os.path.basename(p) for p in glob.glob(os.path.join(run_dir, "model.ckpt-*.index")))
    return sorted(int(m.group(1)) for m in map(re.compile(r"model\.ckpt-(\d+)\.index").fullmatch,
                                                 names) if m)
