"""checkpoint_size: bytes per member and block, float32 vs float16, the 1 GiB limit."""
import os

import numpy as np
import pytest
import tensorflow as tf

import checkpoint_size
from helpers import read_checkpoint, run_script
from model_config import STORAGE_SETTINGS, MemberConfig, ModelConfig, ModelSettings

V1 = tf.compat.v1
VARIABLES = {  # two ensemble members, float16 and float32, batch norm
    "tower/video_VLAD/conv2/cluster_weights": ([64, 16], tf.float32),
    "tower/video_VLAD/cluster_bn/beta": ([16], tf.float32),
    "tower/hidden1_weights/hidden1_weights": ([200, 40], tf.float16),
    "tower/hidden1_bn/gamma": ([40], tf.float32),
    "tower/gates/weights": ([40, 30], tf.float16),
    "tower/model1/video_VLAD/conv2/cluster_weights": ([64, 8], tf.float32),
    "tower/model1/hidden1_weights/hidden1_weights": ([100, 20], tf.float16),
    "tower/model1/gating_bn/beta": ([20], tf.float32),
    "tower/model1/experts/weights": ([20, 50], tf.float16),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint of VARIABLES + global_step + Adam state (slots, beta powers)."""
    path = str(tmp_path_factory.mktemp("size") / "model.ckpt-1")
    with tf.Graph().as_default(), V1.Session() as sess:
        V1.get_variable("global_step", [], tf.int32, V1.zeros_initializer(), trainable=False)
        made = [V1.get_variable(n, s, d) for n, (s, d) in VARIABLES.items()]
        loss = tf.add_n([tf.reduce_sum(tf.cast(v, tf.float32)) for v in made])
        train_op = V1.train.AdamOptimizer(0.1).minimize(loss)
        sess.run(V1.global_variables_initializer())
        sess.run(train_op)
        V1.train.Saver().save(sess, path, write_meta_graph=False, write_state=False)
    return path



def test_report_counts_the_bytes_of_the_tensors(checkpoint):
    tensors = read_checkpoint(checkpoint)
    report = checkpoint_size.size_report(checkpoint)
    groups = {(g["member"], g["block"]): g for g in report["groups"]}
    assert groups[(0, "video_VLAD")]["bytes"] == sum(
        tensors[n].nbytes for n in ("tower/video_VLAD/conv2/cluster_weights",
                                    "tower/video_VLAD/cluster_bn/beta"))
    assert groups[(1, "hidden1_weights")]["bytes"] == 100 * 20 * 2
    assert groups[(1, "hidden1_weights")]["float32_bytes"] == 100 * 20 * 4
    assert groups[(0, "BN")]["bytes"] == tensors["tower/hidden1_bn/gamma"].nbytes
    assert groups[(1, "BN")]["bytes"] == tensors["tower/model1/gating_bn/beta"].nbytes
    assert groups[(None, "global_step")]["bytes"] == 4
    model_bytes = {i: sum(tensors[n].nbytes for n in VARIABLES
                          if n.startswith("tower/model1/") == (i == 1)) for i in (0, 1)}
    assert report["members"] == model_bytes
    slot_bytes = sum(a.nbytes for n, a in tensors.items()
                     if n.endswith(("/Adam", "/Adam_1", "_power")))
    assert report["optimizer_bytes"] == slot_bytes
    total = sum(a.nbytes for a in tensors.values())
    assert report["total_bytes"] == total
    all_float32 = sum(a.size * (4 if a.dtype.kind == "f" else a.itemsize)
                      for a in tensors.values())
    all_float16 = sum(a.size * (2 if a.dtype.kind == "f" else a.itemsize)
                      for a in tensors.values())
    assert (report["float32_bytes"], report["float16_bytes"]) == (all_float32, all_float16)
    on_disk = os.path.getsize(checkpoint + ".data-00000-of-00001")
    assert abs(on_disk - total) <= 0.01 * on_disk
    assert not report["over_limit"]


def test_report_from_shapes_flags_the_1gb_limit():
    report = checkpoint_size.size_report_from_shapes({
        "tower/experts/weights": ([30000, 10000], "float32"),
        "tower/model1/gates/weights": ((10000, 10000), np.float16),
        "global_step": ([], tf.int32),
    })
    assert report["total_bytes"] == 30000 * 10000 * 4 + 10000 * 10000 * 2 + 4
    assert report["float16_bytes"] == 40000 * 10000 * 2 + 4
    assert report["over_limit"] and report["limit_bytes"] == 2 ** 30
    text = checkpoint_size.format_report(report)
    assert "OVER the 1 GiB limit" in text.splitlines()[-1]
    under = checkpoint_size.size_report_from_shapes({"tower/w": ([10], tf.float16)})
    assert not under["over_limit"]
    assert "under the 1 GiB limit" in checkpoint_size.format_report(under)


def test_cli_prints_the_report(checkpoint):
    result = run_script("checkpoint_size", f"--checkpoint={checkpoint}.index",
                        "--fail_over_limit")
    assert result.returncode == 0, result.stderr
    total = sum(a.nbytes for a in read_checkpoint(checkpoint).values())
    assert f"total as stored: {total:,} bytes" in result.stdout
    assert "video_VLAD" in result.stdout and "OK: under the 1 GiB limit" in result.stdout


@pytest.mark.parametrize("storages,named", [
    (("float16", "float16"), "float16_flag=True"),
    (("float32", "float32"), "float16_flag=False"),
    (("int8", "int8"), "quantize_int8=True"),
    (("float16", "int8"), "member_storage=float16,int8"),
])
def test_header_names_the_members_storage(storages, named):
    members = tuple(MemberConfig(settings=ModelSettings(**STORAGE_SETTINGS[s])) for s in storages)
    header = checkpoint_size.describe_model(ModelConfig(members=members))
    assert header.startswith("NetVLADModelLF x2 (c64h1024, c64h1024), ")
    assert f", {named}, num_classes=3862" in header
