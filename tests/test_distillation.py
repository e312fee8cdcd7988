"""Distillation from a precomputed teacher: the shards inference.py writes, their join with
the training data by position and video id, and train.py learning from them."""
import json
import os
import zlib

import numpy as np
import pytest
import tensorflow as tf

import input_pipeline
from helpers import LOGISTIC_FLAGS, NUM_CLASSES, read_checkpoint, run_script, write_examples
from model_config import DataConfig

DATA = DataConfig(feature_names=("mean_rgb",), feature_sizes=(4,), num_classes=NUM_CLASSES)
# Ids a reader must keep apart: commas, quotes, spaces, non-ASCII, near-duplicates.
ODD_IDS = ["a,b", '"q"', "x y", "vidéo", "v1", "v10", "v01", "-", "id\t2"]


def teacher_record(video_id: str, classes, scores) -> bytes:
    """A teacher shard record in the documented format (id, teacher_classes, teacher_scores)."""
    feature = {
        "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[video_id.encode()])),
        "teacher_classes": tf.train.Feature(int64_list=tf.train.Int64List(value=classes)),
        "teacher_scores": tf.train.Feature(float_list=tf.train.FloatList(value=scores))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def teacher_of(video_id: str):
    """A distinct sparse teacher per video: its top classes and scores from its id."""
    rng = np.random.default_rng(zlib.crc32(video_id.encode()))
    classes = rng.choice(NUM_CLASSES, size=3, replace=False)
    return [int(c) for c in classes], [float(s) for s in np.round(rng.uniform(size=3), 4)]


def dense(classes, scores) -> np.ndarray:
    row = np.zeros(NUM_CLASSES, np.float32)
    row[classes] = scores
    return row


@pytest.fixture()
def data_with_teacher(tmp_path):
    """Three data files of odd ids (one empty) and their teacher shards."""
    data, shards = tmp_path / "data", tmp_path / "teacher"
    data.mkdir()
    shards.mkdir()
    rng = np.random.default_rng(0)
    groups = {"part-a.tfrecord": ODD_IDS[:5], "part-b.tfrecord": ODD_IDS[5:],
              "part-c.tfrecord": []}
    for name, ids in groups.items():
        write_examples(str(data / name), [
            {"id": i, "labels": [1], "mean_rgb": rng.normal(size=4)} for i in ids])
        with tf.io.TFRecordWriter(str(shards / name)) as writer:
            for video_id in ids:
                writer.write(teacher_record(video_id, *teacher_of(video_id)))
    return sorted(str(data / n) for n in groups), str(shards), groups


def read_all(files, teacher_dir, **kw):
    dataset = input_pipeline.dataset_for(DATA, files, 4, require_labels=True,
                                         teacher_dir=teacher_dir, **kw)
    return list(dataset.as_numpy_iterator())


def test_teacher_rows_follow_their_videos_when_shuffled(data_with_teacher):
    files, teacher_dir, groups = data_with_teacher
    batches = read_all(files, teacher_dir, shuffle=True, num_epochs=3, seed=7, num_readers=3)
    seen = []
    for batch in batches:
        for video_id, row in zip(batch["video_ids"], batch["teacher_predictions"], strict=True):
            video_id = video_id.decode()
            np.testing.assert_allclose(row, dense(*teacher_of(video_id)), atol=0, rtol=1e-6)
            seen.append(video_id)
    assert sorted(seen) == sorted(ODD_IDS * 3)
    assert [b"part-a" in n for b in batches for n in b["file_names"]].count(True) == 15


@pytest.mark.parametrize("damage,message", [
    ("swap", "teacher record of another video"),
    ("drop_last", "holds fewer records than data file"),
    ("extra", "holds more records than data file"),
])
def test_a_shard_out_of_step_fails_naming_it(data_with_teacher, damage, message):
    files, teacher_dir, groups = data_with_teacher
    shard = os.path.join(teacher_dir, "part-a.tfrecord")
    ids = list(groups["part-a.tfrecord"])
    if damage == "swap":
        ids[1], ids[2] = ids[2], ids[1]
    elif damage == "drop_last":
        ids = ids[:-1]
    else:
        ids = ids + ["v1"]
    with tf.io.TFRecordWriter(shard) as writer:
        for video_id in ids:
            writer.write(teacher_record(video_id, *teacher_of(video_id)))
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        read_all(files, teacher_dir, shuffle=False, num_epochs=1, num_readers=1)
    assert message in str(error.value) and "part-a.tfrecord" in str(error.value)


def test_teacher_values_are_checked(data_with_teacher):
    files, teacher_dir, groups = data_with_teacher
    with tf.io.TFRecordWriter(os.path.join(teacher_dir, "part-b.tfrecord")) as writer:
        for video_id in groups["part-b.tfrecord"]:
            writer.write(teacher_record(video_id, [NUM_CLASSES], [0.5]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"teacher class outside \[0, 20\)"):
        read_all(files, teacher_dir, shuffle=False, num_epochs=1, num_readers=1)


def logistic_predictions(checkpoint: str, features: np.ndarray) -> np.ndarray:
    """LogisticModel in numpy: sigmoid(l2_normalize(x) W + b)."""
    values = read_checkpoint(checkpoint)
    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    logits = x @ values["tower/fully_connected/weights"] + values["tower/fully_connected/biases"]
    return 1 / (1 + np.exp(-logits))


def video_features(path: str):
    """(ids, [N, 1152] mean_rgb + mean_audio) of a video-level file, read here."""
    ids, rows = [], []
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        example = tf.train.Example.FromString(record)
        feature = example.features.feature
        ids.append(feature["id"].bytes_list.value[0])
        rows.append(list(feature["mean_rgb"].float_list.value)
                    + list(feature["mean_audio"].float_list.value))
    return ids, np.asarray(rows, np.float64)


@pytest.fixture(scope="module")
def trained_teacher(sample_data, tmp_path_factory):
    """A LogisticModel run with its inference model (eval.py's re-save)."""
    run = str(tmp_path_factory.mktemp("teacher_run"))
    result = run_script("train", f"--train_data_pattern={sample_data}/video/train*.tfrecord",
                        f"--train_dir={run}", *LOGISTIC_FLAGS, "--batch_size=8",
                        "--max_steps=20", "--num_epochs=50")
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_script("eval", f"--train_dir={run}", "--run_once", "--force_output_model_name",
                        f"--eval_data_pattern={sample_data}/video/validate*.tfrecord")
    assert result.returncode == 0, result.stderr[-2000:]
    return run


def test_inference_writes_a_shard_per_file_in_its_order(sample_data, trained_teacher, tmp_path):
    out = str(tmp_path / "shards")
    result = run_script("inference", f"--train_dir={trained_teacher}",
                        f"--output_teacher_dir={out}", "--top_k=5", "--num_readers=4",
                        f"--input_data_pattern={sample_data}/video/train*.tfrecord")
    assert result.returncode == 0, result.stderr[-2000:]
    checkpoint = os.path.join(trained_teacher, "model.ckpt-20")
    names = sorted(os.listdir(os.path.join(sample_data, "video")))
    train_files = [n for n in names if n.startswith("train")]
    assert sorted(os.listdir(out)) == train_files
    for name in train_files:
        ids, features = video_features(os.path.join(sample_data, "video", name))
        expected = logistic_predictions(checkpoint, features)
        records = [tf.train.Example.FromString(r).features.feature for r in
                   tf.data.TFRecordDataset(os.path.join(out, name)).as_numpy_iterator()]
        assert [r["id"].bytes_list.value[0] for r in records] == ids
        for row, record in zip(expected, records, strict=True):
            classes = list(record["teacher_classes"].int64_list.value)
            assert classes == list(np.argsort(-row, kind="stable")[:5])
            np.testing.assert_allclose(record["teacher_scores"].float_list.value, row[classes],
                                       rtol=1e-4)


def test_a_file_without_videos_gets_an_empty_shard(sample_data, trained_teacher, tmp_path):
    data, out = tmp_path / "data", tmp_path / "shards"
    data.mkdir()
    (data / "empty.tfrecord").write_bytes(b"")
    with open(os.path.join(sample_data, "video", "train0000.tfrecord"), "rb") as f:
        (data / "full.tfrecord").write_bytes(f.read())
    result = run_script("inference", f"--train_dir={trained_teacher}",
                        f"--output_teacher_dir={out}", f"--input_data_pattern={data}/*")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(os.listdir(out)) == ["empty.tfrecord", "full.tfrecord"]
    assert (out / "empty.tfrecord").read_bytes() == b""
    ids = [tf.train.Example.FromString(r).features.feature["id"].bytes_list.value[0]
           for r in tf.data.TFRecordDataset(str(out / "full.tfrecord")).as_numpy_iterator()]
    assert ids == video_features(str(data / "full.tfrecord"))[0]


def test_shards_never_replace_the_input(sample_data, trained_teacher):
    data = os.path.join(sample_data, "video")
    before = {n: os.path.getsize(os.path.join(data, n)) for n in os.listdir(data)}
    result = run_script("inference", f"--train_dir={trained_teacher}",
                        f"--output_teacher_dir={data}/", f"--input_data_pattern={data}/train*")
    assert result.returncode != 0
    assert "would overwrite the input file" in result.stderr.strip().splitlines()[-1]
    assert {n: os.path.getsize(os.path.join(data, n)) for n in os.listdir(data)} == before


def test_student_learns_the_teacher_not_the_labels(sample_data, tmp_path):
    """With weight 1 only the teacher counts: it says class 3 at 0.9 for every video, and the
    student's predictions on the training videos follow it."""
    shards, run = tmp_path / "shards", str(tmp_path / "student")
    shards.mkdir()
    files = [os.path.join(sample_data, "video", n) for n in ("train0000.tfrecord",
                                                              "train0001.tfrecord")]
    for path in files:
        ids, _ = video_features(path)
        with tf.io.TFRecordWriter(str(shards / os.path.basename(path))) as writer:
            for video_id in ids:
                writer.write(teacher_record(video_id.decode(), [3], [0.9]))
    result = run_script("train", f"--train_data_pattern={sample_data}/video/train*.tfrecord",
                        f"--train_dir={run}", *LOGISTIC_FLAGS, "--batch_size=8",
                        "--max_steps=60", "--num_epochs=100", "--base_learning_rate=0.1",
                        f"--teacher_predictions={shards}", "--distillation_weight=1",
                        "--distillation_temperature=2")
    assert result.returncode == 0, result.stderr[-2000:]
    with open(os.path.join(run, "model_flags.json")) as f:
        stored = json.load(f)["training"]
    assert (stored["teacher_predictions"], stored["distillation_weight"],
            stored["distillation_temperature"]) == (str(shards), 1.0, 2.0)
    features = np.concatenate([video_features(p)[1] for p in files])
    predictions = logistic_predictions(os.path.join(run, "model.ckpt-60"), features)
    assert abs(predictions[:, 3].mean() - 0.9) < 0.05
    assert predictions[:, [c for c in range(NUM_CLASSES) if c != 3]].max() < 0.05


@pytest.mark.parametrize("flags,message", [
    (["--teacher_predictions={missing}"], "has no teacher shard"),
    (["--teacher_predictions={shards}", "--distillation_weight=1.5"],
     "--distillation_weight=1.5 must be in [0, 1]"),
    (["--teacher_predictions={shards}", "--distillation_temperature=0"],
     "--distillation_temperature=0.0"),
])
def test_bad_teacher_flags_are_refused_before_training(sample_data, tmp_path, flags, message):
    shards = tmp_path / "shards"
    shards.mkdir()
    for name in ("train0000.tfrecord", "train0001.tfrecord"):
        (shards / name).write_bytes(b"")
    run = str(tmp_path / "run")
    given = [f.format(missing=tmp_path / "none", shards=shards) for f in flags]
    result = run_script("train", f"--train_data_pattern={sample_data}/video/train*.tfrecord",
                        f"--train_dir={run}", *LOGISTIC_FLAGS, "--max_steps=5", *given)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR: ") and message in last, result.stderr[-2000:]
    assert not os.path.exists(os.path.join(run, "model_flags.json"))
