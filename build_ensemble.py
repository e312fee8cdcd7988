"""Builds a (float16) ensemble inference model from single-model checkpoints, in one command.

    python build_ensemble.py --train_dir=ENS_DIR $ENS \\
        --ensemble_wts=0.39 --ensemble_wts=0.26 --ensemble_wts=0.21 --ensemble_wts=0.14 \\
        --member_checkpoints=RUN_A/inference_model_avg_c24h1440_150010_220010.ckpt-0,...

What steps 1-5 of the README's ensemble workflow do, without the 10-step
training run and the template: the ensemble's inference graph is built from
the model flags (member i with the i-th --netvlad_cluster_size /
--netvlad_hidden_size, mixed with --ensemble_wts, float16 matrices under
--float16_flag); member i's variables ``tower/model{i}/X`` (``tower/X`` for
member 0) are filled from ``tower/X`` of the i-th checkpoint with
overwrite_float16_ckpt.py's rules (converted to the graph's dtype, float16
rounds to nearest; a missing variable or a shape mismatch is an error naming
both); global_step is 0.  Writes ENS_DIR/model_flags.json (or checks it) and
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
import posixpath
from typing import Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import flags

import app_flags
import checkpoint_utils
import export
import model_config
import model_graph
import overwrite_float16_ckpt
from errors import UsageError

FLAGS = flags.FLAGS
# How error messages name the variables this tool fills.
GRAPH_LABEL = "(the ensemble graph of the model flags)"


def define_member_flag() -> None:
    """--member_checkpoints, shared with search_ensemble_weights.py."""
    flags.DEFINE_string("member_checkpoints", "",
                        "Comma-separated single-model checkpoints (full paths), one per "
                        "ensemble member, in the order of the repeated model flags.")


def define_flags() -> None:
    """This tool's own flags, defined only when it runs (besides app_flags')."""
    define_member_flag()
    flags.DEFINE_string("output_model_name", "inference_model",
                        "Name of the inference model written in --train_dir (+ .meta).")


def member_checkpoints(text: str) -> List[str]:
    """The --member_checkpoints paths; there must be one per ensemble member."""
    paths = [checkpoint_utils.strip_checkpoint_suffix(p.strip())
             for p in text.split(",") if p.strip()]
    members = len(app_flags.ensemble_members())
    if len(paths) != members:
        raise UsageError(f"--member_checkpoints has {len(paths)} paths but the model flags "
                         f"describe {members} models (--ensemble_num="
                         f"{app_flags.value('ensemble_num')})")
    return paths


def graph_variables(graph: tf.Graph) -> Dict[str, tf.Variable]:
    """The model variables (and global_step) of a graph built by model_graph."""
    with graph.as_default():
        return {v.op.name: v for v in model_graph.model_variables()}


def member_values(variables: Dict[str, tf.Variable],
                  checkpoints: Sequence[str]) -> Dict[str, np.ndarray]:
    """Value of every variable of ``variables``: the members' weights, global_step 0."""
    specs: Dict[str, Tuple[List[int], tf.DType]] = {
        name: (var.shape.as_list(), var.dtype.base_dtype)
        for name, var in variables.items() if name != checkpoint_utils.GLOBAL_STEP}
    values = overwrite_float16_ckpt.fill_variables(specs, checkpoints, GRAPH_LABEL)
    step = variables.get(checkpoint_utils.GLOBAL_STEP)
    if step is not None:
        values[checkpoint_utils.GLOBAL_STEP] = np.zeros([], step.dtype.base_dtype.as_numpy_dtype)
    return values


def load_members(sess: tf.compat.v1.Session, checkpoints: Sequence[str]) -> None:
    """Fills every model variable of ``sess.graph`` from the member checkpoints."""
    variables = graph_variables(sess.graph)
    checkpoint_utils.assign_values(sess, variables, member_values(variables, checkpoints))


def build(train_dir: str, output_name: str, checkpoints: Sequence[str]) -> str:
    """Writes ``train_dir/<output_name>`` (+ .meta, model_flags.json); returns its path."""
    if not output_name or "/" in output_name:
        raise UsageError(f"--output_model_name={output_name!r} must be a file name "
                         "(it is written in --train_dir)")
    config = model_config.from_flags()
    graph = model_graph.build_inference_graph(config)
    with graph.as_default():
        saver = tf.compat.v1.train.Saver(model_graph.model_variables())
    graph.finalize()
    with tf.compat.v1.Session(graph=graph) as sess:
        load_members(sess, checkpoints)
        model_config.check_or_write(train_dir, config)
        return export.save_inference_model(sess, saver, config,
                                           posixpath.join(train_dir, output_name))


def main() -> None:
    checkpoints = member_checkpoints(FLAGS.member_checkpoints)
    train_dir = app_flags.value("train_dir").rstrip("/")
    path = build(train_dir, FLAGS.output_model_name, checkpoints)
    weights = [w for _, _, w in app_flags.ensemble_members()]
    print(f"Filled {len(checkpoints)} ensemble members:")
    for index, (checkpoint, weight) in enumerate(zip(checkpoints, weights, strict=True)):
        print(f"  model {index} (weight {weight:g}): {checkpoint}")
    print(f"Wrote {path} (+ .meta)")
    tgz = app_flags.value("output_model_tgz")
    if tgz:
        export.write_model_tgz(train_dir, posixpath.basename(path), tgz)
        print(f"Wrote {tgz}")


def run() -> None:
    """Entry point: defines the flags, parses them and runs :func:`main`."""
    define_flags()
    checkpoint_utils.run_tool(main)


if __name__ == "__main__":
    run()
