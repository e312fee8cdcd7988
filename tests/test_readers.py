"""readers.py against records written here, with numpy expectations."""
import gzip

import numpy as np
import pytest
import tensorflow as tf

import readers
from errors import UsageError
from helpers import write_examples, write_sequence_examples


def dequantize(frames: np.ndarray) -> np.ndarray:
    """SPEC 3 reference: x * 4/255 + (4/512 - 2)."""
    return np.asarray(frames, np.float64) * 4.0 / 255.0 + (4.0 / 512.0 - 2.0)


def frame_video(rng, video_id, num_frames, labels=(1,)):
    return {"id": video_id, "labels": labels,
            "rgb": rng.integers(0, 256, (num_frames, 1024), dtype=np.uint8),
            "audio": rng.integers(0, 256, (num_frames, 128), dtype=np.uint8)}


def serialized(path):
    return [record.numpy() for record in tf.data.TFRecordDataset(path)]


def parse(reader, records):
    """Runs prepare_serialized_examples on a batch in graph mode."""
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        return sess.run(reader.prepare_serialized_examples(tf.constant(records)))


def read_all(dataset):
    """Every batch of a dataset, in graph mode."""
    with tf.Graph().as_default():
        batch = tf.compat.v1.data.make_one_shot_iterator(dataset()).get_next()
        with tf.compat.v1.Session() as sess:
            batches = []
            while True:
                try:
                    batches.append(sess.run(batch))
                except tf.errors.OutOfRangeError:
                    return batches


def frame_reader(**kw):
    return readers.YT8MFrameFeatureReader(
        num_classes=10, feature_names=["rgb", "audio"], feature_sizes=[1024, 128], **kw)


def expected_matrix(video, max_frames=300):
    matrix = np.zeros((max_frames, 1152))
    frames = np.concatenate([video["rgb"], video["audio"]], axis=1)[:max_frames]
    matrix[:len(frames)] = dequantize(frames)
    return matrix


def test_frame_reader_values(tmp_path):
    rng = np.random.default_rng(0)
    videos = [frame_video(rng, "one", 1, labels=[]), frame_video(rng, "full", 300, [0, 9]),
              frame_video(rng, "long", 345, [3, 3, 5]), frame_video(rng, "nolab", 7, None)]
    videos[0]["rgb"][0, :2] = [0, 255]
    path = str(tmp_path / "f.tfrecord")
    write_sequence_examples(path, videos)
    out = parse(frame_reader(), serialized(path))

    assert out["video_ids"].tolist() == [b"one", b"full", b"long", b"nolab"]
    assert out["video_matrix"].dtype == np.float32
    assert out["video_matrix"].shape == (4, 300, 1152)
    assert out["num_frames"].dtype == np.int32
    assert out["num_frames"].tolist() == [1, 300, 300, 7]
    for row, video in enumerate(videos):
        np.testing.assert_allclose(out["video_matrix"][row], expected_matrix(video), atol=1e-6)
    # Padding rows are exact zeros, not dequantized zeros.
    assert not out["video_matrix"][0, 1:].any()
    assert not out["video_matrix"][3, 7:].any()
    expected_labels = np.zeros((4, 10), bool)
    expected_labels[1, [0, 9]] = expected_labels[2, [3, 5]] = True
    assert out["labels"].dtype == bool
    np.testing.assert_array_equal(out["labels"], expected_labels)


def test_dequantization_extremes_and_small_max_frames(tmp_path):
    video = {"id": "x", "labels": [2], "rgb": np.array([[0] * 4, [255] * 4, [128] * 4]),
             "audio": np.array([[255, 0]] * 3)}
    path = str(tmp_path / "f.tfrecord")
    write_sequence_examples(path, [video])
    reader = readers.YT8MFrameFeatureReader(3, ["rgb", "audio"], [4, 2], max_frames=5)
    out = parse(reader, serialized(path))
    low, high, middle = 4.0 / 512.0 - 2.0, 2.0 + 4.0 / 512.0, 128 * 4.0 / 255.0 + 4.0 / 512.0 - 2
    expected = np.array([[low] * 4 + [high, low], [high] * 4 + [high, low],
                         [middle] * 4 + [high, low], [0] * 6, [0] * 6])
    np.testing.assert_allclose(out["video_matrix"][0], expected, atol=1e-6)
    assert out["num_frames"].tolist() == [3]


@pytest.mark.parametrize("broken, feature, problem", [
    ({"audio": None}, "audio", "missing"),
    ({"rgb": [b"\x00" * 1000] * 3}, "rgb", "1024 bytes"),
    ({"audio": [b"\x00" * 128, b"\x00\x00"] + [b"\x00" * 128]}, "audio", "128 bytes"),
    ({"audio": [b"\x00" * 128] * 2}, "audio", "number of frames"),
])
def test_frame_reader_bad_feature_names_it(tmp_path, broken, feature, problem):
    rng = np.random.default_rng(1)
    good, bad = frame_video(rng, "good", 3), frame_video(rng, "Bad7", 3)
    bad.update(broken)
    if bad["audio"] is None:
        del bad["audio"]
    path = str(tmp_path / "f.tfrecord")
    write_sequence_examples(path, [good, bad])
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        parse(frame_reader(), serialized(path))
    message = readers.data_error_message(info.value)
    assert message is not None and f"feature {feature} " in message and "Bad7" in message
    assert problem in message
    assert "good" not in message


def test_video_reader_values_and_labels(tmp_path):
    rng = np.random.default_rng(2)
    videos = [{"id": f"v{i}", "labels": labels,
               "mean_rgb": rng.standard_normal(1024), "mean_audio": rng.standard_normal(128)}
              for i, labels in enumerate([[0], [], [4, 1, 2], None])]
    path = str(tmp_path / "v.tfrecord")
    write_examples(path, videos)
    reader = readers.YT8MAggregatedFeatureReader(5, ["mean_rgb", "mean_audio"], [1024, 128])
    out = parse(reader, serialized(path))
    assert out["video_ids"].tolist() == [b"v0", b"v1", b"v2", b"v3"]
    expected = np.array([np.concatenate([v["mean_rgb"], v["mean_audio"]]) for v in videos],
                        np.float32)
    np.testing.assert_array_equal(out["video_matrix"], expected)
    assert out["video_matrix"].dtype == np.float32
    np.testing.assert_array_equal(out["labels"], [[1, 0, 0, 0, 0], [0] * 5, [0, 1, 1, 0, 1],
                                                  [0] * 5])
    assert out["num_frames"].tolist() == [1, 1, 1, 1]
    assert out["num_frames"].dtype == np.int32


def test_video_reader_wrong_size_names_feature_and_video(tmp_path):
    path = str(tmp_path / "v.tfrecord")
    write_examples(path, [{"id": "ok", "labels": [], "mean_rgb": np.zeros(1024)},
                          {"id": "Sh0r", "labels": [], "mean_rgb": np.zeros(512)}])
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        parse(readers.YT8MAggregatedFeatureReader(), serialized(path))
    message = readers.data_error_message(info.value)
    assert "feature mean_rgb " in message and "Sh0r" in message and "1024" in message


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_video_reader_non_finite_feature_names_it(tmp_path, value):
    rng = np.random.default_rng(2)
    audio = rng.uniform(-1, 1, 128)
    audio[7] = value
    path = str(tmp_path / "v.tfrecord")
    write_examples(path, [{"id": "fine", "labels": [1], "mean_rgb": rng.uniform(-1, 1, 1024),
                           "mean_audio": rng.uniform(-1, 1, 128)},
                          {"id": "Bad3", "labels": [1], "mean_rgb": rng.uniform(-1, 1, 1024),
                           "mean_audio": audio}])
    reader = readers.YT8MAggregatedFeatureReader(10, ["mean_rgb", "mean_audio"], [1024, 128])
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        parse(reader, serialized(path))
    message = readers.data_error_message(info.value)
    assert "feature mean_audio has NaN or Inf values in 1 video(s), e.g. Bad3" in message


def test_2017_video_id_key(tmp_path):
    rng = np.random.default_rng(3)
    frame_path, video_path = str(tmp_path / "f.tfrecord"), str(tmp_path / "v.tfrecord")
    write_sequence_examples(frame_path, [frame_video(rng, "old1", 2)], id_key="video_id")
    write_examples(video_path, [{"id": "old2", "labels": [4715], "mean_rgb": np.ones(1024)}],
                   id_key="video_id")
    frames = parse(frame_reader(), serialized(frame_path))
    videos = parse(readers.YT8MAggregatedFeatureReader(num_classes=4716),
                   serialized(video_path))
    assert frames["video_ids"].tolist() == [b"old1"]
    assert videos["video_ids"].tolist() == [b"old2"]
    assert videos["labels"][0].nonzero()[0].tolist() == [4715]


@pytest.mark.parametrize("label", [10, -1])
def test_label_out_of_range_names_file_and_video(tmp_path, label):
    rng = np.random.default_rng(4)
    path = str(tmp_path / "labels.tfrecord")
    write_sequence_examples(path, [frame_video(rng, "fine", 2, [9]),
                                   frame_video(rng, "Lbl9", 2, [1, label])])
    reader = frame_reader()
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        read_all(lambda: readers.build_dataset(reader, [path], 8, shuffle=False, num_epochs=1,
                                               num_readers=1))
    message = readers.data_error_message(info.value)
    assert "label id" in message and "Lbl9" in message and path in message
    assert "fine" not in message


def make_files(folder, names):
    for name in names:
        (folder / name).write_bytes(b"")
    return [str(folder / name) for name in names]


def test_resolve_data_files_globs_and_excludes(tmp_path):
    a0, a1, b0, b1 = make_files(tmp_path, ["a0.tfrecord", "a1.tfrecord", "b0.tfrecord",
                                           "b1.tfrecord"])
    pattern = f"{tmp_path}/b*.tfrecord, {tmp_path}/a*.tfrecord,{tmp_path}/a0.tfrecord"
    assert readers.resolve_data_files(pattern) == [a0, a1, b0, b1]
    assert readers.resolve_data_files(pattern, f"{tmp_path}/*1.tfrecord") == [a0, b0]
    listing = tmp_path / "held_out.txt"
    listing.write_text(f"b0.tfrecord\n\n{a1}\n")
    assert readers.resolve_data_files(pattern, f"@{listing}") == [a0, b1]


def test_resolve_data_files_errors_name_flag_and_pattern(tmp_path):
    make_files(tmp_path, ["a0.tfrecord"])
    missing = f"{tmp_path}/nothing*.tfrecord"
    with pytest.raises(UsageError, match="--train_data_pattern.*nothing"):
        readers.resolve_data_files(f"{tmp_path}/a*,{missing}", flag_name="train_data_pattern")
    with pytest.raises(UsageError, match="--eval_data_pattern"):
        readers.resolve_data_files(" , ", flag_name="eval_data_pattern")
    with pytest.raises(UsageError, match="--exclude_data_pattern.*excludes every file"):
        readers.resolve_data_files(f"{tmp_path}/a*", f"{tmp_path}/a0*")
    with pytest.raises(UsageError, match="--exclude_data_pattern.*nope"):
        readers.resolve_data_files(f"{tmp_path}/a*", f"{tmp_path}/nope*")
    with pytest.raises(UsageError, match="missing.txt"):
        readers.resolve_data_files(f"{tmp_path}/a*", f"@{tmp_path}/missing.txt")


def write_id_files(folder, counts):
    """Video-level files f0, f1, ... holding counts[i] videos named f<i>_<j>."""
    paths = []
    for index, count in enumerate(counts):
        path = str(folder / f"f{index}.tfrecord")
        write_examples(path, [{"id": f"f{index}_{j}", "labels": [j % 3],
                               "mean_rgb": np.full(4, index * 100 + j)} for j in range(count)])
        paths.append(path)
    return paths


def dataset_ids(paths, batch_size=4, **kw):
    reader = readers.YT8MAggregatedFeatureReader(3, ["mean_rgb"], [4])
    options = dict(shuffle=False, num_epochs=1, num_readers=2) | kw
    batches = read_all(lambda: readers.build_dataset(reader, paths, batch_size, **options))
    for batch in batches:   # the features belong to the id
        for video_id, row in zip(batch["video_ids"], batch["video_matrix"], strict=True):
            file_index, j = map(int, video_id.decode()[1:].split("_"))
            assert row.tolist() == [file_index * 100 + j] * 4
    return [len(b["video_ids"]) for b in batches], [i.decode() for b in batches
                                                    for i in b["video_ids"]]


def test_build_dataset_deterministic_every_video_once(tmp_path):
    paths = write_id_files(tmp_path, [5, 3, 3])
    sizes, ids = dataset_ids(paths)
    assert sizes == [4, 4, 3]
    assert sorted(ids) == sorted(f"f{i}_{j}" for i, n in enumerate([5, 3, 3]) for j in range(n))
    assert dataset_ids(paths)[1] == ids
    # Round robin over two files at a time, file order kept.
    assert ids[:4] == ["f0_0", "f1_0", "f0_1", "f1_1"]
    _, twice = dataset_ids(paths, num_epochs=2)
    assert sorted(twice) == sorted(ids * 2)
    _, shuffled = dataset_ids(paths, shuffle=True, seed=3)
    assert sorted(shuffled) == sorted(ids)


def truncate(path, cut):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:-cut])


def test_corrupt_file_fails_naming_it_unless_skipped(tmp_path, capfd):
    good, broken = write_id_files(tmp_path, [2, 5])
    truncate(broken, 10)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        dataset_ids([good, broken])
    message = readers.data_error_message(info.value)
    assert "corrupt or truncated" in message and broken in message
    capfd.readouterr()
    _, ids = dataset_ids([good, broken], skip_corrupt_records=True)
    assert sorted(ids) == ["f0_0", "f0_1", "f1_0", "f1_1", "f1_2", "f1_3"]
    assert f"skipped the rest of a corrupt or truncated TFRecord file {broken}" in (
        capfd.readouterr().err)


def test_corrupt_record_in_the_middle_is_skipped(tmp_path):
    (path,) = write_id_files(tmp_path, [4])
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(tf.errors.InvalidArgumentError, match="f0.tfrecord"):
        dataset_ids([path])
    _, ids = dataset_ids([path], skip_corrupt_records=True)
    assert set(ids) < {"f0_0", "f0_1", "f0_2", "f0_3"} and "f0_0" in ids


def gzip_file(path, out):
    """``out``: ``path`` compressed as the gzip tool does (one member, no name)."""
    with open(path, "rb") as f, gzip.GzipFile(out, "wb", mtime=0) as g:
        g.write(f.read())
    return out


def test_gzip_files_are_read_like_plain_ones(tmp_path):
    plain = write_id_files(tmp_path, [5, 3])
    _, want = dataset_ids(plain)
    zipped = [gzip_file(plain[0], str(tmp_path / "f0.tfrecord.gz"))]
    # TensorFlow's own gzip writer as well.
    with tf.io.TFRecordWriter(str(tmp_path / "f1.gz"), options="GZIP") as writer:
        for record in serialized(plain[1]):
            writer.write(record)
    zipped.append(str(tmp_path / "f1.gz"))
    assert dataset_ids(zipped)[1] == want
    assert dataset_ids([plain[0], zipped[1]])[1] == want


def test_truncated_gzip_file_fails_naming_it_as_compressed(tmp_path, capfd):
    (path,) = write_id_files(tmp_path, [30])
    zipped = gzip_file(path, str(tmp_path / "f0.gz"))
    truncate(zipped, 30)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        dataset_ids([zipped])
    message = readers.data_error_message(info.value)
    assert f"corrupt or truncated gzip-compressed TFRecord file {zipped}" in message
    capfd.readouterr()
    _, ids = dataset_ids([zipped], skip_corrupt_records=True)
    assert 0 < len(ids) < 30 and ids == [f"f0_{j}" for j in range(len(ids))]
    assert f"gzip-compressed TFRecord file {zipped}" in capfd.readouterr().err


def test_is_gzip_tells_a_tfrecord_that_starts_like_gzip(tmp_path):
    path = str(tmp_path / "odd.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:  # length 0x088b1f: bytes 1f 8b 08 first
        writer.write(b"x" * 0x088B1F)
    header = open(path, "rb").read(12)
    assert header.startswith(b"\x1f\x8b\x08") and not readers.is_gzip(header)
    assert readers.is_gzip(gzip.compress(b"records")[:12])
    assert not readers.is_gzip(open(write_id_files(tmp_path, [1])[0], "rb").read(12))


def test_get_reader_and_bad_flags():
    frame = readers.get_reader(True, "rgb,audio", "1024,128", 7, max_frames=20)
    assert isinstance(frame, readers.YT8MFrameFeatureReader)
    assert (frame.feature_names, frame.feature_sizes, frame.max_frames) == (
        ["rgb", "audio"], [1024, 128], 20)
    video = readers.get_reader(False, ["mean_rgb"], [1024], 7)
    assert isinstance(video, readers.YT8MAggregatedFeatureReader)
    assert video.num_classes == 7
    with pytest.raises(UsageError, match="feature_names"):
        readers.get_reader(False, ["mean_rgb", "mean_audio"], [1024], 7)
    with pytest.raises(UsageError, match="max_frames"):
        readers.get_reader(True, "rgb", "1024", 7, max_frames=0)
    with pytest.raises(UsageError):
        readers.build_dataset(video, [], 4, shuffle=False, num_epochs=1, num_readers=1)


def test_reader_defaults_match_2018_data():
    frame, video = readers.YT8MFrameFeatureReader(), readers.YT8MAggregatedFeatureReader()
    assert (frame.num_classes, frame.feature_names, frame.feature_sizes, frame.max_frames) == (
        3862, ["rgb"], [1024], 300)
    assert (video.feature_names, video.feature_sizes) == (["mean_rgb"], [1024])
