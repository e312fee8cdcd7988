"""Averages the model variables of several training checkpoints into one.

    python avg_checkpoints.py --prefix=RUN/model.ckpt- --checkpoints_start_end=150010,220010 \\
        --output_path=RUN/avg_150010_220010.ckpt

Which checkpoints: ``--checkpoints`` (steps, each joined to ``--prefix``) wins
over ``--checkpoints_start_end`` (every checkpoint under the prefix whose step
is in the range) which wins over ``--num_last_checkpoints`` (the N highest
steps).  ``--prefix`` may end in ``-`` as in the 2018 README
(``RUN/model.ckpt-``), or not (``RUN/model.ckpt``), or be a directory
(``RUN/``, meaning ``RUN/model.ckpt-``).

Only model variables are averaged (in float64, written back in each
variable's own dtype); optimizer state and global_step are not carried over
(the output has a fresh int32 global_step = 0).  The output is
``<output_path>-0`` with a meta graph; the ``checkpoint`` state file of its
directory is left alone, so a later resume still picks a training checkpoint.
"""
import quiet_startup  # noqa: F401  (first: before TensorFlow is imported)

from typing import Dict, Sequence

import numpy as np
import tensorflow as tf
from absl import flags

import checkpoint_selection
import checkpoint_utils
import cli
from errors import UsageError

FLAGS = flags.FLAGS


def define_flags() -> None:
    """This tool's flags, defined only when it runs (other scripts share names)."""
    flags.DEFINE_string("checkpoints", "",
                        "Comma-separated steps to average, each joined to --prefix "
                        "(e.g. 150010,170010).")
    flags.DEFINE_string("checkpoints_start_end", "",
                        "'START,END': average every checkpoint under --prefix whose step "
                        "is in [START, END].")
    flags.DEFINE_integer("num_last_checkpoints", 0,
                         "Average the N checkpoints with the highest steps under --prefix.")
    flags.DEFINE_string("prefix", "",
                        "Checkpoint prefix, e.g. gs://BUCKET/RUN/model.ckpt- (or a directory).")
    flags.DEFINE_string("output_path", "/tmp/averaged.ckpt",
                        "Where to write the average; the checkpoint is <output_path>-0.")


def average_checkpoints(paths: Sequence[str]) -> Dict[str, np.ndarray]:
    """Mean of each model variable over ``paths``, in float64, cast back to its dtype.

    Floating variables round to nearest in their own dtype (float16 stays
    float16); integer ones round to the nearest integer.  Every checkpoint
    must hold the same model variables with the same shapes.
    """
    readers = [checkpoint_utils.open_checkpoint(p) for p in paths]
    shapes = readers[0].get_variable_to_shape_map()
    dtypes = readers[0].get_variable_to_dtype_map()
    names = sorted(checkpoint_utils.model_variable_names(shapes))
    for path, reader in zip(paths[1:], readers[1:], strict=True):
        other_shapes = reader.get_variable_to_shape_map()
        other_dtypes = reader.get_variable_to_dtype_map()
        other_names = set(checkpoint_utils.model_variable_names(other_shapes))
        for name in sorted(set(names) ^ other_names):
            where, missing = (path, paths[0]) if name in other_names else (paths[0], path)
            raise UsageError(f"variable {name} is in checkpoint {where} but not in {missing}")
        for name in names:
            if (other_shapes[name], other_dtypes[name]) != (shapes[name], dtypes[name]):
                raise UsageError(
                    f"variable {name} is {dtypes[name].name}{shapes[name]} in {paths[0]} "
                    f"but {other_dtypes[name].name}{other_shapes[name]} in {path}")
    averaged = {}
    for name in names:
        dtype = dtypes[name]
        if not (dtype.is_floating or dtype.is_integer):
            raise UsageError(f"cannot average variable {name} of dtype {dtype.name} "
                             f"in {paths[0]}")
        total = np.zeros(shapes[name], np.float64)
        for path, reader in zip(paths, readers, strict=True):
            total += checkpoint_utils.read_tensor(reader, name, path).astype(np.float64)
        mean = total / len(paths)
        averaged[name] = (mean if dtype.is_floating else np.rint(mean)).astype(
            dtype.as_numpy_dtype)
    return averaged


def main() -> None:
    paths = checkpoint_selection.select_checkpoints(
        FLAGS.prefix, FLAGS.checkpoints, FLAGS.checkpoints_start_end, FLAGS.num_last_checkpoints)
    checkpoint_utils.check_writable(FLAGS.output_path, "output_path")
    print(f"Averaging {len(paths)} checkpoints:")
    for path in paths:
        print("  " + path)
    values = average_checkpoints(paths)
    try:
        output = checkpoint_utils.write_checkpoint(values, FLAGS.output_path, global_step=0)
    except (tf.errors.OpError, ValueError) as e:
        raise UsageError(f"--output_path={FLAGS.output_path}: cannot write "
                         f"{FLAGS.output_path}-0: {checkpoint_utils.describe_error(e)}") from None
    print(f"Wrote {len(values)} averaged variables to {output}")


def run() -> None:
    """Entry point: defines the flags, parses them and runs :func:`main`."""
    cli.run(main, define_flags)


if __name__ == "__main__":
    run()
