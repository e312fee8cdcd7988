"""make_sample_data.py: format, determinism and learnable structure of the data."""
import glob
import os

import numpy as np
import pytest
import tensorflow as tf

import make_sample_data
import readers
from errors import UsageError
from helpers import SAMPLE_DATA_SETTINGS, run_script

NUM_CLASSES = SAMPLE_DATA_SETTINGS["num_classes"]
SHARDS = {"train": 2, "validate": 1, "test": 1}
FILES = sorted(f"{split}{i:04d}.tfrecord" for split, n in SHARDS.items() for i in range(n))


def dequantize(frames):
    return np.asarray(frames, np.float64) * 4.0 / 255.0 + (4.0 / 512.0 - 2.0)


def records(path):
    return [record.numpy() for record in tf.data.TFRecordDataset(path)]


def read_videos(folder, split):
    """Video-level records of a split: list of (id, labels or None, mean_rgb, mean_audio)."""
    videos = []
    for path in sorted(glob.glob(f"{folder}/video/{split}*.tfrecord")):
        for record in records(path):
            feature = tf.train.Example.FromString(record).features.feature
            labels = (list(feature["labels"].int64_list.value) if "labels" in feature
                      else None)
            videos.append((feature["id"].bytes_list.value[0], labels,
                           np.array(feature["mean_rgb"].float_list.value),
                           np.array(feature["mean_audio"].float_list.value)))
    return videos


def read_frames(folder, split):
    """Frame-level records of a split: list of (id, labels or None, uint8 [frames, 1152])."""
    videos = []
    for path in sorted(glob.glob(f"{folder}/frame/{split}*.tfrecord")):
        for record in records(path):
            example = tf.train.SequenceExample.FromString(record)
            context, lists = example.context.feature, example.feature_lists.feature_list
            parts = []
            for name, size in (("rgb", 1024), ("audio", 128)):
                frames = [f.bytes_list.value for f in lists[name].feature]
                assert all(len(value) == 1 and len(value[0]) == size for value in frames)
                parts.append(np.frombuffer(b"".join(v[0] for v in frames), np.uint8)
                             .reshape(len(frames), size))
            labels = (list(context["labels"].int64_list.value) if "labels" in context
                      else None)
            videos.append((context["id"].bytes_list.value[0], labels,
                           np.concatenate(parts, axis=1)))
    return videos


def indicator(label_lists):
    matrix = np.zeros((len(label_lists), NUM_CLASSES), bool)
    for row, labels in enumerate(label_lists):
        matrix[row, labels] = True
    return matrix


def file_bytes(folder):
    return {os.path.relpath(path, folder): open(path, "rb").read()
            for path in sorted(glob.glob(f"{folder}/*/*"))}


def test_layout(sample_data):
    assert sorted(os.listdir(sample_data)) == ["frame", "video"]
    for kind in ("frame", "video"):
        assert sorted(os.listdir(os.path.join(sample_data, kind))) == FILES


def test_same_seed_same_bytes_other_seed_other_bytes(sample_data, tmp_path):
    make_sample_data.write_sample_data(str(tmp_path / "same"), **SAMPLE_DATA_SETTINGS)
    assert file_bytes(str(tmp_path / "same")) == file_bytes(sample_data)
    other = dict(SAMPLE_DATA_SETTINGS, seed=2)
    make_sample_data.write_sample_data(str(tmp_path / "other"), **other)
    other_bytes, original = file_bytes(str(tmp_path / "other")), file_bytes(sample_data)
    assert other_bytes.keys() == original.keys()
    assert all(other_bytes[name] != original[name] for name in original)


def test_ids_labels_and_frames(sample_data):
    all_ids = []
    for split in SHARDS:
        videos, frames = read_videos(sample_data, split), read_frames(sample_data, split)
        assert len(videos) == SHARDS[split] * SAMPLE_DATA_SETTINGS["videos_per_shard"]
        assert [v[0] for v in videos] == [f[0] for f in frames]
        assert [v[1] for v in videos] == [f[1] for f in frames]
        for video_id, labels, _ in frames:
            assert len(video_id) == 4 and video_id.isalnum()
            if split == "test":
                assert labels == []     # key present, no values, as in the real test set
            else:
                assert 1 <= len(labels) == len(set(labels))
                assert all(0 <= label < NUM_CLASSES for label in labels)
        lengths = [len(f[2]) for f in frames]
        assert min(lengths) >= 10 and max(lengths) <= 40 and len(set(lengths)) > 5
        all_ids += [v[0] for v in videos]
    assert len(set(all_ids)) == len(all_ids)


def test_video_level_is_mean_of_dequantized_frames(sample_data):
    for split in ("train", "test"):
        for video, (_, _, frames) in zip(read_videos(sample_data, split),
                                         read_frames(sample_data, split), strict=True):
            mean = dequantize(frames).mean(axis=0)
            assert video[2].shape == (1024,) and video[3].shape == (128,)
            np.testing.assert_allclose(video[2], mean[:1024], atol=1e-5, rtol=0)
            np.testing.assert_allclose(video[3], mean[1024:], atol=1e-5, rtol=0)


def test_label_statistics(sample_data):
    labels = [v[1] for split in ("train", "validate") for v in read_videos(sample_data, split)]
    assert 2.5 <= np.mean([len(video) for video in labels]) <= 3.5
    counts = indicator(labels).sum(axis=0)
    # Long tail: the 5 most frequent ids together outnumber the 10 rarest.
    assert counts[:5].sum() > 1.5 * counts[10:].sum()
    assert counts.argmax() < 3


def average_precision(scores, truth):
    order = np.argsort(-scores.ravel(), kind="stable")
    hits = truth.ravel()[order]
    return float((np.cumsum(hits) / np.arange(1, len(hits) + 1))[hits].mean())


def test_labels_are_learnable_from_video_level_features(sample_data):
    train, validate = read_videos(sample_data, "train"), read_videos(sample_data, "validate")

    def design(videos):
        return np.array([np.concatenate([v[2], v[3], [1.0]]) for v in videos])

    truth = indicator([v[1] for v in train])
    weights = np.linalg.lstsq(design(train), truth.astype(float), rcond=None)[0]
    predicted = (design(validate) @ weights).argmax(axis=1)
    validate_truth = indicator([v[1] for v in validate])
    hit_at_one = validate_truth[np.arange(len(validate)), predicted].mean()
    baseline = validate_truth[:, truth.sum(axis=0).argmax()].mean()
    assert hit_at_one >= 0.75 and hit_at_one >= baseline + 0.25, (hit_at_one, baseline)


def test_which_frames_show_a_class_matters(sample_data):
    """Scoring each class by its strongest frames beats scoring the frame mean."""
    train = read_videos(sample_data, "train")
    features = np.array([np.concatenate([v[2], v[3]]) for v in train])
    truth = indicator([v[1] for v in train])
    center = features.mean(axis=0)
    directions = np.array([features[truth[:, c]].mean(axis=0) - center
                           for c in range(NUM_CLASSES)])
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    validate = read_frames(sample_data, "validate")
    projections = [(dequantize(frames) - center) @ directions.T for _, _, frames in validate]
    validate_truth = indicator([v[1] for v in validate])
    by_mean = average_precision(np.array([p.mean(axis=0) for p in projections]), validate_truth)
    by_max = average_precision(np.array([p.max(axis=0) for p in projections]), validate_truth)
    assert by_max > by_mean + 0.05, (by_max, by_mean)


def test_readers_parse_the_sample_data(sample_data):
    """The generator and readers.py agree on the format."""
    expected = read_frames(sample_data, "validate")
    reader = readers.YT8MFrameFeatureReader(NUM_CLASSES, ["rgb", "audio"], [1024, 128], 40)
    with tf.Graph().as_default():
        dataset = readers.build_dataset(
            reader, readers.resolve_data_files(f"{sample_data}/frame/validate*"),
            len(expected), shuffle=False, num_epochs=1, num_readers=1)
        with tf.compat.v1.Session() as sess:
            batch = sess.run(tf.compat.v1.data.make_one_shot_iterator(dataset).get_next())
    assert batch["video_ids"].tolist() == [video[0] for video in expected]
    np.testing.assert_array_equal(batch["labels"], indicator([video[1] for video in expected]))
    for row, (_, _, frames) in enumerate(expected):
        assert batch["num_frames"][row] == len(frames)
        np.testing.assert_allclose(batch["video_matrix"][row, :len(frames)],
                                   dequantize(frames), atol=1e-6)
        assert not batch["video_matrix"][row, len(frames):].any()


def test_bad_arguments():
    with pytest.raises(UsageError, match="min_video_frames"):
        make_sample_data.write_sample_data("/tmp/unused", min_video_frames=5, max_video_frames=4)
    with pytest.raises(UsageError, match="num_classes"):
        make_sample_data.write_sample_data("/tmp/unused", num_classes=0)


def test_command_line(tmp_path):
    out = tmp_path / "data"
    result = run_script("make_sample_data", f"--output_dir={out}", "--num_classes=7",
                        "--videos_per_shard=3", "--num_train_shards=1",
                        "--num_validate_shards=1", "--num_test_shards=0",
                        "--min_video_frames=2", "--max_video_frames=4", "--seed=5")
    assert result.returncode == 0, result.stderr
    for kind in ("frame", "video"):
        assert sorted(os.listdir(out / kind)) == ["train0000.tfrecord", "validate0000.tfrecord"]
    frames = read_frames(str(out), "train")
    assert len(frames) == 3 and all(2 <= len(f[2]) <= 4 for f in frames)
    assert all(0 <= label < 7 for f in frames for label in f[1])

    bad = run_script("make_sample_data", f"--output_dir={out}", "--max_video_frames=0")
    assert bad.returncode != 0
    last_line = bad.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ERROR:") and "--max_video_frames=0" in last_line
