"""What a user sees: no TensorFlow start-up noise, each warning once, errors kept,
progress with time left, and a --help of each script's own flags, answered before
TensorFlow is imported."""
import collections
import os
import re
import subprocess
import sys

import pytest

from helpers import LOGISTIC_FLAGS, REPO, run_script

START_UP_NOISE = ("absl::InitializeLog", "port.cc", "cudart_stub.cc", "cpu_feature_guard.cc",
                  "To enable the following instructions", "Restoring parameters from",
                  "is deprecated")


def _check_quiet(stderr: str) -> None:
    for noise in START_UP_NOISE:
        assert noise not in stderr, (noise, stderr[-3000:])
    if not os.path.exists("/dev/nvidiactl"):  # no GPU: the CUDA probe says nothing useful
        assert "cuInit" not in stderr
    warnings = collections.Counter(
        re.sub(r"^W\d{4} [\d:.]+ +\d+ ", "", line) for line in stderr.splitlines()
        if line.startswith("W"))
    assert all(count == 1 for count in warnings.values()), warnings


def test_scripts_are_quiet_and_report_progress(sample_data, tmp_path):
    run_dir = str(tmp_path / "run")
    train = run_script("train", f"--train_data_pattern={sample_data}/video/train*.tfrecord",
                       f"--train_dir={run_dir}", *LOGISTIC_FLAGS, "--batch_size=4",
                       "--max_steps=20", "--num_epochs=100")
    assert train.returncode == 0, train.stderr[-3000:]
    _check_quiet(train.stderr)
    assert re.search(r"step 20 \| .* examples/sec .* / 20, \d+m\d\ds left", train.stderr)
    evaluate = run_script("eval", f"--train_dir={run_dir}", "--run_once",
                          f"--eval_data_pattern={sample_data}/video/validate*.tfrecord")
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    _check_quiet(evaluate.stderr)
    csv = str(tmp_path / "out.csv")
    infer = run_script("inference", f"--train_dir={run_dir}", f"--output_file={csv}",
                       "--inference_model_file=inference_model_20",
                       f"--input_data_pattern={sample_data}/video/test*.tfrecord")
    assert infer.returncode == 0, infer.stderr[-3000:]
    _check_quiet(infer.stderr)
    # An error still reaches the user, as the last line.
    bad = run_script("eval", f"--train_dir={run_dir}", "--run_once", "--top_k=0",
                     f"--eval_data_pattern={sample_data}/video/validate*.tfrecord")
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1].startswith("ERROR: --top_k=0")
    # A data error found while running the graph: one line, not TensorFlow's echo of it too.
    wrong = run_script("train", f"--train_data_pattern={sample_data}/video/train*.tfrecord",
                       f"--train_dir={tmp_path / 'wrong'}", *LOGISTIC_FLAGS[:-2],
                       "--num_classes=5", "--model=LogisticModel", "--max_steps=5")
    assert wrong.returncode != 0
    not_info = [line for line in wrong.stderr.splitlines() if not line.startswith("I")]
    assert len(not_info) == 1 and not_info[0].startswith("ERROR: YT8M data error: label id"), \
        wrong.stderr[-3000:]


def test_sample_data_says_what_it_wrote(tmp_path):
    result = run_script("make_sample_data", f"--output_dir={tmp_path}", "--num_classes=5",
                        "--videos_per_shard=2", "--num_train_shards=1",
                        "--num_validate_shards=1", "--num_test_shards=1",
                        "--min_video_frames=2", "--max_video_frames=3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"Wrote 6 videos (5 classes) in 3 files each to {tmp_path}/frame" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("script,has,lacks", [
    ("train", ["--train_data_pattern", "--lstm_cells", "--base_learning_rate"],
     ["--output_file", "--eval_data_pattern"]),
    ("eval", ["--eval_data_pattern", "--run_once", "--ensemble_wts", "model_flags.json"],
     ["--lstm_", "--output_file", "--base_learning_rate", "--train_data_pattern"]),
    ("inference", ["--input_data_pattern", "--output_file", "--batch_size: Videos per batch"],
     ["--lstm_", "--dbof_", "per tower", "--base_learning_rate", "--eval_data_pattern"]),
])
def test_help_lists_the_scripts_own_flags_by_group(script, has, lacks):
    result = run_script(script, "--help")
    assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]
    for text in has:
        assert text in result.stdout, text
    for text in lacks:
        assert text not in result.stdout, text
    groups = re.findall(r"^(\w+) flags:$", result.stdout, re.MULTILINE)
    assert groups and groups == sorted(groups, key=["data", "model", "training", "evaluation",
                                                    "output"].index)


@pytest.mark.parametrize("script", ["train", "eval", "inference"])
def test_help_answers_without_tensorflow(script):
    """--help comes before the script's seconds of TensorFlow import: none is imported."""
    result = subprocess.run([sys.executable, "-X", "importtime", f"{script}.py", "--help"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "data flags:" in result.stdout and "--helpfull lists every flag" in result.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")]
    assert "app_flags" in imported
    assert not [m for m in imported if m.split(".")[0] == "tensorflow"], result.stderr[-2000:]


def test_demo_reads_well(tmp_path):
    """README command 1: headings, no start-up noise, each warning once, a summary table."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(["bash", os.path.join(REPO, "run_demo.sh"), str(tmp_path / "demo")],
                            env={**env, "PYTHON": sys.executable}, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    _check_quiet(result.stderr)
    headings = re.findall(r"^== (\d+)\. ", result.stderr, re.MULTILINE)
    assert [int(h) for h in headings] == list(range(1, len(headings) + 1)) and len(headings) >= 10
    summary = result.stdout[result.stdout.index("== Summary"):].splitlines()
    gaps = [float(line.split("GAP ")[1]) for line in summary if " GAP " in line]
    assert len(gaps) == 5 and all(0 < gap <= 1 for gap in gaps)
    assert any("ensemble size" in line and "limit 1,073,741,824" in line for line in summary)
    assert summary[-1].strip().endswith("submission.csv (200 videos)")
