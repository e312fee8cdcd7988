"""Benchmark 6: an eval.py sweep of 4 checkpoints against the 2018 shell loop.

The 2018 workflow ran ``for CKPT in 150010 170010 190010 210010; do python
eval.py ... --checkpoint=model.ckpt-${CKPT}.index; done``: four start-ups,
four graph builds, four passes over the held-out files.  Here four randomly
initialised checkpoints at the benchmark's model sizes are evaluated both
ways on a quarter of the sample data (a small held-out set), one after the
other in the same run; reported: both wall times (start-up included), their
ratio, both peak RSS, and whether every checkpoint got the same metrics.
"""
import os
from typing import Dict, List

import numpy as np
import tensorflow as tf

import app_flags
import checkpoint_utils
import model_config
import model_graph
from benchmarks import common

STEPS = (150010, 170010, 190010, 210010)
_METRICS = ("num_examples", "hit_at_one", "perr", "map", "gap", "loss")


def save_checkpoints(train_dir: str) -> None:
    """model.ckpt-N for each of STEPS: fresh random weights of the parsed flags' model."""
    config = app_flags.model_config()
    model_config.write_json(train_dir, config)
    graph = model_graph.build_inference_graph(config)
    with graph.as_default():
        saver = tf.compat.v1.train.Saver(model_graph.model_variables(), max_to_keep=None)
        init = tf.compat.v1.global_variables_initializer()
        step = tf.compat.v1.train.get_global_step()
    with tf.compat.v1.Session(graph=graph) as sess:
        for number in STEPS:
            sess.run(init)
            checkpoint_utils.assign_values(sess, {"step": step}, {"step": np.int32(number)})
            saver.save(sess, os.path.join(train_dir, "model.ckpt"), global_step=number,
                       write_state=False)


def _records(child: common.ChildResult) -> List[Dict[str, object]]:
    return common.json_records(child)


def _eval(settings: common.Settings, train_dir: str, files: List[str], log: str,
          *selection: str) -> common.ChildResult:
    return common.run_child(
        ["eval.py", f"--train_dir={train_dir}", f"--eval_data_pattern={','.join(files)}",
         f"--batch_size={settings.script_batch_size}", *selection],
        os.path.join(train_dir, log))


def measure(settings: common.Settings, train_dir: str, files: List[str]) -> Dict[str, object]:
    """Wall seconds of the shell loop and of the sweep, on the first quarter of ``files``."""
    held_out = files[:max(1, len(files) // 4)]
    save_checkpoints(train_dir)
    loop = [_eval(settings, train_dir, held_out, f"loop_{step}.log", "--run_once",
                  f"--checkpoint=model.ckpt-{step}.index") for step in STEPS]
    sweep = _eval(settings, train_dir, held_out, "sweep.log",
                  f"--checkpoints={','.join(map(str, STEPS))}")
    single = [_records(child)[0] for child in loop]
    swept = _records(sweep)
    same = [{k: r[k] for k in _METRICS} for r in single] == [
        {k: r[k] for k in _METRICS} for r in swept]
    loop_seconds = sum(child.seconds for child in loop)
    return {"checkpoints": len(STEPS), "videos": swept[0]["num_examples"],
            "files": len(held_out), "loop_wall_seconds": loop_seconds,
            "sweep_wall_seconds": sweep.seconds, "speedup": loop_seconds / sweep.seconds,
            "loop_peak_rss_bytes": max(child.peak_rss_bytes for child in loop),
            "sweep_peak_rss_bytes": sweep.peak_rss_bytes, "same_metrics": same}
