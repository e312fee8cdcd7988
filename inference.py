"""Writes a Kaggle submission CSV from an inference model and TFRecords.

    python inference.py --train_dir=RUN --input_data_pattern=DATA/frame/test*.tfrecord \\
        --output_file=RUN/predictions.csv [--output_model_tgz=RUN/model.tgz]
    python inference.py --input_model_tgz=model.tgz --input_data_pattern=... --output_file=...
    python inference.py --train_dir=TEACHER --input_data_pattern=DATA/frame/train*.tfrecord \\
        --output_teacher_dir=TEACHER/predictions --top_k=100

The last form writes a teacher's predictions for train.py --teacher_predictions
(see teacher.py).

The model is RUN/<--inference_model_file>.meta (written by eval.py) restored
from the same name; the records are fed straight into its ``input_batch_raw``
and ``num_frames`` tensors, and only each video's top-k leaves the graph.
"""
import quiet_startup  # noqa: F401  (first: before TensorFlow is imported)

import contextlib
import io
import os
import tarfile
import uuid
from dataclasses import dataclass
from typing import List

import tensorflow as tf
from absl import logging
from tensorflow.core.protobuf import meta_graph_pb2

import app_flags
import checkpoint_utils
import cli
import export
import input_pipeline
import model_config
import model_graph
import progress
import readers
import submission
import teacher
from errors import UsageError


def unpack_model_tgz(tgz_path: str, target_dir: str) -> List[str]:
    """Extracts the flat tgz of --output_model_tgz into target_dir through gfile.

    Returns the names extracted: target_dir may hold older files.
    """
    if not tf.io.gfile.exists(tgz_path):
        raise UsageError(f"--input_model_tgz={tgz_path} not found")
    names = []
    try:
        data = tf.io.gfile.GFile(tgz_path, "rb").read()
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tf.io.gfile.makedirs(target_dir)
            for member in tar.getmembers():
                if not member.isfile():
                    continue
                name = os.path.basename(member.name)
                with tf.io.gfile.GFile(os.path.join(target_dir, name), "wb") as out:
                    out.write(tar.extractfile(member).read())
                names.append(name)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UsageError(f"--input_model_tgz={tgz_path} is not a readable .tgz: {e}") from None
    return names


def locate_model(untar_dir: str) -> tuple:
    """(model_dir, checkpoint name) from --train_dir, or --input_model_tgz unpacked in untar_dir."""
    train_dir = app_flags.value("train_dir")
    tgz = app_flags.value("input_model_tgz")
    name = app_flags.value("inference_model_file")
    model_dir = train_dir
    if tgz:
        model_dir = untar_dir
        packed = unpack_model_tgz(tgz, model_dir)
        metas = [n for n in packed if n.endswith(".meta")]
        if name + ".meta" not in packed and len(metas) == 1:
            name = metas[0][:-len(".meta")]
        missing = [n for n in (name + ".meta", name + ".index", model_config.FILE_NAME)
                   if n not in packed]
        if not any(n.startswith(name + ".data-") for n in packed):
            missing.append(name + ".data-*")
        if missing:
            raise UsageError(f"--input_model_tgz={tgz} lacks the model files "
                             f"{', '.join(missing)} (it holds "
                             f"{', '.join(sorted(packed)) or 'nothing'})")
    meta = os.path.join(model_dir, name + ".meta")
    if not tf.io.gfile.exists(meta) or not tf.io.gfile.exists(
            os.path.join(model_dir, name + ".index")):
        source = f"--input_model_tgz={tgz}" if tgz else f"--train_dir={train_dir}"
        raise UsageError(f"{source} holds no model files {name}.meta/.index "
                         "(run eval.py first, or set --inference_model_file)")
    return model_dir, name


def _check_model_flags() -> None:
    tgz, train_dir = app_flags.value("input_model_tgz"), app_flags.value("train_dir")
    if tgz and train_dir:
        raise UsageError("give either --train_dir or --input_model_tgz, not both")
    if not (tgz or train_dir):
        raise UsageError("give --train_dir or --input_model_tgz")


def _collection_tensor_name(meta: meta_graph_pb2.MetaGraphDef, key: str) -> str:
    values = meta.collection_def[key].node_list.value
    if not values:
        raise UsageError(f"the meta graph has no '{key}' collection: not an inference model")
    return values[0]


def model_num_frames(num_frames: tf.Tensor) -> tf.Tensor:
    """The frame counts fed to the model: a video without frames is read as one all-zero
    frame (its padding), which every model can score; the 2018 code scored such videos
    from their zero padding too, and Kaggle needs a row for every test video."""
    return tf.maximum(num_frames, 1)


def check_batch(batch: dict, duplicates: submission.DuplicateIds,
                no_frames: submission.Tally) -> None:
    """The checks of one fetched batch (see submission.py), whatever is written of it."""
    ids, files = batch["video_ids"], batch["file_names"]
    submission.check_finite(batch["finite"], ids, files)
    duplicates.add(ids, files)
    no_frames.add(ids, batch["num_frames"] == 0)


def batch_rows(batch: dict) -> str:
    """The CSV rows of one fetched, checked batch."""
    return "".join(submission.csv_row(submission.decode_id(v, f), c, s) for v, f, c, s in zip(
        batch["video_ids"], batch["file_names"], batch["classes"], batch["scores"],
        strict=True))


def run_inference() -> None:
    output_file, teacher_dir = app_flags.value("output_file"), app_flags.value("output_teacher_dir")
    if not (output_file or teacher_dir):
        raise UsageError("--output_file is required (or --output_teacher_dir)")
    batch_size, top_k = app_flags.positive("batch_size"), app_flags.positive("top_k")
    if not app_flags.value("input_data_pattern"):
        raise UsageError("--input_data_pattern is required")
    if output_file:
        checkpoint_utils.check_writable(output_file, "output_file")
    if teacher_dir:
        checkpoint_utils.check_writable(teacher_dir, "output_teacher_dir", is_directory=True)
    if app_flags.value("output_model_tgz"):
        checkpoint_utils.check_writable(app_flags.value("output_model_tgz"), "output_model_tgz")
    _check_model_flags()
    untar_dir = app_flags.value("untar_model_dir")
    with contextlib.ExitStack() as stack:
        if app_flags.value("input_model_tgz") and not untar_dir:
            untar_dir = stack.enter_context(export.private_temp_dir("tgz"))
        model_dir, name = locate_model(untar_dir)
        write_predictions(model_dir, name, Outputs(output_file, teacher_dir), batch_size, top_k)
        if app_flags.value("output_model_tgz"):
            export.write_model_tgz(model_dir, name, app_flags.value("output_model_tgz"))
            logging.info("Wrote the model to %s", app_flags.value("output_model_tgz"))


@dataclass
class Outputs:
    """What inference writes: the CSV, the teacher shards, or both."""

    csv_file: str = ""
    teacher_dir: str = ""


def write_predictions(model_dir: str, name: str, outputs: Outputs, batch_size: int,
                      top_k: int) -> None:
    """Runs model ``model_dir/name`` over --input_data_pattern into ``outputs``."""
    stored = model_config.read_json(model_dir)
    if stored is None:
        raise UsageError(f"{model_config.json_path(model_dir)} not found: the model's "
                         "model_flags.json must lie beside it")
    config = app_flags.resolve_model_config(stored)
    files = readers.resolve_data_files(app_flags.value("input_data_pattern"),
                                       flag_name="input_data_pattern")
    if outputs.teacher_dir:
        teacher.check_output(outputs.teacher_dir, files, "output_teacher_dir")
    meta = meta_graph_pb2.MetaGraphDef.FromString(
        tf.io.gfile.GFile(os.path.join(model_dir, name + ".meta"), "rb").read())
    graph = tf.Graph()
    with graph.as_default():
        # Teacher shards are written one after the other: files are read in turn.
        readers_count = 1 if outputs.teacher_dir else app_flags.positive("num_readers")
        dataset = input_pipeline.dataset_for(
            config.data, files, batch_size, shuffle=False, num_epochs=1,
            num_readers=readers_count,
            skip_corrupt_records=app_flags.value("skip_corrupt_records"), allow_no_frames=True)
        batch = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
        input_map = {
            _collection_tensor_name(meta, model_graph.INPUT_COLLECTION): batch["video_matrix"],
            _collection_tensor_name(meta, model_graph.NUM_FRAMES_COLLECTION):
                model_num_frames(batch["num_frames"]),
        }
        saver = tf.compat.v1.train.import_meta_graph(meta, input_map=input_map,
                                                     clear_devices=True)
        predictions = tf.compat.v1.get_collection(model_graph.PREDICTIONS_COLLECTION)[0]
        top_k = min(top_k, config.num_classes)
        top_scores, top_classes = tf.nn.top_k(predictions, k=top_k)
        fetches = {"video_ids": batch["video_ids"], "file_names": batch["file_names"],
                   "num_frames": batch["num_frames"], "scores": top_scores,
                   "classes": top_classes,
                   "finite": tf.reduce_all(tf.math.is_finite(predictions), axis=1)}
    graph.finalize()
    tracker = progress.Progress("inference", progress.count_records(files),
                                max(app_flags.value("progress_interval_secs"), 0.0))
    duplicates, no_frames = submission.DuplicateIds(), submission.Tally()
    tmp = f"{outputs.csv_file}.tmp-{uuid.uuid4().hex}" if outputs.csv_file else ""
    shards = teacher.ShardWriter(outputs.teacher_dir) if outputs.teacher_dir else None
    try:
        with tf.compat.v1.Session(graph=graph) as sess, contextlib.ExitStack() as stack:
            out = stack.enter_context(tf.io.gfile.GFile(tmp, "w")) if tmp else None
            saver.restore(sess, os.path.join(model_dir, name))
            if out:
                out.write(submission.CSV_HEADER)
            while True:
                try:
                    values = sess.run(fetches)
                except tf.errors.OutOfRangeError:
                    break
                check_batch(values, duplicates, no_frames)
                if out:
                    out.write(batch_rows(values))
                if shards:
                    shards.add(values["file_names"], values["video_ids"], values["classes"],
                               values["scores"])
                tracker.add(len(values["video_ids"]))
        duplicates.check("input_data_pattern")
        if shards:
            shards.finish(files)
        if tmp:
            tf.io.gfile.rename(tmp, outputs.csv_file, overwrite=True)
    finally:
        if shards:
            shards.abandon()
        if tmp and tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
    for target in (outputs.csv_file, outputs.teacher_dir):
        if target:
            logging.info("Wrote %d videos to %s (%.1f videos/sec).", tracker.done, target,
                         tracker.rate())
    if no_frames.count:
        logging.warning("%d video(s) have no frames (e.g. %s): their rows score one all-zero "
                        "frame, as the 2018 code scored their zero padding.", no_frames.count,
                        no_frames.example)


def main() -> None:
    run_inference()


if __name__ == "__main__":
    cli.run(main, *app_flags.runner_hooks(app_flags.INFERENCE))
