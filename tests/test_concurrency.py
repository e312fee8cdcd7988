"""Two processes on one run directory: a second train.py refuses to start while the first
lives and takes over its lock once it is dead; eval.py waits for a run that does not exist
yet and evaluates its checkpoints oldest first."""
import glob
import json
import os
import shutil
import signal
import socket

from helpers import read, run_script, start, steps_on_disk, train_args, wait_for


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_second_trainer_refuses_then_takes_over_a_dead_ones_lock(sample_data, tmp_path):
    run_dir = str(tmp_path / "run")
    lock = os.path.join(run_dir, ".train.lock")
    first = start("train", train_args(sample_data, run_dir, "--max_steps=100000"),
                  str(tmp_path), "first")
    try:
        wait_for(lambda: steps_on_disk(run_dir), first, "the first checkpoint")
        with open(lock) as f:
            assert json.load(f) == {"host": socket.gethostname(), "pid": first.pid}
        second = run_script("train", *train_args(sample_data, run_dir, "--max_steps=30"))
        assert second.returncode != 0
        assert "Traceback" not in second.stderr
        assert _last_line(second.stderr) == (
            f"ERROR: another train.py (host {socket.gethostname()}, pid {first.pid}) is writing "
            f"this --train_dir ({lock}); wait for it, stop it, or use another --train_dir")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert os.path.exists(lock)  # kill -9 leaves the lock behind
    reached = max(steps_on_disk(run_dir))
    resumed = run_script("train", *train_args(sample_data, run_dir,
                                              f"--max_steps={reached + 10}"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Taking over {lock}, left by process {first.pid}" in resumed.stderr
    assert max(steps_on_disk(run_dir)) == reached + 10
    assert not os.path.exists(lock)  # released at the end
    events = glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))
    suffixes = {name.rsplit(".", 1)[1] for name in events}
    assert len(events) == 2 and len(suffixes) == 2 and str(first.pid) in suffixes


def test_eval_waits_for_the_run_and_takes_checkpoints_oldest_first(sample_data, tmp_path):
    trained = str(tmp_path / "trained")
    result = run_script("train", *train_args(sample_data, trained, "--max_steps=30",
                                             "--export_model_steps=10"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert steps_on_disk(trained) == [10, 20, 30]
    run_dir = str(tmp_path / "run")
    waiting = start("eval", [f"--train_dir={run_dir}", "--eval_interval_secs=1",
                             f"--eval_data_pattern={sample_data}/video/validate*.tfrecord"],
                    str(tmp_path), "eval")
    try:
        wait_for(lambda: "Waiting for train.py to write" in read(str(tmp_path), "eval.err"),
                 waiting, "eval.py to wait for model_flags.json")
        shutil.copytree(trained, run_dir)

        def records():
            return [json.loads(line) for line in read(str(tmp_path), "eval.out").splitlines()
                    if line.startswith("{")]
        wait_for(lambda: len(records()) == 3, waiting, "three evaluations")
    finally:
        waiting.send_signal(signal.SIGKILL)
        waiting.wait()
    assert [r["global_step"] for r in records()] == [10, 20, 30]
