"""A teacher's predictions for distillation: written once by inference.py, read by train.py.

The teacher (any model or ensemble inference.py can run) scores the training
data once, and its top-k classes and scores per video go to TEACHER_DIR, one
TFRecord shard per data file, named as the data file and holding its videos
in the same order.  train.py reads each data file together with its shard, so
the join costs no memory and no look-up: it streams at the speed of the data,
shuffles with it, and works for millions of videos, where running the teacher
inside every training step would multiply the cost of each epoch and an
in-memory table of dense predictions (3862 floats per video) would not fit.
Each pair of records is checked: same video id, and shard and file end together.
"""
import os
import uuid
from typing import Dict, Iterable, Sequence, Set

import numpy as np
import tensorflow as tf

import readers
from errors import UsageError

ID_KEY, CLASSES_KEY, SCORES_KEY = "id", "teacher_classes", "teacher_scores"
TEACHER_KEY = "teacher_predictions"


def shard_path(teacher_dir: str, data_file: str) -> str:
    """The teacher shard of ``data_file``: its base name, inside ``teacher_dir``."""
    return os.path.join(teacher_dir, os.path.basename(data_file))


def check_shards(teacher_dir: str, files: Sequence[str], flag: str) -> None:
    """Every data file has its own shard in ``teacher_dir`` (base names must be unique)."""
    seen: Dict[str, str] = {}
    for data_file in files:
        name = os.path.basename(data_file)
        if name in seen:
            raise UsageError(f"--{flag}={teacher_dir}: data files {seen[name]} and {data_file} "
                             "share a base name, so they cannot have a teacher shard each")
        seen[name] = data_file
        if not tf.io.gfile.exists(shard_path(teacher_dir, data_file)):
            raise UsageError(f"--{flag}={teacher_dir} has no teacher shard "
                             f"{shard_path(teacher_dir, data_file)} for {data_file} (write it "
                             "with inference.py --output_teacher_dir)")


class TeacherShards:
    """The companion of readers.build_dataset that reads each data file's shard with it."""

    def __init__(self, teacher_dir: str, num_classes: int) -> None:
        self.teacher_dir = teacher_dir.rstrip("/")
        self.num_classes = num_classes

    def shard(self, data_files: tf.Tensor) -> tf.Tensor:
        return tf.strings.join([self.teacher_dir, "/",
                                tf.strings.regex_replace(data_files, r"^.*/", "")])

    def join(self, records: tf.data.Dataset, data_file: tf.Tensor) -> tf.data.Dataset:
        return joined_records(records, data_file, self.shard(data_file))

    def parse(self, teacher_records: tf.Tensor,
              parsed: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        return {TEACHER_KEY: parse_batch(teacher_records, parsed["video_ids"],
                                         self.shard(parsed["file_names"]), self.num_classes)}


def check_output(teacher_dir: str, files: Sequence[str], flag: str) -> None:
    """The shards must not replace the data they are computed from (same folder)."""
    def normal(path: str) -> str:
        return path if "://" in path else os.path.realpath(path)

    data = {normal(f) for f in files}
    for data_file in files:
        if normal(shard_path(teacher_dir, data_file)) in data:
            raise UsageError(f"--{flag}={teacher_dir} would overwrite the input file "
                             f"{shard_path(teacher_dir, data_file)}: write the shards to a "
                             "folder of their own")


def joined_records(records: tf.data.Dataset, data_file: tf.Tensor,
                   shard: tf.Tensor) -> tf.data.Dataset:
    """(record, file name, teacher record) of one data file and its shard, in step.

    Each side ends with a marker: a shard shorter or longer than its file pairs
    a marker with a record, which fails naming both.
    """
    ends = tf.data.Dataset.from_tensors(True)
    data = tf.data.Dataset.zip((records, tf.data.Dataset.from_tensors(False).repeat()))
    data = data.concatenate(ends.map(lambda end: (("", data_file), end)))
    teacher = tf.data.TFRecordDataset(shard).map(lambda record: (record, False))
    teacher = teacher.concatenate(ends.map(lambda end: ("", end)))

    def checked(data_item, teacher_item):
        (record, name), data_end = data_item
        teacher_record, teacher_end = teacher_item
        same = tf.debugging.Assert(tf.equal(data_end, teacher_end), [tf.strings.join([
            readers.DATA_ERROR, "teacher shard ", shard, " holds ",
            tf.where(data_end, "more", "fewer"), " records than data file ", name])])
        with tf.control_dependencies([same]):
            return record, name, teacher_record, tf.identity(data_end)

    pairs = tf.data.Dataset.zip((data, teacher)).map(checked)
    return pairs.filter(lambda *item: tf.logical_not(item[3])).map(lambda *item: item[:3])


def parse_batch(teacher_records: tf.Tensor, video_ids: tf.Tensor, shards: tf.Tensor,
                num_classes: int) -> tf.Tensor:
    """[B, num_classes] float32 teacher predictions (0 outside each video's top k),
    checked against the videos they were read with."""
    parsed = tf.io.parse_example(teacher_records, {
        ID_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
        CLASSES_KEY: tf.io.RaggedFeature(tf.int64),
        SCORES_KEY: tf.io.RaggedFeature(tf.float32)})
    classes, scores = parsed[CLASSES_KEY], parsed[SCORES_KEY]
    flat_classes, flat_scores = classes.flat_values, scores.flat_values
    rows = tf.cast(classes.value_rowids(), tf.int64)
    batch = tf.shape(video_ids, out_type=tf.int64)[0]

    def per_video(flags: tf.Tensor) -> tf.Tensor:
        return readers.all_in_rows(flags, rows, batch)

    conditions = [
        (tf.equal(parsed[ID_KEY], video_ids), "teacher record of another video (the shard "
                                              "is not in the order of its data file)"),
        (tf.equal(classes.row_lengths(), scores.row_lengths()),
         f"teacher record whose {CLASSES_KEY} and {SCORES_KEY} differ in length"),
        (per_video(tf.logical_and(flat_classes >= 0, flat_classes < num_classes)),
         f"teacher class outside [0, {num_classes}) (--num_classes)"),
        (per_video(tf.logical_and(flat_scores >= 0.0, flat_scores <= 1.0)),
         "teacher score that is not a probability in [0, 1]")]
    with tf.control_dependencies(readers.checks(conditions, video_ids, shards)):
        indices = tf.stack([rows, flat_classes], axis=1)
    return tf.scatter_nd(indices, flat_scores, tf.stack([batch, num_classes]))


def example(video_id: bytes, classes: Iterable[int], scores: Iterable[float]) -> bytes:
    """One serialized teacher record."""
    return tf.train.Example(features=tf.train.Features(feature={
        ID_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[video_id])),
        CLASSES_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=list(classes))),
        SCORES_KEY: tf.train.Feature(float_list=tf.train.FloatList(value=list(scores))),
    })).SerializeToString()


class ShardWriter:
    """Writes the shards of data files read one after the other (``num_readers=1``):
    each under a temporary name, renamed once its file is complete."""

    def __init__(self, teacher_dir: str) -> None:
        self.teacher_dir = teacher_dir
        self.written: Set[str] = set()
        self._file: str | None = None
        self._temp = ""
        self._writer: tf.io.TFRecordWriter | None = None

    def add(self, data_files: Sequence[bytes], video_ids: Sequence[bytes],
            classes: np.ndarray, scores: np.ndarray) -> None:
        for data_file, video_id, top_classes, top_scores in zip(
                data_files, video_ids, classes, scores, strict=True):
            self._open(data_file.decode("utf-8"))
            self._writer.write(example(video_id, top_classes, top_scores))

    def finish(self, files: Sequence[str]) -> None:
        """Closes the last shard and writes empty shards for files without videos."""
        self._close()
        for data_file in files:
            if data_file not in self.written:
                self._open(data_file)
                self._close()

    def abandon(self) -> None:
        """After a failure: the shard being written is removed, finished ones stay."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._temp and tf.io.gfile.exists(self._temp):
            tf.io.gfile.remove(self._temp)

    def _open(self, data_file: str) -> None:
        if data_file == self._file:
            return
        self._close()
        if data_file in self.written:
            raise UsageError(f"{data_file} was read twice: list each data file once")
        target = shard_path(self.teacher_dir, data_file)
        self._file, self._temp = data_file, f"{target}.tmp-{uuid.uuid4().hex}"
        self._writer = tf.io.TFRecordWriter(self._temp)

    def _close(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        tf.io.gfile.rename(self._temp, shard_path(self.teacher_dir, self._file), overwrite=True)
        self.written.add(self._file)
        self._temp = ""
