"""The frame-level model zoo: builds, learns, scores each video independently of its
batch, defaults to the 2018 settings; LSTM/GRU cells against numpy."""
import inspect
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import frame_level_models  # noqa: E402
import model_config  # noqa: E402
import rnn_cells  # noqa: E402
from errors import UsageError  # noqa: E402

V1 = tf.compat.v1
MAX_FRAMES, FEATURES, VOCAB = 300, 1152, 8
SMALL = dict(iterations=5, cluster_size=8, hidden_size=8, num_mixtures=2)
RNN = dict(num_units=6, num_layers=2)

ZOO = {
    "FrameLevelLogisticModel": ("FrameLevelLogisticModel", {}),
    "DbofModel": ("DbofModel", SMALL),
    "LstmModel": ("LstmModel", RNN),
    "GruModel": ("GruModel", RNN),
    "NetVLADModelLF": ("NetVLADModelLF", dict(SMALL, gating=True, prob_gating=True)),
    "NetVLADModelLF-lightvlad": ("NetVLADModelLF", dict(SMALL, lightvlad=True, vlagd=True)),
    "NetVLADModelLF-vlagd": ("NetVLADModelLF", dict(SMALL, vlagd=True)),
    "DbofModelLF": ("DbofModelLF", SMALL),
    "DbofModelLF-glu": ("DbofModelLF", dict(SMALL, dbof_activation="glu")),
    "GatedDbofModelLF": ("GatedDbofModelLF", SMALL),
    "SoftDbofModelLF": ("SoftDbofModelLF", dict(SMALL, softdbof_maxpool=True)),
    "NetFVModelLF": ("NetFVModelLF", dict(SMALL, gating=True)),
}


def random_videos(rng, batch):
    """L2-normalised frames zero-padded to MAX_FRAMES, random frame counts."""
    num_frames = rng.integers(1, MAX_FRAMES + 1, size=batch).astype(np.int32)
    frames = rng.normal(size=(batch, MAX_FRAMES, FEATURES))
    frames /= np.linalg.norm(frames, axis=2, keepdims=True)
    frames[np.arange(MAX_FRAMES)[None, :] >= num_frames[:, None]] = 0.0
    return frames.astype(np.float32), num_frames


def build(model, params, is_training, reuse=False):
    inputs = V1.placeholder(tf.float32, [None, MAX_FRAMES, FEATURES])
    num_frames = V1.placeholder(tf.int32, [None])
    with V1.variable_scope("tower", reuse=reuse):
        out = getattr(frame_level_models, model)().create_model(
            model_input=inputs, vocab_size=VOCAB, num_frames=num_frames,
            is_training=is_training, **params)
    return inputs, num_frames, out["predictions"]


def variable_names():
    return {v.op.name for v in V1.global_variables()}


@pytest.mark.parametrize("case", sorted(ZOO))
def test_zoo_model_learns_and_scores_videos_independently(case):
    """Training on a fixed batch lowers the loss; in inference mode a video scored
    alone gets the scores it gets inside a batch of 16 (after training, so the
    batch-norm moving statistics are not the initial 0/1)."""
    model, params = ZOO[case]
    rng = np.random.default_rng(0)
    # At most `iterations` frames and contiguous sampling make the training input
    # deterministic (start 0, index min(t, n - 1)): the loss must fall step by step.
    frames, _ = random_videos(rng, 4)
    num_frames = rng.integers(1, SMALL["iterations"] + 1, size=4).astype(np.int32)
    frames[:, SMALL["iterations"]:] = 0.0
    labels = (rng.uniform(size=(4, VOCAB)) < 0.3).astype(np.float32)
    test_frames, test_counts = random_videos(rng, 16)
    with tf.Graph().as_default():
        V1.set_random_seed(1)
        if "sample_random_frames" in getattr(frame_level_models, model).SETTINGS:
            train_params = dict(params, sample_random_frames=False)
        else:
            train_params = params
        inputs, counts, predictions = build(model, train_params, is_training=True)
        eps = 1e-5
        loss = -tf.reduce_mean(tf.reduce_sum(
            labels * tf.math.log(predictions + eps)
            + (1 - labels) * tf.math.log(1 - predictions + eps), axis=1))
        with tf.control_dependencies(V1.get_collection(V1.GraphKeys.UPDATE_OPS)):
            train = V1.train.AdamOptimizer(0.02).minimize(loss)
        eval_inputs, eval_counts, eval_predictions = build(model, params, is_training=False,
                                                           reuse=True)
        with V1.Session() as sess:
            sess.run(V1.global_variables_initializer())
            feed = {inputs: frames, counts: num_frames}
            losses = [sess.run([loss, train], feed)[0] for _ in range(10)]
            in_batch = sess.run(eval_predictions, {eval_inputs: test_frames,
                                                   eval_counts: test_counts})
            alone = sess.run(eval_predictions, {eval_inputs: test_frames[5:6],
                                                eval_counts: test_counts[5:6]})
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses
    assert np.sum(np.diff(losses) > 0) <= 1, losses
    assert in_batch.shape == (16, VOCAB)
    assert np.all((in_batch >= 0) & (in_batch <= 1))
    np.testing.assert_allclose(alone[0], in_batch[5], rtol=0, atol=1e-5)


def test_explicit_arguments_build_what_they_say():
    with tf.Graph().as_default():
        build("NetVLADModelLF", dict(SMALL, add_batch_norm=False, gating=True), True)
        names = variable_names()
    assert {"tower/video_VLAD/cluster_biases", "tower/audio_VLAD/cluster_biases",
            "tower/gating_biases"} <= names
    assert not any("cluster_bn" in n or "gating_bn" in n for n in names)
    assert "tower/hidden1_bn/gamma" in names  # hidden1_bn is always there (SPEC 4.1)
    with tf.Graph().as_default():
        build("NetVLADModelLF", dict(SMALL, cluster_size=4), True)
        variables = {v.op.name: v.shape.as_list() for v in V1.global_variables()}
    assert "tower/video_VLAD/cluster_bn/beta" in variables
    assert variables["tower/video_VLAD/conv2/cluster_weights"] == [1024, 4]


@pytest.mark.parametrize("model", sorted({model for model, _ in ZOO.values()}))
def test_argument_defaults_are_the_settings_defaults(model):
    """Each create_model argument a setting maps to defaults to that setting's default
    (the 2018 flag's), so a model built directly is the model the flags' defaults build."""
    cls = getattr(frame_level_models, model)
    parameters = inspect.signature(cls().create_model).parameters
    defaults = model_config.ModelSettings()
    for setting, argument in cls.SETTINGS.items():
        assert parameters[argument].default == getattr(defaults, setting), (setting, argument)


def test_bad_inputs_are_usage_errors():
    with tf.Graph().as_default():
        inputs = V1.placeholder(tf.float32, [None, MAX_FRAMES, 1024])
        with pytest.raises(UsageError, match="1152"):
            frame_level_models.NetVLADModelLF().create_model(inputs, VOCAB, tf.ones([2]),
                                                             **SMALL)
    with tf.Graph().as_default(), pytest.raises(UsageError, match="video_level_classifier"):
        build("DbofModelLF", dict(SMALL, video_level_classifier_model="NoSuchModel"), True)
    with tf.Graph().as_default(), pytest.raises(UsageError, match="dbof_activation"):
        build("DbofModelLF", dict(SMALL, dbof_activation="tanh"), True)


# --- LSTM / GRU cells against a numpy step-by-step MultiRNNCell ----------------------------

def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def np_lstm_step(x, state, kernel, bias):
    c, h = state
    i, j, f, o = np.split(np.concatenate([x, h], 1) @ kernel + bias, 4, axis=1)
    c = c * sigmoid(f + 1.0) + sigmoid(i) * np.tanh(j)
    h = np.tanh(c) * sigmoid(o)
    return h, (c, h)


def np_gru_step(x, state, gate_kernel, gate_bias, cand_kernel, cand_bias):
    (h,) = state
    r, u = np.split(sigmoid(np.concatenate([x, h], 1) @ gate_kernel + gate_bias), 2, axis=1)
    c = np.tanh(np.concatenate([x, r * h], 1) @ cand_kernel + cand_bias)
    h = u * h + (1 - u) * c
    return h, (h,)


def np_dynamic_rnn(step, weights, inputs, lengths, units, state_parts):
    """For each frame, every layer in turn; past a length the state is kept, output 0."""
    batch, frames, _ = inputs.shape
    states = [tuple(np.zeros((batch, units)) for _ in range(state_parts)) for _ in weights]
    outputs = np.zeros((batch, frames, units))
    for t in range(frames):
        alive = (t < lengths)[:, None]
        x = inputs[:, t]
        for layer, w in enumerate(weights):
            out, new = step(x, states[layer], *w)
            states[layer] = tuple(np.where(alive, n, o) for n, o in zip(new, states[layer],
                                                                        strict=True))
            x = out
        outputs[:, t] = np.where(alive, x, 0.0)
    return outputs, np.concatenate([s for state in states for s in state], axis=1)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_rnn_matches_numpy_with_sequence_lengths(kind):
    rng = np.random.default_rng(4)
    batch, frames, features, units, layers = 3, 7, 5, 4, 2
    inputs = rng.normal(size=(batch, frames, features))
    lengths = np.array([7, 3, 0], dtype=np.int32)
    cell_cls = rnn_cells.BasicLSTMCell if kind == "lstm" else rnn_cells.GRUCell
    with tf.Graph().as_default():
        with V1.variable_scope("RNN"):
            outputs, state = rnn_cells.dynamic_rnn(
                [cell_cls(units) for _ in range(layers)], tf.constant(inputs, tf.float32),
                tf.constant(lengths))
        variables = {v.op.name: v for v in V1.global_variables()}
        with V1.Session() as sess:
            values = {}
            for name, var in variables.items():
                values[name] = rng.normal(scale=0.5, size=var.shape.as_list())
                var.load(values[name], sess)
            got_outputs, got_state = sess.run([outputs, state])
    prefix = "RNN/rnn/multi_rnn_cell/cell_{}/"
    if kind == "lstm":
        names = ["basic_lstm_cell/kernel", "basic_lstm_cell/bias"]
        shapes = [lambda d: [d + units, 4 * units], lambda d: [4 * units]]
        step, parts = np_lstm_step, 2
    else:
        names = ["gru_cell/gates/kernel", "gru_cell/gates/bias",
                 "gru_cell/candidate/kernel", "gru_cell/candidate/bias"]
        shapes = [lambda d: [d + units, 2 * units], lambda d: [2 * units],
                  lambda d: [d + units, units], lambda d: [units]]
        step, parts = np_gru_step, 1
    expected = {prefix.format(layer) + name: shape(features if layer == 0 else units)
                for layer in range(layers) for name, shape in zip(names, shapes, strict=True)}
    assert {n: v.shape.as_list() for n, v in variables.items()} == expected
    weights = [[values[prefix.format(layer) + name] for name in names]
               for layer in range(layers)]
    want_outputs, want_state = np_dynamic_rnn(step, weights, inputs, lengths, units, parts)
    np.testing.assert_allclose(got_outputs, want_outputs, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got_state, want_state, rtol=0, atol=1e-5)
    assert got_state.shape == (batch, parts * layers * units)
    assert np.all(got_state[2] == 0)  # a 0-frame video keeps the zero state


def test_lstm_model_feeds_the_concatenated_state_to_the_classifier():
    with tf.Graph().as_default():
        build("LstmModel", dict(num_units=3, num_layers=2, num_mixtures=2), True)
        shapes = {v.op.name: v.shape.as_list() for v in V1.global_variables()}
    assert shapes["tower/experts/weights"] == [2 * 2 * 3, 2 * VOCAB]
    assert shapes["tower/RNN/rnn/multi_rnn_cell/cell_0/basic_lstm_cell/kernel"] == [
        FEATURES + 3, 12]


def test_lightvlad_wins_over_vlagd():
    with tf.Graph().as_default():
        build("NetVLADModelLF", dict(SMALL, lightvlad=True, vlagd=True), True)
        names = variable_names()
    assert "tower/video_VLAD/cluster_weights" in names
    assert not any("gate_weights" in n or "cluster_weights2" in n for n in names)
