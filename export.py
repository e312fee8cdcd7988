"""Writes inference checkpoints: model variables plus the placeholder-fed meta graph.

eval.py re-saves every checkpoint it restores through here, and inference.py
loads the result with nothing but ``import_meta_graph`` and ``restore``.
"""
import contextlib
import io
import os
import re
import shutil
import tarfile
import tempfile
from typing import Iterator, List

import tensorflow as tf

import checkpoint_utils
import model_config
import model_graph
from errors import UsageError, disk_full_message


def write_inference_meta_graph(config: model_config.ModelConfig, meta_path: str) -> None:
    """Builds the inference graph and writes its meta graph atomically."""
    graph = model_graph.build_inference_graph(config)
    with graph.as_default():
        saver = tf.compat.v1.train.Saver(model_graph.model_variables(), save_relative_paths=True)
        with private_temp_dir("meta") as local_dir:
            local = os.path.join(local_dir, "inference.meta")
            tf.compat.v1.train.export_meta_graph(
                filename=local, graph=graph, saver_def=saver.as_saver_def(), clear_devices=True)
            checkpoint_utils.copy_atomically(local, meta_path)


def save_inference_model(sess: tf.compat.v1.Session, saver: tf.compat.v1.train.Saver,
                         config: model_config.ModelConfig, path: str) -> str:
    """Saves ``saver``'s variables (model + global_step) as inference checkpoint ``path``.

    The meta graph is written with the data, so a replaced model is the old
    one or the new one as a whole (checkpoint_utils' replacement rule).
    """
    return checkpoint_utils.save_atomically(
        saver, sess, path, record_in_state=False,
        write_meta=lambda meta_path: write_inference_meta_graph(config, meta_path))


@contextlib.contextmanager
def private_temp_dir(kind: str) -> Iterator[str]:
    """A fresh local folder ``yt8m-<kind>-<pid>-*``, removed on exit.

    Concurrent runs never share it.  A run killed before its exit leaves it
    behind; the next run removes the folders of processes that are gone.
    """
    remove_stale_temp_dirs(kind)
    path = tempfile.mkdtemp(prefix=f"yt8m-{kind}-{os.getpid()}-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def remove_stale_temp_dirs(kind: str) -> None:
    """Removes the ``yt8m-<kind>-<pid>-*`` folders of the local temp dir whose process is gone."""
    root = tempfile.gettempdir()
    pattern = re.compile(rf"yt8m-{re.escape(kind)}-(\d+)-")
    for name in os.listdir(root):
        match = pattern.match(name)
        if match and not _process_alive(int(match.group(1))):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def model_files(model_dir: str, name: str) -> List[str]:
    """The files of checkpoint ``name`` in ``model_dir`` (index, data shards, meta)."""
    return sorted(tf.io.gfile.glob(os.path.join(model_dir, name + ".*")))


def write_model_tgz(model_dir: str, name: str, tgz_path: str) -> None:
    """Packs checkpoint ``name`` as ``inference_model.*`` plus model_flags.json, flat.

    The files are renamed so that inference.py's default --inference_model_file
    finds them when the tgz is read back with --input_model_tgz.  The tgz is
    packed in a local temporary folder, then copied to ``tgz_path``.
    """
    with private_temp_dir("tgz") as local_dir:
        local = os.path.join(local_dir, "model.tgz")
        try:
            _pack(model_dir, name, local)
        except OSError as e:
            raise UsageError(f"cannot pack {tgz_path}: "
                             f"{disk_full_message(e, local) or e}") from None
        checkpoint_utils.copy_atomically(local, tgz_path)


def _pack(model_dir: str, name: str, local: str) -> None:
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
