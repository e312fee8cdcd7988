"""Bad input (SPEC 11): one ERROR line naming the flag, file or value, a non-zero exit,
no traceback, and no output left behind.

Every case is a script run in its own process, whose time goes mostly into
importing TensorFlow; so the selected cases are started together, a few at a
time, when the first of them needs its result, and each test checks its own.
Video-level data and LogisticModel keep the cases that reach the data fast.
"""
import csv
import glob
import gzip
import os
import shutil
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence

import numpy as np
import pytest
import tensorflow as tf

import checkpoint_utils
from helpers import (
    LOGISTIC_FLAGS,
    NUM_CLASSES,
    read_checkpoint,
    run_script,
    write_examples,
    write_sequence_examples,
)

TRAIN_FLAGS = [*LOGISTIC_FLAGS, "--batch_size=8", "--num_readers=2", "--max_steps=20"]
# The frame-level model of the cases on frame data (after TRAIN_FLAGS, whose values they replace).
FRAME_FLAGS = ["--frame_features", "--feature_names=rgb,audio", "--feature_sizes=1024,128",
               "--model=FrameLevelLogisticModel"]
PARALLEL = 4


@dataclass
class Case:
    """One bad command line: what it must say, and what it must not leave behind."""

    script: str
    args: List[str]
    says: List[str]  # substrings of the last stderr line (after "ERROR: ")
    leaves_nothing: List[str] = field(default_factory=list)  # globs that must match nothing
    succeeds: bool = False  # a tolerated input: exit 0, `says` somewhere in stderr
    check: Callable[[], None] | None = None  # then checks its output


@dataclass
class Env:
    data: str  # sample data folder
    run: str  # trained LogisticModel run: model.ckpt-10/20, inference_model, model_flags.json
    tmp: str  # this case's own folder
    frame_run: Callable[[], str] = str  # a trained FrameLevelLogisticModel run (made on demand)

    def path(self, *parts: str) -> str:
        return os.path.join(self.tmp, *parts)

    def run_copy(self) -> str:
        copy = self.path("run")
        shutil.copytree(self.run, copy)
        return copy


def _video(rng, index: int, **changes) -> Dict:
    video = {"id": f"video{index}", "labels": [1, 5],
             "mean_rgb": rng.uniform(-1, 1, 1024), "mean_audio": rng.uniform(-1, 1, 128)}
    video.update(changes)
    return video


def _records(env: Env, name: str, bad: Dict | None = None, id_key: str = "id") -> str:
    """A video-level file of three good videos and one with ``bad`` changes."""
    rng = np.random.default_rng(0)
    path = env.path(name)
    write_examples(path, [_video(rng, 0), _video(rng, 1), _video(rng, 2, **(bad or {})),
                          _video(rng, 3)], id_key=id_key)
    return path


def _damaged(env: Env, how: str) -> str:
    """A copy of a sample train file, cut short or with a flipped byte in the middle."""
    data = bytearray(open(f"{env.data}/video/train0000.tfrecord", "rb").read())
    if how == "truncated":
        data = data[:-100]
    else:
        data[len(data) // 2] ^= 0xFF
    path = env.path(f"{how}.tfrecord")
    with open(path, "wb") as f:
        f.write(bytes(data))
    return path


def _train(env: Env, pattern: str, *extra: str) -> Case:
    train_dir = env.path("train_dir")
    return Case("train", [f"--train_data_pattern={pattern}", f"--train_dir={train_dir}",
                          *TRAIN_FLAGS, *extra], [], [f"{train_dir}/model.ckpt-*"])


def _train_on_bad_record(env: Env, says: List[str], bad: Dict | None = None,
                         id_key: str = "id") -> Case:
    path = _records(env, "bad.tfrecord", bad, id_key)
    case = _train(env, path)
    case.says = [*says, path]
    return case


def _eval(run_dir: str, *extra: str) -> Case:
    """Eval's output is its JSON record on stdout (checked for every case)."""
    return Case("eval", [f"--train_dir={run_dir}", "--run_once", "--batch_size=8", *extra], [])


def _infer(env: Env, *extra: str, pattern: str = "", csv: str = "") -> Case:
    csv = csv or env.path("out", "predictions.csv")
    pattern = pattern or f"{env.data}/video/test*.tfrecord"
    return Case("inference", [f"--input_data_pattern={pattern}", f"--output_file={csv}", *extra],
                [], [csv + "*"])  # neither the CSV nor its temporary file


def _not_a_directory(env: Env) -> str:
    """A regular file: nothing can be written below it, even as root."""
    path = env.path("a_file")
    open(path, "w").close()
    return path


def no_matching_files(env):
    case = _train(env, env.path("nothing", "train*.tfrecord"))
    case.says = ["--train_data_pattern", env.path("nothing", "train*.tfrecord"), "matches no file"]
    case.leaves_nothing = [env.path("train_dir")]
    return case


def corrupt_record(env):
    path = _damaged(env, "corrupt")
    case = _train(env, path)
    case.says = ["corrupt or truncated TFRecord file", path, "--skip_corrupt_records"]
    return case


def truncated_record(env):
    path = _damaged(env, "truncated")
    case = _infer(env, f"--train_dir={env.run}",
                  pattern=f"{env.data}/video/test*.tfrecord,{path}")
    case.says = ["corrupt or truncated TFRecord file", path]
    return case


def skip_corrupt_records(env):
    path = _damaged(env, "corrupt")
    case = _train(env, f"{env.data}/video/train0001.tfrecord,{path}", "--skip_corrupt_records")
    case.says = [f"skipped the rest of a corrupt or truncated TFRecord file {path}",
                 "records before them kept"]
    case.succeeds, case.leaves_nothing = True, []
    return case


def missing_id(env):
    return _train_on_bad_record(env, ["no id (or video_id)"], id_key="title")


def missing_labels(env):
    return _train_on_bad_record(env, ["no labels feature", "video2"], {"labels": None})


def inference_without_labels(env):
    path = _records(env, "unlabelled.tfrecord", {"labels": None})
    csv = env.path("predictions.csv")
    return Case("inference", [f"--train_dir={env.run}", f"--input_data_pattern={path}",
                              f"--output_file={csv}"], [f"Wrote 4 videos to {csv}"],
                succeeds=True)


def missing_feature(env):
    return _train_on_bad_record(env, ["feature mean_audio missing", "video2"],
                                {"mean_audio": []})


def wrong_feature_size(env):
    path = _records(env, "bad.tfrecord", {"mean_rgb": np.zeros(1000)})
    case = _eval(env.run_copy(), f"--eval_data_pattern={path}")
    case.says = ["feature mean_rgb", "size 1024", "video2", path]
    return case


def label_out_of_range(env):
    return _train_on_bad_record(env, [f"label id outside [0, {NUM_CLASSES})", "video2"],
                                {"labels": [3, NUM_CLASSES]})


def feature_flags_of_different_lengths(env):
    case = _train(env, f"{env.data}/video/train*.tfrecord", "--feature_sizes=1024")
    case.says = ["--feature_names='mean_rgb,mean_audio'", "--feature_sizes='1024'"]
    return case


def unknown_model(env):
    case = _train(env, f"{env.data}/video/train*.tfrecord", "--model=NoSuchModel")
    case.says = ["--model=NoSuchModel", "MoeModel"]
    return case


def unknown_loss(env):
    case = _train(env, f"{env.data}/video/train*.tfrecord", "--label_loss=NoSuchLoss")
    case.says = ["--label_loss=NoSuchLoss", "CrossEntropyLoss"]
    return case


def unknown_optimizer(env):
    case = _train(env, f"{env.data}/video/train*.tfrecord", "--optimizer=NoSuchOptimizer")
    case.says = ["--optimizer=NoSuchOptimizer", "AdamOptimizer"]
    return case


def unknown_flag(env):
    case = _train(env, f"{env.data}/video/train*.tfrecord", "--max_step=10")
    case.says = ["Unknown command line flag 'max_step'", "max_steps"]
    return case


def ensemble_flag_counts_disagree(env):
    case = _train(env, f"{env.data}/video/train*.tfrecord", "--ensemble_num=3",
                  "--netvlad_cluster_size=4", "--netvlad_cluster_size=8")
    case.says = ["--netvlad_cluster_size", "2 times", "--ensemble_num=3"]
    return case


def missing_model_flags_json(env):
    run_dir = env.run_copy()
    os.remove(os.path.join(run_dir, "model_flags.json"))
    case = _eval(run_dir, f"--eval_data_pattern={env.data}/video/validate*.tfrecord")
    case.says = [os.path.join(run_dir, "model_flags.json"), "not found"]
    return case


def model_flags_json_disagrees(env):
    run_dir = env.run_copy()
    case = _eval(run_dir, f"--eval_data_pattern={env.data}/video/validate*.tfrecord",
                 "--model=MoeModel")
    case.says = ["--model=MoeModel", os.path.join(run_dir, "model_flags.json"), "LogisticModel"]
    return case


def missing_checkpoint(env):
    run_dir = env.run_copy()
    case = _eval(run_dir, f"--eval_data_pattern={env.data}/video/validate*.tfrecord",
                 "--checkpoint=model.ckpt-99.index")
    case.says = ["--checkpoint=model.ckpt-99.index", os.path.join(run_dir, "model.ckpt-99")]
    case.leaves_nothing.append(os.path.join(run_dir, "inference_model_99*"))
    return case


def template_checkpoint_mismatch(env):
    """A 2-model float16 template filled from a model whose weights have 10 classes, not 20."""
    weights, biases = "fully_connected/weights", "fully_connected/biases"
    template = {}
    for prefix in ("tower/", "tower/model1/"):
        template[prefix + weights] = np.zeros([1152, NUM_CLASSES], np.float16)
        template[prefix + biases] = np.zeros([NUM_CLASSES], np.float16)
    ensemble_dir = env.path("ensemble")
    checkpoint_utils.write_checkpoint(template, os.path.join(ensemble_dir, "template"))
    small = checkpoint_utils.write_checkpoint(
        {"tower/" + weights: np.zeros([1152, 10], np.float32),
         "tower/" + biases: np.zeros([NUM_CLASSES], np.float32)}, env.path("small", "model.ckpt"))
    good = os.path.join(env.run, "model.ckpt-20")
    return Case("overwrite_float16_ckpt",
                [f"--train_dir={ensemble_dir}", "--inference_model=template-0",
                 f"--checkpoints={good},{small}", "--out_name=filled"],
                ["tower/model1/" + weights, f"[1152, {NUM_CLASSES}]", small, "[1152, 10]"],
                [os.path.join(ensemble_dir, "filled*")])


def tgz_without_model_files(env):
    tgz = env.path("model.tgz")
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(os.path.join(env.run, "model_flags.json"), arcname="model_flags.json")
    # An earlier model in the untar folder must not stand in for the missing one.
    untar = env.path("untarred")
    shutil.copytree(env.run, untar)
    case = _infer(env, f"--input_model_tgz={tgz}", f"--untar_model_dir={untar}")
    case.says = [f"--input_model_tgz={tgz}", "inference_model.index", "inference_model.meta"]
    return case


def csv_not_writable(env):
    csv = os.path.join(_not_a_directory(env), "predictions.csv")
    case = _infer(env, f"--train_dir={env.run}", csv=csv)
    case.says = [f"--output_file={csv}", "not writable"]
    return case


def tgz_not_writable(env):
    tgz = os.path.join(_not_a_directory(env), "model.tgz")
    case = _infer(env, f"--train_dir={env.run}", f"--output_model_tgz={tgz}")
    case.says = [f"--output_model_tgz={tgz}", "not writable"]
    return case


def train_dir_not_writable(env):
    train_dir = os.path.join(_not_a_directory(env), "run")
    case = _train(env, f"{env.data}/video/train*.tfrecord", f"--train_dir={train_dir}")
    case.says = [f"--train_dir={train_dir}", "not writable"]
    return case


def avg_output_not_writable(env):
    output = os.path.join(_not_a_directory(env), "avg.ckpt")
    return Case("avg_checkpoints", [f"--prefix={env.run}/model.ckpt-", "--checkpoints=10,20",
                                    f"--output_path={output}"],
                [f"--output_path={output}", "not writable"], [output + "*"])


def _read_csv(path: str) -> List[List[str]]:
    """The rows after the header, read with Python's csv module."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["VideoId", "LabelConfidencePairs"]
    return rows[1:]


def _pairs(text: str) -> tuple:
    values = text.split(" ")
    return [int(v) for v in values[0::2]], np.array([float(v) for v in values[1::2]])


def _logistic_top(checkpoint: str, features: np.ndarray, k: int) -> tuple:
    """numpy LogisticModel (SPEC 3, 4.2): top-k classes and scores of one video's features."""
    weights = read_checkpoint(checkpoint)
    x = np.asarray(features, np.float32).astype(np.float64)
    x = x / max(np.linalg.norm(x), 1e-6)
    scores = 1 / (1 + np.exp(-(x @ weights["tower/fully_connected/weights"]
                               + weights["tower/fully_connected/biases"])))
    top = np.argsort(-scores, kind="stable")[:k]
    return top.tolist(), scores[top]


HOSTILE_IDS = ["comma,id", 'quote"id', "new\nline", "carriage\rreturn", " spaced ", "ünï"]


def hostile_ids(env):
    """Ids that would break a hand-written CSV row: read back as they were, each with the
    predictions of its own features."""
    rng = np.random.default_rng(5)
    videos = [_video(rng, i, id=video_id) for i, video_id in enumerate(HOSTILE_IDS)]
    path, csv_path = env.path("hostile.tfrecord"), env.path("hostile.csv")
    write_examples(path, videos)

    def check():
        rows = _read_csv(csv_path)
        assert [row[0] for row in rows] == HOSTILE_IDS
        for video, (_, pairs) in zip(videos, rows, strict=True):
            classes, scores = _pairs(pairs)
            features = np.concatenate([video["mean_rgb"], video["mean_audio"]])
            want_classes, want_scores = _logistic_top(
                os.path.join(env.run, "inference_model"), features, 5)
            assert classes == want_classes
            np.testing.assert_allclose(scores, want_scores, rtol=2e-5)

    return Case("inference", [f"--train_dir={env.run}", f"--input_data_pattern={path}",
                              f"--output_file={csv_path}", "--top_k=5"], ["Wrote 6 videos"],
                succeeds=True, check=check)


def non_utf8_id(env):
    path = _records(env, "latin1.tfrecord", {"id": b"caf\xe9"})
    case = _infer(env, f"--train_dir={env.run}", pattern=path)
    case.says = [r"b'caf\xe9'", path, "not UTF-8"]
    return case


def nan_predictions(env):
    """An inference model with one NaN bias: every video's predictions hold a NaN."""
    run_dir = env.run_copy()
    values = read_checkpoint(os.path.join(run_dir, "inference_model"))
    del values[checkpoint_utils.GLOBAL_STEP]
    values["tower/fully_connected/biases"][3] = np.nan
    checkpoint_utils.write_checkpoint(values, os.path.join(run_dir, "nan_model"),
                                      meta_graph_path=os.path.join(run_dir, "inference_model.meta"))
    path = _records(env, "good.tfrecord")
    case = _infer(env, f"--train_dir={run_dir}", "--inference_model_file=nan_model-0",
                  pattern=path)
    case.says = ["NaN or Inf", "4 video(s)", "'video0'", path]
    return case


def duplicate_ids(env):
    test = f"{env.data}/video/test0000.tfrecord"
    copy = env.path("test_copy.tfrecord")
    shutil.copy(test, copy)
    case = _infer(env, f"--train_dir={env.run}", pattern=f"{test},{copy}")
    case.says = ["--input_data_pattern", "24 record(s) repeat an earlier video id", test, copy]
    return case


def _frame_videos(env, frame_counts: Sequence[int]) -> tuple:
    """(path, videos): frame-level videos clip0, clip1, ... with the given numbers of frames."""
    rng = np.random.default_rng(6)
    videos = [{"id": f"clip{i}", "labels": [2],
               "rgb": rng.integers(0, 256, (count, 1024), dtype=np.uint8),
               "audio": rng.integers(0, 256, (count, 128), dtype=np.uint8)}
              for i, count in enumerate(frame_counts)]
    path = env.path("frames.tfrecord")
    write_sequence_examples(path, videos)
    return path, videos


def zero_frame_videos_inference(env):
    """Kaggle needs every id: 0-frame videos score one all-zero frame, with a warning."""
    run_dir = env.frame_run()
    path, _ = _frame_videos(env, [5, 0, 3, 0])
    csv_path = env.path("zero_frames.csv")

    def check():
        rows = _read_csv(csv_path)
        assert [row[0] for row in rows] == ["clip0", "clip1", "clip2", "clip3"]
        # A zero mean frame leaves the biases alone: scores sigmoid(b), ranked.
        biases = read_checkpoint(os.path.join(run_dir, "inference_model"))[
            "tower/fully_connected/biases"].astype(np.float64)
        want = np.argsort(-biases, kind="stable")[:5]
        for row in (rows[1], rows[3]):
            classes, scores = _pairs(row[1])
            assert classes == want.tolist()
            np.testing.assert_allclose(scores, 1 / (1 + np.exp(-biases[want])), rtol=2e-5)

    return Case("inference", [f"--train_dir={run_dir}", f"--input_data_pattern={path}",
                              f"--output_file={csv_path}", "--top_k=5"],
                ["2 video(s) have no frames (e.g. clip1)"], succeeds=True, check=check)


def zero_frame_videos_eval(env):
    run_dir = env.path("frame_run")
    shutil.copytree(env.frame_run(), run_dir)
    path, _ = _frame_videos(env, [5, 0, 3, 0])
    case = _eval(run_dir, f"--eval_data_pattern={path}")
    case.says = ["feature rgb missing or without frames in 2 video(s), e.g. clip1, clip3", path,
                 os.path.join(run_dir, "model.ckpt-10")]
    return case


def zero_frame_videos_train(env):
    path, _ = _frame_videos(env, [5, 0, 3, 4])
    case = _train(env, path, *FRAME_FLAGS, "--num_epochs=1")
    case.says = ["feature rgb missing or without frames in 1 video(s), e.g. clip1", path]
    return case


def top_k_zero_inference(env):
    case = _infer(env, f"--train_dir={env.run}", "--top_k=0")
    case.says = ["--top_k=0", "positive"]
    return case


def top_k_negative_eval(env):
    run_dir = env.run_copy()
    case = _eval(run_dir, f"--eval_data_pattern={env.data}/video/validate*.tfrecord",
                 "--checkpoint=model.ckpt-10", "--top_k=-1")
    case.says = ["--top_k=-1", "positive"]
    case.leaves_nothing = [os.path.join(run_dir, "inference_model_10*")]
    return case


def only_empty_shards(env):
    for name in ("empty0.tfrecord", "empty1.tfrecord"):
        open(env.path(name), "wb").close()
    case = _train(env, env.path("empty*.tfrecord"))
    case.says = ["--train_data_pattern", "2 file(s) hold no records", env.path("empty0.tfrecord")]
    return case


def _gzipped(env, source: str, cut: int = 0) -> str:
    data = gzip.compress(open(source, "rb").read())
    path = env.path("records.tfrecord.gz")
    with open(path, "wb") as f:
        f.write(data[:len(data) - cut])
    return path


def gzip_records(env):
    test = f"{env.data}/video/test0000.tfrecord"
    path, csv_path = _gzipped(env, test), env.path("from_gzip.csv")
    plain = [tf.train.Example.FromString(record).features.feature["id"].bytes_list.value[0]
             .decode() for record in tf.compat.v1.io.tf_record_iterator(test)]

    def check():
        assert [row[0] for row in _read_csv(csv_path)] == plain

    return Case("inference", [f"--train_dir={env.run}", f"--input_data_pattern={path}",
                              f"--output_file={csv_path}"], [f"Wrote {len(plain)} videos"],
                succeeds=True, check=check)


def truncated_gzip_records(env):
    path = _gzipped(env, f"{env.data}/video/train0000.tfrecord", cut=40)
    case = _train(env, path)
    case.says = ["corrupt or truncated gzip-compressed TFRecord file", path]
    return case


def nan_features_eval(env):
    features = np.random.default_rng(7).uniform(-1, 1, 1024)
    features[9] = np.nan
    path = _records(env, "nan.tfrecord", {"mean_rgb": features})
    run_dir = env.run_copy()
    case = _eval(run_dir, f"--eval_data_pattern={path}")
    case.says = ["feature mean_rgb has NaN or Inf values", "video2", path,
                 os.path.join(run_dir, "model.ckpt-20")]
    return case


CASES: Dict[str, Callable[[Env], Case]] = {f.__name__: f for f in (
    no_matching_files, corrupt_record, truncated_record, skip_corrupt_records, missing_id,
    missing_labels, inference_without_labels, missing_feature, wrong_feature_size,
    label_out_of_range, feature_flags_of_different_lengths, unknown_model, unknown_loss,
    unknown_optimizer, unknown_flag, ensemble_flag_counts_disagree, missing_model_flags_json,
    model_flags_json_disagrees, missing_checkpoint, template_checkpoint_mismatch,
    tgz_without_model_files, csv_not_writable, tgz_not_writable, train_dir_not_writable,
    avg_output_not_writable, hostile_ids, non_utf8_id, nan_predictions, duplicate_ids,
    zero_frame_videos_inference, zero_frame_videos_eval, zero_frame_videos_train,
    top_k_zero_inference, top_k_negative_eval, only_empty_shards, gzip_records,
    truncated_gzip_records, nan_features_eval)}


@pytest.fixture(scope="module")
def trained_run(sample_data, tmp_path_factory) -> str:
    """A LogisticModel run with model.ckpt-10, model.ckpt-20 and an inference_model."""
    run_dir = str(tmp_path_factory.mktemp("bad_input_run"))
    result = run_script("train", f"--train_data_pattern={sample_data}/video/train*.tfrecord",
                        f"--train_dir={run_dir}", *TRAIN_FLAGS, "--export_model_steps=10")
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_script("eval", f"--train_dir={run_dir}", "--checkpoint=model.ckpt-20",
                        "--create_meta_only", "--force_output_model_name")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def frame_run(sample_data, tmp_path_factory) -> str:
    """A FrameLevelLogisticModel run with model.ckpt-10 and an inference_model."""
    run_dir = str(tmp_path_factory.mktemp("bad_input_frame_run"))
    result = run_script("train", f"--train_data_pattern={sample_data}/frame/train*.tfrecord",
                        f"--train_dir={run_dir}", *TRAIN_FLAGS, *FRAME_FLAGS, "--max_steps=10")
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_script("eval", f"--train_dir={run_dir}", "--checkpoint=model.ckpt-10",
                        "--create_meta_only", "--force_output_model_name")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def outcomes(request, sample_data, trained_run, tmp_path_factory):
    """(case, finished process) of every selected case, all run together."""
    selected = [item.callspec.params["name"] for item in request.session.items
                if item.path == request.path and hasattr(item, "callspec")]
    cases = {}
    for name in selected:
        env = Env(sample_data, trained_run, str(tmp_path_factory.mktemp(name)),
                  lambda: request.getfixturevalue("frame_run"))
        cases[name] = CASES[name](env)
    with ThreadPoolExecutor(PARALLEL) as pool:
        futures = {name: pool.submit(run_script, case.script, *case.args, timeout=300)
                   for name, case in cases.items()}
        return {name: (cases[name], future.result()) for name, future in futures.items()}


@pytest.mark.parametrize("name", CASES)
def test_bad_input(outcomes, name):
    case, result = outcomes[name]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    if case.succeeds:
        assert result.returncode == 0, result.stderr[-3000:]
        for text in case.says:
            assert text in result.stderr
        if case.check:
            case.check()
        return
    assert result.returncode != 0
    last = result.stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith("ERROR: "), result.stderr[-3000:]
    for text in case.says:
        assert text in last, (text, last)
    for pattern in case.leaves_nothing:
        assert not glob.glob(pattern), (pattern, glob.glob(pattern))
    assert not [line for line in result.stdout.splitlines() if line.startswith("{")]
