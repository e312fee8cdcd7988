"""train.py --export_saved_model writes SavedModels that score like inference.py."""
import glob
import os

import numpy as np
import tensorflow as tf

import model_config
import serving_export
from helpers import NETVLAD_FLAGS, NETVLAD_SIZES, run_script

FLAGS = NETVLAD_FLAGS + NETVLAD_SIZES


def test_saved_model_matches_inference_csv(sample_data, tmp_path):
    run_dir = str(tmp_path / "run")
    result = run_script(
        "train", f"--train_data_pattern={sample_data}/frame/train*.tfrecord",
        f"--train_dir={run_dir}", "--batch_size=16", "--max_steps=20", "--num_epochs=100",
        "--export_model_steps=10", "--export_saved_model", *FLAGS)
    assert result.returncode == 0, result.stderr[-3000:]
    exports = sorted(os.listdir(os.path.join(run_dir, "export")))
    assert exports == ["step_10", "step_20"]
    result = run_script("eval", f"--train_dir={run_dir}", "--checkpoint=model.ckpt-20",
                        "--force_output_model_name", "--create_meta_only", *FLAGS)
    assert result.returncode == 0, result.stderr[-3000:]
    csv = str(tmp_path / "out.csv")
    result = run_script("inference", f"--train_dir={run_dir}", f"--output_file={csv}",
                        f"--input_data_pattern={sample_data}/frame/test*.tfrecord", "--top_k=5")
    assert result.returncode == 0, result.stderr[-3000:]
    expected = {}
    for line in open(csv).read().splitlines()[1:]:
        video_id, pairs = line.split(",")
        values = pairs.split()
        expected[video_id] = ([int(v) for v in values[0::2]], [float(v) for v in values[1::2]])

    records = [r for path in sorted(glob.glob(f"{sample_data}/frame/test*.tfrecord"))
               for r in tf.compat.v1.io.tf_record_iterator(path)]
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(
            sess, ["serve"], os.path.join(run_dir, "export", "step_20"))
        signature = meta.signature_def["serving_default"]
        fetches = {k: v.name for k, v in signature.outputs.items()}
        out = sess.run(fetches, {signature.inputs["serialized_examples"].name: records})
    assert len(out["video_ids"]) == len(expected)
    for video_id, classes, scores in zip(out["video_ids"], out["classes"], out["scores"],
                                         strict=True):
        want_classes, want_scores = expected[video_id.decode()]
        np.testing.assert_allclose(scores[:5], want_scores, rtol=1e-4, atol=1e-6)
        assert list(classes[:5]) == want_classes

    # The 2018 signature of the same SavedModel: same scores, the 2018 names and shapes.
    with graph.as_default(), tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.loader.load(
            sess, ["serve"], os.path.join(run_dir, "export", "step_20"))
        old = meta.signature_def["predict_2018"]
        got = sess.run({k: v.name for k, v in old.outputs.items()},
                       {old.inputs["example_bytes"].name: records})
    assert got["video_id"].shape == (len(records), 1)
    assert got["class_indexes"].shape == got["predictions"].shape == (len(records), 1, 20)
    np.testing.assert_array_equal(got["video_id"][:, 0], out["video_ids"])
    np.testing.assert_array_equal(got["predictions"][:, 0], out["scores"])

    # --saved_model_signature=2018 makes it serving_default.
    stored = model_config.read_json(run_dir)
    export_dir = serving_export.export_saved_model(
        os.path.join(run_dir, "model.ckpt-20"), stored.model, str(tmp_path / "sm2018"),
        default_signature="2018")
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], export_dir)
    assert set(meta.signature_def["serving_default"].inputs) == {"example_bytes"}


def test_meta_graphs_carry_the_2018_collections(sample_data, tmp_path):
    run_dir = str(tmp_path / "run")
    result = run_script(
        "train", f"--train_data_pattern={sample_data}/frame/train*.tfrecord",
        f"--train_dir={run_dir}", "--batch_size=8", "--max_steps=10", *FLAGS)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_script("eval", f"--train_dir={run_dir}", "--run_once", "--create_meta_only")
    assert result.returncode == 0, result.stderr[-3000:]
    for meta_file, batch in (("model.ckpt-10.meta", 8), ("inference_model_10.meta", None)):
        with tf.Graph().as_default() as graph:
            tf.compat.v1.train.import_meta_graph(os.path.join(run_dir, meta_file))
            shapes = {key: graph.get_collection(key)[0].shape.as_list() for key in (
                "input_batch_raw", "input_batch", "num_frames", "predictions", "labels",
                "loss")}
        assert shapes["input_batch_raw"][1:] == shapes["input_batch"][1:] == [300, 1152]
        assert shapes["predictions"][1:] == shapes["labels"][1:] == [20], meta_file
        assert shapes["loss"] == [] and shapes["num_frames"][:1] in ([batch], [None])
