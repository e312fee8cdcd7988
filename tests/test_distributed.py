"""Scale-out: TF_CONFIG parsing, a real ps/chief/worker run on loopback, and --num_gpu towers.

The cluster run starts three train.py processes (1 ps, 1 chief, 1 worker) on
free 127.0.0.1 ports; the last checkpoint must count the steps of both
training tasks and evaluate.  The towers run on virtual CPU devices
(--cpu_towers): one SGD step of a MoeModel from known weights, with 1 and with
2 towers, must equal the update of a numpy reference (finite-difference
gradient of the same loss, clipped per tensor), and a last batch smaller than
the tower count must train.
"""
import json
import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

import checkpoint_utils
import cluster
from errors import UsageError
from helpers import NETVLAD_FLAGS, NETVLAD_SIZES, REPO, json_record, run_script, write_examples

FRAME_MODEL = NETVLAD_FLAGS + NETVLAD_SIZES
TRAINED = re.compile(r"This task trained (\d+) steps in [\d.]+ s; global step (\d+)\.")


# --- TF_CONFIG ------------------------------------------------------------------------

def _config(task_type, index=0, **jobs):
    return json.dumps({"cluster": jobs, "task": {"type": task_type, "index": index}})


def test_no_tf_config_or_one_task_is_a_single_process():
    for text in (None, "", "  ", _config("chief", chief=["a:1"]),
                 _config("worker", worker=["a:1"], evaluator=["b:2"])):
        task = cluster.parse(text)
        assert not task.distributed and task.is_chief and task.num_training_tasks == 1
        assert task.device_function() is None
        assert task.shard_files(["f1", "f2"]) == ["f1", "f2"]


@pytest.mark.parametrize("chief_job", ["chief", "master"])
def test_roles_of_a_cluster(chief_job):
    jobs = {chief_job: ["c:1"], "worker": ["w:1", "w:2"], "ps": ["p:1", "p:2"],
            "evaluator": ["e:1"]}
    chief = cluster.parse(_config(chief_job, **jobs))
    assert chief.distributed and chief.is_chief and not chief.is_ps
    assert "evaluator" not in chief.cluster
    assert chief.device == f"/job:{chief_job}/task:0"
    assert chief.num_training_tasks == 3 and chief.training_rank == 0
    worker = cluster.parse(_config("worker", 1, **jobs))
    assert not worker.is_chief and worker.training_rank == 2
    files = [f"f{i}" for i in range(7)]
    assert chief.shard_files(files) == ["f0", "f3", "f6"]
    assert worker.shard_files(files) == ["f2", "f5"]
    assert worker.shard_files(files[:2]) == files[:2]  # fewer files than tasks: all
    assert cluster.parse(_config("ps", 1, **jobs)).is_ps
    evaluator = cluster.parse(_config("evaluator", **jobs))
    assert evaluator.is_evaluator and not evaluator.is_chief
    # Without a chief job, worker 0 is the chief.
    assert cluster.parse(_config("worker", 0, worker=["w:1", "w:2"])).is_chief
    assert not cluster.parse(_config("worker", 1, worker=["w:1", "w:2"])).is_chief


@pytest.mark.parametrize("text, words", [
    ("{not json", "not valid JSON"),
    (_config("worker", 0, chief=["c:1"], ps=["p:1"]), "task type 'worker'"),
    (_config("worker", 3, chief=["c:1"], worker=["w:1"]), "task index 3"),
    (_config("chief", chief=["c:1"], master=["m:1"]), "both"),
    (_config("chief", chief=["c:1"], trainer=["t:1"]), "unknown job 'trainer'"),
    (_config("chief", chief="c:1", worker=["w:1"]), "'host:port' strings"),
])
def test_bad_tf_config_is_a_usage_error(text, words):
    with pytest.raises(UsageError, match="TF_CONFIG") as error:
        cluster.parse(text)
    assert words in str(error.value)


def test_device_function_puts_variables_on_ps_and_the_rest_on_the_task():
    with_ps = cluster.parse(_config("worker", 1, chief=["c:1"], worker=["w:1", "w:2"],
                                    ps=["p:1", "p:2"]))
    without_ps = cluster.parse(_config("worker", 0, master=["m:1"], worker=["w:1"]))
    for task, variable_jobs in ((with_ps, {"/job:ps/task:0", "/job:ps/task:1"}),
                                (without_ps, {"/job:master/task:0"})):
        graph = tf.Graph()
        with graph.as_default(), task.graph_device_scope(graph):
            variables = [tf.compat.v1.get_variable(f"v{i}", [2]) for i in range(4)]
            total = tf.add_n(variables)
            with task.input_device_scope():
                data = tf.compat.v1.data.make_one_shot_iterator(
                    tf.data.Dataset.range(3)).get_next()
        assert {v.op.device for v in variables} == variable_jobs
        assert total.op.device == data.op.device == task.device
        config = task.session_config(tf.compat.v1.ConfigProto(allow_soft_placement=True))
        assert config.allow_soft_placement and task.device in config.device_filters


# --- a real cluster on loopback ports ------------------------------------------------------

def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _start(args, tf_config, log_path):
    log = open(log_path, "w")
    return subprocess.Popen(
        [sys.executable, os.path.join(REPO, "train.py"), *args], cwd=REPO, stdout=log,
        stderr=subprocess.STDOUT, env={**os.environ, "TF_CONFIG": tf_config})


def _wait_for_text(path, text, process, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(path) as f:
            if text in f.read():
                return
        assert process.poll() is None, open(path).read()[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} in {path} after {timeout} s")


def _trained(log_path):
    with open(log_path) as f:
        text = f.read()
    match = TRAINED.search(text)
    assert match, text[-3000:]
    return int(match.group(1)), int(match.group(2)), text


def test_ps_chief_and_worker_on_loopback(sample_data, tmp_path):
    ps_port, chief_port, worker_port = _free_ports(3)
    jobs = {"ps": [f"127.0.0.1:{ps_port}"], "chief": [f"127.0.0.1:{chief_port}"],
            "worker": [f"127.0.0.1:{worker_port}"]}
    run_dir, worker_dir = str(tmp_path / "run"), str(tmp_path / "worker_dir")
    common = [f"--train_data_pattern={sample_data}/frame/train*.tfrecord", "--batch_size=16",
              "--max_steps=60", "--export_model_steps=20", "--num_epochs=1000", *FRAME_MODEL]
    logs = {name: str(tmp_path / f"{name}.log") for name in ("ps", "worker", "chief")}
    processes = []
    try:
        processes.append(_start(common + [f"--train_dir={tmp_path / 'ps_dir'}"],
                                _config("ps", **jobs), logs["ps"]))
        # The worker gets its own --train_dir, which it must never write to.
        worker = _start(common + [f"--train_dir={worker_dir}"], _config("worker", **jobs),
                        logs["worker"])
        processes.append(worker)
        # Started once the worker waits, so that both train from the start.
        _wait_for_text(logs["worker"], "Waiting for the chief", worker, timeout=90)
        chief = _start(common + [f"--train_dir={run_dir}"], _config("chief", **jobs),
                       logs["chief"])
        processes.append(chief)
        assert chief.wait(timeout=150) == 0, open(logs["chief"]).read()[-3000:]
        assert worker.wait(timeout=60) == 0, open(logs["worker"]).read()[-3000:]
        assert processes[0].poll() is None, "the ps task must serve until it is killed"
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)

    chief_steps, chief_final, chief_log = _trained(logs["chief"])
    worker_steps, _, worker_log = _trained(logs["worker"])
    assert chief_steps > 0 and worker_steps > 0
    # The chief saves last, after the worker finished: every step of both is in it.
    assert chief_final == chief_steps + worker_steps >= 60
    assert os.path.exists(os.path.join(run_dir, f"model.ckpt-{chief_final}.index"))
    reader = tf.train.load_checkpoint(os.path.join(run_dir, f"model.ckpt-{chief_final}"))
    assert reader.get_tensor("global_step") == chief_final
    assert not [name for name in reader.get_variable_to_shape_map() if "cluster_sync" in name]
    assert os.path.exists(os.path.join(run_dir, "model_flags.json"))
    assert not os.path.exists(worker_dir)
    # Each training task reads its own shard of the two train files.
    assert re.search(r"Training on 1 files: \S+train0000", chief_log)
    assert re.search(r"Training on 1 files: \S+train0001", worker_log)

    # Variables live on the ps, the input pipeline and the saver on the chief.
    with open(os.path.join(run_dir, f"model.ckpt-{chief_final}.meta"), "rb") as f:
        nodes = meta_graph_pb2.MetaGraphDef.FromString(f.read()).graph_def.node
    devices = {}
    for node in nodes:
        devices.setdefault(node.op, set()).add(node.device)
    assert devices["VarHandleOp"] == {"/job:ps/task:0"}
    for op in ("OneShotIterator", "IteratorGetNext", "SaveV2"):
        assert devices[op] == {"/job:chief/task:0"}, op

    result = run_script("eval", f"--eval_data_pattern={sample_data}/frame/validate*.tfrecord",
                        f"--train_dir={run_dir}", "--run_once=True", "--batch_size=16",
                        *FRAME_MODEL)
    record = json_record(result)
    assert record["global_step"] == chief_final and 0 < record["gap"] <= 1


# --- towers on virtual CPU devices -----------------------------------------------------------

TOWER_CLASSES, TOWER_FEATURES, MIXTURES = 6, 8, 2
LEARNING_RATE, L2, CLIP = 0.5, 0.05, 1.0
MOE_SHAPES = {"gates/weights": [TOWER_FEATURES, TOWER_CLASSES * (MIXTURES + 1)],
              "experts/weights": [TOWER_FEATURES, TOWER_CLASSES * MIXTURES],
              "experts/biases": [TOWER_CLASSES * MIXTURES]}


def _tower_flags(data_file, run_dir, *extra):
    return ["train", f"--train_data_pattern={data_file}", f"--train_dir={run_dir}",
            "--feature_names=mean_rgb", f"--feature_sizes={TOWER_FEATURES}",
            f"--num_classes={TOWER_CLASSES}", "--model=MoeModel",
            f"--moe_num_mixtures={MIXTURES}", f"--moe_l2={L2}",
            "--optimizer=GradientDescentOptimizer", f"--base_learning_rate={LEARNING_RATE}",
            f"--clip_gradient_norm={CLIP}", "--num_epochs=1", "--random_seed=5", *extra]


def _write_videos(path, count, seed):
    rng = np.random.default_rng(seed)
    videos = [{"id": f"v{i}", "labels": sorted(rng.choice(TOWER_CLASSES, 2, replace=False)),
               "mean_rgb": rng.standard_normal(TOWER_FEATURES)} for i in range(count)]
    write_examples(path, videos)
    return videos


def _moe_loss(params, x, y):
    """SPEC 4.2 MoE, cross-entropy (epsilon 1e-5) and the L2 penalty, in float64."""
    gates = (x @ params["gates/weights"]).reshape(-1, MIXTURES + 1)
    gates = np.exp(gates - gates.max(axis=1, keepdims=True))
    gates /= gates.sum(axis=1, keepdims=True)
    experts = 1 / (1 + np.exp(-(x @ params["experts/weights"] + params["experts/biases"])))
    p = (gates[:, :MIXTURES] * experts.reshape(-1, MIXTURES)).sum(axis=1).reshape(len(x), -1)
    xent = -(y * np.log(p + 1e-5) + (1 - y) * np.log(1 - p + 1e-5)).sum(axis=1).mean()
    penalty = L2 * sum((params[k] ** 2).sum() / 2 for k in ("gates/weights", "experts/weights"))
    return xent + penalty


def _expected_step(initial, videos):
    """One clipped SGD step, the gradient by central differences."""
    x = np.array([v["mean_rgb"] for v in videos], np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.zeros([len(videos), TOWER_CLASSES])
    for row, video in enumerate(videos):
        y[row, video["labels"]] = 1
    params = {k: v.astype(np.float64) for k, v in initial.items()}
    expected = {}
    for name, value in params.items():
        grad = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            saved = value[index]
            value[index] = saved + 1e-6
            up = _moe_loss(params, x, y)
            value[index] = saved - 1e-6
            down = _moe_loss(params, x, y)
            value[index] = saved
            grad[index] = (up - down) / 2e-6
        grad *= min(1.0, CLIP / np.linalg.norm(grad))
        expected[name] = value - LEARNING_RATE * grad
    return expected


def _model_values(checkpoint):
    reader = tf.train.load_checkpoint(checkpoint)
    return {name: reader.get_tensor("tower/" + name) for name in MOE_SHAPES}


def _run_all(*commands):
    with ThreadPoolExecutor(len(commands)) as pool:
        results = list(pool.map(lambda c: run_script(*c, timeout=300), commands))
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    return results


def test_towers_average_to_the_single_tower_step(tmp_path):
    data, partial_data = str(tmp_path / "videos.tfrecord"), str(tmp_path / "17.tfrecord")
    videos = _write_videos(data, 16, seed=0)
    _write_videos(partial_data, 17, seed=1)
    # Both runs resume from the same known weights, written here.
    rng = np.random.default_rng(2)
    initial = {name: rng.normal(0, 0.5, shape).astype(np.float32)
               for name, shape in MOE_SHAPES.items()}
    one, two, partial = (str(tmp_path / name) for name in ("one", "two", "partial"))
    for run_dir in (one, two):
        checkpoint_utils.write_checkpoint({"tower/" + k: v for k, v in initial.items()},
                                          os.path.join(run_dir, "model.ckpt"), global_step=0)
    results = _run_all(
        # No GPU here: --num_gpu=2 trains one tower (of 16 videos) and says so.
        _tower_flags(data, one, "--num_gpu=2", "--batch_size=16", "--max_steps=1"),
        _tower_flags(data, two, "--num_gpu=2", "--cpu_towers", "--batch_size=8",
                     "--max_steps=1"),
        # 17 videos, 2 towers of 8: one batch is 1 video, and tower 1 gets none.
        _tower_flags(partial_data, partial, "--num_gpu=2", "--cpu_towers", "--batch_size=8",
                     "--moe_prob_gating=True"))
    assert "--num_gpu=2 but 0 GPUs are visible: training with 1 tower." in results[0].stderr
    assert "GPUs are visible" not in results[1].stderr

    expected = _expected_step(initial, videos)
    for run_dir in (one, two):
        actual = _model_values(os.path.join(run_dir, "model.ckpt-1"))
        for name, value in expected.items():
            np.testing.assert_allclose(actual[name], value, atol=2e-5, err_msg=name)
    assert "Done: 1 epochs" in results[2].stderr
    assert TRAINED.search(results[2].stderr).group(1) == "2"
    reader = tf.train.load_checkpoint(os.path.join(partial, "model.ckpt-2"))
    for name in reader.get_variable_to_shape_map():
        assert np.all(np.isfinite(reader.get_tensor(name))), name
