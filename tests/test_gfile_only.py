"""Every user path goes through tf.io.gfile: the whole workflow on TensorFlow's ram:// file system.

ram:// exists only inside one process, and Python's open(), os.* and glob
cannot reach it, so this file's ``__main__`` is a driver that runs each
script's main in one process: sample data -> train -> eval (re-save) ->
avg_checkpoints -> eval of the average -> a float16 ensemble template ->
overwrite_float16_ckpt -> eval -> checkpoint_size -> inference with
--output_model_tgz, then with --input_model_tgz.  An audit hook makes any
Python-level file access to a ram:// path fail, and the test checks that the
driver left nothing in its working directory or temp directory.  What works
on ram:// works on gs:// (both are gfile file systems).
"""
import contextlib
import json
import os
import subprocess
import sys
import sysconfig

from helpers import REPO

ROOT = "ram://yt8m"
DATA, RUN, ENS, OUT = (f"{ROOT}/{name}" for name in ("data", "run", "ens", "out"))
NUM_CLASSES = 10
# Video-level data and a small model: the file access is what is tested here.
MODEL = ["--feature_names=mean_rgb,mean_audio", "--feature_sizes=1024,128", "--model=MoeModel",
         "--moe_num_mixtures=2", "--moe_prob_gating=True", f"--num_classes={NUM_CLASSES}"]
STDLIB = sysconfig.get_paths()["stdlib"]
ENSEMBLE = MODEL + ["--ensemble_num=2", "--float16_flag=True"]
# Python-level file events (sys.addaudithook) that must never see a ram:// path.
FILE_EVENTS = {"open", "os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.listdir",
               "os.scandir", "os.chdir", "os.truncate", "os.utime", "os.chmod", "os.link",
               "os.symlink", "glob.glob", "shutil.rmtree", "shutil.copyfile", "shutil.copytree",
               "shutil.move", "shutil.make_archive", "tempfile.mkstemp", "tempfile.mkdtemp"}


def _caller(frame) -> str:
    """The first file up the stack that is not the standard library (glob.py, os, ...)."""
    while frame and (frame.f_code.co_filename.startswith((STDLIB, "<"))):
        frame = frame.f_back
    return frame.f_code.co_filename if frame else "?"


def _guard_python_file_access(scheme: str) -> list:
    """Fails our code's Python-level file access to ``scheme`` paths; lists the libraries'.

    (TensorFlow's Saver globs the checkpoint prefix for a size metric, which
    finds nothing on a remote file system and harms nothing.)
    """
    library_accesses = []

    def hook(event, args):
        if event not in FILE_EVENTS or not any(scheme in str(arg) for arg in args):
            return
        caller = _caller(sys._getframe(1))
        if caller.startswith(REPO + os.sep) and "site-packages" not in caller:
            raise AssertionError(f"{event}{args} from {caller}: a user path reached Python's "
                                 "file API")
        library_accesses.append(f"{event} from {caller}")
    sys.addaudithook(hook)
    return library_accesses


def _drive() -> None:
    """The workflow on ram://, in this process; prints one JSON summary line."""
    library_accesses = _guard_python_file_access("ram:")
    sys.path.insert(0, REPO)
    import importlib

    import tensorflow as tf
    from absl import flags, logging

    import app_flags
    import avg_checkpoints
    import checkpoint_size
    import inference
    import make_sample_data
    import overwrite_float16_ckpt
    import train
    evaluate = importlib.import_module("eval")
    tf.compat.v1.disable_eager_execution()
    gfile, FLAGS = tf.io.gfile, flags.FLAGS

    def parse(*args):
        FLAGS.unparse_flags()
        FLAGS(["driver", *args])
        logging.set_verbosity(logging.INFO)  # what app.run's flag defaults give the scripts

    def run_script(module, script, *args):
        app_flags.set_script_defaults(script)
        parse(*args)
        module.main()

    @contextlib.contextmanager
    def tool_flags(define, hide=()):
        """A tool's own flags for a while, hiding the app flags of the same names."""
        hidden = {name: FLAGS[name] for name in hide}
        for name in hide:
            delattr(FLAGS, name)
        before = set(FLAGS)
        define()
        added = set(FLAGS) - before
        try:
            yield
        finally:
            for name in added:
                delattr(FLAGS, name)
            for name, flag in hidden.items():
                FLAGS[name] = flag

    make_sample_data.write_sample_data(
        DATA, num_classes=NUM_CLASSES, videos_per_shard=8, num_train_shards=3,
        num_validate_shards=1, num_test_shards=1, min_video_frames=4, max_video_frames=8, seed=3)
    with gfile.GFile(f"{ROOT}/held_out.txt", "w") as f:
        f.write("train0002.tfrecord\n")
    run_script(train, "train", f"--train_data_pattern={DATA}/video/train*.tfrecord",
               f"--exclude_data_pattern=@{ROOT}/held_out.txt", f"--train_dir={RUN}",
               "--batch_size=4", "--max_steps=30", "--export_model_steps=10",
               "--num_epochs=100", "--start_new_model", *MODEL)
    validate = f"--eval_data_pattern={DATA}/video/validate*.tfrecord"
    run_script(evaluate, "eval", validate, f"--train_dir={RUN}", "--run_once",
               "--checkpoint=model.ckpt-20.index", "--batch_size=5", *MODEL)
    run_script(evaluate, "eval", validate, f"--train_dir={RUN}", "--checkpoints=10,30",
               "--batch_size=5", *MODEL)
    sweep_flags = ("checkpoints", "checkpoints_start_end", "num_last_checkpoints")
    with tool_flags(avg_checkpoints.define_flags, hide=sweep_flags):
        parse(f"--prefix={RUN}/model.ckpt-", "--checkpoints_start_end=10,30",
              f"--output_path={RUN}/avg_10_30.ckpt")
        avg_checkpoints.main()
    run_script(evaluate, "eval", f"--train_dir={RUN}", "--checkpoint_file=avg_10_30.ckpt-0",
               "--create_meta_only", *MODEL)
    run_script(train, "train", f"--train_data_pattern={DATA}/video/train*.tfrecord",
               f"--train_dir={ENS}", "--batch_size=4", "--max_steps=0", *ENSEMBLE)
    run_script(evaluate, "eval", f"--train_dir={ENS}", "--run_once", "--create_meta_only",
               *ENSEMBLE)
    with tool_flags(overwrite_float16_ckpt.define_flags, hide=("train_dir", "checkpoints")):
        parse(f"--train_dir={ENS}", "--inference_model=inference_model_0",
              "--out_name=inference_model_ensemble_ram",
              f"--checkpoints={RUN}/inference_model_avg_10_30.ckpt-0,{RUN}/inference_model_20")
        overwrite_float16_ckpt.main()
    run_script(evaluate, "eval", validate, f"--train_dir={ENS}", "--run_once",
               "--checkpoint_file=inference_model_ensemble_ram-0", "--force_output_model_name",
               "--ensemble_wts=0.6", "--ensemble_wts=0.4", "--batch_size=5", *ENSEMBLE)
    with tool_flags(checkpoint_size.define_flags):
        parse(f"--checkpoint={ENS}/inference_model")
        checkpoint_size.main()
    test_files = f"--input_data_pattern={DATA}/video/test*.tfrecord"
    run_script(inference, "inference", f"--train_dir={ENS}", test_files,
               f"--output_file={OUT}/a.csv", f"--output_model_tgz={OUT}/model.tgz")
    run_script(inference, "inference", f"--input_model_tgz={OUT}/model.tgz",
               f"--untar_model_dir={ROOT}/untarred", test_files, f"--output_file={OUT}/b.csv")

    def read(path):
        with gfile.GFile(path) as f:
            return f.read()
    files = sorted(os.path.join(folder, name) for folder, _, names in gfile.walk(ROOT)
                   for name in names)
    print("RAM_PIPELINE " + json.dumps({
        "files": files, "csv_a": read(f"{OUT}/a.csv"), "csv_b": read(f"{OUT}/b.csv"),
        "model_flags": json.loads(read(f"{RUN}/model_flags.json")),
        "library_accesses": sorted(set(library_accesses))}), flush=True)


def test_whole_workflow_on_ram_filesystem(tmp_path):
    work, scratch = tmp_path / "cwd", tmp_path / "tmp"
    work.mkdir()
    scratch.mkdir()
    result = subprocess.run([sys.executable, os.path.abspath(__file__)], cwd=str(work),
                            env={**os.environ, "TMPDIR": str(scratch)}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-5000:]
    # Nothing reached the local disk: no "ram:" folder here, no leftover scratch files.
    assert os.listdir(work) == [] and os.listdir(scratch) == []
    lines = result.stdout.splitlines()
    summary = json.loads([line for line in lines if line.startswith("RAM_PIPELINE ")][0][13:])
    files = set(summary["files"])
    for step in (10, 20, 30):
        for suffix in (".index", ".meta", ".data-00000-of-00001"):
            assert f"{RUN}/model.ckpt-{step}{suffix}" in files
    expected = [f"{RUN}/model_flags.json", f"{RUN}/checkpoint", f"{RUN}/inference_model_20.meta",
                f"{RUN}/inference_model_10.index", f"{RUN}/inference_model_30.meta",
                f"{RUN}/avg_10_30.ckpt-0.index", f"{RUN}/inference_model_avg_10_30.ckpt-0.meta",
                f"{ENS}/inference_model_0.meta", f"{ENS}/inference_model_ensemble_ram-0.index",
                f"{ENS}/inference_model.index", f"{OUT}/model.tgz",
                f"{ROOT}/untarred/inference_model.meta", f"{ROOT}/untarred/model_flags.json"]
    for path in expected:
        assert path in files, path
    for folder in (RUN, f"{RUN}/eval", f"{ENS}/eval"):
        assert any(p.startswith(f"{folder}/events.out.tfevents") for p in files), folder
    assert not [p for p in files if "tmp" in p.rsplit("/", 1)[-1]], "temporary files left"
    # Eval printed its records; the held-out file stayed out of training.
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert [r["global_step"] for r in records] == [20, 10, 30, 0]
    assert "python avg_checkpoints.py --prefix=ram://" in result.stdout  # the sweep's table
    assert all(0 <= r["gap"] <= 1 for r in records)
    assert "Training on 2 files" in result.stderr
    assert summary["model_flags"]["num_classes"] == NUM_CLASSES
    # The model read back from the tgz predicts what the model it was packed from did.
    csv_a, csv_b = summary["csv_a"].splitlines(), summary["csv_b"].splitlines()
    assert csv_a[0] == "VideoId,LabelConfidencePairs" and len(csv_a) == 1 + 8
    assert sorted(csv_a) == sorted(csv_b)
    # Only TensorFlow's own code may have tried Python's file API on a ram:// path.
    for access in summary["library_accesses"]:
        assert "/tensorflow/" in access, access


if __name__ == "__main__":
    _drive()
