"""The tf.data input of train, eval, inference and the ensemble tools (and the reader of
the SavedModel export), in the record format of a model configuration."""
from typing import Sequence

import tensorflow as tf

import readers
import teacher
from model_config import DataConfig


def reader_for(data: DataConfig, require_labels: bool = False,
               allow_no_frames: bool = False) -> readers.Reader:
    """The reader of records in the format ``data`` describes (max_frames included)."""
    return readers.get_reader(data.frame_features, data.feature_names, data.feature_sizes,
                              data.num_classes, data.max_frames, require_labels=require_labels,
                              allow_no_frames=allow_no_frames)


def dataset_for(data: DataConfig, files: Sequence[str], batch_size: int, *, shuffle: bool,
                num_epochs: int | None, require_labels: bool = False, seed: int | None = None,
                num_readers: int = 8, skip_corrupt_records: bool = False,
                allow_no_frames: bool = False, teacher_dir: str = "") -> tf.data.Dataset:
    """Batches of parsed videos of ``files`` in the format ``data`` describes; with
    ``teacher_dir``, each video's teacher predictions too (teacher.py)."""
    companion = teacher.TeacherShards(teacher_dir, data.num_classes) if teacher_dir else None
    return readers.build_dataset(
        reader_for(data, require_labels, allow_no_frames), files, batch_size, shuffle=shuffle,
        num_epochs=num_epochs, num_readers=num_readers,
        skip_corrupt_records=skip_corrupt_records, seed=seed, companion=companion)
