"""Fills an n-model ensemble checkpoint with the weights of n single models.

    python overwrite_float16_ckpt.py --train_dir=ENSEMBLE_DIR \\
        --inference_model=inference_model_10 --checkpoints=M0/ckpt-0,M1/ckpt-0,M2/ckpt-0

The template (``train_dir/<inference_model>``, e.g. the untrained float16
ensemble that eval.py --create_meta_only re-saved) names model 0's variables
``tower/X`` and model i's ``tower/model{i}/X``.  Each is filled from
``tower/X`` of the i-th checkpoint of ``--checkpoints`` (full paths, used
verbatim, in the order of the repeated model flags), converted to the
template's dtype (float16 rounds to nearest).  The result is
``train_dir/<out_name>-0`` with an int32 global_step = 0 and the template's
meta graph, so eval.py and inference.py load it like any inference model.
The ``checkpoint`` state file is left alone.
"""
import quiet_startup  # noqa: F401  (first: before TensorFlow is imported)

import posixpath
from typing import Sequence

import tensorflow as tf
from absl import flags

import checkpoint_utils
import cli
import ensemble_fill
from errors import UsageError

FLAGS = flags.FLAGS

def define_flags() -> None:
    """This tool's flags, defined only when it runs (other scripts share names)."""
    flags.DEFINE_string("train_dir", "/tmp/yt8m_model/",
                        "Directory of the template; the output is written there too.")
    flags.DEFINE_string("inference_model", "",
                        "Template ensemble checkpoint in --train_dir, e.g. inference_model_10.")
    flags.DEFINE_string("out_name", "inference_model_float16_mean_ensemble",
                        "Output checkpoint name in --train_dir (written as <out_name>-0).")
    flags.DEFINE_string("checkpoints", "",
                        "Comma-separated single-model checkpoints (full paths), one per "
                        "ensemble member, in member order.")


def overwrite(train_dir: str, inference_model: str, out_name: str,
              checkpoints: Sequence[str]) -> str:
    """Writes ``train_dir/<out_name>-0`` from the template and the checkpoints; returns it."""
    if not inference_model:
        raise UsageError("--inference_model is required (the template, e.g. inference_model_10)")
    if not out_name:
        raise UsageError("--out_name must not be empty")
    if not checkpoints:
        raise UsageError("--checkpoints is required: one single-model checkpoint per member")
    template = posixpath.join(train_dir, checkpoint_utils.strip_checkpoint_suffix(inference_model))
    values = ensemble_fill.fill_template(template, checkpoints)
    meta = template + ".meta"
    output = posixpath.join(train_dir, out_name)
    try:
        return checkpoint_utils.write_checkpoint(
            values, output, global_step=0,
            meta_graph_path=meta if tf.io.gfile.exists(meta) else None)
    except (tf.errors.OpError, ValueError) as e:
        raise UsageError(f"cannot write {output}-0: {checkpoint_utils.describe_error(e)}") from None


def main() -> None:
    checkpoints = [c.strip() for c in FLAGS.checkpoints.split(",") if c.strip()]
    output = overwrite(FLAGS.train_dir, FLAGS.inference_model, FLAGS.out_name, checkpoints)
    print(f"Filled {len(checkpoints)} ensemble members from:")
    for index, path in enumerate(checkpoints):
        print(f"  model {index}: {path}")
    print(f"Wrote {output}")


def run() -> None:
    """Entry point: defines the flags, parses them and runs :func:`main`."""
    cli.run(main, define_flags)


if __name__ == "__main__":
    run()
