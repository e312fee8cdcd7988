"""Trains a model (or an ensemble of models in one graph) on YouTube-8M TFRecords.

    python train.py --train_data_pattern=DATA/frame/train*.tfrecord --train_dir=RUN \\
        --frame_features --feature_names=rgb,audio --feature_sizes=1024,128 ...

Checkpoints ``RUN/model.ckpt-<step>`` are written on steps divisible by 10
(the first such step, then every --export_model_steps, every
--save_checkpoint_secs, and at the end), all kept, and a rerun resumes from
the newest one with the graph the current flags describe.

With ``--num_gpu=N`` each step's batch of N x --batch_size videos is split
over N towers sharing the variables (kept on the CPU), whose gradients are
averaged, weighted by their examples.  With TF_CONFIG the process is one task
of a between-graph replicated cluster (see cluster.py).
"""
import quiet_startup  # noqa: F401  (first: before TensorFlow is imported)

import contextlib
import math
import os
import signal
import time
from dataclasses import dataclass
from typing import Callable, List, Tuple

import tensorflow as tf
from absl import logging

import app_flags
import checkpoint_utils
import cli
import cluster
import eval_util
import fp16_training
import input_pipeline
import model_config
import model_graph
import performance
import readers
import registry
import run_lock
import serving_export
import teacher
from errors import UsageError
from model_config import ModelConfig, TrainingConfig

CHECK_EVERY_STEPS = 10
# Ops that create variables: the towers keep them on the CPU, shared by all.
_VARIABLE_OPS = frozenset({"VarHandleOp", "VariableV2", "Variable", "AutoReloadVariable"})


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
    examples_per_step: int
    config: ModelConfig
    training: TrainingConfig
    files: List[str]  # the training files, named when they hold no records
    weights_finite: tf.Tensor  # every float variable finite: checked before each save
    sync: cluster.SyncOps | None = None  # distributed training only


def tower_devices(training: TrainingConfig) -> List[str | None]:
    """One device per tower: the first --num_gpu GPUs (CPUs with --cpu_towers), or the default.

    A machine with fewer GPUs than --num_gpu trains with as many towers as it
    has GPUs (one on a CPU-only machine) and says so.
    """
    requested = training.num_gpu
    if training.cpu_towers:
        return [f"/cpu:{i}" for i in range(requested)] if requested > 1 else [None]
    gpus = len(tf.config.list_physical_devices("GPU"))
    count = max(1, min(requested, gpus))
    if count < requested:
        logging.warning("--num_gpu=%d but %d GPUs are visible: training with %d tower%s.",
                        requested, gpus, count, "s" if count > 1 else "")
    if count == 1:
        return [None]
    return [f"/gpu:{i}" for i in range(count)]


def _tower_scope(device: str | None):
    """Ops of a tower on ``device``, its variables on the CPU (shared by every tower)."""
    if device is None:
        return contextlib.nullcontext()
    return tf.compat.v1.device(
        lambda op: "/device:CPU:0" if op.type in _VARIABLE_OPS else device)


def learning_rate_at(global_step: tf.Tensor, examples_per_step: int,
                     training: TrainingConfig) -> tf.Tensor:
    """Staircase decay: base * decay^floor(examples_seen / decay_examples)."""
    examples = tf.cast(global_step, tf.float64) * float(examples_per_step)
    exponent = tf.floor(examples / training.learning_rate_decay_examples)
    rate = training.base_learning_rate * tf.pow(
        tf.constant(training.learning_rate_decay, tf.float64), exponent)
    return tf.cast(rate, tf.float32)


def _split(tensor: tf.Tensor, count: int) -> List[tf.Tensor]:
    """Splits the batch into ``count`` parts; a short last batch leaves later parts small."""
    if count == 1:
        return [tensor]
    size = (tf.shape(tensor)[0] + count - 1) // count
    return [tensor[i * size:(i + 1) * size] for i in range(count)]


def _average_gradients(tower_grads, tower_weights):
    """Per-variable float32 gradient averaged over towers, weighted by their examples.

    A tower left empty by a short last batch has weight 0 and may have NaN
    gradients (batch norm of no rows): multiply_no_nan drops them.  A single
    tower's weight is 1: its gradients pass unchanged (no pass over them).
    """
    if len(tower_grads) == 1:
        return [(tf.cast(g, tf.float32), v) for g, v in tower_grads[0] if g is not None]
    averaged = []
    for grads_and_vars in zip(*tower_grads, strict=True):
        var = grads_and_vars[0][1]
        grads = [tf.math.multiply_no_nan(tf.cast(g, tf.float32), w)
                 for (g, _), w in zip(grads_and_vars, tower_weights, strict=True)
                 if g is not None]
        if not grads:
            continue
        averaged.append((tf.add_n(grads), var))
    return averaged


def _clip(grads_and_vars, max_norm: float):
    """Per-tensor clip by norm of the (float32) gradients; max_norm <= 0 disables it.

    g * (max_norm / max(|g|, max_norm)), as tf.clip_by_norm, with |g| from one
    fused reduction (l2_loss) and one multiply: two passes over each gradient
    instead of four (the gradients are as large as the model).
    """
    if max_norm <= 0:
        return grads_and_vars
    return [(g * (max_norm / tf.maximum(tf.sqrt(2.0 * tf.nn.l2_loss(g)), max_norm)), v)
            for g, v in grads_and_vars]


def build_training_graph(config: ModelConfig, training: TrainingConfig, files: List[str],
                         task: cluster.Task = cluster.Task(),
                         dataset_transform: Callable[[tf.data.Dataset], tf.data.Dataset]
                         | None = None) -> TrainGraph:
    """The training graph; in a cluster, variables on the ps tasks and the rest on ``task``.

    ``dataset_transform`` (benchmarks) rewrites the input dataset, e.g. to
    repeat one cached batch and time the step without the input pipeline.
    """
    devices = tower_devices(training)
    batch_size = training.batch_size
    graph = tf.Graph()
    with graph.as_default(), task.graph_device_scope(graph):
        seed = training.random_seed
        if seed is not None:
            tf.compat.v1.set_random_seed(seed)
        global_step = checkpoint_utils.create_global_step()
        with task.input_device_scope():
            dataset = input_pipeline.dataset_for(
                config.data, files, batch_size * len(devices), shuffle=True,
                num_epochs=training.num_epochs, require_labels=True, seed=seed,
                num_readers=training.num_readers,
                skip_corrupt_records=training.skip_corrupt_records,
                teacher_dir=training.teacher_predictions)
            if dataset_transform is not None:
                dataset = dataset_transform(dataset)
            batch = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
        learning_rate = learning_rate_at(global_step, batch_size * len(devices), training)
        optimizer = performance.wrap_optimizer(
            registry.find_optimizer(training.optimizer)(learning_rate), training.mixed_precision)
        label_loss_fn = registry.find_loss(config.label_loss)

        labels = tf.cast(batch["labels"], tf.float32)
        total = tf.cast(tf.shape(labels)[0], tf.float32)
        teachers = (_split(batch[teacher.TEACHER_KEY], len(devices))
                    if training.teacher_predictions else [None] * len(devices))
        inputs = zip(_split(batch["video_matrix"], len(devices)),
                     _split(batch["num_frames"], len(devices)),
                     _split(labels, len(devices)), teachers, strict=True)
        tower_grads, tower_weights, tower_losses, tower_predictions = [], [], [], []
        tower_inputs = []
        for index, (device, (video, frames, tower_labels, tower_teacher)) in enumerate(
                zip(devices, inputs, strict=True)):
            with _tower_scope(device):
                outputs = model_graph.build_predictions(video, frames, config, is_training=True,
                                                        reuse=index > 0)
                if index == 0:
                    # Towers that reuse the variables add no regularisation losses of their
                    # own; each tower's loss has the full penalty, so the weighted average of
                    # the gradients counts it once.  Batch-norm statistics update from tower 0.
                    regularization = outputs.regularization_loss
                    update_ops = outputs.update_ops
                    variables = tf.compat.v1.trainable_variables()
                count = tf.cast(tf.shape(tower_labels)[0], tf.float32)
                label_loss = model_graph.training_loss(
                    label_loss_fn, outputs, tower_labels, tower_teacher,
                    training.distillation_weight, training.distillation_temperature)
                label_loss = tf.where(count > 0, label_loss, 0.0)  # an empty last-batch tower
                loss = label_loss + training.regularization_penalty * regularization
                tower_grads.append(optimizer.compute_gradients(loss, variables))
                tower_weights.append(count / total)
                tower_losses.append(label_loss * count / total)
                tower_predictions.append(outputs.predictions)
                tower_inputs.append(outputs.model_input)
        grads = _clip(_average_gradients(tower_grads, tower_weights),
                      training.clip_gradient_norm)
        apply_op, sync_masters = fp16_training.apply_gradients(optimizer, grads, global_step)
        train_op = tf.group(apply_op, *update_ops)
        with tf.control_dependencies([train_op]):
            step_after_train = global_step.read_value()
        total_loss = tf.add_n(tower_losses)
        predictions = tf.concat(tower_predictions, 0)
        model_graph.add_2018_collections(batch["video_matrix"], tf.concat(tower_inputs, 0),
                                         batch["num_frames"], predictions, labels, total_loss)
        saver = tf.compat.v1.train.Saver(max_to_keep=None, save_relative_paths=True)
        weights_finite = tf.reduce_all([
            tf.reduce_all(tf.math.is_finite(v)) for v in tf.compat.v1.global_variables()
            if v.dtype.base_dtype.is_floating])
        sync = cluster.build_sync_ops() if task.distributed else None
        init_op = tf.group(tf.compat.v1.global_variables_initializer(),
                           tf.compat.v1.local_variables_initializer())
    return TrainGraph(graph=graph, global_step=global_step, step_after_train=step_after_train,
                      train_op=train_op, label_loss=total_loss,
                      learning_rate=learning_rate, predictions=predictions,
                      labels=labels, saver=saver, init_op=init_op,
                      sync_masters=sync_masters, examples_per_step=batch_size * len(devices),
                      config=config, training=training, files=list(files),
                      weights_finite=weights_finite, sync=sync)


class CheckpointSchedule:
    """When to save: see the module docstring (the README's step numbers depend on it)."""

    def __init__(self, last_saved_step: int | None, export_model_steps: int,
                 save_checkpoint_secs: int):
        self.last_step = last_saved_step
        self.last_time = time.time()
        self.every_steps = export_model_steps
        self.every_secs = save_checkpoint_secs

    def due(self, step: int, previous_step: int) -> bool:
        """Checked when the step passes a multiple of 10: every such step in one process;
        in a cluster, where the other tasks' steps count too, the first step past it."""
        if step // CHECK_EVERY_STEPS == previous_step // CHECK_EVERY_STEPS:
            return False
        if self.last_step is None:
            return True
        if step - self.last_step >= self.every_steps:
            return True
        return time.time() - self.last_time >= self.every_secs

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


def resume_checkpoint(train_dir: str, name: str) -> str | None:
    """Checkpoint ``name`` (--checkpoint_file: relative to train_dir or absolute) if given,
    else the newest."""
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
    variables = tg.graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
    present = checkpoint_utils.restorable_variables(
        checkpoint, variables, "use the flags it was trained with, or --start_new_model")
    present_names = {v.op.name for v in present}
    missing = [v.op.name for v in variables if v.op.name not in present_names]
    if missing:
        logging.warning("%s has no training state for %d variables (e.g. %s); it starts fresh.",
                        checkpoint, len(missing), missing[0])
    with tg.graph.as_default():
        return tf.compat.v1.train.Saver(present)


def _session_config(training: TrainingConfig) -> tf.compat.v1.ConfigProto:
    config = tf.compat.v1.ConfigProto(
        allow_soft_placement=True, log_device_placement=training.log_device_placement)
    if training.cpu_towers:
        config.device_count["CPU"] = max(1, training.num_gpu)
    return performance.session_config(training, config)


def configure(train_dir: str) -> Tuple[ModelConfig, TrainingConfig]:
    """The run's configuration, validated: the flags, or a resumed run's
    model_flags.json with the given flags (model flags must agree with it;
    training flags given replace its training settings)."""
    stored = None if app_flags.value("start_new_model") else model_config.read_json(train_dir)
    config = app_flags.resolve_model_config(stored)
    training = app_flags.training_config(stored.training if stored else None)
    model_graph.validate(config)
    training.validate()
    registry.find_optimizer(training.optimizer)
    return config, training


def train() -> None:
    task = cluster.from_environment()
    if task.is_evaluator:
        logging.info("TF_CONFIG makes this an evaluator task, which train.py leaves idle: run "
                     "eval.py (without --run_once) to evaluate the checkpoints as they appear.")
        return
    if task.is_ps:
        training = app_flags.training_config()
        training.validate()
        task.start_server(_session_config(training)).join()  # serves the variables until killed
        return
    train_dir = app_flags.value("train_dir")
    stop = _StopRequest()  # from here on, SIGTERM leads to a final checkpoint
    config, training = configure(train_dir)
    if not app_flags.value("train_data_pattern"):
        raise UsageError("--train_data_pattern is required")
    files = task.shard_files(readers.resolve_data_files(
        app_flags.value("train_data_pattern"), app_flags.value("exclude_data_pattern"),
        flag_name="train_data_pattern"))
    if training.teacher_predictions:
        teacher.check_shards(training.teacher_predictions, files, "teacher_predictions")
    tg = build_training_graph(config, training, files, task)
    logging.info("Training on %d files: %s%s", len(files), ", ".join(files[:3]),
                 " ..." if len(files) > 3 else "")
    if not task.is_chief:
        _run(tg, task, train_dir, None, stop)
        return
    checkpoint_utils.check_writable(train_dir, "train_dir", is_directory=True)
    with run_lock.RunLock(train_dir):
        if app_flags.value("start_new_model"):
            _clear(train_dir)
        checkpoint_utils.repair_checkpoints(train_dir)  # a save cut short by kill -9
        model_config.write_json(train_dir, config, training)
        _run(tg, task, train_dir, resume_checkpoint(train_dir, app_flags.value("checkpoint_file")),
             stop)


def _clear(train_dir: str) -> None:
    """--start_new_model: empties train_dir (but for this process's lock)."""
    logging.info("--start_new_model: removing the contents of %s", train_dir)
    for name in tf.io.gfile.listdir(train_dir):
        path = os.path.join(train_dir, name.rstrip("/"))
        if name == run_lock.LOCK_NAME:
            continue
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        else:
            tf.io.gfile.remove(path)


def _run(tg: TrainGraph, task: cluster.Task, train_dir: str, checkpoint: str | None,
         stop: _StopRequest) -> None:
    """Trains in a session: this task's share of the steps; the chief also saves."""
    training = tg.training
    target = task.start_server(_session_config(training)).target if task.distributed else ""
    start_time = time.time()
    with tf.compat.v1.Session(target, graph=tg.graph,
                              config=task.session_config(_session_config(training))) as sess:
        if task.is_chief:
            _initialise(sess, tg, task, checkpoint)
        else:
            cluster.wait_for_chief(sess, tg.sync)
        tg.graph.finalize()
        schedule = None
        if task.is_chief:
            schedule = CheckpointSchedule(int(sess.run(tg.global_step)) if checkpoint else None,
                                          training.export_model_steps,
                                          training.save_checkpoint_secs)
        steps_run, step = _train_loop(sess, tg, train_dir, schedule, stop)
        if schedule:
            step = _finish_as_chief(sess, tg, train_dir, schedule, stop, task)
            if stop.requested:
                logging.warning("Stopped by SIGTERM at step %d, saved as %s; the same command "
                                "resumes from there.", step,
                                os.path.join(train_dir, f"model.ckpt-{step}"))
        else:
            sess.run(tg.sync.mark_worker_done)
    logging.info("This task trained %d steps in %.1f s; global step %d.", steps_run,
                 time.time() - start_time, step)


def _initialise(sess, tg: TrainGraph, task: cluster.Task, checkpoint: str | None) -> None:
    """The chief's start: fresh variables, then the checkpoint's values if resuming."""
    sess.run(tg.init_op)
    if checkpoint:
        with task.graph_device_scope(tg.graph):  # the restore ops run on the chief
            saver = restore_saver(tg, checkpoint)
        saver.restore(sess, checkpoint)
        sess.run(tg.sync_masters)
        logging.info("Resumed from %s", checkpoint)
    if tg.sync:
        sess.run(tg.sync.mark_chief_ready)


def _save(sess, tg: TrainGraph, train_dir: str, schedule: CheckpointSchedule) -> int:
    """Saves model.ckpt-<global step> (read now: in a cluster the workers move it too)."""
    step, finite = sess.run([tg.global_step, tg.weights_finite])
    if not finite:
        raise _diverged(f"the weights became NaN or Inf by step {step}", train_dir)
    path = checkpoint_utils.save_atomically(
        tg.saver, sess, os.path.join(train_dir, "model.ckpt"), global_step=step,
        record_in_state=True)
    schedule.saved(step)
    logging.info("Saved checkpoint %s", path)
    if tg.training.export_saved_model:
        export_dir = serving_export.export_saved_model(
            path, tg.config, os.path.join(train_dir, "export", f"step_{step}"),
            default_signature=tg.training.saved_model_signature)
        logging.info("Exported the SavedModel %s", export_dir)
    return step


def _steps_left(step: int, max_steps: int | None, steps_per_sec: float) -> str:
    """`` / 500000, 2h05m left`` for the periodic log line when --max_steps is set."""
    if not max_steps:
        return ""
    seconds = max(max_steps - step, 0) / max(steps_per_sec, 1e-9)
    hours, rest = divmod(int(seconds), 3600)
    left = f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
    return f" / {max_steps}, {left} left"


def _diverged(what: str, train_dir: str) -> UsageError:
    """The error that stops a run gone NaN/Inf, before anything non-finite is saved."""
    last = checkpoint_utils.latest_checkpoint(train_dir)
    return UsageError(f"{what}; stopped without saving. Last good checkpoint: "
                      f"{last or 'none'}. Lower --base_learning_rate or check the data.")


def _train_loop(sess, tg: TrainGraph, train_dir: str, schedule: CheckpointSchedule | None,
                stop: _StopRequest) -> Tuple[int, int]:
    """Trains until --max_steps, the end of the data or SIGTERM: (steps run here, global step).

    Only the chief (with a ``schedule``) writes checkpoints and summaries.  Data
    that ends before the first step (the files hold no records) is an error.
    """
    max_steps = tg.training.max_steps
    # The pid in the name: two processes never append to one event file.
    writer = (tf.compat.v1.summary.FileWriter(train_dir, filename_suffix=f".{os.getpid()}")
              if schedule else None)
    step = int(sess.run(tg.global_step))
    steps_run = examples_since = 0
    last_log = time.time()
    try:
        while not stop.requested and (max_steps is None or step < max_steps):
            log_now = (steps_run + 1) % CHECK_EVERY_STEPS == 0
            fetches = [tg.step_after_train, tg.label_loss]
            if log_now:
                fetches += [tg.predictions, tg.labels, tg.learning_rate]
            try:
                values = sess.run(fetches)
            except tf.errors.OutOfRangeError:
                if steps_run == 0:
                    raise UsageError(readers.no_records_message(
                        tg.files, "train_data_pattern")) from None
                logging.info("Done: %d epochs of training data read.", tg.training.num_epochs)
                break
            previous_step, step, loss = step, int(values[0]), float(values[1])
            steps_run += 1
            examples_since += tg.examples_per_step
            if not math.isfinite(loss):
                raise _diverged(f"the loss became {loss} at step {step}", train_dir)
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
                    metrics["gap"], rate,
                    _steps_left(step, max_steps, speed / tg.examples_per_step))
                if writer:
                    _summary(writer, step, {"loss": loss, "learning_rate": rate,
                                            "examples_per_second": speed,
                                            **{f"train/{k}": v for k, v in metrics.items()}})
                examples_since, last_log = 0, time.time()
            if schedule and schedule.due(step, previous_step):
                _save(sess, tg, train_dir, schedule)
    finally:
        if writer:
            writer.close()
    return steps_run, step


def _finish_as_chief(sess, tg: TrainGraph, train_dir: str, schedule: CheckpointSchedule,
                     stop: _StopRequest, task: cluster.Task) -> int:
    """Waits for the workers (saving on schedule meanwhile), then saves the final step.

    So the last checkpoint holds every task's steps.  Returns the global step.
    """
    workers = task.num_training_tasks - 1
    step = int(sess.run(tg.global_step))
    if workers:
        def finished() -> bool:
            nonlocal step
            previous_step, step = step, int(sess.run(tg.global_step))
            if schedule.due(step, previous_step):
                _save(sess, tg, train_dir, schedule)
            return stop.requested or int(sess.run(tg.sync.workers_done)) >= workers
        cluster.poll_until(finished, f"{workers} worker(s) to finish")
        step = int(sess.run(tg.global_step))
    if schedule.last_step != step:
        step = _save(sess, tg, train_dir, schedule)
    return step


def main() -> None:
    train()


if __name__ == "__main__":
    cli.run(main, *app_flags.runner_hooks(app_flags.TRAIN))
