"""Trains a model (or an ensemble of models in one graph) on YouTube-8M TFRecords.

    python train.py --train_data_pattern=DATA/frame/train*.tfrecord --train_dir=RUN \\
        --frame_features --feature_names=rgb,audio --feature_sizes=1024,128 ...

Checkpoints ``RUN/model.ckpt-<step>`` are written on steps divisible by 10
(the first such step, then every --export_model_steps, every
--save_checkpoint_secs, and at the end), all kept, and a rerun resumes from
the newest one with the graph the current flags describe.
"""
import math
import os
import signal
import time
from dataclasses import dataclass
from typing import List

import tensorflow as tf
from absl import logging

import app_flags
import checkpoint_utils
import cli
import eval_util
import fp16_training
import model_config
import model_graph
import readers
from errors import UsageError

CHECK_EVERY_STEPS = 10


@dataclass
class TrainGraph:
    graph: tf.Graph
    global_step: tf.Variable
    step_after_train: tf.Tensor
    train_op: tf.Operation
    label_loss: tf.Tensor
    learning_rate: tf.Tensor
    predictions: tf.Tensor
    labels: tf.Tensor
    saver: tf.compat.v1.train.Saver
    init_op: tf.Operation
    sync_masters: tf.Operation


def find_optimizer(name: str):
    cls = getattr(tf.compat.v1.train, name, None)
    if not (isinstance(cls, type) and issubclass(cls, tf.compat.v1.train.Optimizer)):
        choices = sorted(n for n, c in vars(tf.compat.v1.train).items()
                         if isinstance(c, type) and issubclass(c, tf.compat.v1.train.Optimizer)
                         and n.endswith("Optimizer") and n != "Optimizer")
        raise UsageError(f"--optimizer={name} is not an optimizer; choices: {', '.join(choices)}")
    return cls


def tower_devices() -> List[str | None]:
    """One device per tower: the first --num_gpu GPUs, or the default device."""
    gpus = tf.config.list_physical_devices("GPU")
    count = min(app_flags.value("num_gpu"), len(gpus))
    if count <= 1:
        return [None]
    return [f"/gpu:{i}" for i in range(count)]


def learning_rate_at(global_step: tf.Tensor, examples_per_step: int) -> tf.Tensor:
    """Staircase decay: base * decay^floor(examples_seen / decay_examples)."""
    examples = tf.cast(global_step, tf.float64) * float(examples_per_step)
    exponent = tf.floor(examples / app_flags.value("learning_rate_decay_examples"))
    rate = app_flags.value("base_learning_rate") * tf.pow(
        tf.constant(app_flags.value("learning_rate_decay"), tf.float64), exponent)
    return tf.cast(rate, tf.float32)


def _split(tensor: tf.Tensor, count: int) -> List[tf.Tensor]:
    """Splits the batch into ``count`` parts; a short last batch leaves later parts small."""
    if count == 1:
        return [tensor]
    size = (tf.shape(tensor)[0] + count - 1) // count
    return [tensor[i * size:(i + 1) * size] for i in range(count)]


def _average_gradients(tower_grads, tower_weights):
    """Per-variable float32 gradient averaged over towers, weighted by their examples."""
    averaged = []
    for grads_and_vars in zip(*tower_grads, strict=True):
        var = grads_and_vars[0][1]
        grads = [tf.cast(g, tf.float32) * w for (g, _), w in zip(grads_and_vars, tower_weights,
                                                                  strict=True) if g is not None]
        if not grads:
            continue
        averaged.append((tf.add_n(grads), var))
    return averaged


def _clip(grads_and_vars, max_norm: float):
    """Per-tensor clip_by_norm of the (float32) gradients; max_norm <= 0 disables it."""
    if max_norm <= 0:
        return grads_and_vars
    return [(tf.clip_by_norm(g, max_norm), v) for g, v in grads_and_vars]


def build_training_graph(config: model_config.ModelConfig, files: List[str]) -> TrainGraph:
    devices = tower_devices()
    batch_size = app_flags.value("batch_size")
    graph = tf.Graph()
    with graph.as_default():
        seed = app_flags.value("random_seed")
        if seed is not None:
            tf.compat.v1.set_random_seed(seed)
        global_step = model_graph.create_global_step()
        reader = readers.get_reader(config.frame_features, config.feature_names,
                                    config.feature_sizes, config.num_classes,
                                    app_flags.value("max_frames"))
        dataset = readers.build_dataset(
            reader, files, batch_size * len(devices), shuffle=True,
            num_epochs=app_flags.value("num_epochs"), num_readers=app_flags.value("num_readers"),
            skip_corrupt_records=app_flags.value("skip_corrupt_records"), seed=seed)
        batch = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
        learning_rate = learning_rate_at(global_step, batch_size * len(devices))
        optimizer = find_optimizer(app_flags.value("optimizer"))(learning_rate)
        label_loss_fn = model_graph.find_loss(config.label_loss)

        labels = tf.cast(batch["labels"], tf.float32)
        total = tf.cast(tf.shape(labels)[0], tf.float32)
        inputs = zip(_split(batch["video_matrix"], len(devices)),
                     _split(batch["num_frames"], len(devices)),
                     _split(labels, len(devices)), strict=True)
        tower_grads, tower_weights, tower_losses, tower_predictions = [], [], [], []
        update_ops = []
        for index, (device, (video, frames, tower_labels)) in enumerate(zip(devices, inputs,
                                                                             strict=True)):
            with tf.device(device):
                outputs = model_graph.build_predictions(video, frames, config, is_training=True,
                                                        reuse=index > 0)
                count = tf.cast(tf.shape(tower_labels)[0], tf.float32)
                label_loss = model_graph.label_loss(label_loss_fn, outputs.predictions,
                                                  tower_labels)
                label_loss = tf.where(count > 0, label_loss, 0.0)
                loss = label_loss + app_flags.value("regularization_penalty") * \
                    outputs.regularization_loss
                if index == 0:
                    update_ops = outputs.update_ops
                    variables = tf.compat.v1.trainable_variables()
                tower_grads.append(optimizer.compute_gradients(loss, variables))
                tower_weights.append(count / total)
                tower_losses.append(label_loss * count / total)
                tower_predictions.append(outputs.predictions)
        grads = _clip(_average_gradients(tower_grads, tower_weights),
                      app_flags.value("clip_gradient_norm"))
        apply_op, sync_masters = fp16_training.apply_gradients(optimizer, grads, global_step)
        train_op = tf.group(apply_op, *update_ops)
        with tf.control_dependencies([train_op]):
            step_after_train = global_step.read_value()
        saver = tf.compat.v1.train.Saver(max_to_keep=None, save_relative_paths=True)
        init_op = tf.group(tf.compat.v1.global_variables_initializer(),
                           tf.compat.v1.local_variables_initializer())
    return TrainGraph(graph=graph, global_step=global_step, step_after_train=step_after_train,
                      train_op=train_op, label_loss=tf.add_n(tower_losses) if len(tower_losses) > 1
                      else tower_losses[0], learning_rate=learning_rate,
                      predictions=tf.concat(tower_predictions, 0) if len(tower_predictions) > 1
                      else tower_predictions[0], labels=labels, saver=saver, init_op=init_op,
                      sync_masters=sync_masters)


class CheckpointSchedule:
    """When to save: see the module docstring (the README's step numbers depend on it)."""

    def __init__(self, last_saved_step: int | None):
        self.last_step = last_saved_step
        self.last_time = time.time()

    def due(self, step: int) -> bool:
        if step % CHECK_EVERY_STEPS:
            return False
        if self.last_step is None:
            return True
        if step - self.last_step >= app_flags.value("export_model_steps"):
            return True
        return time.time() - self.last_time >= app_flags.value("save_checkpoint_secs")

    def saved(self, step: int) -> None:
        self.last_step = step
        self.last_time = time.time()


class _StopRequest:
    """Turns SIGTERM (cloud preemption) into a clean stop after the current step."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint and stopping.")
        self.requested = True


def _summary(writer, step: int, values: dict) -> None:
    summary = tf.compat.v1.Summary(value=[
        tf.compat.v1.Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()])
    writer.add_summary(summary, step)


def resume_checkpoint(train_dir: str) -> str | None:
    """--checkpoint_file if given (relative to train_dir or absolute), else the newest."""
    name = app_flags.value("checkpoint_file")
    if name:
        path = name if "://" in name or os.path.isabs(name) else os.path.join(train_dir, name)
        if path.endswith(".index"):
            path = path[:-len(".index")]
        if not checkpoint_utils.checkpoint_exists(path):
            raise UsageError(f"--checkpoint_file={name}: checkpoint {path} not found")
        return path
    return checkpoint_utils.latest_checkpoint(train_dir)


def restore_saver(tg: TrainGraph, checkpoint: str) -> tf.compat.v1.train.Saver:
    """A saver over the graph's variables that ``checkpoint`` holds.

    Every model variable must be there with its shape; missing training state
    (optimizer slots, float32 masters: e.g. resuming from an averaged
    checkpoint) starts fresh, with a warning.
    """
    stored = checkpoint_utils.open_checkpoint(checkpoint).get_variable_to_shape_map()
    variables = tg.graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
    names = [v.op.name for v in variables]
    hint = "use the flags it was trained with, or --start_new_model"
    for var in variables:
        name = var.op.name
        if name in stored and list(stored[name]) != var.shape.as_list():
            raise UsageError(f"checkpoint {checkpoint} has {name} with shape {stored[name]} but "
                             f"the flags give {var.shape.as_list()}; {hint}")
    missing = [n for n in names if n not in stored]
    missing_model = [n for n in missing if checkpoint_utils.is_model_variable(n, names)]
    if missing_model:
        raise UsageError(f"checkpoint {checkpoint} lacks {len(missing_model)} variables of the "
                         f"graph the flags describe (e.g. {missing_model[0]}); {hint}")
    if missing:
        logging.warning("%s has no training state for %d variables (e.g. %s); it starts fresh.",
                        checkpoint, len(missing), missing[0])
    with tg.graph.as_default():
        return tf.compat.v1.train.Saver([v for v in variables if v.op.name in stored])


def train() -> None:
    train_dir = app_flags.value("train_dir")
    config = model_config.from_flags()
    model_graph.find_model_class(config.model)
    model_graph.find_loss(config.label_loss)
    find_optimizer(app_flags.value("optimizer"))
    app_flags.ensemble_members()
    if not app_flags.value("train_data_pattern"):
        raise UsageError("--train_data_pattern is required")
    files = readers.resolve_data_files(app_flags.value("train_data_pattern"),
                                       app_flags.value("exclude_data_pattern"),
                                       flag_name="train_data_pattern")
    if app_flags.value("start_new_model") and tf.io.gfile.exists(train_dir):
        logging.info("--start_new_model: removing %s", train_dir)
        tf.io.gfile.rmtree(train_dir)
    model_config.check_or_write(train_dir, config)
    logging.info("Training on %d files: %s%s", len(files), ", ".join(files[:3]),
                 " ..." if len(files) > 3 else "")

    tg = build_training_graph(config, files)
    checkpoint = resume_checkpoint(train_dir)
    session_config = tf.compat.v1.ConfigProto(
        allow_soft_placement=True, log_device_placement=app_flags.value("log_device_placement"))
    stop = _StopRequest()
    with tf.compat.v1.Session(graph=tg.graph, config=session_config) as sess:
        sess.run(tg.init_op)
        if checkpoint:
            restore_saver(tg, checkpoint).restore(sess, checkpoint)
            sess.run(tg.sync_masters)
            logging.info("Resumed from %s", checkpoint)
        step = int(sess.run(tg.global_step))
        tg.graph.finalize()
        _train_loop(sess, tg, train_dir, step, checkpoint is not None, stop)


def _save(sess, tg: TrainGraph, train_dir: str, step: int, schedule: CheckpointSchedule) -> None:
    path = checkpoint_utils.save_atomically(
        tg.saver, sess, os.path.join(train_dir, "model.ckpt"), global_step=step,
        record_in_state=True)
    schedule.saved(step)
    logging.info("Saved checkpoint %s", path)


def _train_loop(sess, tg: TrainGraph, train_dir: str, step: int, resumed: bool,
                stop: _StopRequest) -> None:
    max_steps = app_flags.value("max_steps")
    batch_size = app_flags.value("batch_size")
    schedule = CheckpointSchedule(step if resumed else None)
    writer = tf.compat.v1.summary.FileWriter(train_dir)
    start_time, start_step = time.time(), step
    examples_since = 0
    last_log = time.time()
    try:
        while not stop.requested and (max_steps is None or step < max_steps):
            log_now = (step + 1) % CHECK_EVERY_STEPS == 0
            fetches = [tg.step_after_train, tg.label_loss]
            if log_now:
                fetches += [tg.predictions, tg.labels, tg.learning_rate]
            try:
                values = sess.run(fetches)
            except tf.errors.OutOfRangeError:
                logging.info("Done: %d epochs of training data read.",
                             app_flags.value("num_epochs"))
                break
            step, loss = int(values[0]), float(values[1])
            examples_since += batch_size
            if not math.isfinite(loss):
                last = checkpoint_utils.latest_checkpoint(train_dir)
                raise UsageError(
                    f"the loss became {loss} at step {step}; stopped without saving. "
                    f"Last good checkpoint: {last or 'none'}. Lower --base_learning_rate "
                    "or check the data.")
            if log_now:
                predictions, labels, rate = values[2], values[3], values[4]
                elapsed = max(time.time() - last_log, 1e-9)
                metrics = {
                    "hit_at_one": eval_util.calculate_hit_at_one(predictions, labels),
                    "perr": eval_util.calculate_precision_at_equal_recall_rate(
                        predictions, labels),
                    "gap": eval_util.calculate_gap(predictions, labels),
                }
                speed = examples_since / elapsed
                logging.info(
                    "step %d | loss %.4f | %.1f examples/sec | Hit@1 %.3f PERR %.3f GAP %.3f "
                    "| lr %.3g%s", step, loss, speed, metrics["hit_at_one"], metrics["perr"],
                    metrics["gap"], rate, f" / {max_steps}" if max_steps else "")
                _summary(writer, step, {"loss": loss, "learning_rate": rate,
                                        "examples_per_second": speed,
                                        **{f"train/{k}": v for k, v in metrics.items()}})
                examples_since, last_log = 0, time.time()
            if schedule.due(step):
                _save(sess, tg, train_dir, step, schedule)
    finally:
        writer.close()
    if schedule.last_step != step:
        _save(sess, tg, train_dir, step, schedule)
    elapsed = time.time() - start_time
    logging.info("Trained %d steps in %.1f s; final step %d.", step - start_step, elapsed, step)


def main() -> None:
    train()


if __name__ == "__main__":
    cli.run(main, app_flags.TRAIN)
