"""Benchmarks 4 and 5: inference.py (records to CSV) and eval.py, as users run them.

A randomly initialised model at the benchmark's sizes is saved the way
eval.py re-saves checkpoints (``inference_model`` + meta graph +
model_flags.json); each script then runs as a child process on the sample
data.  Reported: the script's own videos/sec (after start-up and graph
building), the end-to-end wall time and the child's peak RSS.
"""
import os
import re
from typing import Dict, List

import tensorflow as tf

import app_flags
import export
import model_config
import model_graph
from benchmarks import common

MODEL_NAME = "inference_model"


def save_model(train_dir: str) -> None:
    """A fresh model of the parsed flags' configuration, saved for eval and inference."""
    config = app_flags.model_config()
    model_config.write_json(train_dir, config)
    graph = model_graph.build_inference_graph(config)
    with graph.as_default():
        saver = tf.compat.v1.train.Saver(model_graph.model_variables())
        init = tf.compat.v1.global_variables_initializer()
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(init)
        export.save_inference_model(sess, saver, config, os.path.join(train_dir, MODEL_NAME))


def _summary(child: common.ChildResult, videos: int, reported: float) -> Dict[str, object]:
    return {"videos": videos, "videos_per_sec": reported,
            "wall_seconds": child.seconds, "end_to_end_videos_per_sec": videos / child.seconds,
            "peak_rss_bytes": child.peak_rss_bytes}


def inference(settings: common.Settings, train_dir: str, files: List[str]) -> Dict[str, object]:
    output = os.path.join(train_dir, "predictions.csv")
    child = common.run_child(
        ["inference.py", f"--train_dir={train_dir}", f"--input_data_pattern={','.join(files)}",
         f"--output_file={output}", f"--batch_size={settings.script_batch_size}",
         *settings.model_flags()], os.path.join(train_dir, "inference.log"))
    found = re.search(r"Wrote (\d+) videos to .* \(([\d.]+) videos/sec\)", child.output)
    if not found:
        raise RuntimeError(f"inference.py did not report its speed:\n{child.output[-2000:]}")
    with open(output, encoding="utf-8") as csv:
        lines = sum(1 for _ in csv) - 1
    if lines != int(found.group(1)):
        raise RuntimeError(f"inference.py wrote {lines} lines for {found.group(1)} videos")
    return _summary(child, lines, float(found.group(2)))


def evaluation(settings: common.Settings, train_dir: str, files: List[str]) -> Dict[str, object]:
    child = common.run_child(
        ["eval.py", f"--train_dir={train_dir}", f"--eval_data_pattern={','.join(files)}",
         f"--checkpoint_file={MODEL_NAME}", "--run_once",
         f"--batch_size={settings.script_batch_size}", *settings.model_flags()],
        os.path.join(train_dir, "eval.log"))
    records = [r for r in common.json_records(child) if "videos_per_sec" in r]
    if not records:
        raise RuntimeError(f"eval.py printed no result line:\n{child.output[-2000:]}")
    result = _summary(child, records[-1]["num_examples"], records[-1]["videos_per_sec"])
    result["gap"] = records[-1]["gap"]
    return result
