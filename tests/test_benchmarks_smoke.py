"""benchmarks/run.py --quick and benchmarks/results_table.py --quick keep working: each
runs every benchmark (every row) and writes its JSON.

No timing is asserted (the figures depend on the machine and its load), only
that every figure is there and positive, and that the metrics agree.
"""
import json
import math

from helpers import run_script


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


def test_quick_run_writes_every_figure(tmp_path):
    output = tmp_path / "results.json"
    result = run_script("benchmarks/run", "--quick", f"--output={output}",
                        f"--data_dir={tmp_path / 'data'}", timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "| benchmark | result |" in result.stdout
    results = json.loads(output.read_text())

    assert results["quick"] is True
    assert results["machine"]["nproc"] >= 1 and results["machine"]["tensorflow"]
    [training] = results["training"]
    for key in ("flops_per_example", "mfu", "records_over_memory"):
        assert _positive(training[key]), key
    for feed in ("memory_examples_per_sec", "records_examples_per_sec"):
        assert _positive(training[feed]["best"]) and _positive(training[feed]["median"])
    assert _positive(training["matmul_flops_per_sec"]["best"])
    parts = training["step_breakdown"]
    assert set(parts["share"]) == {"matmul", "optimizer", "other"}
    assert abs(sum(parts["share"].values()) - 1) < 1e-9
    assert all(_positive(parts["seconds"][kind]) for kind in parts["share"])
    assert _positive(parts["matmul_utilisation"]) and _positive(parts["mfu_without_other_ops"])

    pipeline = results["pipeline"]
    assert _positive(pipeline["parsed_videos_per_sec"]["best"])
    assert _positive(pipeline["raw_records_per_sec"]["best"])
    assert _positive(pipeline["parsed_over_raw"]) and _positive(pipeline["parsed_over_training"])

    metrics = results["metrics"]
    runs = metrics["implementations"]
    assert set(runs) == {"numpy", "graph_top_k", "heap_reference"}
    for run in runs.values():
        assert _positive(run["seconds"])
        assert abs(run["gap"] - runs["heap_reference"]["gap"]) <= 1e-9
        assert abs(run["map"] - runs["heap_reference"]["map"]) <= 1e-9
    assert 0 < runs["numpy"]["gap"] < 1
    assert _positive(runs["numpy"]["peak_traced_bytes"])
    assert _positive(metrics["speedup_numpy"]) and _positive(metrics["speedup_graph_top_k"])

    videos = results["settings"]["shards"] * results["settings"]["videos_per_shard"]
    for script in ("inference", "eval"):
        run = results[script]
        assert run["videos"] == videos, script
        for key in ("videos_per_sec", "wall_seconds", "peak_rss_bytes"):
            assert _positive(run[key]), (script, key)

    sweep = results["sweep"]
    assert sweep["checkpoints"] == 4 and sweep["same_metrics"] is True
    assert sweep["videos"] == videos // results["settings"]["shards"] * (
        max(1, results["settings"]["shards"] // 4))
    for key in ("loop_wall_seconds", "sweep_wall_seconds", "speedup", "sweep_peak_rss_bytes"):
        assert _positive(sweep[key]), key


def test_quick_results_table_has_every_row(tmp_path):
    output = tmp_path / "results_table.json"
    result = run_script("benchmarks/results_table", "--quick", f"--output={output}",
                        f"--data_dir={tmp_path / 'data'}", timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "| model | GAP |" in result.stdout
    results = json.loads(output.read_text())

    rows = results["rows"]
    assert set(rows) == {"netvlad", "nextvlad", "mix_nextvlad", "student_labels",
                         "student_labels_again", "student_distilled", "ensemble_float32",
                         "ensemble_float16", "ensemble_int8"}
    for name, row in rows.items():
        assert math.isfinite(row["gap"]) and 0 <= row["gap"] <= 1, (name, row["gap"])
        for key in ("bytes", "parameters", "train_seconds"):
            assert _positive(row[key]), (name, key)
    int8, float16, float32 = (rows[f"ensemble_{storage}"]["bytes"]
                              for storage in ("int8", "float16", "float32"))
    assert int8 < float16 < float32, (int8, float16, float32)
    assert rows["student_distilled"]["teacher"]["row"] in rows
    assert 0 < results["class_frequency_gap"] < 1
    assert results["command"].startswith("python benchmarks/results_table.py --quick")
