"""MixNeXtVLADModel: its variables and parameter count, its predictions and its
distillation term against numpy equations written here, the training-loss composition of
model_graph, ensembles of it, learning, its settings, and train.py + eval.py on sample
data."""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from test_nextvlad import (  # noqa: E402  (the NeXtVLAD numpy reference)
    _bn,
    _randomise_variables,
    _sigmoid,
    _softmax,
    numpy_nextvlad,
    stream_variables,
    videos,
)

import frame_level_models  # noqa: E402
import losses  # noqa: E402
import model_graph  # noqa: E402
import registry  # noqa: E402
from errors import UsageError  # noqa: E402
from helpers import NUM_CLASSES, json_record, run_script, steps_on_disk  # noqa: E402
from model_config import DataConfig, MemberConfig, ModelConfig, ModelSettings  # noqa: E402

V1 = tf.compat.v1
FRAMES, VOCAB = 6, 5
SIZES = dict(cluster_size=4, hidden_size=16, groups=4, expansion=2, gating_reduction=4)
LOGISTIC = dict(video_level_classifier_model="LogisticModel")


def build(is_training, mix_number=2, **params):
    inputs = V1.placeholder(tf.float32, [None, FRAMES, 1152])
    num_frames = V1.placeholder(tf.int32, [None])
    with V1.variable_scope("tower"):
        out = frame_level_models.MixNeXtVLADModel().create_model(
            model_input=inputs, vocab_size=VOCAB, num_frames=num_frames,
            is_training=is_training, mix_number=mix_number, **{**SIZES, **LOGISTIC, **params})
    return inputs, num_frames, out


def test_variable_names_and_shapes():
    """The public code's scopes: branch_<n>/{video_vlad,audio_vlad,hidden1_*,gating_*,
    classifier}, and mix_weights_bn + mix_weights outside the branches."""
    with tf.Graph().as_default():
        build(is_training=True, mix_number=3)
        shapes = {v.op.name[len("tower/"):]: v.shape.as_list() for v in V1.global_variables()}
    expected = {"mix_weights/weights": [1152, 3], "mix_weights/biases": [3]}
    for stat in ("beta", "gamma", "moving_mean", "moving_variance"):
        expected[f"mix_weights_bn/{stat}"] = [1152]
    vlad = 4 * 2048 // 4 + 2 * 256 // 2
    for n in range(3):
        branch = f"branch_{n}/"
        expected.update(stream_variables(f"{branch}video_vlad/", f"{branch}audio_vlad/"))
        expected.update({f"{branch}hidden1_weights": [vlad, 16],
                         f"{branch}gating_weights_1": [16, 4],
                         f"{branch}gating_weights_2": [4, 16],
                         f"{branch}fully_connected/weights": [16, VOCAB],
                         f"{branch}fully_connected/biases": [VOCAB]})
        for scope, depth in (("hidden1_bn", 16), ("gating_bn", 4)):
            for stat in ("beta", "gamma", "moving_mean", "moving_variance"):
                expected[f"{branch}{scope}/{stat}"] = [depth]
    assert shapes == expected


@pytest.mark.parametrize("classifier", ["MoeModel", "LogisticModel"])
def test_parameter_count_formula_matches_the_graph(classifier):
    moe = classifier == "MoeModel"
    with tf.Graph().as_default():
        build(is_training=True, mix_number=3, video_level_classifier_model=classifier,
              **({"num_mixtures": 2} if moe else {}))
        built = sum(int(np.prod(v.shape)) for v in V1.trainable_variables())
    assert built == frame_level_models.MixNeXtVLADModel.parameter_count(
        VOCAB, mix_number=3, **SIZES, num_mixtures=2 if moe else None)


def test_float16_storage_of_every_branch():
    with tf.Graph().as_default():
        build(is_training=False, float16_flag=True)
        half = {v.op.name[len("tower/"):] for v in V1.global_variables()
                if v.dtype.base_dtype == tf.float16}
    per_branch = ["video_vlad/cluster_weights", "video_vlad/fully_connected/weights",
                  "audio_vlad/cluster_weights", "audio_vlad/fully_connected/weights",
                  "hidden1_weights", "gating_weights_1", "gating_weights_2",
                  "fully_connected/weights"]
    assert half == {f"branch_{n}/{name}" for n in range(2) for name in per_branch}


# --- numpy reference (inference mode) ------------------------------------------------


def numpy_branch_logits(frames, counts, values, branch):
    """One NeXtVLAD network with a LogisticModel classifier: its class logits."""
    prefix = f"branch_{branch}/"
    v = {n[len(prefix):]: a for n, a in values.items() if n.startswith(prefix)}
    mask = (np.arange(FRAMES)[None, :] < counts[:, None]).astype(np.float64)
    vlad = np.concatenate([
        numpy_nextvlad(frames[:, :, :1024], mask, v, "video_vlad", 4, 4),
        numpy_nextvlad(frames[:, :, 1024:], mask, v, "audio_vlad", 2, 2)], axis=1)
    hidden = _bn(vlad @ v["hidden1_weights"], v, "hidden1_bn")
    gates = np.maximum(_bn(hidden @ v["gating_weights_1"], v, "gating_bn"), 0)
    hidden = hidden * _sigmoid(gates @ v["gating_weights_2"])
    return hidden @ v["fully_connected/weights"] + v["fully_connected/biases"]


def numpy_mix_weights(frames, values):
    """w = softmax(BN(mean of all FRAMES rows) @ W + b) over the branches."""
    mean = _bn(frames.mean(axis=1), values, "mix_weights_bn")
    return _softmax(mean @ values["mix_weights/weights"] + values["mix_weights/biases"])


def numpy_mix(weights, branch_logits):
    """p = sigmoid(sum_m w_m z_m): weights [B, M], branch logits [B, M, C]."""
    return _sigmoid((weights[:, :, None] * branch_logits).sum(axis=1))


def numpy_distillation(mixed_logits, branch_logits, temperature):
    """mean_b sum_m sum_c q_c (log q_c - log p_mc), q = softmax(z/T), p_m = softmax(z_m/T)."""
    q = _softmax(mixed_logits / temperature)[:, None, :]
    p = _softmax(branch_logits / temperature)
    return (q * (np.log(q) - np.log(p))).sum(axis=(1, 2)).mean()


def test_predictions_match_numpy_and_do_not_depend_on_the_batch():
    rng = np.random.default_rng(0)
    frames, counts = videos(rng, 6)
    with tf.Graph().as_default():
        inputs, num_frames, out = build(is_training=False, mix_number=3)
        assert set(out) == {"predictions"}  # no training terms outside training
        with V1.Session() as sess:
            values = _randomise_variables(sess, rng)
            batch = sess.run(out["predictions"], {inputs: frames, num_frames: counts})
            alone = [sess.run(out["predictions"],
                              {inputs: frames[i:i + 1], num_frames: counts[i:i + 1]})
                     for i in range(len(counts))]
    x = frames.astype(np.float64)
    branch_logits = np.stack([numpy_branch_logits(x, counts, values, n) for n in range(3)],
                             axis=1)
    expected = numpy_mix(numpy_mix_weights(x, values), branch_logits)
    np.testing.assert_allclose(batch, expected, atol=1e-5)
    np.testing.assert_allclose(np.concatenate(alone), batch, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 3.0])
def test_distillation_loss_is_the_numpy_kl(temperature):
    rng = np.random.default_rng(3)
    mixed, branches = rng.normal(scale=3, size=(4, 7)), rng.normal(scale=3, size=(4, 3, 7))
    with tf.Graph().as_default(), V1.Session() as sess:
        got = sess.run(losses.ensemble_distillation_loss(
            tf.constant(mixed, tf.float32), tf.constant(branches, tf.float32), temperature))
    np.testing.assert_allclose(got, numpy_distillation(mixed, branches, temperature),
                               rtol=1e-5, atol=1e-6)


def test_distillation_of_identical_logits_is_zero_and_its_gradient_reaches_both():
    with tf.Graph().as_default(), V1.Session() as sess:
        mixed = tf.constant([[1.0, -2.0, 0.5]])
        branches = tf.stack([mixed, mixed + [[0.0, 1.0, 0.0]]], axis=1)
        loss = losses.ensemble_distillation_loss(mixed, branches, 2.0)
        same = losses.ensemble_distillation_loss(mixed, mixed[:, None, :], 2.0)
        grads = tf.gradients(loss, [mixed, branches])
        value, zero, (to_mixed, to_branches) = sess.run([loss, same, grads])
    assert value > 0 and abs(zero) < 1e-7
    assert np.abs(to_mixed).max() > 0 and np.abs(to_branches).max() > 0


def test_training_terms_match_numpy():
    """In training the model returns each branch's predictions and
    cl_lambda * KL(mixture || branch) at cl_temperature, on the logits it mixes."""
    rng = np.random.default_rng(4)
    frames, counts = videos(rng, 5)
    with tf.Graph().as_default():
        inputs, num_frames, out = build(is_training=True, mix_number=3, drop_rate=0.0,
                                        cl_temperature=3.0, cl_lambda=9.0)
        assert len(out["branch_predictions"]) == 3
        with V1.Session() as sess:
            sess.run(V1.global_variables_initializer())
            final, branches, auxiliary = sess.run(
                [out["predictions"], out["branch_predictions"], out["auxiliary_loss"]],
                {inputs: frames, num_frames: counts})
    logit = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731
    branch_logits = logit(np.stack(branches, axis=1).astype(np.float64))
    expected = 9.0 * numpy_distillation(logit(final.astype(np.float64)), branch_logits, 3.0)
    np.testing.assert_allclose(auxiliary, expected, rtol=1e-4, atol=1e-5)


# --- the training loss --------------------------------------------------------------


def numpy_cross_entropy(p, y, eps=1e-5):
    return -(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)).sum(axis=1).mean()


def test_training_loss_adds_branch_label_losses_and_the_auxiliary_loss():
    rng = np.random.default_rng(5)
    final, b0, b1 = (rng.uniform(0.01, 0.99, size=(4, VOCAB)) for _ in range(3))
    labels = (rng.uniform(size=(4, VOCAB)) < 0.4).astype(np.float64)
    loss_fn = losses.CrossEntropyLoss()
    with tf.Graph().as_default(), V1.Session() as sess:
        def outputs(**extra):
            return model_graph.ModelOutputs(
                predictions=tf.constant(final, tf.float32), regularization_loss=tf.constant(0.0),
                update_ops=[], **extra)
        y = tf.constant(labels, tf.float32)
        full, plain, label_only = sess.run([
            model_graph.training_loss(loss_fn, outputs(
                branch_predictions=[tf.constant(b0, tf.float32), tf.constant(b1, tf.float32)],
                auxiliary_loss=tf.constant(0.75)), y),
            model_graph.training_loss(loss_fn, outputs(), y),
            model_graph.label_loss(loss_fn, tf.constant(final, tf.float32), y)])
    expected = (numpy_cross_entropy(final, labels) + numpy_cross_entropy(b0, labels)
                + numpy_cross_entropy(b1, labels) + 0.75)
    np.testing.assert_allclose(full, expected, rtol=1e-5)
    np.testing.assert_allclose(plain, numpy_cross_entropy(final, labels), rtol=1e-5)
    assert plain == label_only


def _config(members=1, **settings):
    settings = ModelSettings(nextvlad_cluster_size=4, nextvlad_hidden_size=16, groups=4,
                             gating_reduction=4, moe_num_mixtures=2, mix_number=2, **settings)
    data = DataConfig(feature_names=("rgb", "audio"), feature_sizes=(1024, 128),
                      frame_features=True, num_classes=VOCAB, max_frames=FRAMES)
    return ModelConfig(data=data, members=tuple(
        MemberConfig(model="MixNeXtVLADModel", weight=0.5, settings=settings)
        for _ in range(members)))


@pytest.mark.parametrize("members", [1, 2])
def test_build_predictions_keeps_every_members_terms_in_training_only(members):
    config = _config(members)
    with tf.Graph().as_default():
        raw = V1.placeholder(tf.float32, [None, FRAMES, 1152])
        count = V1.placeholder(tf.int32, [None])
        train = model_graph.build_predictions(raw, count, config, is_training=True)
        infer = model_graph.build_predictions(raw, count, config, is_training=False, reuse=True)
        names = {v.op.name for v in V1.global_variables()}
    assert len(train.branch_predictions) == 2 * members
    assert infer.branch_predictions == [] and infer.auxiliary_loss is None
    assert "tower/branch_1/hidden1_weights" in names
    assert ("tower/model1/branch_1/hidden1_weights" in names) == (members == 2)


def test_training_lowers_the_loss():
    rng = np.random.default_rng(1)
    frames, counts = videos(rng, 8)
    labels = (rng.uniform(size=(8, VOCAB)) < 0.4).astype(np.float32)
    with tf.Graph().as_default():
        V1.set_random_seed(2)
        inputs, num_frames, out = build(is_training=True)
        outputs = model_graph.ModelOutputs(
            predictions=out["predictions"], regularization_loss=tf.constant(0.0), update_ops=[],
            branch_predictions=out["branch_predictions"], auxiliary_loss=out["auxiliary_loss"])
        loss = model_graph.training_loss(losses.CrossEntropyLoss(), outputs, labels)
        with tf.control_dependencies(V1.get_collection(V1.GraphKeys.UPDATE_OPS)):
            step = V1.train.AdamOptimizer(0.01).minimize(loss)
        feed = {inputs: frames, num_frames: counts}
        with V1.Session() as sess:
            sess.run(V1.global_variables_initializer())
            history = [sess.run([loss, step], feed)[0] for _ in range(30)]
    assert np.all(np.isfinite(history))
    assert np.mean(history[-5:]) < 0.7 * np.mean(history[:5])


# --- settings -------------------------------------------------------------------------


@pytest.mark.parametrize("setting, value, message", [
    ("mix_number", 0, "--mix_number=0 must be at least 1"),
    ("cl_temperature", 0.0, "--cl_temperature=0.0 must be a finite number above 0"),
    ("cl_temperature", float("nan"), "--cl_temperature=nan must be"),
    ("cl_lambda", -1.0, "--cl_lambda=-1.0 must be finite and at least 0"),
])
def test_bad_settings_are_refused(setting, value, message):
    with pytest.raises(UsageError, match=message):
        ModelSettings(**{setting: value}).validate()


def test_the_mixture_settings_belong_to_the_mixture_only():
    changed = ModelSettings(mix_number=2)
    assert registry.member_arguments(MemberConfig("MixNeXtVLADModel", settings=changed))[
        "mix_number"] == 2
    with pytest.raises(UsageError, match="--mix_number=2 is not a setting of NeXtVLADModel"):
        registry.member_arguments(MemberConfig("NeXtVLADModel", settings=changed))


# --- the scripts ----------------------------------------------------------------------


def test_train_then_eval(sample_data, tmp_path):
    run = str(tmp_path / "mix")
    model = ["--frame_features", "--feature_names=rgb,audio", "--feature_sizes=1024,128",
             f"--num_classes={NUM_CLASSES}", "--max_frames=40", "--model=MixNeXtVLADModel",
             "--video_level_classifier_model=LogisticModel", "--mix_number=2",
             "--cl_temperature=3", "--cl_lambda=9", "--nextvlad_cluster_size=4",
             "--nextvlad_hidden_size=16", "--groups=4", "--gating_reduction=4"]
    trained = run_script("train", f"--train_data_pattern={sample_data}/frame/train*.tfrecord",
                         f"--train_dir={run}", "--batch_size=8", "--num_readers=2",
                         "--max_steps=12", "--export_model_steps=6", "--random_seed=1",
                         *model)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert steps_on_disk(run)[-1] == 12
    result = json_record(run_script(
        "eval", f"--eval_data_pattern={sample_data}/frame/validate*.tfrecord",
        f"--train_dir={run}", "--batch_size=7", "--run_once=True"))
    assert np.isfinite(result["gap"]) and 0 <= result["gap"] <= 1, result
    assert np.isfinite(result["loss"]), result
