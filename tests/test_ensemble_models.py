"""Ensembles beyond the seed's: size reports from model flags, other frame-level models,
build_ensemble.py's errors, and the weight search on known data (the seed workflow
is in test_ensemble_workflow.py)."""
import os

import numpy as np
import pytest
import tensorflow as tf

import eval_util
import search_ensemble_weights
from helpers import run_script, size_report_totals

NUM_CLASSES = 20
FRAME_FLAGS = ["--frame_features", "--feature_names=rgb,audio", "--feature_sizes=1024,128"]
# The README's ensemble line: four members at 3862 classes, moe_num_mixtures at its default.
SEED_MEMBERS = [(24, 1440), (32, 1024), (16, 800), (32, 512)]
SEED_FLAGS = FRAME_FLAGS + [
    "--iterations=300", "--gating=True", "--moe_prob_gating=True", "--netvlad_relu=False",
    "--ensemble_num=4", "--float16_flag=True", "--num_classes=3862",
] + [flag for c, h in SEED_MEMBERS for flag in (f"--netvlad_cluster_size={c}",
                                                f"--netvlad_hidden_size={h}")]
# A DbofModelLF ensemble: the repeated flags set each member's DBoF sizes.
DBOF_MEMBERS = [(16, 8), (32, 12)]
DBOF_FLAGS = FRAME_FLAGS + [
    "--model=DbofModelLF", "--iterations=8", "--moe_num_mixtures=2",
    f"--num_classes={NUM_CLASSES}", "--ensemble_num=2",
] + [flag for c, h in DBOF_MEMBERS for flag in (f"--netvlad_cluster_size={c}",
                                                f"--netvlad_hidden_size={h}")]


def seed_model_bytes(num_mixtures, vocab=3862):
    """(bytes as stored, bytes all in float32) of the seed ensemble's inference
    checkpoint, from the 32 variable shapes per model of SPEC 4.1."""
    float32, float16 = 0, 0
    for k, h in SEED_MEMBERS:
        k2 = k // 2
        float32 += (2 * 1024 * k + 4 * k            # video_VLAD: conv2, cluster_weights2, BN
                    + 2 * 128 * k2 + 4 * k2         # audio_VLAD
                    + 4 * h                         # hidden1_bn
                    + h * 2 * h + 2 * h             # hidden2 weights and biases
                    + 2 * h * 2 * h + 4 * 2 * h     # gating weights, gating_bn
                    + vocab * num_mixtures          # experts/biases
                    + 4 * vocab)                    # gating_prob_bn
        float16 += ((1024 * k + 128 * k2) * h       # hidden1_weights
                    + 2 * h * vocab * (num_mixtures + 1)  # gates
                    + 2 * h * vocab * num_mixtures        # experts
                    + vocab * vocab)                      # gating_prob_weights
    step = 4  # int32 global_step
    return step + 4 * float32 + 2 * float16, step + 4 * (float32 + float16)


def error_lines(result):
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def test_size_report_of_the_seed_ensemble_flags():
    stored, float32 = seed_model_bytes(num_mixtures=5)
    assert float32 > 1.9 * stored
    result = run_script("checkpoint_size", *SEED_FLAGS, "--fail_over_limit")
    assert size_report_totals(result.stdout) == (stored, float32)
    assert ("model flags: NetVLADModelLF x4 (c24h1440, c32h1024, c16h800, c32h512), "
            "float16_flag=True, num_classes=3862") in result.stdout
    # 1,069,237,572 bytes: over 1e9 but under the 2**30-byte limit the ensemble was built for.
    assert 10 ** 9 < stored < 2 ** 30
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK: under the 1 GiB limit" in result.stdout.strip().splitlines()[-1]
    # The same four models all in float32 are over it, and --fail_over_limit says so.
    result = run_script("checkpoint_size", *SEED_FLAGS, "--float16_flag=False",
                        "--fail_over_limit")
    assert result.returncode != 0
    assert size_report_totals(result.stdout) == (float32, float32)
    assert "OVER the 1 GiB limit" in result.stdout.strip().splitlines()[-1]
    assert f"{float32:,} bytes" in error_lines(result)


@pytest.fixture(scope="module")
def dbof_ensemble(sample_data, tmp_path_factory):
    """A two-member DbofModelLF ensemble trained 10 steps and evaluated once."""
    run = str(tmp_path_factory.mktemp("dbof"))
    result = run_script("train", f"--train_data_pattern={sample_data}/frame/train*.tfrecord",
                        f"--train_dir={run}", *DBOF_FLAGS, "--batch_size=16", "--max_steps=10")
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_script("eval", f"--eval_data_pattern={sample_data}/frame/validate*.tfrecord",
                        f"--train_dir={run}", *DBOF_FLAGS, "--batch_size=7", "--run_once=True")
    assert result.returncode == 0, result.stderr[-3000:]
    return run, result


def test_dbof_ensemble_takes_each_members_sizes(dbof_ensemble):
    run, result = dbof_ensemble
    shapes = tf.compat.v1.train.NewCheckpointReader(
        os.path.join(run, "model.ckpt-10")).get_variable_to_shape_map()
    for prefix, (cluster, hidden) in zip(("tower/", "tower/model1/"), DBOF_MEMBERS,
                                         strict=True):
        assert shapes[prefix + "video_DBOF/cluster_weights"] == [1024, cluster]
        assert shapes[prefix + "audio_DBOF/cluster_weights"] == [128, cluster // 8]
        assert shapes[prefix + "hidden1_weights"][1] == hidden
        assert shapes[prefix + "gates/weights"][0] == hidden
    assert not [n for n in shapes if n.startswith("tower/model2/")]
    assert '"num_examples": 24' in result.stdout
    assert os.path.exists(os.path.join(run, "inference_model_10.meta"))


def test_build_ensemble_errors_name_the_problem(dbof_ensemble, tmp_path):
    run, _ = dbof_ensemble
    ensemble = os.path.join(run, "model.ckpt-10")
    out = str(tmp_path / "out")
    result = run_script("build_ensemble", f"--train_dir={out}", *DBOF_FLAGS,
                        f"--member_checkpoints={ensemble}")
    assert "--member_checkpoints has 1 paths but the model describes 2" in \
        error_lines(result)
    # An ensemble checkpoint is no single model: its tower/model1/ variables have no place.
    result = run_script("build_ensemble", f"--train_dir={out}", *DBOF_FLAGS,
                        f"--member_checkpoints={ensemble},{ensemble}")
    line = error_lines(result)
    assert ensemble in line and "tower/model1/" in line
    assert not os.path.exists(out)


def test_weight_search_finds_the_mixture_that_averages_out_noise():
    """Two models see the true class plus independent noise: their mean is better
    than either, so the search must mix them, and report GAPs numpy agrees with."""
    rng = np.random.default_rng(0)
    videos, classes = 2000, 50
    labels = np.zeros((videos, classes), bool)
    labels[np.arange(videos), rng.integers(0, classes, videos)] = True
    members = [(labels + rng.normal(0, 1, labels.shape)).astype(np.float32) for _ in range(2)]
    result = search_ensemble_weights.search_weights(members, labels, top_k=20)
    gap = eval_util.calculate_gap
    assert result.member_gaps == [gap(m, labels, 20) for m in members]
    assert result.equal_gap == gap(members[0] * np.float32(0.5) + members[1] * np.float32(0.5),
                                   labels, 20)
    w0, w1 = result.weights
    assert result.gap == gap(members[0] * np.float32(w0) + members[1] * np.float32(w1),
                             labels, 20)
    assert result.gap >= result.equal_gap > max(result.member_gaps) + 0.02
    assert 0.3 <= w0 <= 0.7 and w0 + w1 == pytest.approx(1.0)
    assert all(round(w * 100) == pytest.approx(w * 100) for w in result.weights)
    # A useless third model gets (almost) no weight.
    noise = rng.normal(0, 1, labels.shape).astype(np.float32)
    result = search_ensemble_weights.search_weights([*members, noise], labels, top_k=20)
    assert result.weights[2] <= 0.05 < min(result.weights[:2])
    assert search_ensemble_weights.weight_flags((0.39, 0.61, 0.0)) == \
        "--ensemble_wts=0.39 --ensemble_wts=0.61 --ensemble_wts=0"
