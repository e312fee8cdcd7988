"""Interrupted runs lose nothing: kill -9 and SIGTERM during training, a crash while the
CSV is written, a NaN loss, checkpoints that vanish under a waiting eval.py.

Video-level data and LogisticModel keep each run to a few seconds.
"""
import glob
import os
import random
import re
import shutil
import signal
import time

import numpy as np
import pytest
import tensorflow as tf

from helpers import (
    read,
    run_script,
    start,
    steps_on_disk,
    train_args,
    wait_for,
)


def check_loadable(run_dir: str, step: int) -> None:
    """model.ckpt-<step> restores: every tensor readable and finite, global_step == step."""
    reader = tf.train.load_checkpoint(os.path.join(run_dir, f"model.ckpt-{step}"))
    for name in reader.get_variable_to_shape_map():
        assert np.all(np.isfinite(reader.get_tensor(name))), (step, name)
    assert reader.get_tensor("global_step") == step
    assert os.path.exists(os.path.join(run_dir, f"model.ckpt-{step}.meta"))


def logged_steps(log: str) -> list:
    return [int(s) for s in re.findall(r"\] step (\d+) \|", log)]


@pytest.fixture(scope="module")
def step9_run(sample_data, tmp_path_factory) -> str:
    """A run whose only checkpoint is model.ckpt-9 (written at --max_steps=9)."""
    run_dir = str(tmp_path_factory.mktemp("step9") / "run")
    result = run_script("train", *train_args(sample_data, run_dir, "--max_steps=9"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert steps_on_disk(run_dir) == [9]
    return run_dir


def copy_run(run_dir: str, tmp_path) -> str:
    copy = str(tmp_path / "run")
    shutil.copytree(run_dir, copy)
    return copy


def test_kill_9_at_random_moments_keeps_checkpoints_loadable_and_resumes(sample_data,
                                                                         tmp_path):
    run_dir, logs = str(tmp_path / "run"), str(tmp_path)
    rng = random.Random(7)
    flags_json, last = None, None
    for attempt in range(3):
        process = start("train", train_args(sample_data, run_dir, "--export_model_steps=10"),
                        logs, f"train{attempt}")
        try:
            wait_for(lambda before=last: steps_on_disk(run_dir)[-1:] not in ([], [before]),
                     process, "a new checkpoint")
            time.sleep(rng.uniform(0.0, 1.0))  # saves come every 10 steps: often mid-save
        finally:
            process.kill()
            process.wait()
        log = read(logs, f"train{attempt}.err")
        if last is not None:  # resumed from the newest checkpoint, counting on from it
            assert f"Resumed from {run_dir}/model.ckpt-{last}" in log
            assert min(logged_steps(log)) == last + 10
        for step in steps_on_disk(run_dir):
            check_loadable(run_dir, step)
        with open(os.path.join(run_dir, "model_flags.json")) as f:
            text = f.read()
        assert text == (flags_json or text)
        flags_json, last = text, steps_on_disk(run_dir)[-1]


def test_sigterm_during_training_saves_the_step_it_stopped_at(sample_data, tmp_path):
    run_dir, logs = str(tmp_path / "run"), str(tmp_path)
    # The first check saves model.ckpt-10; after it only the end of the run saves.
    process = start("train", train_args(sample_data, run_dir, "--export_model_steps=1000000"),
                    logs, "train")
    try:
        wait_for(lambda: steps_on_disk(run_dir), process, "model.ckpt-10")
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    log = read(logs, "train.err")
    match = re.search(r"Stopped by SIGTERM at step (\d+), saved as (\S+);", log)
    assert match, log[-3000:]
    step = int(match.group(1))
    assert step > 10 and match.group(2) == os.path.join(run_dir, f"model.ckpt-{step}")
    assert steps_on_disk(run_dir) == [10, step]
    check_loadable(run_dir, step)
    state = tf.train.get_checkpoint_state(run_dir)
    assert os.path.basename(state.model_checkpoint_path) == f"model.ckpt-{step}"


def test_sigterm_before_the_first_step_stops_cleanly(sample_data, step9_run, tmp_path):
    run_dir, logs = copy_run(step9_run, tmp_path), str(tmp_path)
    process = start("train", train_args(sample_data, run_dir), logs, "train")
    try:
        # Logged once the handler is in place, before the graph is built.
        wait_for(lambda: "Training on" in read(logs, "train.err"), process, "the start")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    log = read(logs, "train.err")
    assert f"Stopped by SIGTERM at step 9, saved as {run_dir}/model.ckpt-9;" in log
    assert steps_on_disk(run_dir) == [9]
    check_loadable(run_dir, 9)


def test_kill_9_while_writing_the_csv_keeps_the_previous_csv(sample_data, step9_run,
                                                               tmp_path):
    run_dir, logs = copy_run(step9_run, tmp_path), str(tmp_path)
    result = run_script("eval", f"--train_dir={run_dir}", "--checkpoint=model.ckpt-9",
                        "--create_meta_only", "--force_output_model_name")
    assert result.returncode == 0, result.stderr[-3000:]
    csv = str(tmp_path / "predictions.csv")
    result = run_script("inference", f"--train_dir={run_dir}", f"--output_file={csv}",
                        f"--input_data_pattern={sample_data}/video/test*.tfrecord")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(csv) as f:
        previous = f.read()
    # 40 copies of the test file, read one video per step: long enough to be caught.
    big = tmp_path / "big"
    big.mkdir()
    for index in range(40):
        shutil.copy(f"{sample_data}/video/test0000.tfrecord", big / f"test{index:02d}.tfrecord")
    process = start("inference", [f"--train_dir={run_dir}", f"--output_file={csv}",
                                  f"--input_data_pattern={big}/*.tfrecord", "--batch_size=1"],
                    logs, "inference")

    def rows_written() -> bool:
        temps = glob.glob(csv + ".tmp-*")
        return bool(temps) and os.path.getsize(temps[0]) > len(previous)

    try:
        wait_for(rows_written, process, "the first rows of the new CSV")
    finally:
        process.kill()
        process.wait()
    with open(csv) as f:
        assert f.read() == previous
    (temp,) = glob.glob(csv + ".tmp-*")  # the interrupted one, under its temporary name
    with open(temp) as f:
        assert f.readline() == "VideoId,LabelConfidencePairs\n"


def test_nan_loss_stops_training_without_a_checkpoint(sample_data, tmp_path):
    run_dir = str(tmp_path / "run")
    # 1e39 is Inf in float32: the first update makes every weight NaN or Inf.
    result = run_script("train", *train_args(sample_data, run_dir, "--max_steps=30",
                                             "--base_learning_rate=1e39"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.rstrip("\n").splitlines()[-1]
    assert re.match(r"ERROR: the loss became (nan|inf|-inf) at step 2; stopped without saving"
                    r"\. Last good checkpoint: none\.", last), last
    assert steps_on_disk(run_dir) == []


def test_nan_weights_are_never_saved(sample_data, step9_run, tmp_path):
    run_dir = copy_run(step9_run, tmp_path)
    # Step 10's loss is still finite (computed before the update) and step 10 saves.
    result = run_script("train", *train_args(sample_data, run_dir, "--max_steps=30",
                                             "--base_learning_rate=1e39",
                                             "--export_model_steps=1"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.rstrip("\n").splitlines()[-1]
    assert last == (f"ERROR: the weights became NaN or Inf by step 10; stopped without saving. "
                    f"Last good checkpoint: {run_dir}/model.ckpt-9. Lower --base_learning_rate "
                    "or check the data.")
    assert steps_on_disk(run_dir) == [9]
    check_loadable(run_dir, 9)


def _copy_checkpoint(run_dir: str, source: int, target: int, suffixes=None) -> None:
    """Copies model.ckpt-<source> to model.ckpt-<target>, the index last (as savers do)."""
    for suffix in suffixes or (".data-00000-of-00001", ".meta", ".index"):
        shutil.copy(os.path.join(run_dir, f"model.ckpt-{source}{suffix}"),
                    os.path.join(run_dir, f"model.ckpt-{target}{suffix}"))


def test_waiting_eval_survives_checkpoints_that_vanish(sample_data, step9_run, tmp_path):
    run_dir, logs = copy_run(step9_run, tmp_path), str(tmp_path)
    process = start("eval", [f"--train_dir={run_dir}", "--eval_interval_secs=1",
                             f"--eval_data_pattern={sample_data}/video/validate*.tfrecord",
                             "--batch_size=8"], logs, "eval")

    def evaluated(step: int):
        return lambda: f'"checkpoint": "{run_dir}/model.ckpt-{step}"' in read(logs, "eval.out")

    try:
        wait_for(evaluated(9), process, "model.ckpt-9's metrics")
        # An index whose data is gone (deleted while eval.py looked).
        _copy_checkpoint(run_dir, 9, 50, suffixes=[".index"])
        wait_for(lambda: f"Skipping {run_dir}/model.ckpt-50" in read(logs, "eval.err"),
                 process, "model.ckpt-50 skipped")
        os.remove(os.path.join(run_dir, "model.ckpt-50.index"))
        # Listed, but gone when read: a dangling link is found by the glob only.
        os.symlink(os.path.join(run_dir, "deleted"), os.path.join(run_dir, "model.ckpt-60.index"))
        wait_for(lambda: f"Skipping {run_dir}/model.ckpt-60" in read(logs, "eval.err"),
                 process, "model.ckpt-60 skipped")
        # One deleted as soon as it appears, then one that stays.
        _copy_checkpoint(run_dir, 9, 70)
        for path in glob.glob(os.path.join(run_dir, "model.ckpt-70.*")):
            os.remove(path)
        _copy_checkpoint(run_dir, 9, 80)
        wait_for(evaluated(80), process, "model.ckpt-80's metrics")
        time.sleep(1.5)  # a look or two more, with nothing new
        assert process.poll() is None, read(logs, "eval.err")[-3000:]
    finally:
        process.kill()
        process.wait()
    assert "No new checkpoint" in read(logs, "eval.err")  # it sleeps between looks
    assert "Traceback" not in read(logs, "eval.err")
