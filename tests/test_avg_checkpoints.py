"""avg_checkpoints: checkpoint selection, the float64 mean per dtype, the CLI contract."""
import os

import numpy as np
import pytest
import tensorflow as tf

import avg_checkpoints
import checkpoint_selection
import checkpoint_utils
from errors import UsageError
from helpers import read_checkpoint, run_script

V1 = tf.compat.v1
STEPS = (10, 20, 30, 40)
VARIABLES = {  # name -> (shape, dtype)
    "tower/video_VLAD/conv2/cluster_weights": ([4, 3], tf.float32),
    "tower/hidden1_weights/hidden1_weights": ([5, 2], tf.float16),
    "tower/hidden1_bn/moving_mean": ([2], tf.float32),
    "tower/model1/gates/weights": ([3, 6], tf.float16),
}


def _write_training_run(run):
    """model.ckpt-{10,20,30,40} with Adam slots, plus names the selection must skip."""
    rng = np.random.default_rng(0)
    with tf.Graph().as_default(), V1.Session() as sess:
        step = V1.get_variable("global_step", [], tf.int32, V1.zeros_initializer(),
                               trainable=False)
        variables = {n: V1.get_variable(n, s, d) for n, (s, d) in VARIABLES.items()}
        loss = tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32)))
                         for v in variables.values()])
        train_op = V1.train.AdamOptimizer(0.01).minimize(loss)
        saver = V1.train.Saver(max_to_keep=None)
        sess.run(V1.global_variables_initializer())
        for n in STEPS + (25, 35, 50):
            for name, var in variables.items():
                var.load(rng.normal(size=VARIABLES[name][0]) * 3, sess)
            sess.run(train_op)
            step.load(n, sess)
            saver.save(sess, os.path.join(run, "model.ckpt"), global_step=n)
    # Names with several numbers are skipped; other series are not under the prefix.
    for old, new in ((25, "model.ckpt-25_copy2"), (35, "avg_c10h400_10_30.ckpt-0"),
                     (50, "inference_model_50")):
        for suffix in (".index", ".data-00000-of-00001", ".meta"):
            os.rename(os.path.join(run, f"model.ckpt-{old}{suffix}"),
                      os.path.join(run, new + suffix))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("avg_run"))
    _write_training_run(directory)
    return directory



def _ckpt(run, step):
    return os.path.join(run, f"model.ckpt-{step}")


@pytest.mark.parametrize("prefix_form", ["model.ckpt-", "model.ckpt", ""])
def test_selection_forms_and_precedence(run, prefix_form):
    prefix = os.path.join(run, prefix_form) if prefix_form else run + "/"
    select = checkpoint_selection.select_checkpoints
    assert select(prefix, checkpoints="30,10") == [_ckpt(run, 30), _ckpt(run, 10)]
    # model.ckpt-25_copy2 has two numbers: skipped; 50 is outside the range.
    assert select(prefix, checkpoints_start_end="15,40") == [_ckpt(run, s) for s in (20, 30, 40)]
    assert select(prefix, num_last_checkpoints=2) == [_ckpt(run, 30), _ckpt(run, 40)]
    # list > range > last N
    assert select(prefix, checkpoints="20", checkpoints_start_end="10,40",
                  num_last_checkpoints=3) == [_ckpt(run, 20)]
    assert select(prefix, checkpoints_start_end="30,30",
                  num_last_checkpoints=3) == [_ckpt(run, 30)]


def test_selection_errors_name_the_problem(run):
    prefix = os.path.join(run, "model.ckpt-")
    with pytest.raises(UsageError, match="model.ckpt-15 does not exist"):
        checkpoint_selection.select_checkpoints(prefix, checkpoints="10,15,20")
    with pytest.raises(UsageError, match="checkpoints_start_end"):
        checkpoint_selection.select_checkpoints(prefix, checkpoints_start_end="41,99")
    with pytest.raises(UsageError, match="checkpoints_start_end"):
        checkpoint_selection.select_checkpoints(prefix, checkpoints_start_end="10")
    with pytest.raises(UsageError, match="only 4"):
        checkpoint_selection.select_checkpoints(prefix, num_last_checkpoints=5)
    with pytest.raises(UsageError, match="--checkpoints"):
        checkpoint_selection.select_checkpoints(prefix)
    with pytest.raises(UsageError, match="--prefix"):
        checkpoint_selection.select_checkpoints("", checkpoints="10")


def test_average_is_float64_mean_in_each_dtype_without_optimizer_state(run, tmp_path):
    chosen = [_ckpt(run, s) for s in (10, 30, 40)]
    inputs = [read_checkpoint(p) for p in chosen]
    assert "tower/model1/gates/weights/Adam_1" in inputs[0]  # the inputs do have slots
    values = avg_checkpoints.average_checkpoints(chosen)
    assert sorted(values) == sorted(VARIABLES)
    for name, (shape, dtype) in VARIABLES.items():
        expected = np.mean(np.stack([x[name].astype(np.float64) for x in inputs]), axis=0)
        assert values[name].dtype == dtype.as_numpy_dtype
        # float16 (and float32): the float64 mean rounded to nearest in the own dtype
        np.testing.assert_array_equal(values[name], expected.astype(dtype.as_numpy_dtype))
        assert list(values[name].shape) == shape


def test_works_on_ram_filesystem(run):
    """Only gfile touches the paths: a ram:// run averages like a local one."""
    ram = "ram://avg_checkpoints_test/run"
    for step in (10, 20):
        for suffix in (".index", ".data-00000-of-00001"):
            tf.io.gfile.copy(_ckpt(run, step) + suffix, f"{ram}/model.ckpt-{step}{suffix}")
    chosen = checkpoint_selection.select_checkpoints(ram + "/model.ckpt",
                                                     checkpoints_start_end="0,99")
    assert chosen == [f"{ram}/model.ckpt-10", f"{ram}/model.ckpt-20"]
    output = checkpoint_utils.write_checkpoint(avg_checkpoints.average_checkpoints(chosen),
                                               ram + "/avg.ckpt")
    name = "tower/video_VLAD/conv2/cluster_weights"
    expected = (read_checkpoint(_ckpt(run, 10))[name].astype(np.float64)
                + read_checkpoint(_ckpt(run, 20))[name]) / 2
    np.testing.assert_array_equal(read_checkpoint(output)[name], expected.astype(np.float32))


def test_unreadable_checkpoint_is_reported_with_its_name(run, tmp_path):
    broken = str(tmp_path / "model.ckpt-10")
    for suffix in (".index", ".data-00000-of-00001"):
        tf.io.gfile.copy(_ckpt(run, 10) + suffix, broken + suffix)
    with open(broken + ".data-00000-of-00001", "r+b") as f:
        f.truncate(10)
    with pytest.raises(UsageError, match=str(tmp_path)):
        avg_checkpoints.average_checkpoints([_ckpt(run, 20), broken])


def test_cli_averages_a_range_and_leaves_the_state_file_alone(run):
    with open(os.path.join(run, "checkpoint"), "rb") as f:
        state = f.read()
    output = os.path.join(run, "avg_15_40.ckpt")
    result = run_script("avg_checkpoints", "--checkpoints_start_end=15,40",
                        f"--prefix={run}/model.ckpt-", f"--output_path={output}")
    assert result.returncode == 0, result.stderr
    for step in (20, 30, 40):
        assert _ckpt(run, step) in result.stdout
    assert _ckpt(run, 10) not in result.stdout
    for suffix in (".index", ".meta", ".data-00000-of-00001"):
        assert os.path.exists(output + "-0" + suffix)
    averaged = read_checkpoint(output + "-0")
    assert sorted(averaged) == sorted(["global_step", *VARIABLES])
    assert averaged["global_step"].dtype == np.int32 and averaged["global_step"] == 0
    inputs = [read_checkpoint(_ckpt(run, s)) for s in (20, 30, 40)]
    name = "tower/hidden1_weights/hidden1_weights"
    expected = np.mean([x[name].astype(np.float64) for x in inputs], axis=0).astype(np.float16)
    np.testing.assert_array_equal(averaged[name], expected)
    with open(os.path.join(run, "checkpoint"), "rb") as f:
        assert f.read() == state
    # The meta graph is a graph of plain variables that restores the average.
    with tf.Graph().as_default(), V1.Session() as sess:
        V1.train.import_meta_graph(output + "-0.meta").restore(sess, output + "-0")
        var = {v.op.name: v for v in V1.global_variables()}[name]
        np.testing.assert_array_equal(sess.run(var), expected)


def test_cli_missing_checkpoint_is_one_error_line(run, tmp_path):
    output = str(tmp_path / "avg.ckpt")
    result = run_script("avg_checkpoints", "--checkpoints=10,15", f"--prefix={run}/model.ckpt",
                        f"--output_path={output}")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and _ckpt(run, 15) in errors[0]
    assert result.stderr.rstrip().splitlines()[-1] == errors[0]
    assert not os.listdir(tmp_path)
