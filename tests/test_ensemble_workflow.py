"""The float16 ensemble workflow of SPEC 8, end to end, as subprocesses on sample data.

Four small single models are trained (one of them averaged), then the seven
steps of the README's "Ensemble of float16 models" run with local paths, for a
float16 and a float32 ensemble; build_ensemble.py must give the same float16
ensemble in one command, search_ensemble_weights.py must prefer the better of
two models, and checkpoint_size.py must count the bytes on disk.  All of it is
built once by the module fixture, two subprocesses at a time (the size report
from model flags and the ensembles of other models are in
test_ensemble_models.py).

The numbers of an average (float64 mean, dtypes kept, no optimizer state) are
checked in test_avg_checkpoints.py; here only the selection on real training
checkpoints is.
"""
import csv
import json
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import checkpoint_selection
from helpers import (
    NETVLAD_FLAGS,
    NUM_CLASSES,
    json_record,
    member_prefix,
    read_checkpoint,
    run_script,
    size_report_totals,
)

MEMBERS = [(4, 16), (8, 16), (4, 8), (8, 8)]  # (cluster size, hidden size)
WEIGHTS = [0.4, 0.3, 0.2, 0.1]
ENS = NETVLAD_FLAGS + ["--ensemble_num=4"] + [
    flag for c, h in MEMBERS for flag in (f"--netvlad_cluster_size={c}",
                                          f"--netvlad_hidden_size={h}")]
ENS_WTS = [f"--ensemble_wts={w}" for w in WEIGHTS]
FLOAT16 = ["--float16_flag=True"]
TUNED_NAME = "inference_model_ensemble_04_03_02_01_YHLS-0"  # SPEC 7 re-save naming
# The float16 variables of each NetVLADModelLF (SPEC 4.1).
FLOAT16_VARIABLES = {"hidden1_weights/hidden1_weights", "gates/weights", "experts/weights",
                     "gating_prob_weights"}
VARIABLES_PER_MODEL = 32


def call(script, *args):
    result = run_script(script, *args)
    assert result.returncode == 0, f"{script} {' '.join(args)}\n{result.stderr[-3000:]}"
    return result


def parallel(*jobs):
    """Runs the jobs (callables) two at a time; returns their results in order."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(job) for job in jobs]
        return [future.result() for future in futures]


def read_scores(path):
    """video id -> the full score vector [NUM_CLASSES] of an inference CSV."""
    with open(path) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["VideoId", "LabelConfidencePairs"]
    scores = {}
    for video_id, pairs in rows[1:]:
        values = pairs.split(" ")
        vector = np.full(NUM_CLASSES, np.nan)
        vector[[int(c) for c in values[0::2]]] = [float(s) for s in values[1::2]]
        assert not np.isnan(vector).any(), "the CSV must list every class"
        scores[video_id] = vector
    return scores


@pytest.fixture(scope="module")
def workflow(sample_data, tmp_path_factory):
    """Every artefact of the workflow; see the module docstring."""
    root = tmp_path_factory.mktemp("ensemble")
    w = SimpleNamespace(root=root, runs=[str(root / f"run_{c}_{h}") for c, h in MEMBERS],
                        ens16=str(root / "ens16"), ens32=str(root / "ens32"),
                        one=str(root / "one"))
    train_data = f"--train_data_pattern={sample_data}/frame/train*.tfrecord"
    validate = f"--eval_data_pattern={sample_data}/frame/validate*.tfrecord"
    test_data = f"--input_data_pattern={sample_data}/frame/test*.tfrecord"

    def single_flags(index):
        c, h = MEMBERS[index]
        return [*NETVLAD_FLAGS, f"--netvlad_cluster_size={c}", f"--netvlad_hidden_size={h}"]

    def train_single(index, *extra):
        return call("train", train_data, f"--train_dir={w.runs[index]}", *single_flags(index),
                    "--batch_size=16", "--base_learning_rate=0.005", "--export_model_steps=10",
                    "--num_epochs=1000", f"--random_seed={index + 1}", *extra)

    def train_ensemble(train_dir, *extra):  # step 1
        return call("train", train_data, f"--train_dir={train_dir}", *ENS, *extra,
                    "--ensemble_wts=0.25", "--batch_size=16", "--max_steps=10")

    def meta_only(train_dir, *extra):  # step 2
        return call("eval", f"--train_dir={train_dir}", *ENS, *extra, "--run_once=True",
                    "--create_meta_only")

    # Stage 1: the single models (model 0 also keeps its step-0 weights) and step 1 of
    # both ensembles.
    parallel(
        lambda: (train_single(0, "--max_steps=0"), train_single(0, "--max_steps=30")),
        lambda: train_ensemble(w.ens16, *FLOAT16),
        lambda: train_ensemble(w.ens32),
        lambda: train_single(1, "--max_steps=30"),
        lambda: train_single(2, "--max_steps=30"),
        lambda: train_single(3, "--max_steps=30"))

    # Stage 2: average model 0, inference re-saves of the singles, step 2 of both ensembles.
    avg_name = "avg_c4h16_10_30.ckpt"

    def average_and_evaluate():
        averaged = call("avg_checkpoints", f"--prefix={w.runs[0]}/model.ckpt-",
                        "--checkpoints_start_end=10,30", f"--output_path={w.runs[0]}/{avg_name}")
        return averaged.stdout, json_record(call(
            "eval", validate, f"--train_dir={w.runs[0]}", *single_flags(0), "--batch_size=7",
            "--run_once=True", f"--checkpoint_file={avg_name}-0"))

    stage2 = parallel(
        average_and_evaluate,
        lambda: meta_only(w.ens16, *FLOAT16),
        lambda: meta_only(w.ens32),
        *[lambda i=i: call("eval", f"--train_dir={w.runs[i]}", *single_flags(i),
                           "--run_once=True", "--create_meta_only", "--checkpoint=model.ckpt-30")
          for i in (1, 2, 3)])
    w.avg_output, w.avg_eval = stage2[0]
    w.single_names = [f"inference_model_{avg_name}-0"] + ["inference_model_30"] * 3
    w.singles = [os.path.join(run, name) for run, name in zip(w.runs, w.single_names,
                                                                 strict=True)]

    # Stage 3: steps 3-7 for float16, 3-4 (+ inference) for float32, the singles'
    # full score vectors, the one-command path and the weight search.
    def steps_3_to_7(train_dir, *extra, complete=True):
        call("overwrite_float16_ckpt", f"--train_dir={train_dir}",
             "--inference_model=inference_model_10", "--out_name=inference_model_ensemble_YHLS",
             f"--checkpoints={','.join(w.singles)}")
        tuned = [validate, f"--train_dir={train_dir}", *ENS, *extra, *ENS_WTS, "--batch_size=7",
                 "--run_once=True", "--checkpoint_file=inference_model_ensemble_YHLS-0"]
        record = json_record(call("eval", *tuned))
        if not complete:
            call("inference", f"--train_dir={train_dir}", test_data, f"--top_k={NUM_CLASSES}",
                 f"--inference_model_file={TUNED_NAME}",
                 f"--output_file={train_dir}/predictions.csv")
            return record, None
        call("eval", *tuned, "--force_output_model_name")
        size = call("checkpoint_size", f"--checkpoint={train_dir}/inference_model").stdout
        call("inference", f"--train_dir={train_dir}", test_data,
             f"--output_file={train_dir}/predictions.csv",
             f"--output_model_tgz={train_dir}/inference_model.tgz")
        return record, size

    def one_command():
        out = call("build_ensemble", f"--train_dir={w.one}", *ENS, *FLOAT16, *ENS_WTS,
                   f"--member_checkpoints={','.join(w.singles)}",
                   f"--output_model_tgz={w.root}/one.tgz").stdout
        call("inference", f"--input_model_tgz={w.root}/one.tgz", test_data,
             f"--untar_model_dir={w.root}/one_untarred", f"--output_file={w.one}/predictions.csv")
        return out

    stage3 = parallel(
        lambda: steps_3_to_7(w.ens16, *FLOAT16),
        lambda: steps_3_to_7(w.ens32, complete=False),
        one_command,
        lambda: call("search_ensemble_weights", *NETVLAD_FLAGS, "--ensemble_num=2",
                     "--netvlad_cluster_size=4", "--netvlad_hidden_size=16", validate,
                     "--batch_size=7",
                     f"--member_checkpoints={w.runs[0]}/model.ckpt-0,{w.singles[0]}"),
        *[lambda i=i: call("inference", f"--train_dir={w.runs[i]}", test_data,
                           f"--inference_model_file={w.single_names[i]}",
                           f"--top_k={NUM_CLASSES}", f"--output_file={w.runs[i]}/scores.csv")
          for i in range(4)])
    (w.eval16, w.size16), (w.eval32, _), w.one_output, w.search = stage3[:4]
    return w


def test_seven_steps_leave_the_seed_artefacts(workflow):
    w = workflow
    for name in ("model.ckpt-10", "inference_model_10", "inference_model_ensemble_YHLS-0",
                 TUNED_NAME, "inference_model"):
        assert os.path.exists(os.path.join(w.ens16, name + ".index")), name
        assert os.path.exists(os.path.join(w.ens16, name + ".meta")), name
    # Only the training checkpoint is in the state file.
    state = tf.train.get_checkpoint_state(w.ens16)
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["model.ckpt-10"]
    with tarfile.open(os.path.join(w.ens16, "inference_model.tgz")) as tar:
        names = set(tar.getnames())
    assert {"inference_model.index", "inference_model.meta", "model_flags.json"} <= names
    assert len(read_scores(os.path.join(w.ens16, "predictions.csv"))) == 24


@pytest.mark.parametrize("name", ["inference_model_ensemble_YHLS-0", "inference_model"])
def test_filled_ensemble_holds_the_four_models_in_float16(workflow, name):
    w = workflow
    filled = read_checkpoint(os.path.join(w.ens16, name))
    n = len(MEMBERS)
    assert len(filled) == VARIABLES_PER_MODEL * n + 1
    float16 = sorted(v for v, a in filled.items() if a.dtype == np.float16)
    assert float16 == sorted(member_prefix(i) + x for i in range(n) for x in FLOAT16_VARIABLES)
    assert filled["global_step"].dtype == np.int32 and filled["global_step"] == 0
    for i, single in enumerate(w.singles):
        source = read_checkpoint(single)
        inner = {v[len("tower/"):] for v in source if v.startswith("tower/")}
        assert len(inner) == VARIABLES_PER_MODEL
        for x in inner:
            value = filled[member_prefix(i) + x]
            np.testing.assert_array_equal(value, source["tower/" + x].astype(value.dtype))
    float32 = read_checkpoint(os.path.join(w.ens32, "inference_model_ensemble_YHLS-0"))
    assert len(float32) == VARIABLES_PER_MODEL * n + 1
    assert not [v for v, a in float32.items() if a.dtype == np.float16]


def test_ensemble_predicts_the_weighted_sum_of_its_models(workflow):
    w = workflow
    singles = [read_scores(os.path.join(run, "scores.csv")) for run in w.runs]
    fp32 = read_scores(os.path.join(w.ens32, "predictions.csv"))
    fp16 = read_scores(os.path.join(w.ens16, "predictions.csv"))
    assert sorted(fp32) == sorted(fp16) == sorted(singles[0])
    ids = sorted(fp32)
    expected = np.array([sum(wt * s[v] for wt, s in zip(WEIGHTS, singles, strict=True))
                         for v in ids])
    got32 = np.array([fp32[v] for v in ids])
    got16 = np.array([fp16[v] for v in ids])
    # float32 graph: equal up to the CSV's 6 significant digits.
    np.testing.assert_allclose(got32, expected, rtol=2e-5, atol=1e-6)
    # float16 weights: within float16's unit roundoff (2^-11) relative to each score, and
    # not equal to the float32 ensemble (the weights really are float16).
    np.testing.assert_allclose(got16, expected, rtol=2.0 ** -11, atol=1e-6)
    assert not np.array_equal(got16, got32)


def test_float16_gap_matches_float32_gap(workflow):
    w = workflow
    assert w.eval16["num_examples"] == w.eval32["num_examples"] == 24
    assert abs(w.eval16["gap"] - w.eval32["gap"]) <= 0.001, (w.eval16, w.eval32)


def test_one_command_builds_the_same_ensemble(workflow):
    w = workflow
    one = read_checkpoint(os.path.join(w.one, "inference_model"))
    seven = read_checkpoint(os.path.join(w.ens16, "inference_model"))
    assert sorted(one) == sorted(seven)
    for name, value in seven.items():
        assert one[name].dtype == value.dtype, name
        np.testing.assert_array_equal(one[name], value, err_msg=name)
    with open(os.path.join(w.one, "predictions.csv")) as a, \
            open(os.path.join(w.ens16, "predictions.csv")) as b:
        assert a.read() == b.read()
    with open(os.path.join(w.one, "model_flags.json")) as a, \
            open(os.path.join(w.ens16, "model_flags.json")) as b:
        one, template = json.load(a), json.load(b)
    # The same ensemble; the one-command file also records the mixing weights it was given.
    assert one["ensemble_wts"] == [0.4, 0.3, 0.2, 0.1]
    for content in (one, template):
        del content["ensemble_wts"]
        content.pop("training", None)
        for member in content["members"]:
            del member["weight"]
    assert one == template
    for i, single in enumerate(w.singles):
        assert f"model {i} (weight {WEIGHTS[i]:g}): {single}" in w.one_output


def test_average_selects_the_right_training_checkpoints(workflow):
    run = workflow.runs[0]
    listed = [line.strip() for line in workflow.avg_output.splitlines() if line.startswith("  ")]
    assert listed == [f"{run}/model.ckpt-{s}" for s in (10, 20, 30)]
    # The run now also holds avg_*.ckpt-0 and inference_model_* checkpoints: not selected.
    select = checkpoint_selection.select_checkpoints
    assert select(run + "/", checkpoints_start_end="0,30") == [
        f"{run}/model.ckpt-{s}" for s in (0, 10, 20, 30)]
    assert select(f"{run}/model.ckpt", checkpoints="30,0") == [
        f"{run}/model.ckpt-30", f"{run}/model.ckpt-0"]
    assert select(f"{run}/model.ckpt-", num_last_checkpoints=2) == [
        f"{run}/model.ckpt-20", f"{run}/model.ckpt-30"]


def test_weight_search_prefers_the_trained_model(workflow):
    result = json_record(workflow.search)
    weights, member_gaps = result["weights"], result["member_gaps"]
    assert result["num_examples"] == 24
    # Model 1 (trained, averaged) beats model 0 (its step-0 weights) clearly.
    assert member_gaps[1] > member_gaps[0] + 0.05, result
    assert weights[1] > weights[0]
    assert result["gap"] >= result["equal_gap"]
    assert sum(weights) == pytest.approx(1.0)
    # The member's GAP is the one eval.py reports for the same checkpoint.
    assert member_gaps[1] == pytest.approx(workflow.avg_eval["gap"], abs=1e-5)
    # The last line is the flags to paste.
    values = flags.FlagValues()
    flags.DEFINE_multi_float("ensemble_wts", [1.0], "", flag_values=values)
    last = workflow.search.stdout.strip().splitlines()[-1]
    values(["prog", *last.split()])
    assert values.ensemble_wts == pytest.approx(weights)


def test_size_report_counts_the_bytes_on_disk(workflow):
    total, float32_total = size_report_totals(workflow.size16)
    path = os.path.join(workflow.ens16, "inference_model")
    tensors = read_checkpoint(path)
    assert total == sum(a.nbytes for a in tensors.values())
    on_disk = os.path.getsize(path + ".data-00000-of-00001")
    assert abs(total - on_disk) <= 0.01 * on_disk
    assert float32_total == sum(a.size * 4 if a.dtype.kind == "f" else a.nbytes
                                for a in tensors.values())
    assert float32_total > total
