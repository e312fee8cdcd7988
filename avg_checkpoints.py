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

import posixpath
import re
from typing import Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import flags

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


def series_prefix(prefix: str) -> str:
    """The prefix a step is appended to: ``RUN/model.ckpt`` -> ``RUN/model.ckpt-``."""
    if not prefix:
        raise UsageError("--prefix is required, e.g. --prefix=RUN/model.ckpt-")
    if prefix.endswith("/") or (tf.io.gfile.isdir(prefix)
                                and not tf.io.gfile.glob(prefix + "*.index")):
        return posixpath.join(prefix.rstrip("/"), checkpoint_utils.TRAIN_BASENAME + "-")
    return prefix if prefix.endswith("-") else prefix + "-"


def numbered_checkpoints(prefix: str) -> List[Tuple[int, str]]:
    """(step, path) of every ``<prefix>*.index`` whose name has one number, by step.

    The step is the single number in the name after the prefix; names with
    several numbers (``model.ckpt-100_copy2``) are skipped.
    """
    found = []
    for index_file in tf.io.gfile.glob(prefix + "*.index"):
        path = index_file[:-len(".index")]
        numbers = re.findall(r"\d+", posixpath.basename(path)[len(posixpath.basename(prefix)):])
        if len(numbers) == 1:
            found.append((int(numbers[0]), path))
    return sorted(found)


def _parse_steps(text: str, flag: str, count: int | None = None) -> List[int]:
    try:
        steps = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--{flag}={text!r} must be comma-separated integer steps") from None
    if not steps or (count is not None and len(steps) != count):
        raise UsageError(f"--{flag}={text!r} must be {count or 'some'} comma-separated steps")
    return steps


def select_checkpoints(prefix: str, checkpoints: str = "", checkpoints_start_end: str = "",
                       num_last_checkpoints: int = 0) -> List[str]:
    """The checkpoint paths the flags ask for (list > range > last N)."""
    series = series_prefix(prefix)
    if checkpoints:
        paths = [f"{series}{step}" for step in _parse_steps(checkpoints, "checkpoints")]
        for path in paths:
            if not checkpoint_utils.checkpoint_exists(path):
                raise UsageError(f"--checkpoints: checkpoint {path} does not exist "
                                 f"(no {path}.index)")
        return paths
    if checkpoints_start_end:
        start, end = _parse_steps(checkpoints_start_end, "checkpoints_start_end", 2)
        paths = [p for step, p in numbered_checkpoints(series) if start <= step <= end]
        if not paths:
            raise UsageError(f"--checkpoints_start_end={checkpoints_start_end}: no checkpoint "
                             f"{series}N with {start} <= N <= {end}")
        return paths
    if num_last_checkpoints < 0:
        raise UsageError(f"--num_last_checkpoints={num_last_checkpoints} must be positive")
    if num_last_checkpoints:
        found = numbered_checkpoints(series)
        if len(found) < num_last_checkpoints:
            raise UsageError(f"--num_last_checkpoints={num_last_checkpoints} but only "
                             f"{len(found)} checkpoints {series}N exist")
        return [p for _, p in found[-num_last_checkpoints:]]
    raise UsageError("give --checkpoints, --checkpoints_start_end or --num_last_checkpoints")


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
    paths = select_checkpoints(FLAGS.prefix, FLAGS.checkpoints, FLAGS.checkpoints_start_end,
                               FLAGS.num_last_checkpoints)
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
