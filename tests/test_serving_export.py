"""train.py --export_saved_model writes SavedModels that score like inference.py."""
import glob
import os

import numpy as np
import tensorflow as tf

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
