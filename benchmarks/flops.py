"""Analytic matmul FLOPs of one NetVLADModelLF training example (SPEC 4.1).

Model FLOP utilisation divides these FLOPs, times the measured examples/sec,
by the FLOP/s of a large dense matmul: only matrix products count (2*m*n*k
each), as is usual for MFU.  Backward costs two products per forward product
(input and weight gradients), except that nothing needs the gradient of the
sampled frames themselves: the two products that read them (the cluster
assignment x @ W and the aggregation x^T @ a, per modality) need only one.
"""
from dataclasses import dataclass
from typing import Dict

VIDEO_FEATURES, AUDIO_FEATURES = 1024, 128


@dataclass(frozen=True)
class NetVLADShape:
    """The hyperparameters that set the model's matmul sizes."""

    frames: int          # --iterations: frames sampled per video
    cluster_size: int    # K (audio uses K // 2)
    hidden_size: int     # H
    num_classes: int     # V
    mixtures: int = 5    # M (--moe_num_mixtures)
    gating: bool = True
    prob_gating: bool = True

    @property
    def vlad_dim(self) -> int:
        return VIDEO_FEATURES * self.cluster_size + AUDIO_FEATURES * (self.cluster_size // 2)


def forward_flops(shape: NetVLADShape) -> Dict[str, int]:
    """Forward matmul FLOPs per example, by layer."""
    t, k, h, v, m = (shape.frames, shape.cluster_size, shape.hidden_size, shape.num_classes,
                     shape.mixtures)
    layers = {
        "video_assignment": 2 * t * VIDEO_FEATURES * k,
        "audio_assignment": 2 * t * AUDIO_FEATURES * (k // 2),
        "video_aggregation": 2 * t * VIDEO_FEATURES * k,
        "audio_aggregation": 2 * t * AUDIO_FEATURES * (k // 2),
        "hidden1": 2 * shape.vlad_dim * h,
        "hidden2": 2 * h * 2 * h,
        "moe_gates": 2 * 2 * h * v * (m + 1),
        "moe_experts": 2 * 2 * h * v * m,
    }
    if shape.gating:
        layers["context_gating"] = 2 * (2 * h) ** 2
    if shape.prob_gating:
        layers["probability_gating"] = 2 * v * v
    return layers


# Products whose input is the (sampled, normalised) frames: no input gradient.
_FIRST_LAYERS = ("video_assignment", "audio_assignment", "video_aggregation",
                 "audio_aggregation")


def training_flops(shape: NetVLADShape) -> int:
    """Forward + backward matmul FLOPs of one training example."""
    forward = forward_flops(shape)
    first = sum(forward[name] for name in _FIRST_LAYERS)
    return 3 * sum(forward.values()) - first


def inference_flops(shape: NetVLADShape) -> int:
    """Forward matmul FLOPs of one example."""
    return sum(forward_flops(shape).values())
