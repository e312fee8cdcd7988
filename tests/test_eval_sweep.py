"""eval.py sweeps: several checkpoints in one run give what single runs give; the selection
flags; the table and the avg_checkpoints.py command; progress lines of eval and inference."""
import glob
import gzip
import json
import os
import re
import shlex
import shutil
import sys

import pytest
import tensorflow as tf

import progress
import sweep_report
from helpers import LOGISTIC_FLAGS, read_checkpoint, run_script, train_args

STEPS = (10, 20, 30)
METRICS = ("num_examples", "hit_at_one", "perr", "map", "gap", "loss")


@pytest.fixture(scope="module")
def run(sample_data, tmp_path_factory):
    """A LogisticModel run with model.ckpt-10, -20 and -30."""
    run_dir = str(tmp_path_factory.mktemp("sweep_run"))
    result = run_script("train", *train_args(sample_data, run_dir, "--max_steps=30",
                                             "--export_model_steps=10"))
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def _copy(run, tmp_path, name):
    copy = str(tmp_path / name)
    shutil.copytree(run, copy)
    return copy


def evaluate(data, run_dir, *extra):
    return run_script("eval", f"--eval_data_pattern={data}/video/validate*.tfrecord",
                      f"--train_dir={run_dir}", "--batch_size=5", *LOGISTIC_FLAGS, *extra)


def records(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def tensorboard_points(run_dir):
    """{(step, tag): value} of the eval summaries."""
    points = {}
    for path in glob.glob(os.path.join(run_dir, "eval", "events.out.tfevents*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                points[(event.step, value.tag)] = value.simple_value
    return points


def resaves(run_dir):
    """Tensors and meta graph bytes of each inference_model_N re-save."""
    found = {}
    for step in STEPS:
        path = os.path.join(run_dir, f"inference_model_{step}")
        with open(path + ".meta", "rb") as meta:
            found[step] = (read_checkpoint(path), meta.read())
    return found


@pytest.mark.parametrize("per_pass", ["0", "2"])
def test_a_sweep_gives_what_single_runs_give(sample_data, run, tmp_path, per_pass):
    singles_dir, sweep_dir = _copy(run, tmp_path, "singles"), _copy(run, tmp_path, "sweep")
    singles = [records(evaluate(sample_data, singles_dir, f"--checkpoint=model.ckpt-{s}"))[0]
               for s in STEPS]
    result = evaluate(sample_data, sweep_dir, "--checkpoints_start_end=10,30",
                      f"--sweep_models_per_pass={per_pass}", "--progress_interval_secs=0")
    swept = records(result)
    assert [r["global_step"] for r in swept] == list(STEPS)
    for single, one in zip(singles, swept, strict=True):
        assert {k: single[k] for k in METRICS} == {k: one[k] for k in METRICS}
        assert single["checkpoint"].replace(singles_dir, sweep_dir) == one["checkpoint"]
    assert tensorboard_points(singles_dir) == tensorboard_points(sweep_dir)
    assert len(tensorboard_points(sweep_dir)) == 5 * len(STEPS)
    single_saves, sweep_saves = resaves(singles_dir), resaves(sweep_dir)
    for step in STEPS:
        single_tensors, single_meta = single_saves[step]
        sweep_tensors, sweep_meta = sweep_saves[step]
        assert single_tensors.keys() == sweep_tensors.keys()
        for name, value in single_tensors.items():
            assert (value == sweep_tensors[name]).all(), (step, name)
        assert sweep_tensors["global_step"] == step
        assert single_meta == sweep_meta
    # One pass over the data per group of model copies.
    passes = re.findall(r"(eval|eval of \d checkpoints): 24 videos done", result.stderr)
    assert passes == (["eval of 3 checkpoints"] if per_pass == "0"
                      else ["eval of 2 checkpoints", "eval"])


def test_the_printed_command_averages_the_best_range(sample_data, run, tmp_path):
    sweep_dir = _copy(run, tmp_path, "sweep")
    result = evaluate(sample_data, sweep_dir, "--num_last_checkpoints=3")
    swept = records(result)
    gaps = [r["gap"] for r in swept]
    first, last = sweep_report.best_range(gaps)
    lines = result.stdout.splitlines()
    rows = [line for line in lines if re.match(r"[* ] +\d+ ", line)]
    assert [int(row.split()[-7]) for row in rows] == list(STEPS)
    assert [row.startswith("*") for row in rows] == [g == max(gaps) for g in gaps]
    [command] = [line for line in lines if line.startswith("python avg_checkpoints.py")]
    pair = f"{STEPS[first]},{STEPS[last]}"
    assert f"--checkpoints_start_end={pair}" in command
    args = shlex.split(command)
    averaged = run_script("avg_checkpoints", *args[2:])
    assert averaged.returncode == 0, averaged.stderr[-2000:]
    output = os.path.join(sweep_dir, f"avg_{STEPS[first]}_{STEPS[last]}.ckpt-0.index")
    assert os.path.exists(output) and args[:2] == ["python", "avg_checkpoints.py"]


def test_selection_flags_pick_the_checkpoints(sample_data, run, tmp_path):
    sweep_dir = _copy(run, tmp_path, "sweep")
    last = records(evaluate(sample_data, sweep_dir, "--num_last_checkpoints=2",
                            "--create_meta_only"))
    assert last == []
    saved = sorted(os.path.basename(p) for p in glob.glob(f"{sweep_dir}/inference_model_*.index"))
    assert saved == ["inference_model_20.index", "inference_model_30.index"]
    listed = records(evaluate(sample_data, sweep_dir, "--checkpoints=30,10"))
    assert [r["global_step"] for r in listed] == [30, 10]


@pytest.mark.parametrize("flags, message", [
    (["--checkpoints=10,15"], r"--checkpoints: checkpoint \S+/model.ckpt-15 does not exist"),
    (["--checkpoints_start_end=31,99"], "no checkpoint .*model.ckpt-N with 31 <= N <= 99"),
    (["--num_last_checkpoints=4"], "--num_last_checkpoints=4 but only 3 checkpoints"),
    (["--checkpoints=10,20", "--checkpoint=model.ckpt-10"], "--checkpoint names one checkpoint"),
    (["--checkpoints=10,20", "--force_output_model_name"], "evaluate one checkpoint, not a sweep"),
])
def test_bad_selections_are_one_line_errors(sample_data, run, tmp_path, flags, message):
    sweep_dir = _copy(run, tmp_path, "sweep")
    result = evaluate(sample_data, sweep_dir, *flags)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and re.search(message, errors[0]), result.stderr[-2000:]
    assert not glob.glob(os.path.join(sweep_dir, "inference_model_*"))


def _record(step, gap, run="RUN"):
    return {"checkpoint": f"{run}/model.ckpt-{step}", "global_step": step, "gap": gap,
            "map": gap / 2, "hit_at_one": 0.5, "perr": 0.25, "loss": 1.5}


def test_report_of_a_constructed_sweep():
    gaps = {10: 0.40, 20: 0.45, 30: 0.47, 40: 0.46, 50: 0.30}
    swept = [_record(step, gap) for step, gap in reversed(gaps.items())]
    text = sweep_report.report(swept, "RUN", on_disk=[0, 10, 20, 30, 40, 50])
    lines = text.splitlines()
    assert lines[0] == "Sweep of 5 checkpoints (* best GAP):"
    assert lines[1].split() == ["step", "GAP", "mAP", "Hit@1", "PERR", "loss", "checkpoint"]
    assert lines[2] == "          10  0.40000  0.20000  0.50000  0.25000  1.50000  model.ckpt-10"
    assert lines[4].startswith("*         30  0.47000")
    assert sum(line.startswith("*") for line in lines) == 1
    # Pairs: 0.425, 0.46, 0.465, 0.38; triples at most 0.46: 30..40 is best.
    assert lines[7] == ("Best contiguous range by mean GAP: 2 checkpoints 30..40, "
                        "mean GAP 0.46500. To average them:")
    assert lines[8] == ("python avg_checkpoints.py --prefix=RUN/model.ckpt "
                        "--checkpoints_start_end=30,40 --output_path=RUN/avg_30_40.ckpt")
    # A checkpoint on disk inside the range but not swept: the list, not the range.
    text = sweep_report.report(swept, "RUN", on_disk=[10, 20, 30, 35, 40, 50])
    assert text.endswith("--checkpoints=30,40 --output_path=RUN/avg_30_40.ckpt")


def test_best_range_rule():
    assert sweep_report.best_range([0.5]) is None
    assert sweep_report.best_range([0.1, 0.5, 0.5, 0.5, 0.1]) == (1, 3)  # ties: longer
    assert sweep_report.best_range([0.5, 0.5, 0.1, 0.5, 0.5]) == (3, 4)  # then later
    assert sweep_report.best_range([0.3, 0.1, 0.25, 0.25]) == (2, 3)
    assert sweep_report.best_range([0.3, 0.1, 0.2, 0.2]) == (0, 3)  # all mean 0.2 (floats)


def test_a_single_non_series_checkpoint_gives_no_range():
    text = sweep_report.report([_record(10, 0.4), {**_record(0, 0.5), "checkpoint":
                                                   "RUN/avg_10_20.ckpt-0"}], "RUN", [10])
    assert text.endswith("No range to average: fewer than two swept model.ckpt-N checkpoints.")
    assert "*          0  0.50000" in text


# --- Progress lines ------------------------------------------------------------------------

def test_count_records_is_exact_or_none(sample_data, tmp_path):
    files = sorted(glob.glob(f"{sample_data}/frame/*.tfrecord"))
    expected = sum(1 for path in files for _ in tf.compat.v1.io.tf_record_iterator(path))
    assert progress.count_records(files) == expected
    packed = str(tmp_path / "packed.tfrecord")
    with open(files[0], "rb") as source, gzip.open(packed, "wb") as target:
        target.write(source.read())
    assert progress.count_records([files[0], packed]) is None
    assert progress.count_records(["gs://bucket/a.tfrecord"]) is None


def test_progress_line_percent_and_time_left():
    now = [100.0]
    tracker = progress.Progress("eval", 1000, 10, clock=lambda: now[0])
    now[0] = 104.0
    tracker.add(200)
    assert tracker.line(now[0]) == "eval: 200 videos done, 50.0 videos/s, 20.0% of 1,000, 16 s left"
    assert progress.Progress("x", None, 0, clock=lambda: 1.0).line(3.0) == \
        "x: 0 videos done, 0.0 videos/s"


def _progress_lines(stderr, what):
    return re.findall(rf"{what}: (\d+) videos done, [\d.]+ videos/s, ([\d.]+)% of (\d+)", stderr)


def test_eval_and_inference_log_progress(sample_data, run, tmp_path):
    sweep_dir = _copy(run, tmp_path, "sweep")
    result = evaluate(sample_data, sweep_dir, "--checkpoint=model.ckpt-30",
                      "--progress_interval_secs=0")
    assert records(result)
    lines = _progress_lines(result.stderr, "eval")
    assert [int(done) for done, _, _ in lines] == [5, 10, 15, 20, 24]
    assert lines[-1][1:] == ("100.0", "24")
    predicted = run_script(
        "inference", f"--train_dir={sweep_dir}", "--inference_model_file=inference_model_30",
        f"--input_data_pattern={sample_data}/video/test*.tfrecord", "--batch_size=7",
        f"--output_file={tmp_path / 'out.csv'}", "--progress_interval_secs=0")
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    lines = _progress_lines(predicted.stderr, "inference")
    total = sum(1 for path in glob.glob(f"{sample_data}/video/test*.tfrecord")
                for _ in tf.compat.v1.io.tf_record_iterator(path))
    assert len(lines) == -(-total // 7) and lines[-1] == (str(total), "100.0", str(total))
    # The default interval (10 s) logs nothing on so small a set.
    quiet = evaluate(sample_data, sweep_dir, "--checkpoint=model.ckpt-30")
    assert not _progress_lines(quiet.stderr, "eval")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
