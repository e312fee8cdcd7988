"""benchmarks/step_profile.py: kernel kinds and the breakdown arithmetic."""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import pytest  # noqa: E402

from benchmarks import step_profile  # noqa: E402


@pytest.mark.parametrize("op_type, kind", [
    ("MatMul", "matmul"), ("_MklMatMul", "matmul"), ("_MklNativeFusedMatMul", "matmul"),
    ("BatchMatMulV2", "matmul"), ("_MklBatchMatMulV2", "matmul"),
    ("ResourceApplyAdam", "optimizer"), ("ResourceApplyGradientDescent", "optimizer"),
    ("Mul", "other"), ("GatherV2", "other"), ("L2Loss", "other"),
])
def test_op_kind(op_type, kind):
    assert step_profile.op_kind(op_type) == kind


def test_breakdown_arithmetic():
    seconds = {"matmul": 0.6, "optimizer": 0.1, "other": 0.3}
    parts = step_profile.breakdown(seconds, matmul_flops=120e9, peak_flops_per_sec=250e9)
    assert parts["share"] == pytest.approx({"matmul": 0.6, "optimizer": 0.1, "other": 0.3})
    assert parts["matmul_flops_per_sec"] == pytest.approx(200e9)
    assert parts["matmul_utilisation"] == pytest.approx(0.8)
    assert parts["mfu_without_other_ops"] == pytest.approx(120e9 / 0.7 / 250e9)
