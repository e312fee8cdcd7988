"""Evaluates checkpoints (Hit@1, PERR, mAP, GAP, loss) and re-saves them for inference.

    python eval.py --eval_data_pattern=DATA/frame/validate*.tfrecord --train_dir=RUN \\
        --run_once=True --checkpoint=model.ckpt-170010.index
    python eval.py --eval_data_pattern=DATA/frame/validate*.tfrecord --train_dir=RUN \\
        --checkpoints_start_end=150010,210010

The data and model choices come from RUN/model_flags.json (model flags given
on the command line must agree with it), so the commands above need no model
flags; eval.py started before train.py has written the file waits for it.
Right after the restore, the checkpoint is re-saved with its inference meta
graph under the names the ensemble workflow expects (see
checkpoint_utils.inference_name).

A sweep (``--checkpoints``, ``--checkpoints_start_end``,
``--num_last_checkpoints``: avg_checkpoints.py's selection, under
RUN/model.ckpt-N) evaluates several checkpoints in one process: the graph
holds one model copy per checkpoint of a pass (as many as their weights fit
in half the free memory, or ``--sweep_models_per_pass``), and the copies
score each batch in turn as it is read, so the eval data is read and parsed
once per pass instead of once per checkpoint, and activations are held for
one copy at a time.  Each checkpoint still gets its re-save, its
TensorBoard points and its JSON line; a table and the avg_checkpoints.py
command for the best range follow (sweep_report.py).
"""
import quiet_startup  # noqa: F401  (first: before TensorFlow is imported)

import contextlib
import json
import os
import posixpath
import re
import time
from dataclasses import dataclass
from typing import Dict, List, Sequence, Set

import tensorflow as tf
from absl import logging

import app_flags
import checkpoint_selection
import checkpoint_utils
import cli
import eval_util
import export
import input_pipeline
import model_config
import model_graph
import progress
import readers
import registry
import sweep_report
from errors import UsageError
from model_config import ModelConfig

SWEEP_FLAGS = ("checkpoints", "checkpoints_start_end", "num_last_checkpoints")


@dataclass
class ModelCopy:
    """One model of the eval graph, restored from one checkpoint of a pass."""

    global_step: tf.Variable
    # Checkpoint name -> variable: copy i > 0 lives under the variable scope sweep<i>.
    variables: Dict[str, tf.Variable]
    saver: tf.compat.v1.train.Saver
    # Each video's top entries (eval_util.graph_top_k): only [batch, top_k] leaves the graph.
    top_k: Dict[str, tf.Tensor] | None
    loss: tf.Tensor | None


@dataclass
class EvalGraph:
    graph: tf.Graph
    iterator_init: tf.Operation | None
    copies: List[ModelCopy]


@dataclass(frozen=True)
class EvalSettings:
    """What eval.py reads besides the model configuration."""

    batch_size: int
    top_k: int
    num_readers: int
    skip_corrupt_records: bool
    force_output_model_name: bool
    create_meta_only: bool
    models_per_pass: int
    progress_interval_secs: float


def eval_settings() -> EvalSettings:
    """The flags of this script, checked before any work."""
    if app_flags.value("sweep_models_per_pass") < 0:
        raise UsageError(f"--sweep_models_per_pass={app_flags.value('sweep_models_per_pass')} "
                         "must be 0 (automatic) or positive")
    return EvalSettings(
        batch_size=app_flags.positive("batch_size"), top_k=app_flags.positive("top_k"),
        num_readers=app_flags.positive("num_readers"),
        skip_corrupt_records=app_flags.value("skip_corrupt_records"),
        force_output_model_name=app_flags.value("force_output_model_name"),
        create_meta_only=app_flags.value("create_meta_only"),
        models_per_pass=app_flags.value("sweep_models_per_pass"),
        progress_interval_secs=max(app_flags.value("progress_interval_secs"), 0.0))


def copy_scope(index: int) -> str:
    """Variable scope of model copy ``index``: the first has the checkpoint's own names."""
    return "" if index == 0 else f"sweep{index}"


def _build_copy(config: ModelConfig, settings: EvalSettings, batch: Dict[str, tf.Tensor],
                scope: str) -> ModelCopy:
    """A model with is_training=False on ``batch``, with its metrics when it has labels."""
    top_k = loss = None
    with tf.compat.v1.variable_scope(scope) if scope else contextlib.nullcontext():
        global_step = checkpoint_utils.create_global_step()
        outputs = model_graph.build_predictions(batch["video_matrix"], batch["num_frames"],
                                                config, is_training=False)
        if "labels" in batch:
            labels = tf.cast(batch["labels"], tf.float32)
            loss = model_graph.label_loss(registry.find_loss(config.label_loss),
                                          outputs.predictions, labels)
            top_k = eval_util.graph_top_k(outputs.predictions, batch["labels"], settings.top_k)
    variables = model_graph.copy_variables(scope)
    return ModelCopy(global_step, variables, tf.compat.v1.train.Saver(variables), top_k, loss)


def build_eval_graph(config: ModelConfig, settings: EvalSettings, files,
                     copies: int = 1) -> EvalGraph:
    """``copies`` models fed by one pipeline over the eval files (or by placeholders)."""
    graph = tf.Graph()
    with graph.as_default():
        if files is None:
            batch = {"video_matrix": tf.compat.v1.placeholder(
                tf.float32, model_graph.input_shape(config)),
                "num_frames": tf.compat.v1.placeholder(tf.int32, [None])}
            init = None
        else:
            dataset = input_pipeline.dataset_for(
                config.data, files, settings.batch_size, shuffle=False, num_epochs=1,
                require_labels=True, num_readers=settings.num_readers,
                skip_corrupt_records=settings.skip_corrupt_records)
            iterator = tf.compat.v1.data.make_initializable_iterator(dataset)
            batch, init = iterator.get_next(), iterator.initializer
        models: List[ModelCopy] = []
        for i in range(copies):
            models.append(_build_copy(config, settings, _after(batch, models), copy_scope(i)))
    return EvalGraph(graph, init, models)


def _after(batch: Dict[str, tf.Tensor], previous: List[ModelCopy]) -> Dict[str, tf.Tensor]:
    """The batch, given to the next copy only once the last one has scored it: a sweep
    holds one copy's activations at a time, so its extra memory is the copies' weights."""
    if not previous or previous[-1].top_k is None:
        return batch
    with tf.control_dependencies([previous[-1].top_k["scores"], previous[-1].loss]):
        return {name: tf.identity(value) for name, value in batch.items()}


def _in_train_dir(train_dir: str, name: str) -> str:
    path = name if "://" in name or os.path.isabs(name) else os.path.join(train_dir, name)
    return path[:-len(".index")] if path.endswith(".index") else path


def _single_checkpoint(train_dir: str) -> str | None:
    """The checkpoint named by --checkpoint_file or --checkpoint, if any."""
    for flag in ("checkpoint_file", "checkpoint"):
        name = app_flags.value(flag)
        if name:
            path = _in_train_dir(train_dir, name)
            if not checkpoint_utils.checkpoint_exists(path):
                raise UsageError(f"--{flag}={name}: checkpoint {path} not found")
            return path
    return None


def requested_checkpoints(train_dir: str) -> List[str]:
    """The checkpoints the flags name (one, or a sweep); empty when none is named."""
    single = [f for f in ("checkpoint_file", "checkpoint") if app_flags.value(f)]
    sweep = [f for f in SWEEP_FLAGS if app_flags.value(f)]
    if single and sweep:
        raise UsageError(f"--{single[0]} names one checkpoint and --{sweep[0]} a sweep: "
                         "give one of them")
    if not sweep:
        path = _single_checkpoint(train_dir)
        return [path] if path else []
    prefix = posixpath.join(train_dir.rstrip("/"), checkpoint_utils.TRAIN_BASENAME + "-")
    paths = checkpoint_selection.select_checkpoints(
        prefix, app_flags.value("checkpoints"), app_flags.value("checkpoints_start_end"),
        app_flags.value("num_last_checkpoints"))
    return list(dict.fromkeys(paths))


def models_per_pass(settings: EvalSettings, checkpoints: Sequence[str]) -> int:
    """Model copies in the graph: --sweep_models_per_pass, else as many of the sweep's
    checkpoints as fit in half the free memory (at least one)."""
    if settings.create_meta_only or len(checkpoints) < 2:
        return 1
    if settings.models_per_pass:
        return min(settings.models_per_pass, len(checkpoints))
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    size = max(checkpoint_utils.model_bytes(checkpoints[0]), 1)
    return max(1, min(len(checkpoints), free // 2 // size))


def resave(sess, saver: tf.compat.v1.train.Saver, config: ModelConfig, settings: EvalSettings,
           train_dir: str, checkpoint: str) -> None:
    name = checkpoint_utils.inference_name(
        os.path.basename(checkpoint), settings.force_output_model_name, config.weights)
    if name is None:
        return
    path = export.save_inference_model(sess, saver, config, os.path.join(train_dir, name))
    logging.info("Re-saved %s as %s (+ .meta)", checkpoint, path)


def restore(sess, model: ModelCopy, config: ModelConfig, settings: EvalSettings,
            train_dir: str, checkpoint: str) -> int:
    """Restores ``checkpoint`` into ``model`` and re-saves it; returns its step."""
    checkpoint_utils.restorable_variables(
        checkpoint, model.variables,
        f"is it a checkpoint of the model {model_config.json_path(train_dir)} describes?")
    model.saver.restore(sess, checkpoint)
    step = int(sess.run(model.global_step))
    resave(sess, model.saver, config, settings, train_dir, checkpoint)
    return step


def _evaluation_error(error: tf.errors.OpError, checkpoints: str) -> UsageError | None:
    """Bad data or NaN predictions as one line naming the checkpoint (else None): the
    cause is otherwise only in a TensorFlow log line, and eval may be one of many runs."""
    message = readers.data_error_message(error)
    if message is None and eval_util.NAN_PREDICTIONS in str(error):
        message = f"the model's {eval_util.NAN_PREDICTIONS}: its weights are probably NaN or Inf"
    return None if message is None else UsageError(f"{message} (evaluating {checkpoints})")


def score_pass(sess, eg: EvalGraph, config: ModelConfig, settings: EvalSettings,
               checkpoints: Sequence[str], total: int | None) -> List[dict]:
    """One pass over the eval data, model copy i scoring every batch for checkpoint i."""
    metrics = [eval_util.EvaluationMetrics(config.num_classes, settings.top_k)
               for _ in checkpoints]
    fetches = [(model.top_k, model.loss) for model in eg.copies[:len(checkpoints)]]
    what = "eval" if len(checkpoints) == 1 else f"eval of {len(checkpoints)} checkpoints"
    tracker = progress.Progress(what, total, settings.progress_interval_secs)
    sess.run(eg.iterator_init)
    while True:
        try:
            values = sess.run(fetches)
        except tf.errors.OutOfRangeError:
            break
        except tf.errors.OpError as e:
            error = _evaluation_error(e, ", ".join(checkpoints))
            if error is None:
                raise
            raise error from None
        for accumulated, (top_k, loss) in zip(metrics, values, strict=True):
            accumulated.accumulate_top_k(loss=loss, **top_k)
        tracker.add(len(values[0][0]["num_labels"]))
    if tracker.done == 0:
        raise UsageError("the eval data holds no videos")
    rate = round(tracker.rate(), 1)
    return [dict(m.get(), videos_per_sec=rate) for m in metrics]


def publish(checkpoint: str, step: int, result: dict, writer, train_dir: str) -> dict:
    """Logs one checkpoint's metrics, adds its TensorBoard points and prints its JSON line."""
    record = {
        "checkpoint": checkpoint, "global_step": step, "num_examples": result["num_examples"],
        "hit_at_one": round(float(result["avg_hit_at_one"]), 5),
        "perr": round(float(result["avg_perr"]), 5),
        "map": round(float(result["map"]), 5),
        "gap": round(float(result["gap"]), 5),
        "loss": round(float(result["avg_loss"]), 5),
        "videos_per_sec": result["videos_per_sec"],
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


def evaluate_checkpoints(sess, eg: EvalGraph, config: ModelConfig, settings: EvalSettings,
                         train_dir: str, checkpoints: Sequence[str], writer,
                         total: int | None = None) -> List[dict]:
    """Restores and re-saves each checkpoint and (unless --create_meta_only) scores it:
    as many per pass over the data as the graph has model copies."""
    records = []
    width = len(eg.copies)
    for start in range(0, len(checkpoints), width):
        group = list(checkpoints[start:start + width])
        steps = [restore(sess, model, config, settings, train_dir, checkpoint)
                 for model, checkpoint in zip(eg.copies[:len(group)], group, strict=True)]
        if settings.create_meta_only:
            continue
        results = score_pass(sess, eg, config, settings, group, total)
        records += [publish(checkpoint, step, result, writer, train_dir)
                    for checkpoint, step, result in zip(group, steps, results, strict=True)]
    return records


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


def _eval_files(settings: EvalSettings) -> List[str] | None:
    if settings.create_meta_only:
        return None
    if not app_flags.value("eval_data_pattern"):
        raise UsageError("--eval_data_pattern is required (or pass --create_meta_only)")
    return readers.resolve_data_files(app_flags.value("eval_data_pattern"),
                                      flag_name="eval_data_pattern")


def evaluate() -> None:
    train_dir = app_flags.value("train_dir")
    settings = eval_settings()
    explicit = requested_checkpoints(train_dir)
    if len(explicit) > 1 and settings.force_output_model_name:
        raise UsageError("--force_output_model_name re-saves one checkpoint as "
                         "inference_model: evaluate one checkpoint, not a sweep")
    once = bool(explicit) or app_flags.value("run_once")
    config = run_config(train_dir, wait=not once)
    files = _eval_files(settings)
    total = None if files is None else progress.count_records(files)
    eg = build_eval_graph(config, settings, files, models_per_pass(settings, explicit))
    eg.graph.finalize()
    writer = tf.compat.v1.summary.FileWriter(os.path.join(train_dir, "eval"),
                                             filename_suffix=f".{os.getpid()}")
    with tf.compat.v1.Session(graph=eg.graph) as sess:
        if once:
            checkpoints = explicit or [checkpoint_utils.latest_checkpoint(train_dir)]
            if checkpoints[0] is None:
                raise UsageError(f"no model.ckpt-* checkpoint in --train_dir={train_dir}")
            records = evaluate_checkpoints(sess, eg, config, settings, train_dir, checkpoints,
                                           writer, total)
            if len(records) > 1:
                on_disk = [step for step, _ in checkpoint_utils.list_checkpoints(
                    posixpath.join(train_dir.rstrip("/"), checkpoint_utils.TRAIN_BASENAME))]
                print(sweep_report.report(records, train_dir, on_disk), flush=True)
        else:
            _wait_and_evaluate(sess, eg, config, settings, train_dir, writer, total)
    writer.close()


def _wait_and_evaluate(sess, eg: EvalGraph, config: ModelConfig, settings: EvalSettings,
                       train_dir: str, writer, total: int | None) -> None:
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
            evaluate_checkpoints(sess, eg, config, settings, train_dir, [checkpoint], writer,
                                 total)
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
