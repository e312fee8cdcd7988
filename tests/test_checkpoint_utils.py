"""checkpoint_utils: atomic saves, the state file, listing, slot filtering, naming."""
import os

import numpy as np
import pytest
import tensorflow as tf

import checkpoint_utils as cu
from helpers import read_checkpoint

V1 = tf.compat.v1
NAMES = ["tower/video_VLAD/conv2/cluster_weights", "tower/model1/gates/weights"]


def _graph_with_adam():
    """A float32 and a float16 variable, an int32 global_step and an Adam train op."""
    graph = tf.Graph()
    with graph.as_default():
        step = V1.get_variable("global_step", [], tf.int32, V1.zeros_initializer(),
                               trainable=False)
        a = V1.get_variable(NAMES[0], [3, 4], tf.float32)
        b = V1.get_variable(NAMES[1], [4, 2], tf.float16)
        loss = tf.reduce_sum(tf.square(a)) + tf.reduce_sum(tf.cast(b, tf.float32))
        train_op = V1.train.AdamOptimizer(0.1).minimize(loss)
        saver = V1.train.Saver(max_to_keep=None)
    return graph, step, [a, b], train_op, saver


def _files(directory):
    return sorted(tf.io.gfile.listdir(directory))



def test_save_atomically_renames_and_only_training_saves_enter_state_file(tmp_path):
    run = str(tmp_path)
    graph, step, variables, train_op, saver = _graph_with_adam()
    with V1.Session(graph=graph) as sess:
        sess.run(V1.global_variables_initializer())
        saved = {}
        for n in (10, 20):
            sess.run(train_op)
            step.load(n, sess)
            path = cu.save_atomically(saver, sess, os.path.join(run, "model.ckpt"),
                                      global_step=step, record_in_state=True)
            assert path == os.path.join(run, f"model.ckpt-{n}")
            saved[n] = sess.run(variables)
        inference = cu.save_atomically(saver, sess, os.path.join(run, "inference_model_20"))
    assert inference == os.path.join(run, "inference_model_20")
    expected = sorted(f"{base}.{ext}" for base in ("model.ckpt-10", "model.ckpt-20",
                                                   "inference_model_20")
                      for ext in ("index", "meta", "data-00000-of-00001")) + ["checkpoint"]
    assert _files(run) == sorted(expected)  # no temporary files left
    state = tf.train.get_checkpoint_state(run)
    assert state.model_checkpoint_path.endswith("model.ckpt-20")
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == [
        "model.ckpt-10", "model.ckpt-20"]
    for n in (10, 20):
        values = read_checkpoint(os.path.join(run, f"model.ckpt-{n}"))
        assert values["global_step"] == n
        for name, value in zip(NAMES, saved[n], strict=True):
            np.testing.assert_array_equal(values[name], value)
            assert values[name].dtype == value.dtype
    # The meta graph of the renamed checkpoint restores the renamed data.
    with tf.Graph().as_default(), V1.Session() as sess:
        V1.train.import_meta_graph(os.path.join(run, "model.ckpt-10.meta")).restore(
            sess, os.path.join(run, "model.ckpt-10"))
        restored = {v.op.name: v for v in V1.global_variables()}[NAMES[0]]
        np.testing.assert_array_equal(sess.run(restored), saved[10][0])


def test_failed_save_keeps_previous_checkpoint_and_leaves_no_temp_files(tmp_path):
    graph, step, variables, _, saver = _graph_with_adam()
    target = os.path.join(str(tmp_path), "inference_model")
    with V1.Session(graph=graph) as sess:
        sess.run(V1.global_variables_initializer())
        before = sess.run(variables[0])
        cu.save_atomically(saver, sess, target)
    with V1.Session(graph=graph) as sess:  # nothing initialised: the save fails
        with pytest.raises(tf.errors.FailedPreconditionError):
            cu.save_atomically(saver, sess, target)
    assert _files(str(tmp_path)) == ["inference_model.data-00000-of-00001",
                                     "inference_model.index", "inference_model.meta"]
    np.testing.assert_array_equal(read_checkpoint(target)[NAMES[0]], before)


def test_save_over_existing_checkpoint_replaces_it(tmp_path):
    graph, step, variables, train_op, saver = _graph_with_adam()
    target = os.path.join(str(tmp_path), "inference_model")
    with V1.Session(graph=graph) as sess:
        sess.run(V1.global_variables_initializer())
        cu.save_atomically(saver, sess, target, write_meta_graph=False)
        sess.run(train_op)
        after = sess.run(variables[1])
        cu.save_atomically(saver, sess, target, write_meta_graph=False)
    assert _files(str(tmp_path)) == ["inference_model.data-00000-of-00001",
                                     "inference_model.index"]
    np.testing.assert_array_equal(read_checkpoint(target)[NAMES[1]], after)


def _tiny_checkpoint(path):
    with tf.Graph().as_default(), V1.Session() as sess:
        v = V1.get_variable("tower/x", [2], tf.float32)
        sess.run(v.initializer)
        V1.train.Saver([v]).save(sess, path, write_state=False, write_meta_graph=False)


def test_latest_checkpoint_ignores_state_file_and_non_training_names(tmp_path):
    run = str(tmp_path)
    for name in ("model.ckpt-5", "model.ckpt-30", "model.ckpt-100", "inference_model_200",
                 "model.ckpt-150_backup", "model.ckpt-7x"):
        _tiny_checkpoint(os.path.join(run, name))
    tf.io.gfile.remove(os.path.join(run, "model.ckpt-5.index"))  # half-written: no index
    # A 2018 tool rewrote the state file to point at an inference checkpoint.
    V1.train.update_checkpoint_state(run, os.path.join(run, "inference_model_200"))
    assert cu.latest_checkpoint(run) == os.path.join(run, "model.ckpt-100")
    assert cu.latest_checkpoint(run + "/") == os.path.join(run, "model.ckpt-100")
    expected = [(30, os.path.join(run, "model.ckpt-30")),
                (100, os.path.join(run, "model.ckpt-100"))]
    assert cu.list_checkpoints(os.path.join(run, "model.ckpt")) == expected
    assert cu.list_checkpoints(run) == expected
    assert cu.latest_checkpoint(run, basename="inference_model") is None
    assert cu.checkpoint_exists(os.path.join(run, "model.ckpt-30"))
    assert not cu.checkpoint_exists(os.path.join(run, "model.ckpt-5"))
    assert cu.latest_checkpoint(os.path.join(run, "empty")) is None


def test_list_and_latest_on_ram_filesystem():
    """Everything goes through gfile: a ram:// train dir works like a local one."""
    run = "ram://checkpoint_utils_test/run"
    graph, step, _, _, saver = _graph_with_adam()
    with V1.Session(graph=graph) as sess:
        sess.run(V1.global_variables_initializer())
        for n in (9, 100, 20):
            step.load(n, sess)
            cu.save_atomically(saver, sess, run + "/model.ckpt", global_step=n,
                               record_in_state=True)
        cu.save_atomically(saver, sess, run + "/inference_model_500")
    assert cu.list_checkpoints(run + "/model.ckpt") == [
        (9, run + "/model.ckpt-9"), (20, run + "/model.ckpt-20"), (100, run + "/model.ckpt-100")]
    assert cu.latest_checkpoint(run) == run + "/model.ckpt-100"
    assert not [f for f in tf.io.gfile.listdir(run) if "tmp" in f]
    assert read_checkpoint(run + "/model.ckpt-20")["global_step"] == 20


def test_step_of_and_suffixes():
    assert cu.step_of("gs://b/run/model.ckpt-170010") == 170010
    assert cu.step_of("model.ckpt-170010.index") == 170010
    assert cu.step_of("avg_c10h400_150010_220010.ckpt-0") == 0
    assert cu.step_of("inference_model_10") is None
    assert cu.strip_checkpoint_suffix("a/model.ckpt-5.data-00000-of-00001") == "a/model.ckpt-5"
    assert cu.strip_checkpoint_suffix("a/model.ckpt-5.meta") == "a/model.ckpt-5"


def test_ensemble_member_keeps_model1_and_model10_apart():
    assert cu.ensemble_member("tower/video_VLAD/conv2/cluster_weights") == (
        0, "video_VLAD/conv2/cluster_weights")
    assert cu.ensemble_member("tower/model1/gates/weights") == (1, "gates/weights")
    assert cu.ensemble_member("tower/model10/gates/weights") == (10, "gates/weights")
    assert cu.ensemble_member("tower/model1x/w") == (0, "model1x/w")
    assert cu.ensemble_member("global_step") is None


def test_model_variable_names_drop_slots_of_every_optimizer():
    names = ["global_step", "beta1_power", "beta2_power", "tower/w", "tower/w/Adam",
             "tower/w/Adam_1", "tower/w/Momentum", "tower/w/RMSProp", "tower/w/RMSProp_1",
             "tower/w/Adagrad", "tower/w/Ftrl", "tower/w/Ftrl_1", "tower/w/MyOptimizer",
             "tower/hidden1_weights/hidden1_weights", "tower/gating_prob_weights",
             "tower/hidden1_bn/moving_mean"]
    assert cu.model_variable_names(names) == [
        "tower/w", "tower/hidden1_weights/hidden1_weights", "tower/gating_prob_weights",
        "tower/hidden1_bn/moving_mean"]
    # Without the other names, the default slot names are still recognised.
    assert not cu.is_model_variable("tower/w/Adam_1")
    assert not cu.is_model_variable("tower/model3/beta2_power")
    assert cu.is_model_variable("tower/w/MyOptimizer")
    assert not cu.is_model_variable("tower/w/MyOptimizer", names)


@pytest.mark.parametrize("optimizer", [
    lambda: V1.train.AdamOptimizer(0.1),
    lambda: V1.train.MomentumOptimizer(0.1, 0.9),
    lambda: V1.train.RMSPropOptimizer(0.1, momentum=0.5, centered=True),
    lambda: V1.train.AdagradOptimizer(0.1),
    lambda: V1.train.FtrlOptimizer(0.1),
    lambda: V1.train.AdadeltaOptimizer(0.1),
    lambda: V1.train.ProximalAdagradOptimizer(0.1),
    lambda: V1.train.AdamOptimizer(0.1, name="Renamed"),
])
def test_model_variables_of_a_real_optimizer_graph(optimizer):
    with tf.Graph().as_default():
        step = cu.create_global_step()
        w = V1.get_variable("tower/experts/weights", [3, 2], tf.float32)
        h = V1.get_variable("tower/gates/weights", [3, 2], tf.float32)
        loss = tf.reduce_sum(tf.square(w)) + tf.reduce_sum(h)
        optimizer().minimize(loss, global_step=step)
        everything = V1.global_variables()
        assert len(everything) > 3  # the optimizer made slots
        assert cu.model_variables(everything) == [w, h]
        assert step.dtype.base_dtype == tf.int32 and step.op.name == "global_step"


def test_inference_name_follows_the_eval_resave_rules():
    weights = [0.39, 0.26, 0.21, 0.14]
    assert cu.inference_name("model.ckpt-170010", True, weights) == "inference_model"
    assert cu.inference_name("inference_model_ensemble_YHLS-0", False, weights) == (
        "inference_model_ensemble_039_026_021_014_YHLS-0")
    assert cu.inference_name("inference_model_float16_mean_ensemble-0", False, [1.0]) == (
        "inference_model_float16_mean_ensemble_10-0")
    assert cu.inference_name("inference_model_10", False, weights) is None
    assert cu.inference_name("model.ckpt-170010", False, weights) == "inference_model_170010"
    assert cu.inference_name("avg_c10h400_150010_220010.ckpt-0", False, weights) == (
        "inference_model_avg_c10h400_150010_220010.ckpt-0")


def test_write_checkpoint_keeps_dtypes_and_state_file(tmp_path):
    run = str(tmp_path)
    _tiny_checkpoint(os.path.join(run, "model.ckpt-10"))
    V1.train.update_checkpoint_state(run, os.path.join(run, "model.ckpt-10"))
    with open(os.path.join(run, "checkpoint"), "rb") as f:
        state = f.read()
    values = {"tower/a/b": np.arange(6, dtype=np.float16).reshape(2, 3) / 7,
              "tower/c": np.linspace(-1, 1, 5, dtype=np.float32)}
    path = cu.write_checkpoint(values, os.path.join(run, "written"))
    assert path == os.path.join(run, "written-0")
    back = read_checkpoint(path)
    assert sorted(back) == ["global_step", "tower/a/b", "tower/c"]
    assert back["global_step"].dtype == np.int32 and back["global_step"] == 0
    for name, value in values.items():
        assert back[name].dtype == value.dtype
        np.testing.assert_array_equal(back[name], value)
    assert os.path.exists(path + ".meta")
    with open(os.path.join(run, "checkpoint"), "rb") as f:
        assert f.read() == state
