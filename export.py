"""Writes inference checkpoints: model variables plus the placeholder-fed meta graph.

eval.py re-saves every checkpoint it restores through here, and inference.py
loads the result with nothing but ``import_meta_graph`` and ``restore``.
"""
import io
import os
import tarfile
import tempfile
from typing import List

import tensorflow as tf

import checkpoint_utils
import model_config
import model_graph


def write_inference_meta_graph(config: model_config.ModelConfig, meta_path: str) -> None:
    """Builds the inference graph and writes its meta graph atomically."""
    graph = model_graph.build_inference_graph(config)
    with graph.as_default():
        saver = tf.compat.v1.train.Saver(model_graph.model_variables(), save_relative_paths=True)
        local_dir = tempfile.mkdtemp(prefix="yt8m-meta-")
        try:
            local = os.path.join(local_dir, "inference.meta")
            tf.compat.v1.train.export_meta_graph(
                filename=local, graph=graph, saver_def=saver.as_saver_def(), clear_devices=True)
            checkpoint_utils.copy_atomically(local, meta_path)
        finally:
            tf.io.gfile.rmtree(local_dir)


def save_inference_model(sess: tf.compat.v1.Session, saver: tf.compat.v1.train.Saver,
                         config: model_config.ModelConfig, path: str) -> str:
    """Saves ``saver``'s variables (model + global_step) as inference checkpoint ``path``."""
    write_inference_meta_graph(config, path + ".meta")
    return checkpoint_utils.save_atomically(saver, sess, path, write_meta_graph=False,
                                            record_in_state=False)


def model_files(model_dir: str, name: str) -> List[str]:
    """The files of checkpoint ``name`` in ``model_dir`` (index, data shards, meta)."""
    return sorted(tf.io.gfile.glob(os.path.join(model_dir, name + ".*")))


def write_model_tgz(model_dir: str, name: str, tgz_path: str) -> None:
    """Packs checkpoint ``name`` as ``inference_model.*`` plus model_flags.json, flat.

    The files are renamed so that inference.py's default --inference_model_file
    finds them when the tgz is read back with --input_model_tgz.
    """
    local_dir = tempfile.mkdtemp(prefix="yt8m-tgz-")
    try:
        local = os.path.join(local_dir, "model.tgz")
        with tarfile.open(local, "w:gz") as tar:
            for path in model_files(model_dir, name) + [
                    os.path.join(model_dir, model_config.FILE_NAME)]:
                arcname = os.path.basename(path)
                if arcname != model_config.FILE_NAME:
                    arcname = "inference_model" + arcname[len(name):]
                data = tf.io.gfile.GFile(path, "rb").read()
                info = tarfile.TarInfo(arcname)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        checkpoint_utils.copy_atomically(local, tgz_path)
    finally:
        tf.io.gfile.rmtree(local_dir)
