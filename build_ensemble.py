"""Builds a (float16) ensemble inference model from single-model checkpoints, in one command.

    python build_ensemble.py --train_dir=ENS_DIR $ENS \\
        --ensemble_wts=0.39 --ensemble_wts=0.26 --ensemble_wts=0.21 --ensemble_wts=0.14 \\
        --member_checkpoints=RUN_A/inference_model_avg_c24h1440_150010_220010.ckpt-0,...

What steps 1-5 of the README's ensemble workflow do, without the 10-step
training run and the template: the ensemble's inference graph is built from
the model flags (member i with the i-th --netvlad_cluster_size /
--netvlad_hidden_size, mixed with --ensemble_wts, float16 matrices under
--float16_flag, int8 under --quantize_int8, or member i's own storage under
--member_storage=float16,int8,...); member i's variables ``tower/model{i}/X``
(``tower/X`` for member 0) are filled from ``tower/X`` of the i-th checkpoint
with overwrite_float16_ckpt.py's rules (converted to the graph's dtype, float16
rounds to nearest; a missing variable or a shape mismatch is an error naming
both); global_step is 0.  Writes ENS_DIR/model_flags.json (an existing one
wins over the flags, which must agree with it) and
ENS_DIR/<--output_model_name> with the meta graph inference.py loads, and with
--output_model_tgz also the submission tgz.

Own flags: --member_checkpoints (full checkpoint paths, gs:// allowed, a
trailing ``.index`` is dropped, in the order of the repeated model flags; any
checkpoint holding a single model under ``tower/``: a training checkpoint, an
average, an eval re-save; optimizer state is ignored) and
--output_model_name (default ``inference_model``, what inference.py reads by
default).  Every flag of train/eval/inference is accepted, so the ensemble's
flag line can be pasted unchanged.
"""
import quiet_startup  # noqa: F401  (first: before TensorFlow is imported)

import posixpath
from typing import Sequence

import tensorflow as tf
from absl import flags

import app_flags
import cli
import ensemble_fill
import export
import model_config
import model_graph
from errors import UsageError
from model_config import ModelConfig

FLAGS = flags.FLAGS
# How error messages name the variables this tool fills.
GRAPH_LABEL = "(the ensemble graph of the model flags)"


def define_flags() -> None:
    """This tool's own flags (besides app_flags')."""
    app_flags.define_member_checkpoints()
    flags.DEFINE_string("output_model_name", "inference_model",
                        "Name of the inference model written in --train_dir (+ .meta).")


def ensemble_config(train_dir: str) -> ModelConfig:
    """The ensemble the flags describe, or ENS_DIR's model_flags.json (flags must agree)."""
    config = app_flags.resolve_model_config(model_config.read_json(train_dir))
    model_graph.validate(config)
    return config


def build(train_dir: str, output_name: str, config: ModelConfig,
          checkpoints: Sequence[str]) -> str:
    """Writes ``train_dir/<output_name>`` (+ .meta, model_flags.json); returns its path."""
    if not output_name or "/" in output_name:
        raise UsageError(f"--output_model_name={output_name!r} must be a file name "
                         "(it is written in --train_dir)")
    graph = model_graph.build_inference_graph(config)
    with graph.as_default():
        saver = tf.compat.v1.train.Saver(model_graph.model_variables())
    graph.finalize()
    with tf.compat.v1.Session(graph=graph) as sess:
        ensemble_fill.load_members(sess, checkpoints, GRAPH_LABEL)
        model_config.write_json(train_dir, config)
        return export.save_inference_model(sess, saver, config,
                                           posixpath.join(train_dir, output_name))


def main() -> None:
    train_dir = app_flags.value("train_dir").rstrip("/")
    config = ensemble_config(train_dir)
    checkpoints = ensemble_fill.member_checkpoints(FLAGS.member_checkpoints,
                                                   len(config.members))
    path = build(train_dir, FLAGS.output_model_name, config, checkpoints)
    print(f"Filled {len(checkpoints)} ensemble members:")
    for index, (checkpoint, weight) in enumerate(zip(checkpoints, config.weights, strict=True)):
        print(f"  model {index} (weight {weight:g}): {checkpoint}")
    print(f"Wrote {path} (+ .meta)")
    tgz = app_flags.value("output_model_tgz")
    if tgz:
        export.write_model_tgz(train_dir, posixpath.basename(path), tgz)
        print(f"Wrote {tgz}")


def run() -> None:
    """Entry point: defines the flags, parses them and runs :func:`main`."""
    cli.run(main, define_flags)


if __name__ == "__main__":
    run()
