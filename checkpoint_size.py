"""How many bytes a checkpoint's variables take, per ensemble member and block.

    python checkpoint_size.py --checkpoint=RUN/inference_model
    python checkpoint_size.py $ENS       # the model the flags describe, before training it

The 2018 competition capped submissions at 1 GB, which is why the ensemble
stores its large matrices in float16.  The limit is taken as 1 GiB (2**30
bytes): the 7th-place four-model float16 ensemble (1,069,237,572 bytes) was
built to fit it, and would not fit 1e9.  The report shows the
bytes as stored and what the same variables would take all in float32 (and
all in float16), and warns when the total is over the limit
(``--fail_over_limit`` makes that an error).

Without ``--checkpoint`` the report is of the inference graph that
``--train_dir``'s model_flags.json (when --train_dir is given) or the model
flags describe (the flags of train.py: --model, --ensemble_num, the repeated
--netvlad_cluster_size/--netvlad_hidden_size, --float16_flag, --num_classes,
...), built without data or weights, which is the size eval.py's re-save of
that model will have.  ``--checkpoint`` is the shared flag of eval.py, here a
checkpoint path used verbatim (``.index`` may be added).
"""
import quiet_startup  # noqa: F401  (first: before TensorFlow is imported)

from typing import Any, Dict, Mapping, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import flags

import app_flags
import checkpoint_utils
import cli
import model_graph
from errors import UsageError
from model_config import ModelConfig

FLAGS = flags.FLAGS

LIMIT_BYTES = 2 ** 30
OPTIMIZER_BLOCK = "optimizer state"


def define_flags() -> None:
    """This tool's own flag, defined only when it runs (--checkpoint is app_flags')."""
    flags.DEFINE_bool("fail_over_limit", False, "Exit non-zero when over the 1 GiB limit.")


def group_of(name: str, is_model: bool) -> Tuple[int | None, str]:
    """(member, block) of a variable: ``tower/model3/video_VLAD/...`` -> (3, video_VLAD).

    Batch-norm blocks (``hidden1_bn``, ``gating_bn``, ...) count together as
    ``BN``; optimizer slots and beta powers as ``optimizer state``; variables
    outside ``tower/`` (global_step) have no member.
    """
    member = checkpoint_utils.ensemble_member(name)
    index, inner = member if member else (None, name)
    if not is_model and name != checkpoint_utils.GLOBAL_STEP:
        return index, OPTIMIZER_BLOCK
    block = inner.split("/", 1)[0]
    return index, "BN" if block.endswith("_bn") else block


def _nbytes(shape: Sequence[int], dtype: tf.DType) -> int:
    return int(np.prod(shape, dtype=np.int64)) * dtype.size


def size_report_from_shapes(variables: Mapping[str, Tuple[Sequence[int], Any]]) -> Dict[str, Any]:
    """Size report of ``name -> (shape, dtype)`` (dtype as tf.DType, numpy or str).

    Returns ``groups`` (a list of {member, block, variables, bytes,
    float32_bytes, float16_bytes}), ``members`` (model bytes per member,
    optimizer state left out), ``total_bytes`` (as stored), ``float32_bytes``
    / ``float16_bytes`` (every floating variable in that dtype, the others as
    stored), ``optimizer_bytes``, ``limit_bytes`` and ``over_limit``.
    """
    everything = set(variables)
    groups: Dict[Tuple[int | None, str], Dict[str, Any]] = {}
    for name, (shape, dtype) in variables.items():
        dtype = tf.as_dtype(dtype)
        shape = [int(d) for d in shape]
        key = group_of(name, checkpoint_utils.is_model_variable(name, everything))
        stored = _nbytes(shape, dtype)
        group = groups.setdefault(key, {"member": key[0], "block": key[1], "variables": 0,
                                        "bytes": 0, "float32_bytes": 0, "float16_bytes": 0})
        group["variables"] += 1
        group["bytes"] += stored
        for width in ("float32", "float16"):
            as_width = _nbytes(shape, tf.as_dtype(width)) if dtype.is_floating else stored
            group[width + "_bytes"] += as_width
    ordered = sorted(groups.values(),
                     key=lambda g: (g["member"] is None, g["member"] or 0, g["block"]))
    members: Dict[int, int] = {}
    for group in ordered:
        if group["member"] is not None and group["block"] != OPTIMIZER_BLOCK:
            members[group["member"]] = members.get(group["member"], 0) + group["bytes"]
    total = sum(g["bytes"] for g in ordered)
    return {
        "groups": ordered,
        "members": members,
        "total_bytes": total,
        "float32_bytes": sum(g["float32_bytes"] for g in ordered),
        "float16_bytes": sum(g["float16_bytes"] for g in ordered),
        "optimizer_bytes": sum(g["bytes"] for g in ordered if g["block"] == OPTIMIZER_BLOCK),
        "limit_bytes": LIMIT_BYTES,
        "over_limit": total > LIMIT_BYTES,
    }


def size_report(checkpoint_path: str) -> Dict[str, Any]:
    """:func:`size_report_from_shapes` of a checkpoint's variables, plus ``checkpoint``."""
    reader = checkpoint_utils.open_checkpoint(checkpoint_utils.strip_checkpoint_suffix(
        checkpoint_path))
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    report = size_report_from_shapes({n: (shapes[n], dtypes[n]) for n in shapes})
    report["checkpoint"] = checkpoint_path
    return report


def size_report_from_config(config: ModelConfig) -> Dict[str, Any]:
    """:func:`size_report_from_shapes` of the inference graph of ``config``."""
    graph = model_graph.build_inference_graph(config)
    with graph.as_default():
        variables = tf.compat.v1.global_variables()
    return size_report_from_shapes(
        {v.op.name: (v.shape.as_list(), v.dtype.base_dtype) for v in variables})


def describe_model(config: ModelConfig) -> str:
    """One line naming the model of ``config``, for the report's header."""
    members = config.members
    model = config.model
    if len(members) > 1:  # the repeated flags set each member's sizes
        sizes = ", ".join(f"c{m.settings.netvlad_cluster_size}h{m.settings.netvlad_hidden_size}"
                          for m in members)
        model = f"{model} x{len(members)} ({sizes})"
    storages = [m.settings.storage for m in members]
    if len(set(storages)) > 1:
        storage = f"member_storage={','.join(storages)}"
    elif storages[0] == "int8":
        storage = "quantize_int8=True"
    else:
        storage = f"float16_flag={members[0].settings.float16_flag}"
    return f"{model}, {storage}, num_classes={config.num_classes}"


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def format_report(report: Mapping[str, Any]) -> str:
    """The report as a table, ending with the verdict on the 1 GiB limit."""
    lines = [f"{'member':>6}  {'block':<24} {'vars':>5} {'bytes':>15} {'as float32':>15}"]
    for g in report["groups"]:
        member = "-" if g["member"] is None else str(g["member"])
        lines.append(f"{member:>6}  {g['block']:<24} {g['variables']:>5} {g['bytes']:>15,} "
                     f"{g['float32_bytes']:>15,}")
    for member, size in report["members"].items():
        lines.append(f"model {member}: {size:,} bytes ({_mb(size)})")
    if report["optimizer_bytes"]:
        lines.append(f"optimizer state (not needed for inference): "
                     f"{report['optimizer_bytes']:,} bytes")
    total = report["total_bytes"]
    lines.append(f"total as stored: {total:,} bytes ({_mb(total)}); all float32: "
                 f"{report['float32_bytes']:,} bytes ({_mb(report['float32_bytes'])}); "
                 f"all float16: {report['float16_bytes']:,} bytes "
                 f"({_mb(report['float16_bytes'])})")
    if report["over_limit"]:
        lines.append(f"WARNING: {total:,} bytes is OVER the 1 GiB limit "
                     f"({report['limit_bytes']:,} bytes)")
    else:
        lines.append(f"OK: under the 1 GiB limit ({report['limit_bytes']:,} bytes)")
    return "\n".join(lines)


def main() -> None:
    checkpoint = app_flags.value("checkpoint")
    if checkpoint:
        report = size_report(checkpoint)
        what = f"--checkpoint={checkpoint}"
        print(f"checkpoint: {checkpoint}")
    else:
        try:
            config = app_flags.tool_model_config()
            model_graph.validate(config)
            report = size_report_from_config(config)
        except UsageError as e:
            raise UsageError(f"{e} (without --checkpoint, checkpoint_size.py measures the "
                             "model of --train_dir's model_flags.json or of the model flags)"
                             ) from None
        what = "the model of the flags"
        print(f"model flags: {describe_model(config)}")
    print(format_report(report))
    if report["over_limit"] and FLAGS.fail_over_limit:
        raise UsageError(f"{what} takes {report['total_bytes']:,} bytes, "
                         f"over the 1 GiB limit (--fail_over_limit)")


def run() -> None:
    """Entry point: defines the flags, parses them and runs :func:`main`."""
    cli.run(main, define_flags)


if __name__ == "__main__":
    run()
