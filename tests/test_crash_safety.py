"""kill -9 while a tool overwrites its output checkpoint: the output name then loads as the
old checkpoint or the new one, at once or after the next write of it (which repairs it
first), and no temporary file stays for good (checkpoint_utils' replacement rule).

Each tool's file operations in the output folder are slowed down (tests/slow_renames.py)
so that the random kills land in every step of the replacement; the checkpoints are tiny.
"""
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, List

import numpy as np
import pytest
import tensorflow as tf

import checkpoint_utils
from helpers import LOGISTIC_FLAGS, NUM_CLASSES, REPO

V1 = tf.compat.v1
RENAME_SECS = 0.02  # per rename or remove in the output folder
KILL_WINDOW_SECS = 0.4  # kills land this long after the output folder first changes
BIASES = "tower/fully_connected/biases"
TEMP_PREFIXES = (".tmp-", ".old-", ".new-")


@dataclass
class Tool:
    script: str
    output: str  # the checkpoint prefix it writes
    variable: str  # its first element tells the versions apart
    args: Callable[[int], List[str]]  # the arguments of version 0 or 1
    value: Callable[[int], float]  # what version 0 or 1 writes


def _members(folder: str, shape: List[int]) -> List[str]:
    """Two single-model checkpoints whose biases are all 1, resp. all 2."""
    paths = []
    for value in (1, 2):
        paths.append(checkpoint_utils.write_checkpoint(
            {"tower/fully_connected/weights": np.full(shape, value, np.float32),
             BIASES: np.full([shape[-1]], value, np.float32)},
            os.path.join(folder, f"member{value}", "model.ckpt")))
    return paths


def _avg_checkpoints(tmp: str) -> Tool:
    run, out = os.path.join(tmp, "run"), os.path.join(tmp, "out")
    for step in (10, 20, 30):
        checkpoint_utils.write_checkpoint({"w": np.full([4, 4], step, np.float32)},
                                          os.path.join(run, "model.ckpt"), global_step=step)
    return Tool("avg_checkpoints", os.path.join(out, "avg.ckpt-0"), "w",
                lambda i: [f"--prefix={run}/model.ckpt-", f"--output_path={out}/avg.ckpt",
                           "--checkpoints=" + ("10,20", "20,30")[i]],
                lambda i: (15.0, 25.0)[i])


def _overwrite_float16_ckpt(tmp: str) -> Tool:
    out = os.path.join(tmp, "out")
    members = _members(tmp, [3, 4])
    template = {}
    for prefix in ("tower/", "tower/model1/"):
        template[prefix + "fully_connected/weights"] = np.zeros([3, 4], np.float16)
        template[prefix + "fully_connected/biases"] = np.zeros([4], np.float16)
    checkpoint_utils.write_checkpoint(template, os.path.join(out, "template"))
    return Tool("overwrite_float16_ckpt", os.path.join(out, "filled-0"), BIASES,
                lambda i: [f"--train_dir={out}", "--inference_model=template-0",
                           "--out_name=filled", "--checkpoints=" + ",".join(
                               (members, members[::-1])[i])],
                lambda i: 1.0 + i)


def _build_ensemble(tmp: str) -> Tool:
    out = os.path.join(tmp, "out")
    members = _members(tmp, [1152, NUM_CLASSES])
    return Tool("build_ensemble", os.path.join(out, "inference_model"), BIASES,
                lambda i: [f"--train_dir={out}", *LOGISTIC_FLAGS, "--ensemble_num=2",
                           "--member_checkpoints=" + ",".join(
                               (members, members[::-1])[i])],
                lambda i: 1.0 + i)


TOOLS = {"avg_checkpoints": (_avg_checkpoints, 10),
         "overwrite_float16_ckpt": (_overwrite_float16_ckpt, 3),
         "build_ensemble": (_build_ensemble, 3)}


def start(tool: Tool, version: int) -> subprocess.Popen:
    env = {**os.environ, "SLOW_RENAMES_DIR": os.path.dirname(tool.output),
           "SLOW_RENAMES_SECS": str(RENAME_SECS)}
    return subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tests", "slow_renames.py"), tool.script,
         *tool.args(version)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


def listing(folder: str) -> List[str]:
    """The folder's files, but not the writability probes of check_writable."""
    return sorted(n for n in os.listdir(folder) if not n.endswith("-write-test"))


def temp_files(folder: str) -> List[str]:
    return [n for n in os.listdir(folder) if n.startswith(TEMP_PREFIXES)]


def kill_at_random(process: subprocess.Popen, folder: str, delay: float) -> None:
    """kill -9 ``delay`` seconds after the folder first changes (or when the time is up)."""
    before, deadline = listing(folder), time.time() + 120
    while listing(folder) == before and process.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.communicate()


def load(prefix: str, variable: str) -> float | None:
    """The variable's first element after a restore through the meta graph; None if it fails."""
    if not os.path.exists(prefix + ".index"):
        return None
    with tf.Graph().as_default(), V1.Session() as sess:
        V1.train.import_meta_graph(prefix + ".meta", clear_devices=True).restore(sess, prefix)
    return float(tf.train.load_checkpoint(prefix).get_tensor(variable).flat[0])


def repaired_copy(tool: Tool, scratch: str) -> float | None:
    """What the next write starts from: the output folder copied and repaired."""
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(os.path.dirname(tool.output), scratch)
    prefix = os.path.join(scratch, os.path.basename(tool.output))
    checkpoint_utils.repair_checkpoint(prefix)
    assert temp_files(scratch) == [], temp_files(scratch)
    return load(prefix, tool.variable)


def finish(tool: Tool, version: int) -> None:
    """An uninterrupted run: its value under the output name, no temporary files."""
    process = start(tool, version)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    assert load(tool.output, tool.variable) == tool.value(version)
    assert temp_files(os.path.dirname(tool.output)) == []


@pytest.mark.parametrize("name", TOOLS)
def test_kill_9_while_overwriting_leaves_the_old_or_the_new_checkpoint(name, tmp_path):
    make, kills = TOOLS[name]
    tool = make(str(tmp_path))
    finish(tool, 0)
    current, rng, outcomes = 0, random.Random(name), Counter()
    for kill in range(kills):
        new = 1 - current  # each run writes the version the output does not hold
        # Spread over the window: each kill at a random moment of its own slice of it.
        delay = (kill + rng.random()) * KILL_WINDOW_SECS / kills
        kill_at_random(start(tool, new), os.path.dirname(tool.output), delay)
        at_once = load(tool.output, tool.variable)
        after_repair = repaired_copy(tool, str(tmp_path / "scratch"))
        assert after_repair in (tool.value(current), tool.value(new)), (kill, delay, after_repair)
        assert at_once in (None, after_repair), (kill, delay, at_once)
        outcomes["new" if after_repair == tool.value(new) else "old",
                 "at once" if at_once is not None else "after repair"] += 1
        current = new if after_repair == tool.value(new) else current
    print(f"{name}: {kills} kills: {dict(outcomes)}")
    finish(tool, 1 - current)
