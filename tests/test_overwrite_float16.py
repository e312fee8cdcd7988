"""overwrite_float16_ckpt: a 12-model float16 template filled from 12 float32 models."""
import os

import numpy as np
import pytest
import tensorflow as tf

import ensemble_fill
import overwrite_float16_ckpt
from errors import UsageError
from helpers import member_prefix, read_checkpoint, run_script

V1 = tf.compat.v1
MEMBERS = 12
TEMPLATE = "inference_model_10"
# inner name -> (shape, template dtype); the single models store everything in float32.
MODEL = {
    "video_VLAD/conv2/cluster_weights": ([3, 2], tf.float16),
    "gates/weights": ([2, 3], tf.float16),
    "hidden1_bn/beta": ([3], tf.float32),
}


def _save_models(paths_and_values, variables, write_meta_graph=True):
    """Saves one checkpoint per (path, {name: value}) of a graph with an Adam step."""
    with tf.Graph().as_default(), V1.Session() as sess:
        V1.get_variable("global_step", [], tf.int32, V1.zeros_initializer(), trainable=False)
        made = {n: V1.get_variable(n, s, d) for n, (s, d) in variables.items()}
        loss = tf.add_n([tf.reduce_sum(tf.cast(v, tf.float32)) for v in made.values()])
        train_op = V1.train.AdamOptimizer(0.1).minimize(loss)
        saver = V1.train.Saver(max_to_keep=None)
        sess.run(V1.global_variables_initializer())
        sess.run(train_op)  # optimizer slots exist and are non-zero
        for path, values in paths_and_values:
            for name, value in values.items():
                made[name].load(value, sess)
            saver.save(sess, path, write_meta_graph=write_meta_graph)


def _single_model_values(rng, i, model=None):
    return {"tower/" + inner: rng.normal(size=shape) + 100.0 * i
            for inner, (shape, _) in (model or MODEL).items()}


def _float32(model):
    return {"tower/" + inner: (shape, tf.float32) for inner, (shape, _) in model.items()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """train_dir with the 12-model template (+ .meta and state file) and 12 sources."""
    root = tmp_path_factory.mktemp("overwrite")
    train_dir = str(root / "ensemble")
    template_vars = {member_prefix(i) + inner: spec
                     for i in range(MEMBERS) for inner, spec in MODEL.items()}
    _save_models([(os.path.join(train_dir, TEMPLATE), {})], template_vars)
    rng = np.random.default_rng(1)
    sources = [str(root / f"c{i}" / f"inference_model_avg_c{i}.ckpt-0") for i in range(MEMBERS)]
    _save_models([(p, _single_model_values(rng, i)) for i, p in enumerate(sources)],
                 _float32(MODEL), write_meta_graph=False)
    return train_dir, sources, str(root)



def _check_filled(output, sources):
    written = read_checkpoint(output)
    expected_names = {member_prefix(i) + inner for i in range(MEMBERS) for inner in MODEL}
    assert set(written) == expected_names | {"global_step"}  # no Adam slots, no beta powers
    assert written["global_step"].dtype == np.int32 and written["global_step"] == 0
    for i, source in enumerate(sources):
        source_values = read_checkpoint(source)
        for inner, (_, dtype) in MODEL.items():
            value = written[member_prefix(i) + inner]
            assert value.dtype == dtype.as_numpy_dtype
            # numpy's float32 -> float16 cast rounds to nearest, as required
            np.testing.assert_array_equal(
                value, source_values["tower/" + inner].astype(dtype.as_numpy_dtype))
    # model1, model10 and model11 hold three different sources
    firsts = {i: written[member_prefix(i) + "gates/weights"][0, 0] for i in (1, 10, 11)}
    assert len(set(firsts.values())) == 3
    return written


def test_fills_every_member_from_its_own_checkpoint(setup):
    train_dir, sources, _ = setup
    with open(os.path.join(train_dir, "checkpoint"), "rb") as f:
        state = f.read()
    output = overwrite_float16_ckpt.overwrite(train_dir, TEMPLATE, "inference_model_fp16", sources)
    assert output == os.path.join(train_dir, "inference_model_fp16-0")
    written = _check_filled(output, sources)
    with open(os.path.join(train_dir, "checkpoint"), "rb") as f:
        assert f.read() == state
    assert not [f for f in os.listdir(train_dir) if "tmp" in f]
    # The template's meta graph restores the result (what eval.py does).
    with tf.Graph().as_default(), V1.Session() as sess:
        V1.train.import_meta_graph(output + ".meta").restore(sess, output)
        var = {v.op.name: v for v in V1.global_variables()}["tower/model10/gates/weights"]
        np.testing.assert_array_equal(sess.run(var), written["tower/model10/gates/weights"])


def test_template_without_meta_graph_gets_plain_variables(setup, tmp_path):
    train_dir, sources, _ = setup
    for suffix in (".index", ".data-00000-of-00001"):
        tf.io.gfile.copy(os.path.join(train_dir, TEMPLATE + suffix), str(tmp_path / TEMPLATE)
                         + suffix)
    output = overwrite_float16_ckpt.overwrite(str(tmp_path), TEMPLATE + ".index", "out", sources)
    _check_filled(output, sources)
    assert os.path.exists(output + ".meta")


def test_template_and_output_on_ram_filesystem(setup):
    train_dir, sources, _ = setup
    ram = "ram://overwrite_test/ensemble"
    for suffix in (".index", ".data-00000-of-00001", ".meta"):
        tf.io.gfile.copy(os.path.join(train_dir, TEMPLATE + suffix), f"{ram}/{TEMPLATE}{suffix}")
    output = overwrite_float16_ckpt.overwrite(ram, TEMPLATE, "fp16", sources)
    assert output == ram + "/fp16-0"
    _check_filled(output, sources)


def test_missing_variable_and_shape_mismatch_name_both_sides(setup):
    train_dir, sources, root = setup
    rng = np.random.default_rng(2)
    lacking = {k: v for k, v in MODEL.items() if k != "gates/weights"}
    wider = dict(MODEL, **{"gates/weights": ([2, 4], tf.float16)})
    extra = dict(MODEL, **{"gating_prob_weights": ([2, 2], tf.float16)})
    bad = {}
    for name, model in (("lacking", lacking), ("wider", wider), ("extra", extra)):
        bad[name] = os.path.join(root, name, "model.ckpt-5")
        _save_models([(bad[name], _single_model_values(rng, 3, model))], _float32(model),
                     write_meta_graph=False)
    fill = ensemble_fill.fill_template
    template = os.path.join(train_dir, TEMPLATE)
    with pytest.raises(UsageError) as error:
        fill(template, sources[:3] + [bad["lacking"]] + sources[4:])
    assert "tower/model3/gates/weights" in str(error.value)
    assert bad["lacking"] in str(error.value) and "tower/gates/weights" in str(error.value)
    with pytest.raises(UsageError) as error:
        fill(template, sources[:10] + [bad["wider"]] + sources[11:])
    assert "tower/model10/gates/weights" in str(error.value)
    assert bad["wider"] in str(error.value) and "[2, 4]" in str(error.value)
    with pytest.raises(UsageError) as error:
        fill(template, [bad["extra"]] + sources[1:])
    assert "tower/gating_prob_weights" in str(error.value) and bad["extra"] in str(error.value)
    with pytest.raises(UsageError, match="11 paths but template .* holds 12 models"):
        fill(template, sources[:11])
    with pytest.raises(UsageError, match="no_such_model"):
        overwrite_float16_ckpt.overwrite(train_dir, "no_such_model", "out", sources)


def test_cli_writes_out_name_in_train_dir(setup):
    train_dir, sources, _ = setup
    result = run_script("overwrite_float16_ckpt", f"--train_dir={train_dir}",
                        f"--inference_model={TEMPLATE}", "--checkpoints=" + ",".join(sources))
    assert result.returncode == 0, result.stderr
    output = os.path.join(train_dir, "inference_model_float16_mean_ensemble-0")
    assert output in result.stdout
    _check_filled(output, sources)
