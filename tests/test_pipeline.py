"""train.py -> eval.py -> inference.py as subprocesses on generated data."""
import glob
import json
import os
import shutil
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from helpers import NETVLAD_FLAGS, NETVLAD_SIZES, NUM_CLASSES, json_record, run_script

MODEL_FLAGS = NETVLAD_FLAGS + NETVLAD_SIZES


def train(data, run_dir, *extra):
    return run_script(
        "train", f"--train_data_pattern={data}/frame/train*.tfrecord", f"--train_dir={run_dir}",
        "--batch_size=16", "--base_learning_rate=0.005", "--export_model_steps=20",
        "--num_epochs=1000", "--random_seed=3", *MODEL_FLAGS, *extra)


def evaluate(data, run_dir, *extra):
    return run_script(
        "eval", f"--eval_data_pattern={data}/frame/validate*.tfrecord", f"--train_dir={run_dir}",
        "--batch_size=7", "--run_once=True", *MODEL_FLAGS, *extra)


def infer(data, out_csv, *extra):
    return run_script(
        "inference", f"--input_data_pattern={data}/frame/test*.tfrecord",
        f"--output_file={out_csv}", *extra)


def read_ids(pattern):
    ids = []
    for path in sorted(glob.glob(pattern)):
        for record in tf.compat.v1.io.tf_record_iterator(path):
            example = tf.train.SequenceExample.FromString(record)
            ids.append(example.context.feature["id"].bytes_list.value[0].decode())
    return ids


@pytest.fixture(scope="module")
def trained(sample_data, tmp_path_factory):
    """A run trained to step 0 (initial weights) and then resumed to step 60."""
    run_dir = str(tmp_path_factory.mktemp("run"))
    first = train(sample_data, run_dir, "--max_steps=0")
    assert first.returncode == 0, first.stderr[-3000:]
    second = train(sample_data, run_dir, "--max_steps=60")
    assert second.returncode == 0, second.stderr[-3000:]
    return run_dir, second


def test_checkpoints_and_model_flags_on_disk(trained):
    run_dir, result = trained
    steps = sorted(int(p.split("-")[-1].split(".")[0])
                   for p in glob.glob(os.path.join(run_dir, "model.ckpt-*.index")))
    # Resumed from 0: saves at step 20, 40 (export_model_steps=20) and at the end (60).
    assert steps == [0, 20, 40, 60]
    for step in steps:
        assert os.path.exists(os.path.join(run_dir, f"model.ckpt-{step}.meta"))
        assert glob.glob(os.path.join(run_dir, f"model.ckpt-{step}.data-*"))
    with open(os.path.join(run_dir, "model_flags.json")) as f:
        stored = json.load(f)
    assert stored["model"] == "NetVLADModelLF"
    assert stored["feature_names"] == "rgb,audio"
    assert stored["feature_sizes"] == "1024,128"
    assert stored["frame_features"] is True
    assert stored["label_loss"] == "CrossEntropyLoss"
    assert stored["num_classes"] == NUM_CLASSES
    assert "Resumed from" in result.stderr
    assert "examples/sec" in result.stderr and "GAP" in result.stderr
    state = tf.train.get_checkpoint_state(run_dir)
    assert os.path.basename(state.model_checkpoint_path) == "model.ckpt-60"
    assert not [p for p in os.listdir(run_dir) if "tmp" in p]


def test_flags_mismatch_is_refused(sample_data, trained):
    run_dir, _ = trained
    result = run_script(
        "train", f"--train_data_pattern={sample_data}/frame/train*.tfrecord",
        f"--train_dir={run_dir}", "--max_steps=70",
        *[f for f in MODEL_FLAGS if not f.startswith("--model=")], "--model=DbofModelLF")
    assert result.returncode != 0
    assert "model" in result.stderr.splitlines()[-1] and "Traceback" not in result.stderr
    assert not os.path.exists(os.path.join(run_dir, "model.ckpt-70.index"))


def test_unknown_flag_is_refused(sample_data, tmp_path):
    result = run_script("train", f"--train_data_pattern={sample_data}/frame/train*.tfrecord",
                        f"--train_dir={tmp_path}", "--max_step=10")
    assert result.returncode != 0
    assert "max_step" in result.stderr


def test_training_beats_initial_gap(sample_data, trained):
    run_dir, _ = trained
    initial = json_record(evaluate(sample_data, run_dir, "--checkpoint=model.ckpt-0.index"))
    final = json_record(evaluate(sample_data, run_dir, "--checkpoint=model.ckpt-60"))
    assert initial["global_step"] == 0 and final["global_step"] == 60
    assert final["gap"] > initial["gap"] + 0.1, (initial, final)


def test_eval_is_deterministic_and_resaves(sample_data, trained):
    run_dir, _ = trained
    state_before = open(os.path.join(run_dir, "checkpoint")).read()
    first = json_record(evaluate(sample_data, run_dir, "--checkpoint=model.ckpt-40.index"))
    second = json_record(evaluate(sample_data, run_dir, "--checkpoint=model.ckpt-40",
                                  "--batch_size=64"))
    for key in ("hit_at_one", "perr", "map", "gap", "loss"):
        assert first[key] == pytest.approx(second[key], abs=2e-5), key
    assert first["num_examples"] == len(read_ids(f"{sample_data}/frame/validate*.tfrecord"))
    assert os.path.exists(os.path.join(run_dir, "inference_model_40.index"))
    assert os.path.exists(os.path.join(run_dir, "inference_model_40.meta"))
    assert open(os.path.join(run_dir, "checkpoint")).read() == state_before
    reader = tf.train.load_checkpoint(os.path.join(run_dir, "inference_model_40"))
    names = reader.get_variable_to_shape_map()
    assert "global_step" in names
    assert not [n for n in names if "Adam" in n or "power" in n]
    assert reader.get_tensor("global_step") == 40
    assert reader.get_variable_to_dtype_map()["global_step"] == tf.int32
    assert os.path.isdir(os.path.join(run_dir, "eval"))


def test_eval_resave_names(sample_data, trained, tmp_path):
    run_dir, _ = trained
    copy = str(tmp_path / "run")
    shutil.copytree(run_dir, copy)
    # An averaged-looking name and an ensemble inference name.
    src = os.path.join(copy, "model.ckpt-20")
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copy(src + suffix, os.path.join(copy, "avg_c4h16_20_40.ckpt-0" + suffix))
        shutil.copy(src + suffix, os.path.join(copy, "inference_model_ensemble_YHLS-0" + suffix))
    result = evaluate(sample_data, copy, "--checkpoint_file=avg_c4h16_20_40.ckpt-0",
                      "--create_meta_only")
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.exists(os.path.join(copy, "inference_model_avg_c4h16_20_40.ckpt-0.index"))
    assert os.path.exists(os.path.join(copy, "inference_model_avg_c4h16_20_40.ckpt-0.meta"))
    result = evaluate(sample_data, copy, "--checkpoint_file=inference_model_ensemble_YHLS-0",
                      "--create_meta_only", "--ensemble_wts=1.0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.exists(os.path.join(copy, "inference_model_ensemble_10_YHLS-0.index"))
    result = evaluate(sample_data, copy, "--checkpoint=model.ckpt-20",
                      "--force_output_model_name", "--create_meta_only")
    assert result.returncode == 0, result.stderr[-3000:]
    for suffix in (".index", ".meta", ".data-00000-of-00001"):
        assert os.path.exists(os.path.join(copy, "inference_model" + suffix))


def _read_csv(path):
    with open(path) as f:
        lines = f.read().splitlines()
    assert lines[0] == "VideoId,LabelConfidencePairs"
    rows = {}
    for line in lines[1:]:
        video_id, pairs = line.split(",")
        values = pairs.split(" ")
        rows[video_id] = ([int(v) for v in values[0::2]], [float(v) for v in values[1::2]])
    assert len(rows) == len(lines) - 1, "a video appears twice"
    return rows


def test_inference_csv_and_tgz_round_trip(sample_data, trained, tmp_path):
    run_dir, _ = trained
    result = evaluate(sample_data, run_dir, "--checkpoint=model.ckpt-60",
                      "--force_output_model_name", "--create_meta_only")
    assert result.returncode == 0, result.stderr[-3000:]
    csv_a, csv_b, csv_c = (str(tmp_path / n) for n in ("a.csv", "b.csv", "c.csv"))
    tgz = str(tmp_path / "model.tgz")
    result = infer(sample_data, csv_a, f"--train_dir={run_dir}", "--batch_size=5",
                   f"--output_model_tgz={tgz}")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _read_csv(csv_a)
    assert sorted(rows) == sorted(read_ids(f"{sample_data}/frame/test*.tfrecord"))
    for classes, scores in rows.values():
        assert len(classes) == 20 and len(set(classes)) == 20
        assert scores == sorted(scores, reverse=True)
        assert all(0 <= c < NUM_CLASSES for c in classes)
    result = infer(sample_data, csv_b, f"--train_dir={run_dir}", "--batch_size=64")
    assert result.returncode == 0, result.stderr[-3000:]
    rows_b = _read_csv(csv_b)
    for video_id, (_, scores) in rows.items():
        np.testing.assert_allclose(rows_b[video_id][1], scores, rtol=1e-4, atol=1e-6)
    with tarfile.open(tgz) as tar:
        names = sorted(tar.getnames())
    assert "model_flags.json" in names
    assert {"inference_model.index", "inference_model.meta"} <= set(names)
    assert all("/" not in n for n in names)
    result = infer(sample_data, csv_c, f"--input_model_tgz={tgz}", "--batch_size=5",
                   f"--untar_model_dir={tmp_path / 'untarred'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert _read_csv(csv_c) == rows


def test_inference_refuses_both_model_sources(sample_data, trained, tmp_path):
    run_dir, _ = trained
    result = infer(sample_data, str(tmp_path / "x.csv"), f"--train_dir={run_dir}",
                   f"--input_model_tgz={tmp_path / 'm.tgz'}")
    assert result.returncode != 0
    assert "not both" in result.stderr
    assert not os.path.exists(tmp_path / "x.csv")


def test_eval_refuses_a_checkpoint_of_another_shape(sample_data, trained, tmp_path):
    run_dir, _ = trained
    copy = str(tmp_path / "run")
    shutil.copytree(run_dir, copy)
    path = os.path.join(copy, "model_flags.json")  # now describes another model
    with open(path) as f:
        content = json.load(f)
    content["members"][0]["settings"]["netvlad_cluster_size"] = 8
    with open(path, "w") as f:
        json.dump(content, f)
    result = run_script("eval", f"--train_dir={copy}", "--checkpoint=model.ckpt-20",
                        "--create_meta_only")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR:") and "model.ckpt-20" in last and "shape" in last
    assert "Traceback" not in result.stderr
    assert not os.path.exists(os.path.join(copy, "inference_model_20.index"))
