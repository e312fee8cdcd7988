"""Settings, machine description, sample data and child processes of the benchmarks."""
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Sequence

import tensorflow as tf

import make_sample_data
from benchmarks import peak_memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes of one benchmark run (the seed's training flags by default)."""

    batch_size: int = 160
    cluster_size: int = 100
    hidden_size: int = 800
    iterations: int = 300
    num_classes: int = 3862
    # Sample data: frame-level shards of videos with exactly `frames` frames.
    frames: int = 300
    shards: int = 8
    videos_per_shard: int = 192
    # Training: warm-up steps, then `rounds` rounds of a matmul block and `steps`
    # timed steps per feed (training_bench.measure).
    warmup_steps: int = 2
    rounds: int = 5
    steps: int = 2
    matmul_size: int = 4096
    # Metrics benchmark.
    metric_videos: int = 100_000
    metric_batch: int = 1000
    # eval.py and inference.py.
    script_batch_size: int = 256

    def model_flags(self) -> List[str]:
        """Flags of the seed's NetVLADModelLF command line at these sizes."""
        return [
            "--model=NetVLADModelLF", "--frame_features", "--feature_names=rgb,audio",
            "--feature_sizes=1024,128", f"--num_classes={self.num_classes}",
            f"--netvlad_cluster_size={self.cluster_size}",
            f"--netvlad_hidden_size={self.hidden_size}", f"--iterations={self.iterations}",
            "--gating", "--moe_prob_gating", "--moe_l2=1e-6", "--netvlad_relu=False",
        ]

    def train_flags(self) -> List[str]:
        return self.model_flags() + [
            f"--batch_size={self.batch_size}", "--base_learning_rate=0.0001",
            "--learning_rate_decay=0.8", "--num_epochs=1000", "--random_seed=1"]


SEED = Settings()
QUICK = Settings(batch_size=32, cluster_size=16, hidden_size=64, iterations=30, num_classes=400,
                 frames=60, shards=2, videos_per_shard=64, warmup_steps=1, rounds=2, steps=2,
                 matmul_size=1024, metric_videos=5000, metric_batch=1000,
                 script_batch_size=32)


def summarise(samples: Sequence[float]) -> Dict[str, object]:
    """Best (largest), median and all samples of a rate."""
    return {"best": max(samples), "median": statistics.median(samples),
            "samples": [round(s, 3) for s in samples]}


def _cpuinfo(key: str) -> str | None:
    """The first ``key`` entry of /proc/cpuinfo (Linux), else None."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def _cpu_flags() -> List[str]:
    return (_cpuinfo("flags") or "").split()


def machine() -> Dict[str, object]:
    """What the figures were measured on."""
    gpus = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            for gpu in tf.config.list_physical_devices("GPU")]
    flags = _cpu_flags()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "cpu_bfloat16": "avx512_bf16" in flags or "amx_bf16" in flags,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpus": gpus,
        "tensorflow": tf.__version__,
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def generated_once(folder: str, **arguments) -> str:
    """``folder`` with make_sample_data.write_sample_data(folder, **arguments), written once.

    The same arguments write the same bytes, so a folder named after them is
    reused; a marker file says it is complete.
    """
    marker = f"{folder}/COMPLETE"
    if not tf.io.gfile.exists(marker):
        make_sample_data.write_sample_data(folder, **arguments)
        with tf.io.gfile.GFile(marker, "w") as done:
            done.write("ok\n")
    return folder


def sample_data(data_dir: str, settings: Settings) -> List[str]:
    """Frame-level train files of make_sample_data at these settings (made once, then reused)."""
    folder = generated_once(
        f"{data_dir.rstrip('/')}/c{settings.num_classes}_f{settings.frames}_"
        f"{settings.shards}x{settings.videos_per_shard}",
        num_classes=settings.num_classes, videos_per_shard=settings.videos_per_shard,
        num_train_shards=settings.shards, num_validate_shards=0, num_test_shards=0,
        min_video_frames=settings.frames, max_video_frames=settings.frames, seed=0)
    return sorted(tf.io.gfile.glob(f"{folder}/frame/train*.tfrecord"))


@dataclasses.dataclass
class ChildResult:
    seconds: float
    peak_rss_bytes: int
    output: str


def run_child(args: Sequence[str], log_path: str) -> ChildResult:
    """Runs ``python args...`` from the repo root: wall seconds, its peak RSS, output."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, os.path.join(REPO, "benchmarks", "peak_memory.py"), *args]
    with open(log_path, "w+", encoding="utf-8") as log:
        start = time.perf_counter()
        code = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                              env=env, check=False).returncode
        seconds = time.perf_counter() - start
        log.seek(0)
        output = log.read()
    if code:
        raise RuntimeError(f"{' '.join(args)} failed ({code}):\n{output[-3000:]}")
    peaks = [line for line in output.splitlines() if line.startswith(peak_memory.MARKER)]
    return ChildResult(seconds, int(peaks[-1][len(peak_memory.MARKER):]), output)


def json_records(child: ChildResult) -> List[Dict[str, object]]:
    """The JSON lines a script printed (eval.py's result line, one per checkpoint)."""
    return [json.loads(line) for line in child.output.splitlines() if line.startswith("{")]


def write_results(results: Dict[str, object], table: str, output: str) -> None:
    """Ends a benchmark run: the machine, the table and the time printed, the JSON written."""
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    machine = results["machine"]
    print(f"Machine: {machine['nproc']} cores, {machine['cpu']}, "
          f"GPUs: {', '.join(machine['gpus']) or 'none'}, TensorFlow {machine['tensorflow']}")
    print(table)
    print(f"({results['seconds']:.0f} s; written to {output})")
    with tf.io.gfile.GFile(output, "w") as out:
        out.write(json.dumps(results, indent=1) + "\n")
