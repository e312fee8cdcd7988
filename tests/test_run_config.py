"""A run directory says everything its checkpoints need (model_flags.json, format 3):
eval.py and inference.py need no model flags, given flags must agree with the file,
2018 files still work, and nothing below the scripts reads a flag."""
import ast
import concurrent.futures
import glob
import json
import os
import shutil

import pytest
from absl.testing import flagsaver

import app_flags
import model_config
import registry
from errors import UsageError
from helpers import NETVLAD_FLAGS, NUM_CLASSES, REPO, json_record, run_script

FRAME = ["--frame_features", "--feature_names=rgb,audio", "--feature_sizes=1024,128",
         f"--num_classes={NUM_CLASSES}"]
CASES = {
    "netvlad": [*NETVLAD_FLAGS, "--netvlad_cluster_size=4", "--netvlad_hidden_size=16"],
    "netvlad_no_prob_gating": [*FRAME, "--model=NetVLADModelLF", "--iterations=5",
                               "--netvlad_cluster_size=4", "--netvlad_hidden_size=8",
                               "--moe_num_mixtures=3", "--moe_prob_gating=False"],
    "dbof": [*FRAME, "--model=DbofModelLF", "--iterations=6", "--dbof_cluster_size=16",
             "--dbof_hidden_size=8", "--moe_num_mixtures=2"],
    "lstm": [*FRAME, "--model=LstmModel", "--lstm_cells=4", "--lstm_layers=1",
             "--moe_num_mixtures=2", "--max_frames=40"],
    "float16_ensemble": [*NETVLAD_FLAGS, "--ensemble_num=2", "--float16_flag=True",
                         "--netvlad_cluster_size=4", "--netvlad_hidden_size=16",
                         "--netvlad_cluster_size=8", "--netvlad_hidden_size=8",
                         "--ensemble_wts=0.7", "--ensemble_wts=0.3"],
}
STEPS = 10


def _parallel(calls):
    """Runs the subprocess calls two at a time (the suite's machine has two cores)."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda call: call(), calls))


def _train(data, run_dir, flags, *extra):
    return run_script("train", f"--train_data_pattern={data}/frame/train*.tfrecord",
                      f"--train_dir={run_dir}", "--batch_size=8", f"--max_steps={STEPS}",
                      "--export_model_steps=10", "--random_seed=2", *flags, *extra)


def _eval(data, run_dir, *extra):
    return run_script("eval", f"--eval_data_pattern={data}/frame/validate*.tfrecord",
                      f"--train_dir={run_dir}", "--batch_size=7", "--run_once=True", *extra)


def _infer(data, run_dir, csv, *extra):
    return run_script("inference", f"--input_data_pattern={data}/frame/test*.tfrecord",
                      f"--train_dir={run_dir}", f"--output_file={csv}",
                      f"--inference_model_file=inference_model_{STEPS}", *extra)


def _ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _error_line(result):
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR: "), result.stderr[-3000:]
    return last


def _metrics(record):
    return {k: v for k, v in record.items() if k not in ("videos_per_sec",)}


@pytest.fixture(scope="module")
def runs(sample_data, tmp_path_factory):
    """One trained run per case."""
    root = tmp_path_factory.mktemp("runs")
    dirs = {name: str(root / name) for name in CASES}
    for result in _parallel([lambda n=name: _train(sample_data, dirs[n], CASES[n])
                             for name in CASES]):
        _ok(result)
    return dirs


@pytest.mark.parametrize("case", sorted(CASES))
def test_eval_and_inference_need_no_model_flags(sample_data, runs, case, tmp_path):
    """The metrics and the CSV are the same with only --train_dir as with every flag."""
    run_dir, flags = runs[case], CASES[case]
    with_flags, bare = _parallel([lambda: _eval(sample_data, run_dir, *flags),
                                  lambda: _eval(sample_data, run_dir)])
    assert _metrics(json_record(with_flags)) == _metrics(json_record(bare))
    csv_flags, csv_bare = str(tmp_path / "flags.csv"), str(tmp_path / "bare.csv")
    _parallel([lambda: _ok(_infer(sample_data, run_dir, csv_flags, *flags)),
               lambda: _ok(_infer(sample_data, run_dir, csv_bare))])
    with open(csv_flags) as f, open(csv_bare) as g:
        rows = f.read()
        assert rows == g.read()
    assert len(rows.splitlines()) == 1 + 24  # the header and every test video


def test_the_file_holds_every_setting_per_member(runs):
    with open(os.path.join(runs["float16_ensemble"], model_config.FILE_NAME)) as f:
        content = json.load(f)
    for key in model_config.LEGACY_KEYS:
        assert key in content
    assert content["format_version"] == 3 and content["ensemble_num"] == 2
    assert content["ensemble_wts"] == [0.7, 0.3]
    sizes = [(m["settings"]["netvlad_cluster_size"], m["settings"]["netvlad_hidden_size"])
             for m in content["members"]]
    assert sizes == [(4, 16), (8, 8)]
    for member in content["members"]:
        assert set(member["settings"]) == set(model_config.SETTING_NAMES)
        assert member["settings"]["float16_flag"] is True
        assert member["settings"]["iterations"] == 8
    assert content["training"]["batch_size"] == 8 and content["training"]["max_steps"] == STEPS


def test_eval_uses_the_trained_iterations(sample_data, runs, tmp_path):
    """A run trained with --iterations=5 is scored with 5 frames: the file's value is the
    one used (changing it in the file changes the scores)."""
    run_dir = runs["netvlad_no_prob_gating"]
    edited = str(tmp_path / "edited")
    shutil.copytree(run_dir, edited)
    path = os.path.join(edited, model_config.FILE_NAME)
    with open(path) as f:
        content = json.load(f)
    assert content["members"][0]["settings"]["iterations"] == 5
    content["members"][0]["settings"]["iterations"] = 30
    with open(path, "w") as f:
        json.dump(content, f)
    explicit, from_file, thirty = _parallel([
        lambda: _eval(sample_data, run_dir, "--iterations=5"),
        lambda: _eval(sample_data, run_dir, "--checkpoint=model.ckpt-10"),
        lambda: _eval(sample_data, edited, "--checkpoint=model.ckpt-10")])
    explicit, from_file, thirty = map(json_record, (explicit, from_file, thirty))
    assert explicit["gap"] == from_file["gap"] and explicit["loss"] == from_file["loss"]
    assert thirty["loss"] != from_file["loss"]


def test_disagreeing_flags_are_refused_by_the_scripts(sample_data, runs, tmp_path):
    run_dir = runs["netvlad"]
    path = os.path.join(run_dir, model_config.FILE_NAME)
    _ok(_eval(sample_data, run_dir))  # the re-save inference.py reads
    before = sorted(os.listdir(run_dir))
    results = _parallel([
        lambda: _eval(sample_data, run_dir, "--iterations=30"),
        lambda: _infer(sample_data, run_dir, str(tmp_path / "x.csv"), "--moe_prob_gating=False"),
        lambda: _train(sample_data, run_dir, ["--netvlad_cluster_size=8"], "--max_steps=20")])
    messages = [_error_line(r) for r in results]
    assert messages[0] == (f"ERROR: --iterations=30 disagrees with {path}, which says "
                           "iterations=8; drop the flag, or use another --train_dir")
    assert f"--moe_prob_gating=False disagrees with {path}, which says moe_prob_gating=True" \
        in messages[1]
    assert "--netvlad_cluster_size=8 disagrees with" in messages[2]
    assert sorted(os.listdir(run_dir)) == before
    assert not os.path.exists(tmp_path / "x.csv")


@pytest.mark.parametrize("flag,value,stored", [
    ("iterations", "9", "8"), ("gating", "False", "True"), ("num_classes", "7", "20"),
    ("max_frames", "100", "300"), ("model", "DbofModelLF", "NetVLADModelLF"),
    ("feature_sizes", "1024,64", "1024,128"), ("frame_features", "False", "True"),
    ("label_loss", "HingeLoss", "CrossEntropyLoss"), ("ensemble_num", "2", "1"),
    ("netvlad_hidden_size", "32", "16"), ("sample_random_frames_at_eval", "True", "False"),
    ("moe_num_mixtures", "4", "2"),
])
def test_each_model_flag_must_agree(runs, flag, value, stored):
    stored_config = model_config.read_json(runs["netvlad"])
    with flagsaver.flagsaver():
        app_flags.FLAGS(["eval", f"--{flag}={value}"])
        with pytest.raises(UsageError) as error:
            app_flags.resolve_model_config(stored_config)
    assert str(error.value).startswith(
        f"--{flag}={value} disagrees with {stored_config.path}, which says {flag}={stored}")


def test_agreeing_flags_and_new_weights_are_accepted(runs):
    stored = model_config.read_json(runs["float16_ensemble"])
    with flagsaver.flagsaver():
        app_flags.FLAGS(["eval", *CASES["float16_ensemble"][:-2], "--ensemble_wts=0.25",
                         "--ensemble_wts=0.75"])
        config = app_flags.resolve_model_config(stored)
    assert config.weights == [0.25, 0.75]
    assert config.with_weights([0.7, 0.3]) == stored.model


def test_a_refused_run_writes_no_file(sample_data, tmp_path):
    """Every flag is checked before model_flags.json is written, so the corrected run is
    not refused as disagreeing with a file of the refused one."""
    run_dir = str(tmp_path / "run")
    refused = [_train(sample_data, run_dir, CASES["netvlad"], "--batch_size=0"),
               _train(sample_data, run_dir, CASES["netvlad"], "--num_epochs=0"),
               _train(sample_data, run_dir, [*CASES["netvlad"], "--ensemble_num=2",
                                             "--ensemble_wts=-0.5", "--ensemble_wts=1.5"])]
    messages = [_error_line(r) for r in refused]
    assert "--batch_size=0 must be at least 1" in messages[0]
    assert "--num_epochs=0 must be at least 1" in messages[1]
    assert "--ensemble_wts=-0.5 must be finite and at least 0" in messages[2]
    assert not os.path.exists(os.path.join(run_dir, model_config.FILE_NAME))
    _ok(_train(sample_data, run_dir, CASES["netvlad"]))


def test_a_2018_run_directory_is_read_and_resumed(sample_data, runs, tmp_path):
    """The 2018 README trained without --model, so its file says LogisticModel while the
    model was NetVLADModelLF: eval.py reads it and train.py resumes it."""
    run_dir = str(tmp_path / "run2018")
    shutil.copytree(runs["netvlad"], run_dir)
    legacy = {"model": "LogisticModel", "feature_sizes": "1024,128",
              "feature_names": "rgb,audio", "frame_features": True,
              "label_loss": "CrossEntropyLoss"}
    with open(os.path.join(run_dir, model_config.FILE_NAME), "w") as f:
        json.dump(legacy, f)
    flags_2018 = [f for f in CASES["netvlad"] if not f.startswith("--model=")]
    record = json_record(_eval(sample_data, run_dir, *flags_2018))
    assert record["global_step"] == STEPS
    original = json_record(_eval(sample_data, runs["netvlad"]))
    assert {k: v for k, v in _metrics(record).items() if k != "checkpoint"} == {
        k: v for k, v in _metrics(original).items() if k != "checkpoint"}
    _ok(_train(sample_data, run_dir, flags_2018, "--max_steps=20"))
    assert os.path.exists(os.path.join(run_dir, "model.ckpt-20.index"))
    with open(os.path.join(run_dir, model_config.FILE_NAME)) as f:
        upgraded = json.load(f)
    assert upgraded["model"] == "NetVLADModelLF" and upgraded["format_version"] == 3


def test_a_setting_the_model_does_not_read_is_refused(sample_data, tmp_path):
    result = _train(sample_data, str(tmp_path / "lstm"),
                    [*CASES["lstm"], "--ensemble_num=2", "--netvlad_cluster_size=4",
                     "--netvlad_cluster_size=8"])
    assert _error_line(result).startswith(
        "ERROR: --netvlad_cluster_size=4 is not a setting of LstmModel, which reads only ")
    assert not os.path.exists(tmp_path / "lstm" / model_config.FILE_NAME)


def test_registry_errors_name_the_flag_and_the_choices():
    with pytest.raises(UsageError, match=r"^--model=Nope is not a model; choices: .*"
                                         r"DbofModelLF.*LogisticModel.*NetVLADModelLF"):
        registry.find_model("Nope")
    with pytest.raises(UsageError, match=r"^--video_level_classifier_model=DbofModel is not a "
                                         r"video-level model; choices: LogisticModel, MoeModel$"):
        registry.find_classifier("DbofModel")
    with pytest.raises(UsageError, match=r"^--label_loss=L2Loss is not a loss; choices: "
                                         r"CrossEntropyLoss, HingeLoss, SoftmaxLoss$"):
        registry.find_loss("L2Loss")
    with pytest.raises(UsageError, match=r"^--optimizer=MomentumOptimizer is not an optimizer"):
        registry.find_optimizer("MomentumOptimizer")
    logistic = model_config.MemberConfig(
        "LogisticModel", 1.0, model_config.ModelSettings(moe_num_mixtures=3))
    with pytest.raises(UsageError, match=r"^--moe_num_mixtures=3 is not a setting of "
                                         r"LogisticModel, which reads only float16_flag, "
                                         r"quantize_int8$"):
        registry.member_arguments(logistic)
    moe = model_config.MemberConfig("DbofModel", 1.0, model_config.ModelSettings(
        video_level_classifier_model="LogisticModel", moe_num_mixtures=3))
    with pytest.raises(UsageError, match="--moe_num_mixtures=3 is not a setting of DbofModel"):
        registry.member_arguments(moe)


# --- The layout: nothing below the scripts reads flags; scripts import no scripts ---------

def _root_modules():
    modules = {}
    for path in glob.glob(os.path.join(REPO, "*.py")):
        name = os.path.basename(path)[:-3]
        with open(path) as f:
            source = f.read()
        modules[name] = (ast.parse(source), 'if __name__ == "__main__":' in source)
    return modules


def _imports(tree):
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_module_below_the_scripts_reads_flags():
    modules = _root_modules()
    scripts = {name for name, (_, is_script) in modules.items() if is_script}
    assert {"train", "eval", "inference", "avg_checkpoints", "build_ensemble"} <= scripts
    # quiet_startup, the scripts' first import, answers their --help (from app_flags).
    script_layer = scripts | {"app_flags", "cli", "setup", "quiet_startup"}
    for name, (tree, _) in modules.items():
        if name in script_layer:
            continue
        imports = _imports(tree)
        assert "app_flags" not in imports, name
        assert "absl.flags" not in imports, name
    for name in scripts:
        imported_scripts = _imports(modules[name][0]) & (scripts - {name})
        assert not imported_scripts, (name, imported_scripts)
