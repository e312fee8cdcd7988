"""Searches the ensemble's mixing weights (--ensemble_wts) for the best GAP on held-out data.

    python search_ensemble_weights.py $ENS --member_checkpoints=RUN_A/...,RUN_B/...,... \\
        --eval_data_pattern=DATA/frame/validate*.tfrecord

Builds the ensemble graph the model flags describe and fills it from
--member_checkpoints exactly as build_ensemble.py does (so under
--float16_flag each member predicts with the float16 weights of the final
model), then reads the held-out files once and keeps every member's own
predictions in memory.  The search itself is numpy only: steepest ascent on
the simplex, from the best of equal weights and each model alone, moving 0.25,
then 0.1, 0.05, 0.02 and 0.01 of weight from one member to another while GAP
(eval_util's calculate_gap at --top_k) improves; so the weights found are never
worse than equal weights or the best single model.  GAP ranks all videos' scores together,
so scaling every weight by the same factor changes nothing: the weights found
sum to 1 and are multiples of 0.01.  Prints each member's GAP, the GAP of
equal weights and of the weights found, a JSON line, and last the weights as
flags to paste into eval.py / build_ensemble.py:

    --ensemble_wts=0.39 --ensemble_wts=0.26 --ensemble_wts=0.21 --ensemble_wts=0.14

Memory: members x videos x classes float32 predictions (4 models x 20,000
videos x 3862 classes = 1.2 GB), the labels (videos x classes bytes) and two
more float32 videos x classes arrays while searching: fine for held-out sets of
10k-50k videos.  Own flag: --member_checkpoints (as in build_ensemble.py);
data and model flags are those of eval.py (--eval_data_pattern, --batch_size,
--top_k, ...).
"""
import quiet_startup  # noqa: F401  (first: before TensorFlow is imported)

import json
import time
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import flags, logging

import app_flags
import cli
import ensemble_fill
import eval_util
import input_pipeline
import model_graph
import readers
from errors import UsageError
from model_config import ModelConfig

FLAGS = flags.FLAGS
UNITS = 100  # weights are multiples of 1 / UNITS
STEPS = (25, 10, 5, 2, 1)  # weight moved between two members, in units, coarse to fine


def collect_predictions(config: ModelConfig, files: Sequence[str], checkpoints: Sequence[str],
                        batch_size: int, num_readers: int = 8
                        ) -> Tuple[List[np.ndarray], np.ndarray]:
    """Every member's predictions [videos, classes] (float32) and the labels (bool)."""
    graph = tf.Graph()
    with graph.as_default():
        dataset = input_pipeline.dataset_for(config.data, files, batch_size, shuffle=False,
                                             num_epochs=1, num_readers=num_readers)
        batch = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
        outputs = model_graph.build_predictions(batch["video_matrix"], batch["num_frames"],
                                                config, is_training=False)
    graph.finalize()
    fetches = [*outputs.member_predictions, batch["labels"]]
    pieces: List[List[np.ndarray]] = [[] for _ in fetches]
    start, count = time.time(), 0
    with tf.compat.v1.Session(graph=graph) as sess:
        ensemble_fill.load_members(sess, checkpoints, "(the ensemble graph of the model flags)")
        while True:
            try:
                values = sess.run(fetches)
            except tf.errors.OutOfRangeError:
                break
            for piece, value in zip(pieces, values, strict=True):
                piece.append(value)
            count += len(values[-1])
            logging.log_every_n_seconds(logging.INFO, "predicted %d videos, %.1f videos/sec",
                                        10, count, count / max(time.time() - start, 1e-9))
    if count == 0:
        raise UsageError("the --eval_data_pattern files hold no videos")
    arrays = []
    while pieces:  # concatenate one member at a time, freeing its batches
        arrays.append(np.concatenate(pieces.pop(0)))
    return arrays[:-1], arrays[-1]


def mix(predictions: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """sum_i w_i * p_i in float32, in member order, as the ensemble graph computes it."""
    mixed = predictions[0] * np.float32(weights[0])
    for member, weight in zip(predictions[1:], weights[1:], strict=True):
        mixed += member * np.float32(weight)
    return mixed


class Objective:
    """GAP of the mixed predictions, remembered per weight vector."""

    def __init__(self, predictions: Sequence[np.ndarray], labels: np.ndarray, top_k: int):
        self.predictions, self.labels, self.top_k = predictions, labels, top_k
        self.cache: Dict[Tuple[float, ...], float] = {}

    def __call__(self, weights: Sequence[float]) -> float:
        key = tuple(float(w) for w in weights)
        if key not in self.cache:
            self.cache[key] = eval_util.calculate_gap(
                mix(self.predictions, key), self.labels, self.top_k)
        return self.cache[key]


def equal_units(members: int) -> Tuple[int, ...]:
    """UNITS split as evenly as possible, the first members taking the remainder."""
    base, extra = divmod(UNITS, members)
    return tuple(base + (i < extra) for i in range(members))


def _weights(units: Sequence[int]) -> Tuple[float, ...]:
    return tuple(u / UNITS for u in units)


def steepest_ascent(objective: Objective,
                    start: Tuple[int, ...]) -> Tuple[Tuple[float, ...], float]:
    """Weights (multiples of 1/UNITS, sum 1) reached from ``start`` (units), and their GAP."""
    members, current = len(start), start
    best = objective(_weights(current))
    for step in STEPS:
        while True:
            moves = []
            for to in range(members):
                for away in range(members):
                    if to != away and current[away] >= step:
                        units = list(current)
                        units[to] += step
                        units[away] -= step
                        moves.append(tuple(units))
            scored = [(objective(_weights(units)), units) for units in moves]
            gap, units = max(scored, key=lambda item: item[0], default=(best, current))
            if gap <= best:
                break
            best, current = gap, units
    return _weights(current), best


@dataclass
class SearchResult:
    weights: Tuple[float, ...]
    gap: float
    equal_gap: float
    member_gaps: List[float]
    evaluations: int


def search_weights(predictions: Sequence[np.ndarray], labels: np.ndarray,
                   top_k: int = 20) -> SearchResult:
    """The mixing weights with the best GAP found, and the GAPs to compare them with."""
    members = len(predictions)
    objective = Objective(predictions, labels, top_k)
    alone = [tuple(UNITS * (i == j) for j in range(members)) for i in range(members)]
    member_gaps = [objective(_weights(units)) for units in alone]
    equal = tuple([1.0 / members] * members)
    equal_gap = objective(equal)
    start = max([equal_units(members), *alone], key=lambda units: objective(_weights(units)))
    weights, gap = steepest_ascent(objective, start)
    if equal_gap > gap:  # only when 1/members is not a multiple of 1/UNITS
        weights, gap = equal, equal_gap
    return SearchResult(weights, gap, equal_gap, member_gaps, len(objective.cache))


def weight_flags(weights: Sequence[float]) -> str:
    """``--ensemble_wts=w0 --ensemble_wts=w1 ...``, ready to paste."""
    return " ".join(f"--ensemble_wts={w:.10g}" for w in weights)


def main() -> None:
    config = app_flags.tool_model_config()
    model_graph.validate(config)
    checkpoints = ensemble_fill.member_checkpoints(FLAGS.member_checkpoints, len(config.members))
    if len(checkpoints) < 2:
        raise UsageError("--ensemble_num must be at least 2: one model has no weights to search")
    if not app_flags.value("eval_data_pattern"):
        raise UsageError("--eval_data_pattern is required: the held-out files to search on")
    files = readers.resolve_data_files(app_flags.value("eval_data_pattern"),
                                       flag_name="eval_data_pattern")
    top_k = app_flags.positive("top_k")
    predictions, labels = collect_predictions(config, files, checkpoints,
                                              app_flags.positive("batch_size"),
                                              app_flags.positive("num_readers"))
    result = search_weights(predictions, labels, top_k)
    print(f"{len(labels)} videos, GAP@{top_k}:")
    for index, (checkpoint, gap) in enumerate(zip(checkpoints, result.member_gaps,
                                                  strict=True)):
        print(f"  model {index} alone: {gap:.5f}  ({checkpoint})")
    print(f"  equal weights:  {result.equal_gap:.5f}")
    print(f"  weights found:  {result.gap:.5f}  ({result.evaluations} weightings tried)")
    print(json.dumps({
        "num_examples": len(labels), "top_k": top_k, "member_gaps": result.member_gaps,
        "equal_weights": [1.0 / len(checkpoints)] * len(checkpoints),
        "equal_gap": result.equal_gap, "weights": list(result.weights), "gap": result.gap,
        "evaluations": result.evaluations, "checkpoints": checkpoints}))
    print(weight_flags(result.weights))


def run() -> None:
    """Entry point: defines the flags, parses them and runs :func:`main`."""
    cli.run(main, app_flags.define_member_checkpoints)


if __name__ == "__main__":
    run()
