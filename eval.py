"""Evaluates checkpoints (Hit@1, PERR, mAP, GAP, loss) and re-saves them for inference.

    python eval.py --eval_data_pattern=DATA/frame/validate*.tfrecord --train_dir=RUN \\
        --run_once=True --checkpoint=model.ckpt-170010.index

The data and model choices come from RUN/model_flags.json (model flags given
on the command line must agree with it), so the command above needs no model
flags; eval.py started before train.py has written the file waits for it.
Right after the
restore, the checkpoint is re-saved with its inference meta graph under the
names the ensemble workflow expects (see checkpoint_utils.inference_name).
"""
import quiet_startup  # noqa: F401  (first: before TensorFlow is imported)

import json
import os
import re
import time
from dataclasses import dataclass
from typing import Dict, Set

import tensorflow as tf
from absl import logging

import app_flags
import checkpoint_utils
import cli
import eval_util
import export
import input_pipeline
import model_config
import model_graph
import readers
import registry
from errors import UsageError
from model_config import ModelConfig


@dataclass
class EvalGraph:
    graph: tf.Graph
    global_step: tf.Variable
    saver: tf.compat.v1.train.Saver
    iterator_init: tf.Operation | None
    # Each video's top entries (eval_util.graph_top_k): only [batch, top_k] leaves the graph.
    top_k: Dict[str, tf.Tensor] | None
    loss: tf.Tensor | None


@dataclass(frozen=True)
class EvalSettings:
    """What eval.py reads besides the model configuration."""

    batch_size: int
    top_k: int
    num_readers: int
    skip_corrupt_records: bool
    force_output_model_name: bool
    create_meta_only: bool


def eval_settings() -> EvalSettings:
    """The flags of this script, checked before any work."""
    return EvalSettings(
        batch_size=app_flags.positive("batch_size"), top_k=app_flags.positive("top_k"),
        num_readers=app_flags.positive("num_readers"),
        skip_corrupt_records=app_flags.value("skip_corrupt_records"),
        force_output_model_name=app_flags.value("force_output_model_name"),
        create_meta_only=app_flags.value("create_meta_only"))


def build_eval_graph(config: ModelConfig, settings: EvalSettings, files) -> EvalGraph:
    """The model with is_training=False, fed by the eval files (or by nothing)."""
    graph = tf.Graph()
    with graph.as_default():
        global_step = checkpoint_utils.create_global_step()
        if files is None:
            raw = tf.compat.v1.placeholder(tf.float32, model_graph.input_shape(config))
            num_frames = tf.compat.v1.placeholder(tf.int32, [None])
            model_graph.build_predictions(raw, num_frames, config, is_training=False)
            saver = tf.compat.v1.train.Saver(model_graph.model_variables())
            return EvalGraph(graph, global_step, saver, None, None, None)
        dataset = input_pipeline.dataset_for(
            config.data, files, settings.batch_size, shuffle=False, num_epochs=1,
            require_labels=True, num_readers=settings.num_readers,
            skip_corrupt_records=settings.skip_corrupt_records)
        iterator = tf.compat.v1.data.make_initializable_iterator(dataset)
        batch = iterator.get_next()
        outputs = model_graph.build_predictions(batch["video_matrix"], batch["num_frames"],
                                                config, is_training=False)
        labels = tf.cast(batch["labels"], tf.float32)
        loss = model_graph.label_loss(registry.find_loss(config.label_loss),
                                      outputs.predictions, labels)
        top_k = eval_util.graph_top_k(outputs.predictions, batch["labels"], settings.top_k)
        saver = tf.compat.v1.train.Saver(model_graph.model_variables())
    return EvalGraph(graph, global_step, saver, iterator.initializer, top_k, loss)


def _in_train_dir(train_dir: str, name: str) -> str:
    path = name if "://" in name or os.path.isabs(name) else os.path.join(train_dir, name)
    return path[:-len(".index")] if path.endswith(".index") else path


def requested_checkpoint(train_dir: str) -> str | None:
    """The checkpoint named by --checkpoint_file or --checkpoint, if any."""
    for flag in ("checkpoint_file", "checkpoint"):
        name = app_flags.value(flag)
        if name:
            path = _in_train_dir(train_dir, name)
            if not checkpoint_utils.checkpoint_exists(path):
                raise UsageError(f"--{flag}={name}: checkpoint {path} not found")
            return path
    return None


def resave(sess, eg: EvalGraph, config: ModelConfig, settings: EvalSettings, train_dir: str,
           checkpoint: str) -> None:
    name = checkpoint_utils.inference_name(
        os.path.basename(checkpoint), settings.force_output_model_name, config.weights)
    if name is None:
        return
    path = export.save_inference_model(sess, eg.saver, config, os.path.join(train_dir, name))
    logging.info("Re-saved %s as %s (+ .meta)", checkpoint, path)


def _evaluation_error(error: tf.errors.OpError, checkpoint: str) -> UsageError | None:
    """Bad data or NaN predictions as one line naming the checkpoint (else None): the
    cause is otherwise only in a TensorFlow log line, and eval may be one of many runs."""
    message = readers.data_error_message(error)
    if message is None and eval_util.NAN_PREDICTIONS in str(error):
        message = f"the model's {eval_util.NAN_PREDICTIONS}: its weights are probably NaN or Inf"
    return None if message is None else UsageError(f"{message} (evaluating {checkpoint})")


def evaluate_checkpoint(sess, eg: EvalGraph, config: ModelConfig, settings: EvalSettings,
                        train_dir: str, checkpoint: str, writer) -> dict | None:
    """Restores, re-saves, and (unless --create_meta_only) runs one pass of metrics."""
    checkpoint_utils.restorable_variables(
        checkpoint, eg.graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES),
        f"is it a checkpoint of the model {model_config.json_path(train_dir)} describes?")
    eg.saver.restore(sess, checkpoint)
    step = int(sess.run(eg.global_step))
    resave(sess, eg, config, settings, train_dir, checkpoint)
    if settings.create_meta_only:
        return None
    metrics = eval_util.EvaluationMetrics(config.num_classes, settings.top_k)
    sess.run(eg.iterator_init)
    start, examples = time.time(), 0
    while True:
        try:
            top_k, loss = sess.run([eg.top_k, eg.loss])
        except tf.errors.OutOfRangeError:
            break
        except tf.errors.OpError as e:
            error = _evaluation_error(e, checkpoint)
            if error is None:
                raise
            raise error from None
        metrics.accumulate_top_k(loss=loss, **top_k)
        examples += len(top_k["num_labels"])
        logging.log_every_n_seconds(logging.INFO, "evaluated %d videos, %.1f videos/sec", 10,
                                    examples, examples / max(time.time() - start, 1e-9))
    if examples == 0:
        raise UsageError("the eval data holds no videos")
    result = metrics.get()
    record = {
        "checkpoint": checkpoint, "global_step": step, "num_examples": examples,
        "hit_at_one": round(float(result["avg_hit_at_one"]), 5),
        "perr": round(float(result["avg_perr"]), 5),
        "map": round(float(result["map"]), 5),
        "gap": round(float(result["gap"]), 5),
        "loss": round(float(result["avg_loss"]), 5),
        "videos_per_sec": round(examples / max(time.time() - start, 1e-9), 1),
    }
    logging.info("%s step %d | Avg_Hit@1: %.5f | Avg_PERR: %.5f | MAP: %.5f | GAP: %.5f | "
                 "Avg_Loss: %.5f", os.path.basename(checkpoint), step, record["hit_at_one"],
                 record["perr"], record["map"], record["gap"], record["loss"])
    summary = tf.compat.v1.Summary(value=[
        tf.compat.v1.Summary.Value(tag=f"eval/{k}", simple_value=record[k])
        for k in ("hit_at_one", "perr", "map", "gap", "loss")])
    writer.add_summary(summary, summary_step(checkpoint, step, train_dir))
    writer.flush()
    print(json.dumps(record), flush=True)
    return record


def summary_step(checkpoint: str, global_step: int, train_dir: str) -> int:
    """The TensorBoard step of an evaluation: the checkpoint's global step; for an
    averaged checkpoint (global step 0, not model.ckpt-0) the last step in its name
    (``avg_c100h800_150010_220010.ckpt-0`` -> 220010); for an ensemble, the newest
    training step of train_dir: its points do not all pile up at step 0."""
    name = os.path.basename(checkpoint)
    if global_step or name == f"{checkpoint_utils.TRAIN_BASENAME}-0":
        return global_step
    stem = checkpoint_utils.strip_checkpoint_suffix(name).rsplit("-", 1)[0]
    steps = re.findall(r"(?<![ch\d])\d+", stem)  # not the c100/h800 of a model's sizes
    if steps and "ensemble" not in stem:
        return int(steps[-1])
    latest = checkpoint_utils.latest_checkpoint(train_dir)
    return checkpoint_utils.step_of(latest) if latest else 0


def run_config(train_dir: str, wait: bool) -> ModelConfig:
    """The model configuration of ``train_dir``, checked against the given flags.

    With ``wait`` (the waiting loop) a missing model_flags.json is waited for:
    eval.py may be started before train.py has written it.
    """
    stored = model_config.read_json(train_dir)
    while stored is None and wait:
        logging.log_first_n(logging.INFO, "Waiting for train.py to write %s.", 1,
                            model_config.json_path(train_dir))
        time.sleep(min(app_flags.value("eval_interval_secs"), 5))
        stored = model_config.read_json(train_dir)
    if stored is None:
        raise UsageError(f"{model_config.json_path(train_dir)} not found: is --train_dir the "
                         "directory train.py wrote?")
    config = app_flags.resolve_model_config(stored)
    model_graph.validate(config)
    return config


def evaluate() -> None:
    train_dir = app_flags.value("train_dir")
    settings = eval_settings()
    explicit = requested_checkpoint(train_dir)
    config = run_config(train_dir, wait=not (explicit or app_flags.value("run_once")))
    files = None
    if not settings.create_meta_only:
        if not app_flags.value("eval_data_pattern"):
            raise UsageError("--eval_data_pattern is required (or pass --create_meta_only)")
        files = readers.resolve_data_files(app_flags.value("eval_data_pattern"),
                                           flag_name="eval_data_pattern")
    eg = build_eval_graph(config, settings, files)
    eg.graph.finalize()
    writer = tf.compat.v1.summary.FileWriter(os.path.join(train_dir, "eval"),
                                             filename_suffix=f".{os.getpid()}")
    with tf.compat.v1.Session(graph=eg.graph) as sess:
        if explicit or app_flags.value("run_once"):
            checkpoint = explicit or checkpoint_utils.latest_checkpoint(train_dir)
            if checkpoint is None:
                raise UsageError(f"no model.ckpt-* checkpoint in --train_dir={train_dir}")
            evaluate_checkpoint(sess, eg, config, settings, train_dir, checkpoint, writer)
        else:
            _wait_and_evaluate(sess, eg, config, settings, train_dir, writer)
    writer.close()


def _wait_and_evaluate(sess, eg: EvalGraph, config: ModelConfig, settings: EvalSettings,
                       train_dir: str, writer) -> None:
    """Evaluates each new model.ckpt-N once, oldest first, sleeping between looks."""
    done: Set[str] = set()
    while True:
        pending = [path for _, path in checkpoint_utils.list_checkpoints(
            os.path.join(train_dir, "model.ckpt")) if path not in done]
        if not pending:
            logging.info("No new checkpoint in %s; sleeping %d s.", train_dir,
                         app_flags.value("eval_interval_secs"))
            time.sleep(app_flags.value("eval_interval_secs"))
            continue
        checkpoint = pending[0]
        done.add(checkpoint)
        try:
            evaluate_checkpoint(sess, eg, config, settings, train_dir, checkpoint, writer)
        except (tf.errors.OpError, ValueError, UsageError) as e:
            # Deleted (or being deleted) since the listing: Saver.restore raises
            # ValueError for a missing index, NotFoundError for missing data, and
            # reading its variable list fails with a UsageError.
            if checkpoint_utils.checkpoint_exists(checkpoint) and tf.io.gfile.glob(
                    checkpoint + ".data-*"):
                raise
            logging.warning("Skipping %s, which disappeared: %s", checkpoint,
                            checkpoint_utils.describe_error(e))


def main() -> None:
    evaluate()


if __name__ == "__main__":
    cli.run(main, *app_flags.runner_hooks(app_flags.EVAL))
