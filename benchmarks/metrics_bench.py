"""Benchmark 3: EvaluationMetrics vs the starter code's heap-based metrics.

Each implementation runs in its own child process (``python
benchmarks/metrics_bench.py --impl=...``) on the same synthetic batches
(float64 scores, so no ties), so that their timings and peak memory do not
mix.  Only the metric calls are timed, not the making of the batches.
Implementations: ``numpy`` (EvaluationMetrics.accumulate on [B, C]),
``graph_top_k`` (the per-video top-k in a TensorFlow graph, only [B, k]
leaving it, then EvaluationMetrics.accumulate_top_k: what eval.py can do) and
``heap_reference`` (benchmarks/heap_reference.py).

Peak memory: for the numpy-based ones, tracemalloc's peak of what the
metrics allocate (their state plus per-batch temporaries, the input batch
excluded); for every one, the growth of the child's peak RSS after the first
batch was made (tracemalloc would slow the heap reference down several times).
"""
import argparse
import json
import os
import subprocess
import sys
import time
import tracemalloc
from typing import Callable, Dict, Tuple

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script: the repo's modules and benchmarks/
    sys.path.insert(0, REPO)

from benchmarks import peak_memory  # noqa: E402

IMPLEMENTATIONS = ("numpy", "graph_top_k", "heap_reference")
TOP_K = 20


def synthetic_batch(seed: int, index: int, size: int,
                    num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """Batch ``index``: float64 scores [size, C] and bool labels, 1 to ~10 per video.

    Class frequencies are long-tailed and positives score higher on average,
    so GAP and mAP are neither 0 nor 1.
    """
    rng = np.random.default_rng([seed, index])
    prior = 3.0 / (np.arange(num_classes) + 2.0) / np.sum(1.0 / (np.arange(num_classes) + 2.0))
    labels = rng.random((size, num_classes)) < prior
    labels[np.arange(size), rng.integers(0, num_classes, size)] = True  # every video has one
    scores = rng.random((size, num_classes)) ** 3
    scores[labels] += 0.5 * rng.random(int(np.count_nonzero(labels)))
    return scores, labels


def _graph_top_k_accumulator(num_classes: int) -> Tuple[Callable, Callable]:
    """(accumulate(scores, labels), get()) with the top-k done by TensorFlow."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    import eval_util
    tf.compat.v1.disable_eager_execution()
    graph = tf.Graph()
    with graph.as_default():
        predictions = tf.compat.v1.placeholder(tf.float64, [None, num_classes])
        labels = tf.compat.v1.placeholder(tf.bool, [None, num_classes])
        top = eval_util.graph_top_k(predictions, labels, TOP_K)
    session = tf.compat.v1.Session(graph=graph)
    metrics = eval_util.EvaluationMetrics(num_classes, TOP_K)

    def accumulate(scores, truth):
        values = session.run(top, {predictions: scores, labels: truth})
        metrics.accumulate_top_k(loss=0.0, **values)
    return accumulate, metrics.get


def _accumulator(impl: str, num_classes: int) -> Tuple[Callable, Callable]:
    if impl == "graph_top_k":
        return _graph_top_k_accumulator(num_classes)
    if impl == "numpy":
        import eval_util
        metrics = eval_util.EvaluationMetrics(num_classes, TOP_K)
        return lambda scores, truth: metrics.accumulate(scores, truth, 0.0), metrics.get
    from benchmarks import heap_reference
    reference = heap_reference.HeapEvaluationMetrics(num_classes, TOP_K)
    return reference.accumulate, reference.get


def run_implementation(impl: str, videos: int, num_classes: int, batch: int,
                       seed: int) -> Dict[str, float]:
    """Runs one implementation in this process: seconds, metrics and peak memory."""
    accumulate, get = _accumulator(impl, num_classes)
    traced = impl != "heap_reference"
    starts = range(0, videos, batch)
    rss_base = None
    if traced:
        tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0] if traced else 0
    seconds, traced_peak, input_bytes = 0.0, 0, 0
    for index, start in enumerate(starts):
        scores, labels = synthetic_batch(seed, index, min(batch, videos - start), num_classes)
        input_bytes = scores.nbytes + labels.nbytes
        if rss_base is None:
            rss_base = peak_memory.peak_rss_bytes()
        if traced:
            tracemalloc.reset_peak()
        begin = time.perf_counter()
        accumulate(scores, labels)
        seconds += time.perf_counter() - begin
        if traced:
            traced_peak = max(traced_peak, tracemalloc.get_traced_memory()[1] - base - input_bytes)
        del scores, labels
    if traced:
        tracemalloc.reset_peak()
    begin = time.perf_counter()
    result = get()
    seconds += time.perf_counter() - begin
    if traced:
        traced_peak = max(traced_peak, tracemalloc.get_traced_memory()[1] - base)
        tracemalloc.stop()
    return {
        "seconds": seconds,
        "gap": float(result["gap"]), "map": float(result["map"]),
        "hit_at_one": float(result["avg_hit_at_one"]), "perr": float(result["avg_perr"]),
        "peak_rss_growth_bytes": max(0, peak_memory.peak_rss_bytes() - rss_base),
        "peak_traced_bytes": traced_peak if traced else None,
        "batch_input_bytes": input_bytes,
    }


def _run_child(impl: str, videos: int, num_classes: int, batch: int, seed: int) -> dict:
    command = [sys.executable, os.path.abspath(__file__), f"--impl={impl}", f"--videos={videos}",
               f"--num_classes={num_classes}", f"--batch={batch}", f"--seed={seed}"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"metrics benchmark {impl} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(videos: int, num_classes: int, batch: int, seed: int = 0) -> Dict[str, object]:
    """Every implementation on the same data; checks that GAP and mAP agree to 1e-9."""
    runs = {impl: _run_child(impl, videos, num_classes, batch, seed)
            for impl in IMPLEMENTATIONS}
    reference = runs["heap_reference"]
    for impl in ("numpy", "graph_top_k"):
        for key in ("gap", "map", "hit_at_one", "perr"):
            difference = abs(runs[impl][key] - reference[key])
            if difference > 1e-9:
                raise AssertionError(f"{impl} {key} {runs[impl][key]!r} differs from the heap "
                                     f"reference's {reference[key]!r} by {difference:.3g}")
    return {
        "videos": videos, "num_classes": num_classes, "batch": batch, "top_k": TOP_K,
        "implementations": runs,
        "speedup_numpy": reference["seconds"] / runs["numpy"]["seconds"],
        "speedup_graph_top_k": reference["seconds"] / runs["graph_top_k"]["seconds"],
        "agree_to": 1e-9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--impl", choices=IMPLEMENTATIONS, required=True)
    parser.add_argument("--videos", type=int, required=True)
    parser.add_argument("--num_classes", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(run_implementation(args.impl, args.videos, args.num_classes, args.batch,
                                        args.seed)))


if __name__ == "__main__":
    main()
