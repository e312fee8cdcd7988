"""YouTube-8M TFRecord readers: file lists, tf.data pipelines and batched parsing.

Records are parsed a batch at a time (one ``parse_example`` or
``parse_sequence_example`` call per batch), which costs far less CPU than
parsing them one by one: the input pipeline shares small machines with the
model.  Every check on
the data (missing feature, wrong size, label out of range, corrupt file) fails
with a message that starts with :data:`DATA_ERROR` and names the feature, the
video ids and the file; :func:`data_error_message` extracts it from the
TensorFlow error for a one-line report.
"""
from typing import Dict, List, Protocol, Sequence, Tuple

import tensorflow as tf

import model_config
from errors import UsageError

DATA_ERROR = "YT8M data error: "
# Dequantized uint8 frame features (SPEC 3): x * 4/255 + (4/512 - 2), i.e. the
# range [min, min + 4] in 255 steps.
_DEQUANTIZED_MIN = 4.0 / 512.0 - 2.0
# Bytes of TFRecord framing per record: length (8), length CRC (4), data CRC (4).
_RECORD_OVERHEAD = 16
# Records of one file counted for the corruption check at a time.
_CHUNK = 64
# Videos named in one error message.
_MAX_NAMED = 5
_ID_KEYS = ("id", "video_id")
_GZIP_MAGIC = b"\x1f\x8b\x08"
# A gzip trailer holds the uncompressed size modulo 2**32.
_GZIP_SIZE_MODULUS = 2**32


def data_error_message(error: Exception) -> str | None:
    """The one-line data-error text inside a TensorFlow error, or None if it has none."""
    text = str(error)
    start = text.find(DATA_ERROR)
    if start < 0:
        return None
    line = text[start:].split("\n", 1)[0]
    return line[:-1] if line.endswith("]") else line


def _join_first(values: tf.Tensor) -> tf.Tensor:
    """A scalar string listing the first few values, comma-separated."""
    return tf.strings.reduce_join(values[:_MAX_NAMED], separator=", ")


def checks(conditions: Sequence[Tuple[tf.Tensor, str]], video_ids: tf.Tensor,
           file_names: tf.Tensor | None) -> List[tf.Operation]:
    """Asserts, run in the given order, each failing with its text and naming the
    videos (and files) where its [B] bool condition is False."""
    asserts = []
    named = tf.where(tf.strings.length(video_ids) > 0, video_ids, "(no id)")
    for ok, what in conditions:
        bad = tf.logical_not(ok)
        parts = [DATA_ERROR + what + " in ",
                 tf.strings.as_string(tf.reduce_sum(tf.cast(bad, tf.int32))),
                 " video(s), e.g. ", _join_first(tf.boolean_mask(named, bad))]
        if file_names is not None:
            parts += ["; file(s) ", _join_first(tf.unique(tf.boolean_mask(file_names, bad)).y)]
        with tf.control_dependencies(asserts[-1:]):
            asserts.append(tf.debugging.Assert(tf.reduce_all(ok), [tf.strings.join(parts)]))
    return asserts


def _dequantize(quantized: tf.Tensor) -> tf.Tensor:
    """uint8 -> float32 x * 4/255 + (4/512 - 2), in one op (twice as fast as cast, mul, add)."""
    return tf.quantization.dequantize(tf.bitcast(quantized, tf.quint8), _DEQUANTIZED_MIN,
                                      _DEQUANTIZED_MIN + 4.0, mode="MIN_COMBINED")


def all_in_rows(flags: tf.Tensor, row_ids: tf.Tensor, num_rows: tf.Tensor) -> tf.Tensor:
    """[num_rows] bool: all flags of each row are True (also for rows without flags).

    A segment reduction: reductions over ragged tensors cost ten times more.
    """
    return tf.math.unsorted_segment_min(tf.cast(flags, tf.int32), row_ids, num_rows) > 0


def _video_ids(context: Dict[str, tf.Tensor]) -> tf.Tensor:
    """The `id` of each record, or its `video_id` (2017 data) where `id` is absent."""
    first, second = (context[key] for key in _ID_KEYS)
    return tf.where(tf.strings.length(first) > 0, first, second)


def _id_features() -> Dict[str, tf.io.FixedLenFeature]:
    return {key: tf.io.FixedLenFeature([], tf.string, default_value="") for key in _ID_KEYS}


def _id_condition(video_ids: tf.Tensor) -> Tuple[tf.Tensor, str]:
    return tf.strings.length(video_ids) > 0, "no id (or video_id) feature"


# decode_proto names of a map of features: message, its map field, the map's entry.
_FEATURES = ("tensorflow.Features", "feature", "tensorflow.Features.FeatureEntry")
_FEATURE_LISTS = ("tensorflow.FeatureLists", "feature_list",
                  "tensorflow.FeatureLists.FeatureListEntry")


def _has_context_key(serialized: tf.Tensor, message_type: str, field: str,
                     key: str, map_names: Tuple[str, str, str] = _FEATURES) -> tf.Tensor:
    """[B] bool: the records' `field` (a tf.train.Features, or the map that
    ``map_names`` describes) has an entry `key`.

    The parsing ops read a missing list feature as an empty one, so the keys
    are read from the protos themselves (only the small context is copied).
    """
    def decode(protos, message, name):  # [N, max count]; absent values are ""
        return tf.io.decode_proto(protos, message, [name], [tf.string])[1][0]

    map_type, map_field, entry_type = map_names
    # reduce_join: a singular field comes as [N, 1], or [N, 0] if no proto has it.
    features = tf.strings.reduce_join(decode(serialized, message_type, field), axis=1)
    entries = decode(features, map_type, map_field)
    keys = tf.strings.reduce_join(decode(tf.reshape(entries, [-1]), entry_type, "key"), axis=1)
    return tf.reduce_any(tf.equal(tf.reshape(keys, tf.shape(entries)), key), axis=1)


def _has_feature_list(serialized: tf.Tensor, name: str, empty: tf.Tensor) -> tf.Tensor:
    """[B] bool: the feature list `name` is in the record, looked up only for the
    ``empty`` ones (a list with frames is there; those without are small to read)."""
    def look_up():
        rows = tf.where(empty)
        present = _has_context_key(tf.gather_nd(serialized, rows), "tensorflow.SequenceExample",
                                   "feature_lists", name, _FEATURE_LISTS)
        return tf.tensor_scatter_nd_update(tf.ones_like(empty), rows, present)

    return tf.cond(tf.reduce_any(empty), look_up, lambda: tf.ones_like(empty))


class _BaseReader:
    """Shared flag checks and label handling of both readers."""

    # decode_proto names of the record type and of its tf.train.Features field.
    _PROTO: Tuple[str, str]

    def __init__(self, num_classes: int, feature_names: Sequence[str],
                 feature_sizes: Sequence[int], require_labels: bool = False) -> None:
        feature_names, feature_sizes = list(feature_names), list(feature_sizes)
        if not feature_names or len(feature_names) != len(feature_sizes):
            raise UsageError(
                f"--feature_names={','.join(feature_names)!r} and --feature_sizes="
                f"{','.join(map(str, feature_sizes))!r} must list the same number of features")
        if min(feature_sizes) < 1:
            raise UsageError(f"--feature_sizes={feature_sizes} must be positive")
        if num_classes < 1:
            raise UsageError(f"--num_classes={num_classes} must be positive")
        self.num_classes = num_classes
        self.feature_names = feature_names
        self.feature_sizes = feature_sizes
        # Training and eval need the `labels` key (an empty list is fine: SPEC 3);
        # inference does not read labels at all.
        self.require_labels = require_labels

    def _record_conditions(self, serialized: tf.Tensor,
                           video_ids: tf.Tensor) -> List[Tuple[tf.Tensor, str]]:
        """Checks every record needs: an id and, if required, a `labels` key."""
        conditions = [_id_condition(video_ids)]
        if self.require_labels:
            conditions.append((_has_context_key(serialized, *self._PROTO, "labels"),
                               "no labels feature (needed to train or evaluate)"))
        return conditions

    def _context_features(self) -> Dict[str, object]:
        features = _id_features()
        features["labels"] = tf.io.RaggedFeature(tf.int64)
        return features

    def _dense_labels(self, labels: tf.RaggedTensor, video_ids: tf.Tensor,
                      file_names: tf.Tensor | None) -> tf.Tensor:
        """[B, num_classes] bool indicator; an id outside [0, num_classes) is an error."""
        ids, rows = labels.flat_values, tf.cast(labels.value_rowids(), tf.int64)
        batch = tf.shape(video_ids, out_type=tf.int64)[0]
        in_range = all_in_rows(tf.logical_and(ids >= 0, ids < self.num_classes), rows, batch)
        asserts = checks([(in_range, f"label id outside [0, {self.num_classes}) (--num_classes)")],
                         video_ids, file_names)
        with tf.control_dependencies(asserts):
            indices = tf.stack([rows, ids], axis=1)
        return tf.scatter_nd(indices, tf.ones_like(ids, tf.int32),
                             tf.stack([batch, self.num_classes])) > 0

    def prepare_serialized_examples(self, serialized: tf.Tensor,
                                    file_names: tf.Tensor | None = None) -> Dict[str, tf.Tensor]:
        """Parses a [B] batch of serialized records (file_names [B] only names files in errors)."""
        raise NotImplementedError


class YT8MAggregatedFeatureReader(_BaseReader):
    """Video-level `tf.train.Example` records: float lists such as mean_rgb, mean_audio."""

    _PROTO = ("tensorflow.Example", "features")

    def __init__(self, num_classes: int = 3862, feature_names: Sequence[str] = ("mean_rgb",),
                 feature_sizes: Sequence[int] = (1024,), require_labels: bool = False) -> None:
        super().__init__(num_classes, feature_names, feature_sizes, require_labels)

    def prepare_serialized_examples(self, serialized: tf.Tensor,
                                    file_names: tf.Tensor | None = None) -> Dict[str, tf.Tensor]:
        features = self._context_features()
        for name in self.feature_names:
            features[name] = tf.io.RaggedFeature(tf.float32)
        parsed = tf.io.parse_example(serialized, features)
        video_ids = _video_ids(parsed)
        batch = tf.shape(video_ids, out_type=tf.int64)[0]
        sizes = [(tf.equal(parsed[name].row_lengths(), size),
                  f"feature {name} missing or not of size {size} (--feature_sizes)")
                 for name, size in zip(self.feature_names, self.feature_sizes, strict=True)]
        # A NaN or Inf would only show as NaN predictions or loss, far from its cause.
        finite = [(all_in_rows(tf.math.is_finite(parsed[name].flat_values),
                                parsed[name].value_rowids(), batch),
                   f"feature {name} has NaN or Inf values") for name in self.feature_names]
        asserts = checks(self._record_conditions(serialized, video_ids) + sizes + finite,
                         video_ids, file_names)
        with tf.control_dependencies(asserts):
            video_matrix = tf.concat(
                [tf.reshape(parsed[name].flat_values, [-1, size])
                 for name, size in zip(self.feature_names, self.feature_sizes, strict=True)],
                axis=1)
        return {
            "video_ids": video_ids,
            "video_matrix": video_matrix,
            "labels": self._dense_labels(parsed["labels"], video_ids, file_names),
            "num_frames": tf.ones(tf.shape(video_ids), tf.int32),
        }


class YT8MFrameFeatureReader(_BaseReader):
    """Frame-level `tf.train.SequenceExample` records: one uint8 byte string per frame."""

    _PROTO = ("tensorflow.SequenceExample", "context")

    def __init__(self, num_classes: int = 3862, feature_names: Sequence[str] = ("rgb",),
                 feature_sizes: Sequence[int] = (1024,), max_frames: int = 300,
                 require_labels: bool = False, allow_no_frames: bool = False) -> None:
        """``allow_no_frames`` (inference): a video whose feature lists are present but
        empty is read with num_frames 0 and an all-zero matrix instead of failing."""
        super().__init__(num_classes, feature_names, feature_sizes, require_labels)
        if max_frames < 1:
            raise UsageError(f"--max_frames={max_frames} must be positive")
        self.max_frames = max_frames
        self.allow_no_frames = allow_no_frames

    def _has_frames(self, serialized: tf.Tensor, name: str,
                    count: tf.Tensor) -> Tuple[tf.Tensor, str]:
        """The condition on the number of frames of feature `name`, and its failure."""
        if not self.allow_no_frames:
            return count > 0, f"feature {name} missing or without frames"
        return _has_feature_list(serialized, name, tf.equal(count, 0)), f"feature {name} missing"

    def _frame_conditions(self, serialized: tf.Tensor, name: str, size: int,
                          values: tf.RaggedTensor,
                          num_frames: tf.Tensor) -> List[Tuple[tf.Tensor, str]]:
        """Feature `name` has `num_frames` frames, each one string of `size` bytes."""
        count, frame_rows = values.row_lengths(), values.value_rowids()
        strings, batch = values.values, tf.shape(num_frames)[0]
        one_string = all_in_rows(tf.equal(strings.row_lengths(), 1), frame_rows, batch)
        right_size = all_in_rows(tf.equal(tf.strings.length(strings.flat_values), size),
                                  tf.gather(frame_rows, strings.value_rowids()), batch)
        return [
            self._has_frames(serialized, name, count),
            (tf.equal(count, num_frames),
             f"feature {name} has another number of frames than {self.feature_names[0]}"),
            (tf.logical_and(one_string, right_size),
             f"feature {name} frames are not single strings of {size} bytes (--feature_sizes)"),
        ]

    def _truncated(self, frames: tf.RaggedTensor) -> tf.RaggedTensor:
        """The first max_frames frames of each video.

        Slicing a ragged tensor copies every frame's string, so it is done
        only for batches that have a longer video.
        """
        return tf.cond(tf.reduce_max(frames.row_lengths()) > self.max_frames,
                       lambda: frames[:, :self.max_frames], lambda: frames)

    def prepare_serialized_examples(self, serialized: tf.Tensor,
                                    file_names: tf.Tensor | None = None) -> Dict[str, tf.Tensor]:
        context, sequences, _ = tf.io.parse_sequence_example(
            serialized, context_features=self._context_features(),
            sequence_features={name: tf.io.RaggedFeature(tf.string)
                               for name in self.feature_names})
        video_ids = _video_ids(context)
        num_frames = tf.cast(tf.minimum(sequences[self.feature_names[0]].row_lengths(),
                                        self.max_frames), tf.int32)
        conditions, decoded = self._record_conditions(serialized, video_ids), []
        for name, size in zip(self.feature_names, self.feature_sizes, strict=True):
            # [B, frames, strings]; truncated first so dropped frames cost nothing.
            values = self._truncated(sequences[name])
            conditions += self._frame_conditions(serialized, name, size, values, num_frames)
            decoded.append(values.flat_values)
        with tf.control_dependencies(checks(conditions, video_ids, file_names)):
            quantized = tf.concat(
                [tf.io.decode_raw(flat, tf.uint8) for flat in decoded], axis=1)
        # Dequantized before padding, so padded rows are exact zeros.
        video_matrix = tf.RaggedTensor.from_row_lengths(
            _dequantize(quantized), num_frames).to_tensor(
                shape=[None, self.max_frames, sum(self.feature_sizes)])
        return {
            "video_ids": video_ids,
            "video_matrix": video_matrix,
            "labels": self._dense_labels(context["labels"], video_ids, file_names),
            "num_frames": num_frames,
        }


Reader = YT8MAggregatedFeatureReader | YT8MFrameFeatureReader


def get_reader(frame_features: bool, feature_names: str | Sequence[str],
               feature_sizes: str | Sequence[int], num_classes: int,
               max_frames: int = 300, require_labels: bool = False,
               allow_no_frames: bool = False) -> Reader:
    """The reader for the flags; names/sizes may be the comma-separated flag strings.

    ``require_labels`` (train, eval): a record without a `labels` key is an error.
    ``allow_no_frames`` (inference): frame-level videos with empty feature lists
    are read (num_frames 0) rather than refused.
    """
    if isinstance(feature_names, str) or isinstance(feature_sizes, str):
        feature_names, feature_sizes = model_config.split_feature_lists(
            feature_names if isinstance(feature_names, str) else ",".join(feature_names),
            feature_sizes if isinstance(feature_sizes, str)
            else ",".join(map(str, feature_sizes)))
    if frame_features:
        return YT8MFrameFeatureReader(num_classes, feature_names, feature_sizes, max_frames,
                                      require_labels, allow_no_frames)
    return YT8MAggregatedFeatureReader(num_classes, feature_names, feature_sizes,
                                       require_labels)


def _split(pattern: str) -> List[str]:
    return [part.strip() for part in pattern.split(",") if part.strip()]


def _glob(pattern: str, flag_name: str) -> List[str]:
    matches = tf.io.gfile.glob(pattern)
    if not matches:
        raise UsageError(f"--{flag_name}: pattern {pattern!r} matches no file")
    return matches


def _excluded(exclude_pattern: str, exclude_flag_name: str) -> set[str]:
    """Paths to exclude: globs, or names (full paths or base names) listed in @FILE."""
    if exclude_pattern.strip().startswith("@"):
        list_file = exclude_pattern.strip()[1:]
        if not tf.io.gfile.exists(list_file):
            raise UsageError(f"--{exclude_flag_name}: list file {list_file!r} does not exist")
        with tf.io.gfile.GFile(list_file) as f:
            return {line.strip() for line in f if line.strip()}
    return {path for glob in _split(exclude_pattern) for path in _glob(glob, exclude_flag_name)}


def resolve_data_files(pattern: str, exclude_pattern: str = "",
                       flag_name: str = "data_pattern",
                       exclude_flag_name: str = "exclude_data_pattern") -> List[str]:
    """Sorted, de-duplicated files matching comma-separated globs, minus the excluded ones."""
    globs = _split(pattern or "")
    if not globs:
        raise UsageError(f"--{flag_name} is empty: give comma-separated globs of TFRecord files")
    files = {path for glob in globs for path in _glob(glob, flag_name)}
    if exclude_pattern and exclude_pattern.strip():
        excluded = _excluded(exclude_pattern, exclude_flag_name)
        files = {path for path in files
                 if path not in excluded and path.rsplit("/", 1)[-1] not in excluded}
        if not files:
            raise UsageError(f"--{exclude_flag_name}={exclude_pattern!r} excludes every file "
                             f"of --{flag_name}={pattern!r}")
    return sorted(files)


def no_records_message(files: Sequence[str], flag_name: str) -> str:
    """Why a pass over ``files`` that yielded nothing is an error (e.g. only empty shards)."""
    shown = ", ".join(files[:_MAX_NAMED]) + (" ..." if len(files) > _MAX_NAMED else "")
    return (f"--{flag_name}: its {len(files)} file(s) hold no records ({shown}): "
            "nothing to train on")


def _masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C (Castagnoli) of a few bytes."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def is_gzip(header: bytes) -> bool:
    """Whether a file that starts with ``header`` (its first 12 bytes) is gzip-compressed.

    gzip files start with 1f 8b 08.  A TFRecord file starts with a record
    length and its masked CRC, so one whose length happens to begin with those
    bytes is still told apart by its valid CRC.
    """
    if not header.startswith(_GZIP_MAGIC):
        return False
    return len(header) < 12 or (
        int.from_bytes(header[8:12], "little") != _masked_crc32c(header[:8]))


def _file_layout(file_name: tf.Tensor) -> Tuple[str, int, bool]:
    """(compression_type, bytes of records expected, gzipped) of a TFRecord file.

    Plain files: their size.  gzip files: the uncompressed size from the gzip
    trailer (modulo 2**32), read without decompressing.
    """
    path = file_name.numpy().decode("utf-8")
    size = tf.io.gfile.stat(path).length
    with tf.io.gfile.GFile(path, "rb") as f:
        if not is_gzip(f.read(12)):
            return "", size, False
        f.seek(max(size - 4, 0))
        return "GZIP", int.from_bytes(f.read(4), "little"), True


def _file_records(file_name: tf.Tensor, skip_corrupt_records: bool) -> tf.data.Dataset:
    """(record, file name) pairs of one file, checked for corrupt or truncated data.

    gzip-compressed files (told by their header) are decompressed on the fly.
    TFRecordDataset's own error does not name the file, so errors are ignored
    and the bytes read are compared with the file size (gzip: the uncompressed
    size in its trailer) once the file ends: a difference fails naming the
    file, or is logged and skipped.
    """
    compression, expected, gzipped = tf.py_function(
        _file_layout, [file_name], [tf.string, tf.int64, tf.bool])
    compression.set_shape([])
    kind = tf.where(gzipped, "gzip-compressed ", "")
    chunks = tf.data.TFRecordDataset(file_name, compression_type=compression).ignore_errors()
    chunks = chunks.batch(_CHUNK)
    marked = tf.data.Dataset.zip((chunks, tf.data.Dataset.from_tensors(False).repeat()))
    marked = marked.concatenate(tf.data.Dataset.from_tensors((tf.constant([], tf.string), True)))

    def step(state, chunk):
        offset, kept = state
        records, at_end = chunk
        offset += tf.reduce_sum(tf.cast(tf.strings.length(records), tf.int64) + _RECORD_OVERHEAD)
        kept += tf.size(records, out_type=tf.int64)
        read = tf.where(gzipped, tf.math.floormod(offset, _GZIP_SIZE_MODULUS), offset)
        size = tf.where(at_end, expected, read)
        problem = tf.strings.join([
            "corrupt or truncated ", kind, "TFRecord file ", file_name, ": read ",
            tf.strings.as_string(read), " of ", tf.strings.as_string(size), " bytes",
            tf.where(gzipped, " (uncompressed)", "")])
        if skip_corrupt_records:
            def warn():
                # PrintV2 prints the string as is (tf.print would quote it).
                with tf.control_dependencies([tf.raw_ops.PrintV2(
                        input=tf.strings.join([
                            "WARNING: skipped the rest of a ", problem, " (",
                            tf.strings.as_string(size - read), " bytes skipped, ",
                            tf.strings.as_string(kept), " records before them kept)"]),
                        output_stream="stderr")]):
                    return tf.constant(False)
            report = tf.cond(tf.equal(read, size), lambda: tf.constant(True), warn)
        else:
            report = tf.debugging.Assert(tf.equal(read, size), [tf.strings.join(
                [DATA_ERROR, problem, " (--skip_corrupt_records skips it)"])])
        with tf.control_dependencies([report]):
            return (tf.identity(offset), kept), (records, tf.fill(tf.shape(records), file_name))

    zero = tf.constant(0, tf.int64)
    return marked.scan((zero, zero), step).unbatch()


class Companion(Protocol):
    """Records read in step with each data file (e.g. teacher.TeacherShards)."""

    def join(self, records: tf.data.Dataset, data_file: tf.Tensor) -> tf.data.Dataset:
        """(record, file name) pairs of one file -> (record, file name, companion record)."""

    def parse(self, companion_records: tf.Tensor,
              parsed: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        """The batch's companion records -> tensors added to the reader's dict."""


def build_dataset(reader: Reader, files: Sequence[str], batch_size: int, *, shuffle: bool,
                  num_epochs: int | None, num_readers: int,
                  skip_corrupt_records: bool = False,
                  seed: int | None = None,
                  companion: Companion | None = None) -> tf.data.Dataset:
    """Batches of parsed videos (the reader's dict, plus each video's "file_names") from `files`.

    Without `shuffle` the order is deterministic: files in the given order,
    interleaved record by record across `num_readers` files.  With it, the
    file order is shuffled each epoch and records pass a shuffle buffer of 4
    batches.  The last partial batch is kept.  `num_epochs=None` repeats forever.
    A `companion` adds what it reads beside each file to every video.
    """
    if not files:
        raise UsageError("no data files to read")
    if batch_size < 1 or num_readers < 1:
        raise UsageError(f"--batch_size={batch_size} and --num_readers={num_readers} "
                         "must be positive")

    def file_records(file_name):
        records = _file_records(file_name, skip_corrupt_records)
        return companion.join(records, file_name) if companion else records

    def parse(records, names, *extra):
        parsed = {**reader.prepare_serialized_examples(records, names), "file_names": names}
        return {**parsed, **companion.parse(extra[0], parsed)} if companion else parsed

    dataset = tf.data.Dataset.from_tensor_slices(list(files))
    if shuffle:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.repeat(num_epochs).interleave(
        file_records, cycle_length=num_readers,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle)
    if shuffle:
        dataset = dataset.shuffle(4 * batch_size, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size).map(
        parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle)
    return dataset.prefetch(tf.data.AUTOTUNE)
