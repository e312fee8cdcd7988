"""The tf.data input of train, eval, inference and the ensemble tools (and the reader of
the SavedModel export), configured by the flags."""
from typing import Sequence

import tensorflow as tf

import app_flags
import readers
from model_config import ModelConfig


def reader_for(config: ModelConfig, require_labels: bool = False,
               allow_no_frames: bool = False) -> readers.Reader:
    """The reader of records in the format ``config`` was trained on (--max_frames)."""
    return readers.get_reader(config.frame_features, config.feature_names,
                              config.feature_sizes, config.num_classes,
                              app_flags.value("max_frames"), require_labels=require_labels,
                              allow_no_frames=allow_no_frames)


def dataset_for(config: ModelConfig, files: Sequence[str], batch_size: int, *, shuffle: bool,
                num_epochs: int | None, require_labels: bool = False,
                seed: int | None = None, allow_no_frames: bool = False) -> tf.data.Dataset:
    """Batches of parsed videos of ``files`` in the format ``config`` was trained on."""
    return readers.build_dataset(
        reader_for(config, require_labels, allow_no_frames), files, batch_size, shuffle=shuffle,
        num_epochs=num_epochs, num_readers=app_flags.value("num_readers"),
        skip_corrupt_records=app_flags.value("skip_corrupt_records"), seed=seed)
