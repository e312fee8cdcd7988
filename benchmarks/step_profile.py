"""Where a training step's time goes: one traced step, op time summed by kind.

Kinds: ``matmul`` (every MatMul / BatchMatMul kernel, fused or not; the
products the analytic FLOPs count), ``optimizer`` (the ResourceApply* update
kernels, bound by memory bandwidth: they read and write every variable and
its slots) and ``other`` (elementwise, reductions, gathers, copies).  The
step is traced in a session running one op at a time, so the op times add up
to the step and the shares are exact; the matmul FLOP/s is the analytic
matmul FLOPs of the step over the matmul kernels' time.
"""
from typing import Dict

import tensorflow as tf

_V1 = tf.compat.v1
KINDS = ("matmul", "optimizer", "other")


def op_kind(op_type: str) -> str:
    """The kind an executed kernel's type belongs to."""
    if "MatMul" in op_type:
        return "matmul"
    if op_type.startswith("ResourceApply") or op_type.startswith("ApplyAdam"):
        return "optimizer"
    return "other"


def _kernel_type(node_stats) -> str:
    """The op type in a trace record: timeline labels read 'name = Type(inputs)'."""
    label = node_stats.timeline_label
    return label.split("=", 1)[-1].split("(", 1)[0].strip() if label else node_stats.node_name


def traced_seconds(session: _V1.Session, fetches) -> Dict[str, float]:
    """Seconds of kernel time per kind in one run of ``fetches``."""
    metadata = _V1.RunMetadata()
    session.run(fetches, options=_V1.RunOptions(trace_level=_V1.RunOptions.FULL_TRACE),
                run_metadata=metadata)
    seconds = dict.fromkeys(KINDS, 0.0)
    for device in metadata.step_stats.dev_stats:
        for node in device.node_stats:
            seconds[op_kind(_kernel_type(node))] += node.all_end_rel_micros / 1e6
    return seconds


def breakdown(seconds: Dict[str, float], matmul_flops: float, peak_flops_per_sec: float
              ) -> Dict[str, object]:
    """Shares of the step per kind, the matmuls' own utilisation, and the MFU the
    step would reach if the ``other`` kind took no time at all."""
    total = sum(seconds.values())
    matmul_rate = matmul_flops / seconds["matmul"]
    return {
        "seconds": seconds,
        "share": {kind: value / total for kind, value in seconds.items()},
        "matmul_flops_per_sec": matmul_rate,
        "matmul_utilisation": matmul_rate / peak_flops_per_sec,
        "mfu_without_other_ops": matmul_flops / (seconds["matmul"] + seconds["optimizer"])
        / peak_flops_per_sec,
    }
