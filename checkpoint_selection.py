"""Which checkpoints a command names: the selection syntax of avg_checkpoints.py.

``--checkpoints`` (steps, each joined to the prefix) wins over
``--checkpoints_start_end`` (every checkpoint under the prefix whose step is
in the range) which wins over ``--num_last_checkpoints`` (the N highest
steps).  avg_checkpoints.py and eval.py's sweeps share it, so the two read
the same flags the same way.
"""
import posixpath
import re
from typing import List, Tuple

import tensorflow as tf

import checkpoint_utils
from errors import UsageError


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
