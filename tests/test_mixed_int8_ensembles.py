"""Ensembles mixing NeXtVLADModel and NetVLADModelLF members, stored float32, float16,
int8 and float16 + int8 (--member_storage), through the one-command path on the sample
data: trained single models, filled by build_ensemble.py, evaluated, sized, predicted to
CSV, and their weights searched."""
import csv
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl.testing import flagsaver  # noqa: E402

import app_flags  # noqa: E402
import model_config  # noqa: E402
from errors import UsageError  # noqa: E402
from helpers import (  # noqa: E402
    NETVLAD_FLAGS,
    NETVLAD_SIZES,
    NUM_CLASSES,
    json_record,
    read_checkpoint,
    run_script,
    size_report_totals,
)

FRAME = ["--frame_features", "--feature_names=rgb,audio", "--feature_sizes=1024,128",
         f"--num_classes={NUM_CLASSES}", "--moe_num_mixtures=2"]
NEXTVLAD = ["--nextvlad_cluster_size=4", "--nextvlad_hidden_size=16", "--groups=4",
            "--gating_reduction=4"]
# Member 0 NeXtVLAD, member 1 NetVLADModelLF; the repeated sizes go to each one's own setting.
MIXED = FRAME + ["--ensemble_num=2", "--member_models=NeXtVLADModel,NetVLADModelLF",
                 "--groups=4", "--gating_reduction=4", "--iterations=8", "--gating=True",
                 "--netvlad_relu=False", "--netvlad_cluster_size=4", "--netvlad_cluster_size=4",
                 "--netvlad_hidden_size=16", "--netvlad_hidden_size=16",
                 "--ensemble_wts=0.6", "--ensemble_wts=0.4"]
STORAGE = {"float32": [], "float16": ["--float16_flag=True"], "int8": ["--quantize_int8=True"],
           "mixed": ["--member_storage=float16,int8"]}
MODEL = "ens-0"


def call(script, *args):
    result = run_script(script, *args)
    assert result.returncode == 0, f"{script} {' '.join(args)}\n{result.stderr[-3000:]}"
    return result


def read_scores(path):
    with open(path) as f:
        rows = list(csv.reader(f))[1:]
    scores = {}
    for video_id, pairs in rows:
        values = pairs.split(" ")
        vector = np.full(NUM_CLASSES, np.nan)
        vector[[int(c) for c in values[0::2]]] = [float(s) for s in values[1::2]]
        scores[video_id] = vector
    return scores


@pytest.fixture(scope="module")
def ensembles(sample_data, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("mixed"))
    w = SimpleNamespace(root=root, runs={})
    common = [f"--train_data_pattern={sample_data}/frame/train*.tfrecord", "--batch_size=4",
              "--num_readers=2", "--max_steps=30", "--random_seed=1",
              "--export_model_steps=30"]
    singles = {"nextvlad": FRAME + ["--model=NeXtVLADModel"] + NEXTVLAD,
               "netvlad": [f for f in NETVLAD_FLAGS if "moe_prob" not in f] + NETVLAD_SIZES}
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda item: call("train", f"--train_dir={root}/{item[0]}", *item[1],
                                        *common), singles.items()))
    w.checkpoints = [tf.train.latest_checkpoint(f"{root}/{name}")
                     for name in ("nextvlad", "netvlad")]
    validate = f"--eval_data_pattern={sample_data}/frame/validate*.tfrecord"
    test = f"--input_data_pattern={sample_data}/frame/test*.tfrecord"

    def one_command(storage):
        ens = f"{root}/{storage}"
        call("build_ensemble", f"--train_dir={ens}", *MIXED, *STORAGE[storage],
             f"--member_checkpoints={','.join(w.checkpoints)}", f"--output_model_name={MODEL}")
        record = json_record(call("eval", validate, f"--train_dir={ens}", "--batch_size=7",
                                  "--run_once=True", f"--checkpoint_file={MODEL}"))
        size = call("checkpoint_size", f"--checkpoint={ens}/{MODEL}").stdout
        call("inference", f"--train_dir={ens}", test, f"--inference_model_file={MODEL}",
             f"--top_k={NUM_CLASSES}", f"--output_file={ens}/predictions.csv")
        return record, size

    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(STORAGE, pool.map(one_command, STORAGE), strict=True))
    w.records = {k: v[0] for k, v in done.items()}
    w.sizes = {k: v[1] for k, v in done.items()}
    w.search = call("search_ensemble_weights", *[f for f in MIXED if "wts" not in f],
                    *STORAGE["int8"], validate, "--batch_size=7",
                    f"--member_checkpoints={','.join(w.checkpoints)}").stdout
    return w


def test_int8_weights_are_within_half_a_step_of_float32(ensembles):
    int8 = read_checkpoint(f"{ensembles.root}/int8/{MODEL}")
    full = read_checkpoint(f"{ensembles.root}/float32/{MODEL}")
    quantised = [n for n, v in int8.items() if v.dtype == np.int8]
    assert "tower/video_VLAD/cluster_weights" in quantised
    assert "tower/model1/hidden1_weights/hidden1_weights" in quantised
    for name in quantised:
        scales = int8[name + "_int8_scale"]
        weights = full[name].reshape(-1, scales.size)
        np.testing.assert_allclose(scales, np.abs(weights).max(axis=0) / 127, rtol=1e-6)
        error = np.abs(int8[name].reshape(weights.shape) * scales - weights)
        # Half a step, plus the float32 rounding of w / scale and of q * scale (a weight
        # right at a rounding boundary): two ulps of the column's largest weight.
        rounding = np.abs(weights).max(axis=0) * 2.0 ** -22
        assert (error <= scales / 2 + rounding).all(), (name, (error - scales / 2).max())
    for name, value in full.items():  # everything else is copied unchanged
        if name not in quantised:
            np.testing.assert_array_equal(int8[name], value, err_msg=name)


def test_stored_bytes(ensembles):
    stored = {}
    for storage in STORAGE:
        values = read_checkpoint(f"{ensembles.root}/{storage}/{MODEL}")
        stored[storage] = sum(v.nbytes for v in values.values())
        assert size_report_totals(ensembles.sizes[storage])[0] == stored[storage]
    int8 = read_checkpoint(f"{ensembles.root}/int8/{MODEL}")
    saved = sum(3 * v.size - 4 * int8[n + "_int8_scale"].size
                for n, v in int8.items() if v.dtype == np.int8)
    assert stored["int8"] == stored["float32"] - saved
    assert stored["int8"] < stored["float16"] < stored["float32"]


def test_predictions_and_gap_match_float32(ensembles):
    scores = {s: read_scores(f"{ensembles.root}/{s}/predictions.csv") for s in STORAGE}
    assert len(scores["float32"]) == 24
    for storage in ("float16", "int8", "mixed"):
        assert scores[storage].keys() == scores["float32"].keys()
        for video_id, vector in scores["float32"].items():
            np.testing.assert_allclose(scores[storage][video_id], vector, atol=1e-2)
        records = ensembles.records
        assert records[storage]["num_examples"] == records["float32"]["num_examples"] == 24
        assert abs(records[storage]["gap"] - records["float32"]["gap"]) <= 0.002


def test_weight_search_accepts_int8_members(ensembles):
    search = ensembles.search
    assert "model 0 alone" in search and "model 1 alone" in search, search
    assert "weights found:" in search and "--ensemble_wts=" in search, search


def _member_bytes(size_report):
    return [int(n.replace(",", "")) for n in re.findall(r"^model \d+: ([\d,]+) bytes",
                                                         size_report, re.MULTILINE)]


def test_member_storage_stores_each_member_its_own_way(ensembles):
    """--member_storage=float16,int8: member 0 as the float16 ensemble's, member 1 as the
    int8 one's, in the checkpoint, its size report and model_flags.json."""
    mixed = read_checkpoint(f"{ensembles.root}/mixed/{MODEL}")
    assert mixed["tower/video_VLAD/cluster_weights"].dtype == np.float16
    assert mixed["tower/model1/hidden1_weights/hidden1_weights"].dtype == np.int8
    assert not any(v.dtype == np.int8 for n, v in mixed.items() if not n.startswith("tower/model1"))
    float16, int8 = (_member_bytes(ensembles.sizes[s]) for s in ("float16", "int8"))
    assert _member_bytes(ensembles.sizes["mixed"]) == [float16[0], int8[1]]
    stored = model_config.read_json(f"{ensembles.root}/mixed").model
    assert [m.settings.storage for m in stored.members] == ["float16", "int8"]


def test_eval_checks_member_storage_against_the_file(ensembles):
    stored = model_config.read_json(f"{ensembles.root}/mixed")
    with flagsaver.flagsaver():
        app_flags.FLAGS(["eval", "--member_storage=float16,int8"])
        assert app_flags.resolve_model_config(stored) == stored.model
    with flagsaver.flagsaver(), pytest.raises(UsageError) as error:
        app_flags.FLAGS(["eval", "--member_storage=int8,float16"])
        app_flags.resolve_model_config(stored)
    assert str(error.value).startswith(f"--member_storage=int8,float16 disagrees with "
                                       f"{stored.path}, which says member_storage=float16,int8")


@pytest.mark.parametrize("flags,message", [
    (["--member_storage=float16"], "--member_storage=float16 names 1 storages but "
                                   "--ensemble_num=2"),
    (["--member_storage=float16,fp8"], "--member_storage=float16,fp8: 'fp8' is not one of "
                                       "float32, float16, int8"),
    (["--member_storage=float16,int8", "--float16_flag=True"],
     "--member_storage=float16,int8 and --float16_flag are both given"),
    (["--member_storage=int8,float32", "--quantize_int8=False"],
     "--member_storage=int8,float32 and --quantize_int8 are both given"),
    (["--member_models=NetVLADModelLF,FrameLevelLogisticModel", "--member_storage=int8,int8"],
     "--member_storage=int8,int8: member 1 (FrameLevelLogisticModel) has no float16 or int8 "
     "storage; give it float32"),
])
def test_member_storage_errors_name_the_flag(flags, message):
    with flagsaver.flagsaver(), pytest.raises(UsageError) as error:
        app_flags.FLAGS(["train", *FRAME, "--ensemble_num=2", *flags])
        app_flags.model_config()
    assert str(error.value).startswith(message), str(error.value)


def test_build_ensemble_refuses_a_wrong_member_storage(ensembles, tmp_path):
    result = run_script("build_ensemble", f"--train_dir={tmp_path}/ens", *MIXED,
                        "--member_storage=float16,int8,int8",
                        f"--member_checkpoints={','.join(ensembles.checkpoints)}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "ERROR: --member_storage=float16,int8,int8 names 3 storages but --ensemble_num=2")
    assert not os.path.exists(f"{tmp_path}/ens/{model_config.FILE_NAME}")
