"""The summary of an eval.py sweep: one row per checkpoint, and what to average.

Users sweep checkpoints to pick the ones to average; the table puts the
figures side by side and the printed avg_checkpoints.py command saves copying
step numbers by hand.

The range to average: among the swept training checkpoints
(``model.ckpt-N``) sorted by step, the contiguous run of at least two with
the highest mean GAP; ties go to the longer run, then to the later steps.
(The best mean of a run of at least two is always reached by a run of two or
three: a longer run's mean is never above that of its best part.)
"""
import posixpath
import shlex
from typing import List, Mapping, Sequence, Tuple

import checkpoint_utils

COLUMNS = (("GAP", "gap"), ("mAP", "map"), ("Hit@1", "hit_at_one"), ("PERR", "perr"),
           ("loss", "loss"))


def best_index(records: Sequence[Mapping]) -> int:
    """Index of the record with the highest GAP (the first of equals)."""
    return max(range(len(records)), key=lambda i: (records[i]["gap"], -i))


def best_range(gaps: Sequence[float]) -> Tuple[int, int] | None:
    """(first, last) indices of the contiguous run (>= 2) of ``gaps`` with the highest mean;
    ties: the longer run, then the later one.  None for fewer than two values."""
    best, chosen = None, None
    for first in range(len(gaps)):
        for last in range(first + 1, len(gaps)):
            run = gaps[first:last + 1]
            key = (round(sum(run) / len(run), 9), len(run), first)  # round: float ties
            if best is None or key > best:
                best, chosen = key, (first, last)
    return chosen


def table(records: Sequence[Mapping]) -> str:
    """One row per record, by step, the best GAP marked with ``*``."""
    rows = sorted(records, key=lambda r: (r["global_step"], r["checkpoint"]))
    best = best_index(rows)
    header = f"  {'step':>10}" + "".join(f" {name:>8}" for name, _ in COLUMNS) + "  checkpoint"
    lines = [header]
    for i, record in enumerate(rows):
        mark = "*" if i == best else " "
        values = "".join(f" {record[key]:8.5f}" for _, key in COLUMNS)
        lines.append(f"{mark} {record['global_step']:>10}{values}  "
                     f"{posixpath.basename(record['checkpoint'])}")
    return "\n".join(lines)


def _series_steps(records: Sequence[Mapping], train_dir: str) -> List[Tuple[int, float]]:
    """(step, GAP) of the swept training checkpoints ``train_dir/model.ckpt-N``, by step."""
    prefix = posixpath.join(train_dir.rstrip("/"), checkpoint_utils.TRAIN_BASENAME + "-")
    found = {}
    for record in records:
        path = record["checkpoint"]
        if path.startswith(prefix) and path[len(prefix):].isdigit():
            found[int(path[len(prefix):])] = record["gap"]
    return sorted(found.items())


def average_command(train_dir: str, steps: Sequence[int], on_disk: Sequence[int]) -> str:
    """The avg_checkpoints.py command averaging ``steps`` of ``train_dir``: a
    --checkpoints_start_end range when the checkpoints on disk in that range are exactly
    ``steps``, else the list."""
    first, last = steps[0], steps[-1]
    in_range = [s for s in on_disk if first <= s <= last]
    run = train_dir.rstrip("/")
    selection = (f"--checkpoints_start_end={first},{last}" if list(in_range) == list(steps)
                 else "--checkpoints=" + ",".join(map(str, steps)))
    return " ".join([
        "python avg_checkpoints.py",
        shlex.quote(f"--prefix={posixpath.join(run, checkpoint_utils.TRAIN_BASENAME)}"),
        selection,
        shlex.quote(f"--output_path={posixpath.join(run, f'avg_{first}_{last}.ckpt')}")])


def report(records: Sequence[Mapping], train_dir: str, on_disk: Sequence[int]) -> str:
    """The table, then the best contiguous range and its avg_checkpoints.py command."""
    lines = [f"Sweep of {len(records)} checkpoints (* best GAP):", table(records)]
    series = _series_steps(records, train_dir)
    chosen = best_range([gap for _, gap in series])
    if chosen is None:
        lines.append("No range to average: fewer than two swept model.ckpt-N checkpoints.")
        return "\n".join(lines)
    steps = [step for step, _ in series[chosen[0]:chosen[1] + 1]]
    mean = sum(gap for _, gap in series[chosen[0]:chosen[1] + 1]) / len(steps)
    lines.append(f"Best contiguous range by mean GAP: {len(steps)} checkpoints "
                 f"{steps[0]}..{steps[-1]}, mean GAP {mean:.5f}. To average them:")
    lines.append(average_command(train_dir, steps, on_disk))
    return "\n".join(lines)
