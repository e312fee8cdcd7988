"""GAP, size and training time of the toolkit's models on the same sample data and steps.

    python benchmarks/results_table.py [--quick] [--steps=N] [--data_dir=DIR] [--output=FILE]

Every model trains with train.py for the same number of steps (same batch
size, learning rate and --random_seed) on the same generated training files,
and eval.py scores it on the validate files; each script runs as a child
process, as users run it.  Rows:

1. NetVLADModelLF, 2. NeXtVLADModel, 3. MixNeXtVLADModel (on-the-fly
   distillation from its mixture into its branches);
4. a small NetVLADModelLF student trained on the labels alone (twice, the
   same command: the difference is the run-to-run spread, as the input
   order and kernel scheduling are not deterministic), and the same student
   trained with --teacher_predictions: the teacher is whichever of rows 1-3
   and the float32 ensemble has the best GAP, and inference.py
   --output_teacher_dir writes its predictions of the training files;
5. the ensemble of rows 1 and 2 (equal weights), built by build_ensemble.py
   from their checkpoints and stored float32, float16 and int8.

Below the rows, the GAP of no model: every validate video scored with the
class frequencies of the training labels.

Size: the bytes as stored of the inference model (eval.py's re-save, or
build_ensemble.py's output) by checkpoint_size.py's size_report, and its
parameters: the numbers it stores (weights and batch-norm statistics; the
global step and the int8 scales left out).  Training time: train.py's wall time,
start-up included; an ensemble's is the sum of its members'.  Training runs
one at a time (``--quick`` runs two children at once), so on a machine shared
with other work the times vary by tens of percent.  Sample data is generated
once into --data_dir and reused.
"""
import argparse
import concurrent.futures
import dataclasses
import os
import re
import sys
import tempfile
import time
from typing import Callable, Dict, List, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402  (after the environment above)

import checkpoint_size  # noqa: E402
import checkpoint_utils  # noqa: E402
import core_fp16  # noqa: E402
import eval_util  # noqa: E402
from benchmarks import common  # noqa: E402

INFERENCE_MODEL = "inference_model"
STORAGES = {"float32": [], "float16": ["--float16_flag=True"], "int8": ["--quantize_int8=True"]}
SINGLES = ("netvlad", "nextvlad", "mix_nextvlad")
ROWS = {
    "netvlad": "NetVLADModelLF",
    "nextvlad": "NeXtVLADModel",
    "mix_nextvlad": "MixNeXtVLADModel",
    "student_labels": "student, labels only",
    "student_labels_again": "student, labels only, again",
    "student_distilled": "student, distilled",
    "ensemble_float32": "ensemble float32",
    "ensemble_float16": "ensemble float16",
    "ensemble_int8": "ensemble int8",
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sample data, model sizes and training of one run."""

    num_classes: int = 100
    videos_per_shard: int = 250
    train_shards: int = 20
    validate_shards: int = 4
    min_frames: int = 20
    max_frames: int = 40
    steps: int = 1200
    batch_size: int = 32
    learning_rate: float = 0.001
    seed: int = 1
    iterations: int = 30
    cluster_size: int = 16
    hidden_size: int = 64
    groups: int = 4
    student_cluster_size: int = 8
    student_hidden_size: int = 32
    teacher_top_k: int = 50
    eval_batch_size: int = 128
    # Children run at once (training included): 1 keeps the training times comparable.
    jobs: int = 1


FULL = Settings()
QUICK = Settings(num_classes=20, videos_per_shard=24, train_shards=2, validate_shards=1,
                 min_frames=5, max_frames=10, steps=10, batch_size=8, iterations=8,
                 cluster_size=4, hidden_size=16, student_cluster_size=2, student_hidden_size=8,
                 eval_batch_size=32, jobs=2)


def sample_data(data_dir: str, s: Settings) -> str:
    """Folder of make_sample_data's train and validate files at these settings (made once)."""
    return common.generated_once(
        f"{data_dir.rstrip('/')}/table_c{s.num_classes}_f{s.min_frames}-{s.max_frames}_"
        f"{s.train_shards}+{s.validate_shards}x{s.videos_per_shard}",
        num_classes=s.num_classes, videos_per_shard=s.videos_per_shard,
        num_train_shards=s.train_shards, num_validate_shards=s.validate_shards,
        num_test_shards=0, min_video_frames=s.min_frames, max_video_frames=s.max_frames, seed=0)


# --- Flags ---------------------------------------------------------------------------


def frame_flags(s: Settings) -> List[str]:
    """Data and classifier flags every model here shares."""
    return ["--frame_features", "--feature_names=rgb,audio", "--feature_sizes=1024,128",
            f"--num_classes={s.num_classes}", f"--max_frames={s.max_frames}",
            "--moe_num_mixtures=2", "--moe_prob_gating=True"]


def netvlad_flags(s: Settings, cluster_size: int, hidden_size: int) -> List[str]:
    return frame_flags(s) + [
        "--model=NetVLADModelLF", f"--iterations={s.iterations}", "--gating=True",
        "--netvlad_relu=False", f"--netvlad_cluster_size={cluster_size}",
        f"--netvlad_hidden_size={hidden_size}"]


def _nextvlad_shape(s: Settings) -> List[str]:
    return [f"--groups={s.groups}", "--expansion=2", "--gating_reduction=4"]


def nextvlad_flags(s: Settings) -> List[str]:
    return frame_flags(s) + ["--model=NeXtVLADModel", *_nextvlad_shape(s),
                             *_nextvlad_sizes(s)]


def _nextvlad_sizes(s: Settings) -> List[str]:
    return [f"--nextvlad_cluster_size={s.cluster_size}", f"--nextvlad_hidden_size={s.hidden_size}"]


def mix_flags(s: Settings) -> List[str]:
    return frame_flags(s) + ["--model=MixNeXtVLADModel", *_nextvlad_shape(s),
                             *_nextvlad_sizes(s), "--mix_number=3", "--cl_temperature=2",
                             "--cl_lambda=1"]


def ensemble_flags(s: Settings) -> List[str]:
    """NetVLADModelLF (member 0) and NeXtVLADModel (member 1) at rows 1 and 2's sizes."""
    sizes = [f"--netvlad_cluster_size={s.cluster_size}",
             f"--netvlad_hidden_size={s.hidden_size}"] * 2
    return frame_flags(s) + [
        "--ensemble_num=2", "--member_models=NetVLADModelLF,NeXtVLADModel",
        f"--iterations={s.iterations}", "--gating=True", "--netvlad_relu=False",
        *_nextvlad_shape(s), *sizes, "--ensemble_wts=0.5", "--ensemble_wts=0.5"]


# --- Children ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Paths:
    data: str
    work: str

    def shown(self, args: Sequence[str]) -> str:
        """The command line as run, with the data and work folders as DATA and WORK."""
        text = " ".join(["python", *args])
        return text.replace(self.data, "DATA").replace(self.work, "WORK")


def _child(paths: Paths, args: List[str], log_name: str) -> common.ChildResult:
    return common.run_child(args, os.path.join(paths.work, log_name + ".log"))


def train(paths: Paths, s: Settings, name: str, model: List[str]) -> Dict[str, object]:
    """Trains ``model`` in WORK/name: wall seconds, step-loop seconds, peak RSS, command."""
    args = ["train.py", f"--train_data_pattern={paths.data}/frame/train*.tfrecord",
            f"--train_dir={paths.work}/{name}", *model, f"--batch_size={s.batch_size}",
            f"--base_learning_rate={s.learning_rate}", "--num_epochs=1000",
            f"--max_steps={s.steps}", f"--export_model_steps={s.steps}",
            f"--random_seed={s.seed}"]
    child = _child(paths, args, f"train_{name}")
    loop = re.search(r"trained \d+ steps in ([\d.]+) s", child.output)
    return {"train_seconds": round(child.seconds, 1),
            "train_loop_seconds": float(loop.group(1)) if loop else None,
            "train_peak_rss_bytes": child.peak_rss_bytes, "train_command": paths.shown(args)}


def evaluate(paths: Paths, s: Settings, run_dir: str, *selection: str) -> Dict[str, object]:
    """eval.py's metrics of a checkpoint of ``run_dir`` on the validate files."""
    args = ["eval.py", f"--train_dir={run_dir}", "--run_once",
            f"--eval_data_pattern={paths.data}/frame/validate*.tfrecord",
            f"--batch_size={s.eval_batch_size}", *selection]
    child = _child(paths, args, f"eval_{os.path.basename(run_dir)}")
    records = common.json_records(child)
    if not records:
        raise RuntimeError(f"eval.py printed no result line:\n{child.output[-2000:]}")
    record = records[-1]
    metrics = {k: record[k] for k in ("gap", "map", "hit_at_one", "num_examples")}
    return {**metrics, "eval_command": paths.shown(args)}


def build(paths: Paths, s: Settings, storage: str, members: Sequence[str]) -> Dict[str, object]:
    """build_ensemble.py's ensemble of ``members`` (checkpoints) in WORK/ensemble_<storage>."""
    args = ["build_ensemble.py", f"--train_dir={paths.work}/ensemble_{storage}",
            *ensemble_flags(s), *STORAGES[storage],
            f"--member_checkpoints={','.join(members)}"]
    child = _child(paths, args, f"build_{storage}")
    return {"build_seconds": round(child.seconds, 1), "build_command": paths.shown(args)}


def teacher_predictions(paths: Paths, s: Settings, run_dir: str) -> Dict[str, object]:
    """inference.py's top-k predictions of the training files by ``run_dir``'s model, in
    WORK/teacher."""
    args = ["inference.py", f"--train_dir={run_dir}",
            f"--inference_model_file={INFERENCE_MODEL}",
            f"--input_data_pattern={paths.data}/frame/train*.tfrecord",
            f"--output_teacher_dir={paths.work}/teacher", f"--top_k={s.teacher_top_k}",
            f"--batch_size={s.eval_batch_size}"]
    child = _child(paths, args, "teacher")
    return {"seconds": round(child.seconds, 1), "command": paths.shown(args)}


def size(checkpoint: str) -> Dict[str, int]:
    """Bytes as stored (checkpoint_size.py) and parameters (numbers stored), of a checkpoint."""
    report = checkpoint_size.size_report(checkpoint)
    reader = tf.compat.v1.train.NewCheckpointReader(checkpoint)
    numbers = sum(
        int(tf.TensorShape(shape).num_elements())
        for name, shape in reader.get_variable_to_shape_map().items()
        if name != checkpoint_utils.GLOBAL_STEP and not name.endswith(core_fp16.INT8_SCALE_SUFFIX))
    return {"bytes": report["total_bytes"], "parameters": numbers}


def in_parallel(jobs: int, tasks: Sequence[Callable[[], object]]) -> List[object]:
    """Runs the tasks ``jobs`` at a time; their results in order."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda task: task(), tasks))


# --- The run -------------------------------------------------------------------------


def _student(s: Settings) -> List[str]:
    return netvlad_flags(s, s.student_cluster_size, s.student_hidden_size)


def _distillation(teacher_dir: str) -> List[str]:
    return [f"--teacher_predictions={teacher_dir}", "--distillation_weight=0.5",
            "--distillation_temperature=2"]


def train_and_evaluate(paths: Paths, s: Settings,
                       models: Dict[str, List[str]]) -> Dict[str, Dict[str, object]]:
    """Rows of ``models`` (name -> flags): trained, evaluated (re-saved for inference), sized."""
    names = list(models)
    trained = in_parallel(s.jobs, [lambda n=n: train(paths, s, n, models[n]) for n in names])
    scored = in_parallel(s.jobs, [
        lambda n=n: evaluate(paths, s, f"{paths.work}/{n}", "--force_output_model_name")
        for n in names])
    return {n: {**t, **e, **size(f"{paths.work}/{n}/{INFERENCE_MODEL}")}
            for n, t, e in zip(names, trained, scored, strict=True)}


def ensembles(paths: Paths, s: Settings,
              rows: Dict[str, Dict[str, object]]) -> Dict[str, Dict[str, object]]:
    """The NetVLADModelLF + NeXtVLADModel ensemble in each storage: built, evaluated, sized."""
    members = [tf.train.latest_checkpoint(f"{paths.work}/{n}") for n in ("netvlad", "nextvlad")]
    built = in_parallel(s.jobs, [lambda t=t: build(paths, s, t, members) for t in STORAGES])
    scored = in_parallel(s.jobs, [
        lambda t=t: evaluate(paths, s, f"{paths.work}/ensemble_{t}",
                             f"--checkpoint_file={INFERENCE_MODEL}") for t in STORAGES])
    seconds = sum(rows[n]["train_seconds"] for n in ("netvlad", "nextvlad"))
    return {f"ensemble_{t}": {**b, **e, "train_seconds": round(seconds, 1),
                              **size(f"{paths.work}/ensemble_{t}/{INFERENCE_MODEL}")}
            for t, b, e in zip(STORAGES, built, scored, strict=True)}


def distilled_student(paths: Paths, s: Settings,
                      rows: Dict[str, Dict[str, object]]) -> Dict[str, object]:
    """The teacher (best GAP of the single models and the float32 ensemble), its predictions
    of the training files, and the student trained against them and the labels."""
    candidates = [*SINGLES, "ensemble_float32"]
    best = max(candidates, key=lambda n: rows[n]["gap"])
    teacher = teacher_predictions(paths, s, f"{paths.work}/{best}")
    row = train_and_evaluate(paths, s, {"student_distilled": _student(s) + _distillation(
        f"{paths.work}/teacher")})["student_distilled"]
    return {**row, "teacher": {"row": best, "gap": rows[best]["gap"], **teacher}}


def run(args: argparse.Namespace) -> Dict[str, object]:
    s = QUICK if args.quick else FULL
    if args.steps:
        s = dataclasses.replace(s, steps=args.steps)
    results: Dict[str, object] = {"machine": common.machine(), "quick": args.quick,
                                  "settings": dataclasses.asdict(s)}
    data = sample_data(args.data_dir, s)
    with tempfile.TemporaryDirectory(prefix="yt8m-table-") as work:
        paths = Paths(data, work)
        rows = train_and_evaluate(paths, s, {
            "netvlad": netvlad_flags(s, s.cluster_size, s.hidden_size),
            "nextvlad": nextvlad_flags(s), "mix_nextvlad": mix_flags(s),
            "student_labels": _student(s), "student_labels_again": _student(s)})
        rows.update(ensembles(paths, s, rows))
        rows["student_distilled"] = distilled_student(paths, s, rows)
    results["rows"] = {name: {"label": label, **rows[name]} for name, label in ROWS.items()}
    results["class_frequency_gap"] = class_frequency_gap(data, s)
    return results


def _labels(pattern: str, num_classes: int) -> np.ndarray:
    """[videos, classes] 0/1 labels of the video-level files ``pattern``."""
    rows = []
    for path in sorted(tf.io.gfile.glob(pattern)):
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            row = np.zeros(num_classes, np.float32)
            row[list(tf.train.Example.FromString(record).features.feature["labels"]
                     .int64_list.value)] = 1
            rows.append(row)
    return np.stack(rows)


def class_frequency_gap(data: str, s: Settings) -> float:
    """GAP of scoring every validate video with the training labels' class frequencies:
    what a model that learned nothing from the features would get."""
    prior = _labels(f"{data}/video/train*.tfrecord", s.num_classes).mean(axis=0)
    validate = _labels(f"{data}/video/validate*.tfrecord", s.num_classes)
    return round(eval_util.calculate_gap(np.tile(prior, (len(validate), 1)), validate), 5)


# --- Output --------------------------------------------------------------------------


def _notes(name: str, row: Dict[str, object], s: Dict[str, object]) -> str:
    if name == "student_labels":
        return f"NetVLADModelLF c{s['student_cluster_size']} h{s['student_hidden_size']}"
    if name == "student_labels_again":
        return "the same command again: run-to-run spread"
    if name == "student_distilled":
        teacher = row["teacher"]
        return (f"same student; teacher {ROWS[teacher['row']]} (GAP {teacher['gap']:.3f}), "
                f"its predictions of the training files took {teacher['seconds']:.0f} s")
    if name.startswith("ensemble"):
        return "rows 1 + 2, weights 0.5/0.5; time: both members' training"
    return ""


def table(results: Dict[str, object]) -> str:
    """The rows as a Markdown table."""
    lines = ["| model | GAP | bytes as stored | parameters | training wall time | notes |",
             "|---|---|---|---|---|---|"]
    for name, row in results["rows"].items():
        lines.append(f"| {row['label']} | {row['gap']:.3f} | {row['bytes']:,} | "
                     f"{row['parameters']:,} | {row['train_seconds']:.0f} s | "
                     f"{_notes(name, row, results['settings'])} |")
    lines.append(f"| no model: class frequencies | {results['class_frequency_gap']:.3f} | - | - "
                 f"| - | every video scored with the training labels' frequencies |")
    return "\n".join(lines)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--steps", type=int, default=0,
                        help="training steps of every model (default: 1200, --quick 10)")
    parser.add_argument("--output",
                        default=os.path.join(REPO, "benchmarks", "results_table.json"),
                        help="JSON file to write")
    parser.add_argument("--data_dir",
                        default=os.path.join(tempfile.gettempdir(), "yt8m_benchmark_data"),
                        help="where the sample data is generated once and reused")
    args = parser.parse_args()
    if args.steps < 0:
        parser.error("--steps must be positive")
    return args


def main() -> None:
    args = _parse_args()
    start = time.perf_counter()
    results = run(args)
    results["seconds"] = round(time.perf_counter() - start, 1)
    results["command"] = " ".join(["python", "benchmarks/results_table.py", *sys.argv[1:]])
    common.write_results(results, table(results), args.output)


if __name__ == "__main__":
    main()
