"""Faults (SPEC 11), as tests/test_bad_input.py's table: a full disk for every writer, and the
temporary folder of --input_model_tgz.  One ERROR line naming the path, a non-zero exit, no
traceback, nothing left behind.

A full disk is a small tmpfs mounted in the case's folder (we run as root), filled up to a
few kilobytes once the case's inputs are in it; where mount fails the cases are skipped.
Like test_bad_input.py, the selected cases run together, a few at a time.
"""
import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, List

import numpy as np
import pytest

import checkpoint_utils
import export
from helpers import LOGISTIC_FLAGS, NUM_CLASSES, REPO, run_script

TRAIN_FLAGS = [*LOGISTIC_FLAGS, "--batch_size=8", "--num_readers=2", "--max_steps=20"]
PARALLEL = 4
MOUNTS: List[str] = []  # unmounted when the module's tests are done
TEMP_NAMES = (".tmp-*", ".old-*", ".new-*")  # checkpoint_utils' replacement rule


@dataclass
class Env:
    data: str  # sample data folder
    run: str  # LogisticModel run: model.ckpt-10/20, inference_model, model_flags.json
    tmp: str  # this case's own folder

    def path(self, *parts: str) -> str:
        return os.path.join(self.tmp, *parts)


@dataclass
class Case:
    """One faulty run: what it must say, what it must not leave behind."""

    script: str
    args: List[str]
    says: List[str]  # substrings of the last stderr line (after "ERROR: ")
    leaves_nothing: List[str] = field(default_factory=list)  # globs that must match nothing
    env: Dict[str, str] = field(default_factory=dict)  # added to the environment
    succeeds: bool = False  # exit 0, `says` somewhere in stderr
    then: Callable[[], None] | None = None  # further checks of what is on disk
    skip: str = ""  # why the case cannot run here


def _mount_tmpfs(path: str, size: str = "16m") -> str:
    """A tmpfs at ``path``; '' when mounted, else why not."""
    os.makedirs(path, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                            capture_output=True, text=True)
    if result.returncode:
        return f"cannot mount a tmpfs for a full disk: {result.stderr.strip()}"
    MOUNTS.append(path)
    return ""


def _fill(path: str, free: int) -> None:
    """Leaves ``free`` bytes free on the file system of ``path``."""
    stat = os.statvfs(path)
    with open(os.path.join(path, "filler"), "wb") as f:
        f.write(b"\0" * max(stat.f_bavail * stat.f_frsize - free, 0))


def _full_disk_case(env: Env, free: int, build: Callable[[str], Case],
                    fill_after_build: bool = True) -> Case:
    """``build(mount point)``, with a tmpfs there left with ``free`` bytes."""
    disk = env.path("disk")
    why = _mount_tmpfs(disk)
    if why:
        return Case("", [], [], skip=why)
    case = build(disk) if fill_after_build else None
    _fill(disk, free)
    return case or build(disk)


def _leftovers(folder: str, *names: str) -> List[str]:
    """Globs of ``names`` and of the replacement rule's temporary files in ``folder``."""
    return [os.path.join(folder, n) for n in (*names, *TEMP_NAMES)]


def train_disk_full(env):
    def build(disk):
        train_dir = os.path.join(disk, "run")
        return Case("train", [f"--train_data_pattern={env.data}/video/train*.tfrecord",
                              f"--train_dir={train_dir}", *TRAIN_FLAGS],
                    ["No space left on device", f"{train_dir}/model.ckpt-10"],
                    _leftovers(train_dir, "model.ckpt-*"))
    return _full_disk_case(env, 64 * 1024, build)


def avg_disk_full(env):
    def build(disk):
        output = os.path.join(disk, "avg.ckpt")
        return Case("avg_checkpoints", [f"--prefix={env.run}/model.ckpt-", "--checkpoints=10,20",
                                        f"--output_path={output}"],
                    [f"--output_path={output}", "No space left on device", f"{output}-0"],
                    _leftovers(disk, "avg.ckpt*"))
    return _full_disk_case(env, 16 * 1024, build)


def overwrite_float16_disk_full(env):
    def build(disk):
        template = {}
        for prefix in ("tower/", "tower/model1/"):
            template[prefix + "fully_connected/weights"] = np.zeros([1152, NUM_CLASSES],
                                                                    np.float16)
            template[prefix + "fully_connected/biases"] = np.zeros([NUM_CLASSES], np.float16)
        checkpoint_utils.write_checkpoint(template, os.path.join(disk, "template"))
        good = os.path.join(env.run, "model.ckpt-20")
        return Case("overwrite_float16_ckpt",
                    [f"--train_dir={disk}", "--inference_model=template-0",
                     f"--checkpoints={good},{good}", "--out_name=filled"],
                    ["No space left on device", f"{disk}/filled-0"],
                    _leftovers(disk, "filled*"))
    return _full_disk_case(env, 16 * 1024, build)


def build_ensemble_disk_full(env):
    def build(disk):
        members = ",".join(os.path.join(env.run, f"model.ckpt-{n}") for n in (10, 20))
        return Case("build_ensemble", [f"--train_dir={disk}", *LOGISTIC_FLAGS, "--ensemble_num=2",
                                       f"--member_checkpoints={members}"],
                    ["No space left on device", f"{disk}/inference_model"],
                    _leftovers(disk, "inference_model*"))
    return _full_disk_case(env, 16 * 1024, build)


def eval_resave_disk_full(env):
    def build(disk):
        run_dir = os.path.join(disk, "run")
        shutil.copytree(env.run, run_dir)
        return Case("eval", [f"--train_dir={run_dir}", "--checkpoint=model.ckpt-20",
                             "--create_meta_only"],
                    ["No space left on device", f"{run_dir}/inference_model_20"],
                    _leftovers(run_dir, "inference_model_20*"))
    return _full_disk_case(env, 16 * 1024, build)


def inference_csv_disk_full(env):
    def build(disk):
        csv = os.path.join(disk, "predictions.csv")
        return Case("inference", [f"--train_dir={env.run}", f"--output_file={csv}",
                                  f"--input_data_pattern={env.data}/video/test*.tfrecord"],
                    ["No space left on device", csv], [csv + "*"])
    return _full_disk_case(env, 0, build)


def tgz_disk_full(env):
    def build(disk):
        tgz = os.path.join(disk, "model.tgz")
        return Case("inference", [f"--train_dir={env.run}", f"--output_file={env.path('p.csv')}",
                                  f"--input_data_pattern={env.data}/video/test*.tfrecord",
                                  f"--output_model_tgz={tgz}"],
                    ["No space left on device", tgz], [tgz + "*"])
    return _full_disk_case(env, 0, build)


def sample_data_disk_full(env):
    def build(disk):
        output = os.path.join(disk, "data")
        return Case("make_sample_data", [f"--output_dir={output}", "--num_classes=20",
                                         "--videos_per_shard=8"],
                    [f"--output_dir={output}", "No space left on device"],
                    [f"{output}/*/*", f"{output}/*/.*"])
    return _full_disk_case(env, 16 * 1024, build, fill_after_build=False)


def _tgz(env: Env) -> str:
    path = env.path("model.tgz")
    export.write_model_tgz(env.run, "inference_model", path)
    return path


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def tgz_unpacked_in_a_private_folder(env):
    """Unpacked in yt8m-tgz-<pid>-*, removed at exit; a dead run's folder goes, a live one's
    stays."""
    tmp = env.path("tmp")
    stale = os.path.join(tmp, f"yt8m-tgz-{_dead_pid()}-abc")
    live = os.path.join(tmp, f"yt8m-tgz-{os.getpid()}-live")
    for folder in (stale, live):
        os.makedirs(folder)
        open(os.path.join(folder, "inference_model.index"), "w").close()
    csv = env.path("predictions.csv")

    def then():
        assert os.listdir(tmp) == [os.path.basename(live)]

    return Case("inference", [f"--input_model_tgz={_tgz(env)}", f"--output_file={csv}",
                              f"--input_data_pattern={env.data}/video/test*.tfrecord"],
                [f"Wrote 24 videos to {csv}"], env={"TMPDIR": tmp}, succeeds=True, then=then)


def unreadable_tgz(env):
    tmp = env.path("tmp")
    os.makedirs(tmp)
    tgz = env.path("broken.tgz")
    with open(tgz, "wb") as f:
        f.write(b"not a tgz")
    csv = env.path("predictions.csv")
    return Case("inference", [f"--input_model_tgz={tgz}", f"--output_file={csv}",
                              f"--input_data_pattern={env.data}/video/test*.tfrecord"],
                [f"--input_model_tgz={tgz}", "not a readable .tgz"],
                [csv + "*", os.path.join(tmp, "*")], env={"TMPDIR": tmp})


CASES: Dict[str, Callable[[Env], Case]] = {f.__name__: f for f in (
    train_disk_full, avg_disk_full, overwrite_float16_disk_full, build_ensemble_disk_full,
    eval_resave_disk_full, inference_csv_disk_full, tgz_disk_full, sample_data_disk_full,
    tgz_unpacked_in_a_private_folder, unreadable_tgz)}


@pytest.fixture(scope="module")
def model_run(tmp_path_factory) -> str:
    """LogisticModel checkpoints model.ckpt-10/20 and the inference_model of the second."""
    run_dir = str(tmp_path_factory.mktemp("faults_run"))
    rng = np.random.default_rng(0)
    for step in (10, 20):
        checkpoint_utils.write_checkpoint(
            {"tower/fully_connected/weights": rng.normal(size=[1152, NUM_CLASSES]).astype(
                np.float32), "tower/fully_connected/biases": np.zeros(NUM_CLASSES, np.float32)},
            os.path.join(run_dir, "model.ckpt"), global_step=step)
    result = run_script("build_ensemble", f"--train_dir={run_dir}", *LOGISTIC_FLAGS,
                        f"--member_checkpoints={run_dir}/model.ckpt-20")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def outcomes(request, sample_data, model_run, tmp_path_factory):
    """(case, finished process) of every selected case, all run together."""
    selected = [item.callspec.params["name"] for item in request.session.items
                if item.path == request.path and hasattr(item, "callspec")]
    cases = {}
    try:
        for name in selected:
            cases[name] = CASES[name](Env(sample_data, model_run,
                                          str(tmp_path_factory.mktemp(name))))
        with ThreadPoolExecutor(PARALLEL) as pool:
            futures = {name: pool.submit(run_script, case.script, *case.args, timeout=300,
                                         env=case.env)
                       for name, case in cases.items() if not case.skip}
            yield {name: (case, futures[name].result() if name in futures else None)
                   for name, case in cases.items()}
    finally:
        while MOUNTS:
            subprocess.run(["umount", "-l", MOUNTS.pop()], check=False)


@pytest.mark.parametrize("name", CASES)
def test_fault(outcomes, name):
    case, result = outcomes[name]
    if case.skip:
        pytest.skip(case.skip)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    if case.succeeds:
        assert result.returncode == 0, result.stderr[-3000:]
        for text in case.says:
            assert text in result.stderr
    else:
        assert result.returncode != 0
        last = result.stderr.rstrip("\n").splitlines()[-1]
        assert last.startswith("ERROR: "), result.stderr[-3000:]
        for text in case.says:
            assert text in last, (text, last)
    for pattern in case.leaves_nothing:
        assert not glob.glob(pattern), (pattern, glob.glob(pattern))
    if case.then:
        case.then()


def test_kill_9_leaves_a_tgz_folder_the_next_run_removes(sample_data, model_run, tmp_path):
    """kill -9 skips the removal at exit; the next inference.py removes the folder."""
    env = Env(sample_data, model_run, str(tmp_path))
    tmp = env.path("tmp")
    os.makedirs(tmp)
    args = [f"--input_model_tgz={_tgz(env)}", f"--output_file={env.path('p.csv')}",
            f"--input_data_pattern={sample_data}/video/test*.tfrecord"]
    process = subprocess.Popen([sys.executable, os.path.join(REPO, "inference.py"), *args],
                               cwd=REPO, env={**os.environ, "TMPDIR": tmp},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not glob.glob(os.path.join(tmp, "yt8m-tgz-*", "model_flags.json")):
            assert process.poll() is None and time.time() < deadline, "no folder unpacked"
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert glob.glob(os.path.join(tmp, "yt8m-tgz-*"))
    result = run_script("inference", *args, env={"TMPDIR": tmp})
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.listdir(tmp) == []
