"""Runs every benchmark on this machine, prints a table and writes the figures as JSON.

    python benchmarks/run.py [--quick] [--output=benchmarks/results.json]

1. training: NetVLADModelLF with the seed's flags (cluster 100, hidden 800,
   batch 160, 300 iterations, gating, probability gating), examples/sec fed
   from memory and from TFRecords, and model FLOP utilisation (MFU);
2. pipeline: frame-level records parsed per second vs raw TFRecord reading;
3. metrics: EvaluationMetrics on 100,000 videos x 3862 classes vs the starter
   code's heap-based way, seconds, peak memory and identical GAP/mAP;
4. inference.py and 5. eval.py: videos/sec and peak memory;
6. sweep: eval.py over 4 checkpoints in one run vs the 2018 shell loop of 4 runs.

``--quick`` shrinks every size (a smoke test of the benchmarks, ~1 minute);
``--mixed_precision`` adds a training row with that setting (the full run
adds bfloat16 by itself on CPUs that have it).  Sample data is generated once
into --data_dir and reused.  Other programs running at the same time slow the
figures down: each is the best of several timed blocks (medians in the JSON).
"""
import argparse
import dataclasses
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402  (after the environment above)

import app_flags  # noqa: E402
from benchmarks import (  # noqa: E402
    common,
    metrics_bench,
    pipeline_bench,
    scripts_bench,
    sweep_bench,
    training_bench,
)

SECTIONS = ("training", "pipeline", "metrics", "inference", "eval", "sweep")


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--output", default=os.path.join(REPO, "benchmarks", "results.json"),
                        help="JSON file to write")
    parser.add_argument("--data_dir",
                        default=os.path.join(tempfile.gettempdir(), "yt8m_benchmark_data"),
                        help="where the sample data is generated once and reused")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--mixed_precision", choices=("bfloat16", "float16"), default=None,
                        help="also time training with this --mixed_precision")
    args = parser.parse_args()
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"--sections: unknown {', '.join(sorted(unknown))}")
    return args


def _training_variants(args: argparse.Namespace, machine: dict) -> list:
    """--mixed_precision values to time training with: none, plus what the hardware has."""
    variants = ["none"]
    if args.mixed_precision:
        variants.append(args.mixed_precision)
    elif not args.quick and machine["gpus"]:
        variants.append("float16")
    elif not args.quick and machine["cpu_bfloat16"]:
        variants.append("bfloat16")
    return variants


def run(args: argparse.Namespace) -> dict:
    settings = common.QUICK if args.quick else common.SEED
    sections = args.sections.split(",")
    tf.compat.v1.disable_eager_execution()
    app_flags.FLAGS(["benchmarks/run.py", *settings.train_flags()])
    machine = common.machine()
    results = {"machine": machine, "quick": args.quick, "settings": dataclasses.asdict(settings)}
    files = common.sample_data(args.data_dir, settings)
    training_rate = None
    if "training" in sections:
        results["training"] = []
        for variant in _training_variants(args, machine):
            app_flags.FLAGS.mixed_precision = variant
            results["training"].append(training_bench.measure(settings, files))
        app_flags.FLAGS.mixed_precision = "none"
        training_rate = results["training"][0]["memory_examples_per_sec"]["best"]
    if "pipeline" in sections:
        results["pipeline"] = pipeline_bench.measure(settings, files, training_rate)
    if "metrics" in sections:
        results["metrics"] = metrics_bench.measure(settings.metric_videos, 3862,
                                                   settings.metric_batch)
    if "inference" in sections or "eval" in sections:
        with tempfile.TemporaryDirectory(prefix="yt8m-bench-") as train_dir:
            scripts_bench.save_model(train_dir)
            if "inference" in sections:
                results["inference"] = scripts_bench.inference(settings, train_dir, files)
            if "eval" in sections:
                results["eval"] = scripts_bench.evaluation(settings, train_dir, files)
    if "sweep" in sections:
        with tempfile.TemporaryDirectory(prefix="yt8m-bench-sweep-") as train_dir:
            results["sweep"] = sweep_bench.measure(settings, train_dir, files)
    return results


def _mb(value: float) -> str:
    return f"{value / 2**20:,.0f} MB"


def table(results: dict) -> str:
    """The figures as a markdown table."""
    rows = []
    trainings = results.get("training", [])
    for train in trainings:
        precision = train["mixed_precision"]
        tag = "" if precision == "none" else f" ({precision})"
        memory, records = train["memory_examples_per_sec"], train["records_examples_per_sec"]
        speedup = ("" if train is trainings[0] else
                   f", {memory['best'] / trainings[0]['memory_examples_per_sec']['best']:.2f}x "
                   "float32")
        rows += [
            (f"training{tag}, fed from memory", f"{memory['best']:.1f} examples/s "
             f"(median {memory['median']:.1f}){speedup}"),
            (f"training{tag}, from TFRecords", f"{records['best']:.1f} examples/s "
             f"({train['records_over_memory']:.2f} of memory-fed)"),
            (f"model FLOP utilisation{tag}", f"{train['mfu']:.2f} of "
             f"{train['matmul_flops_per_sec']['best'] / 1e9:.0f} GFLOP/s "
             f"{'float32' if precision == 'none' else precision} matmul "
             f"({train['flops_per_example'] / 1e9:.2f} GFLOP/example; per-round median "
             f"{train['mfu_paired_median']:.2f})"),
        ]
        parts = train["step_breakdown"]
        share = parts["share"]
        rows.append((f"training step by kernel kind{tag}",
                     f"matmuls {share['matmul']:.0%} of the time at "
                     f"{parts['matmul_utilisation']:.2f} of the matmul rate, optimizer "
                     f"{share['optimizer']:.0%}, other ops {share['other']:.0%}; MFU with "
                     f"other ops free: {parts['mfu_without_other_ops']:.2f}"))
    if "pipeline" in results:
        pipe = results["pipeline"]
        parsed, raw = pipe["parsed_videos_per_sec"], pipe["raw_records_per_sec"]
        text = (f"{parsed['best']:.0f} videos/s = {pipe['parsed_over_raw']:.2f} of raw reading "
                f"({raw['best']:.0f} records/s, {raw['megabytes_per_sec']:.0f} MB/s)")
        if "parsed_over_training" in pipe:
            text += f", {pipe['parsed_over_training']:.1f}x training's rate"
        rows.append(("input pipeline, parse + batch", text))
        rows.append(("input pipeline CPU cost", f"{parsed['cpu_seconds_per_1000']:.2f} CPU-s "
                                                f"per 1000 videos"))
    if "metrics" in results:
        metrics = results["metrics"]
        runs = metrics["implementations"]
        for impl, label in (("numpy", "EvaluationMetrics"),
                            ("graph_top_k", "EvaluationMetrics, top-k in graph"),
                            ("heap_reference", "starter-code heap reference")):
            run = runs[impl]
            memory = (f"peak {_mb(run['peak_traced_bytes'])} traced, "
                      if run["peak_traced_bytes"] is not None else "peak ")
            rows.append((f"metrics: {label}", f"{run['seconds']:.2f} s, {memory}"
                         f"+{_mb(run['peak_rss_growth_bytes'])} RSS"))
        rows.append((f"metrics speed-up ({metrics['videos']:,} x {metrics['num_classes']})",
                     f"{metrics['speedup_numpy']:.1f}x (top-k in graph "
                     f"{metrics['speedup_graph_top_k']:.1f}x), GAP "
                     f"{runs['numpy']['gap']:.6f} = reference to 1e-9"))
    for name in ("inference", "eval"):
        if name in results:
            run = results[name]
            rows.append((f"{name}.py", f"{run['videos_per_sec']:.1f} videos/s "
                         f"({run['videos']} videos, {run['wall_seconds']:.1f} s wall incl. "
                         f"start-up), peak RSS {_mb(run['peak_rss_bytes'])}"))
    if "sweep" in results:
        sweep = results["sweep"]
        rows.append((f"eval.py sweep of {sweep['checkpoints']} checkpoints vs the 2018 loop",
                     f"{sweep['sweep_wall_seconds']:.1f} s vs {sweep['loop_wall_seconds']:.1f} s "
                     f"wall: {sweep['speedup']:.2f}x ({sweep['videos']} videos, metrics "
                     f"{'identical' if sweep['same_metrics'] else 'DIFFERENT'}), peak RSS "
                     f"{_mb(sweep['sweep_peak_rss_bytes'])} vs "
                     f"{_mb(sweep['loop_peak_rss_bytes'])}"))
    lines = ["| benchmark | result |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def main() -> None:
    args = _parse_args()
    start = time.perf_counter()
    results = run(args)
    results["seconds"] = time.perf_counter() - start
    common.write_results(results, table(results), args.output)


if __name__ == "__main__":
    main()
