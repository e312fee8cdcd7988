"""Frame pooling blocks shared by the frame-level models (ZOO.md).

Each block turns the frame features of a batch, [B*T, D] with T frames per
video, into one descriptor per video.  Variables are created with
get_variable directly in the caller's variable scope (``video_VLAD``,
``audio_DBOF``, ...) under the names of the 2018 checkpoints, so a block must
be built inside the scope its checkpoint names say.

Graph notes: per-video sums over frames are batched matmuls laid out to give
[B, D, K] directly (no transposes of activations), and the intra + global L2
normalisation of the VLAD-like descriptors is one scaling (see
:func:`intra_and_global_l2`).
"""
import contextlib
import math
from typing import Sequence

import tensorflow as tf

import layers_fp16

_V1 = tf.compat.v1
# tf.nn.l2_normalize's floor on the squared norm.
_L2_EPSILON = 1e-12


def batch_norm_or_biases(inputs: tf.Tensor, add_batch_norm: bool, is_training: bool,
                         bn_scope: str, biases_name: str, biases_stddev: float) -> tf.Tensor:
    """BN(``bn_scope``), or + a normal(0, stddev) ``biases_name`` [depth] variable."""
    if add_batch_norm:
        return layers_fp16.batch_norm(inputs, is_training, bn_scope)
    biases = _V1.get_variable(biases_name, [int(inputs.shape[-1])], dtype=tf.float32,
                              initializer=_V1.random_normal_initializer(stddev=biases_stddev))
    return inputs + biases


def own_scope(name: str | None):
    """variable_scope(name), or no new scope for None."""
    return _V1.variable_scope(name) if name else contextlib.nullcontext()


def normal_weight(name: str, shape: Sequence[int], stddev: float, scope: str | None = None,
                  float16_flag: bool = False) -> tf.Tensor:
    """A normal(0, stddev) weight read as float32, optionally nested in ``scope``."""
    with own_scope(scope):
        return layers_fp16.weight_variable(name, shape, stddev, float16_flag)


def cluster_logits(inputs: tf.Tensor, weights: tf.Tensor, add_batch_norm: bool,
                   is_training: bool) -> tf.Tensor:
    """inputs [N, D] @ weights [D, K], then ``cluster_bn`` or ``cluster_biases``."""
    return batch_norm_or_biases(tf.matmul(inputs, weights), add_batch_norm, is_training,
                                "cluster_bn", "cluster_biases",
                                1 / math.sqrt(int(inputs.shape[-1])))


def l2_normalize(inputs: tf.Tensor, axis: int) -> tf.Tensor:
    """x / sqrt(max(sum x^2, 1e-12)) along ``axis``."""
    return tf.nn.l2_normalize(inputs, axis, epsilon=_L2_EPSILON)


def intra_and_global_l2(descriptors: tf.Tensor) -> tf.Tensor:
    """L2 over D per cluster, flatten [B, D, K] d-major to [B, D*K], L2 again.

    After the first step cluster k has squared norm s_k / max(s_k, eps), so the
    whole vector's squared norm is the sum of those over k: both steps are one
    scaling of the [B, D, K] tensor (the two-step formula, one pass over it less).
    """
    squared = tf.reduce_sum(tf.square(descriptors), axis=1, keepdims=True)  # [B, 1, K]
    intra = tf.math.rsqrt(tf.maximum(squared, _L2_EPSILON))
    total = tf.reduce_sum(squared * tf.square(intra), axis=2, keepdims=True)  # [B, 1, 1]
    scaled = descriptors * (intra * tf.math.rsqrt(tf.maximum(total, _L2_EPSILON)))
    return _flatten(scaled)


def _flatten(descriptors: tf.Tensor) -> tf.Tensor:
    """[B, D, K] -> [B, D*K], index d*K + k."""
    return tf.reshape(descriptors, [-1, int(descriptors.shape[1]) * int(descriptors.shape[2])])


class PoolingBlock:
    """Shared state and the soft cluster assignment of every block.

    ``frames_per_video`` (T) splits the [B*T, D] input back into videos.
    """

    def __init__(self, feature_size: int, frames_per_video: int, cluster_size: int,
                 add_batch_norm: bool, is_training: bool):
        self.feature_size = feature_size
        self.frames_per_video = frames_per_video
        self.cluster_size = cluster_size
        self.add_batch_norm = add_batch_norm
        self.is_training = is_training

    def _per_video(self, rows: tf.Tensor) -> tf.Tensor:
        """[B*T, C] -> [B, T, C]."""
        return tf.reshape(rows, [-1, self.frames_per_video, int(rows.shape[-1])])

    def _normal(self, name: str, shape: Sequence[int], scope: str | None = None) -> tf.Tensor:
        return normal_weight(name, shape, 1 / math.sqrt(self.feature_size), scope)

    def _cluster_weights(self, scope: str | None = None) -> tf.Tensor:
        """``cluster_weights`` [D, K] (in ``scope`` if given)."""
        return self._normal("cluster_weights", [self.feature_size, self.cluster_size], scope)

    def _logits(self, inputs: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
        return cluster_logits(inputs, weights, self.add_batch_norm, self.is_training)

    def _assignments(self, inputs: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
        """Soft assignment of each frame to the clusters, as [B, T, K]."""
        return self._per_video(tf.nn.softmax(self._logits(inputs, weights)))

    def _weighted_sums(self, inputs: tf.Tensor, assignments: tf.Tensor) -> tf.Tensor:
        """sum_t assignments[b, t, k] * inputs[b, t, d], laid out [B, D, K]."""
        return tf.matmul(self._per_video(inputs), assignments, transpose_a=True)

    def forward(self, inputs: tf.Tensor) -> tf.Tensor:
        """[B*T, D] frame rows -> [B, descriptor size]."""
        raise NotImplementedError


class NetVLAD(PoolingBlock):
    """Residuals to learnt centres, summed with soft assignments: [B, D*K]."""

    def forward(self, inputs: tf.Tensor) -> tf.Tensor:
        assignments = self._assignments(inputs, self._cluster_weights("conv2"))
        centres = self._normal("cluster_weights2", [1, self.feature_size, self.cluster_size],
                               scope="cluster_weights2")
        mass = tf.reduce_sum(assignments, axis=1, keepdims=True)  # [B, 1, K]
        # + mass * (-centres): the gradient of a subtraction would negate all of [B, D, K].
        vlad = self._weighted_sums(inputs, assignments) + mass * -centres
        return intra_and_global_l2(vlad)


class LightVLAD(PoolingBlock):
    """NetVLAD without the centre term (no ``conv2``, no ``cluster_weights2``)."""

    def forward(self, inputs: tf.Tensor) -> tf.Tensor:
        assignments = self._assignments(inputs, self._cluster_weights())
        return intra_and_global_l2(self._weighted_sums(inputs, assignments))


class NetVLAGD(PoolingBlock):
    """LightVLAD with a learnt sigmoid gate per (cluster, feature): ``gate_weights``."""

    def forward(self, inputs: tf.Tensor) -> tf.Tensor:
        assignments = self._assignments(inputs, self._cluster_weights())
        gates = self._normal("gate_weights", [1, self.cluster_size, self.feature_size])
        # The gate is stored [1, K, D]; transposing it (not the activations) gives [B, D, K].
        gated = self._weighted_sums(inputs, assignments) * tf.transpose(
            tf.sigmoid(gates), [0, 2, 1])
        return intra_and_global_l2(gated)


class SoftDBoF(PoolingBlock):
    """L2(sum_t assignments) [B, K], plus L2(max_t assignments) with ``max_pool``."""

    def __init__(self, feature_size: int, frames_per_video: int, cluster_size: int,
                 max_pool: bool, add_batch_norm: bool, is_training: bool):
        super().__init__(feature_size, frames_per_video, cluster_size, add_batch_norm,
                         is_training)
        self.max_pool = max_pool

    def forward(self, inputs: tf.Tensor) -> tf.Tensor:
        assignments = self._assignments(inputs, self._cluster_weights())
        pooled = l2_normalize(tf.reduce_sum(assignments, axis=1), 1)
        if self.max_pool:
            pooled = tf.concat([pooled, l2_normalize(tf.reduce_max(assignments, axis=1), 1)], 1)
        return pooled


class GatedDBoF(PoolingBlock):
    """sum_t assignments, gated by a projection of their max over frames: [B, K]."""

    def forward(self, inputs: tf.Tensor) -> tf.Tensor:
        assignments = self._assignments(inputs, self._cluster_weights())
        summed = tf.reduce_sum(assignments, axis=1)
        peaks = l2_normalize(tf.reduce_max(assignments, axis=1), 1)
        dim_red = self._normal("dim_red", [self.cluster_size, self.feature_size])
        gate_weights = self._normal("cluster_weights_2", [self.feature_size, self.cluster_size])
        gates = batch_norm_or_biases(
            tf.matmul(tf.matmul(peaks, dim_red), gate_weights), self.add_batch_norm,
            self.is_training, "cluster_bn_2", "cluster_biases_2",
            1 / math.sqrt(self.feature_size))
        return l2_normalize(tf.sigmoid(gates) * summed, 1)


class DBoF(PoolingBlock):
    """Per-frame cluster activations, [L2(mean_t), L2(max_t)]: [B, 2K'].

    ``activation`` 'relu' applies relu6 (K' = K); 'glu' gates the first half of
    the K units with the sigmoid of the second half (K' = K/2).  The 2018 code
    meant to do this but never did (it compared a tensor with the strings).
    """

    ACTIVATIONS = ("relu", "glu")

    def __init__(self, feature_size: int, frames_per_video: int, cluster_size: int,
                 activation: str, add_batch_norm: bool, is_training: bool):
        super().__init__(feature_size, frames_per_video, cluster_size, add_batch_norm,
                         is_training)
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"DBoF activation must be one of {self.ACTIVATIONS}, "
                             f"got {activation!r}")
        if activation == "glu" and cluster_size % 2:
            raise ValueError(f"DBoF glu needs an even cluster size, got {cluster_size}")
        self.activation = activation

    def forward(self, inputs: tf.Tensor) -> tf.Tensor:
        logits = self._logits(inputs, self._cluster_weights())
        if self.activation == "glu":
            values, gates = tf.split(logits, 2, axis=1)
            units = values * tf.sigmoid(gates)
        else:
            units = tf.nn.relu6(logits)
        units = self._per_video(units)
        return tf.concat([l2_normalize(tf.reduce_mean(units, axis=1), 1),
                          l2_normalize(tf.reduce_max(units, axis=1), 1)], 1)


class NetFV(PoolingBlock):
    """Fisher-vector-like first and second order statistics: [B, 2*D*K].

    With ``couple_weights`` the means are ``coupling_factor * cluster_weights``;
    otherwise a ``cluster_weights2`` [1, D, K] variable.
    """

    def __init__(self, feature_size: int, frames_per_video: int, cluster_size: int,
                 add_batch_norm: bool, is_training: bool, couple_weights: bool,
                 coupling_factor: float):
        super().__init__(feature_size, frames_per_video, cluster_size, add_batch_norm,
                         is_training)
        self.couple_weights = couple_weights
        self.coupling_factor = coupling_factor

    def forward(self, inputs: tf.Tensor) -> tf.Tensor:
        shape = [self.feature_size, self.cluster_size]
        weights = self._cluster_weights()
        covar = _V1.get_variable("covar_weights", shape, dtype=tf.float32,
                                 initializer=_V1.random_normal_initializer(
                                     mean=1.0, stddev=1 / math.sqrt(self.feature_size)))
        sigma = tf.square(covar) + 1e-6
        assignments = self._assignments(inputs, weights)
        if self.couple_weights:
            means = self.coupling_factor * weights
        else:
            means = self._normal("cluster_weights2", [1] + shape)
        mass = tf.reduce_sum(assignments, axis=1, keepdims=True)  # [B, 1, K]
        first = self._weighted_sums(inputs, assignments)
        second = self._weighted_sums(tf.square(inputs), assignments)
        second = (mass * tf.square(means) + second - 2.0 * first * means) / tf.square(sigma) - mass
        first = (first - mass * means) / sigma
        return tf.concat([intra_and_global_l2(first), l2_normalize(_flatten(second), 1)], 1)


class NeXtVLAD:
    """NeXtVLAD (Lin, Xiao, Fan 2018): frames expanded by ``expansion`` (lambda), split
    into ``groups`` (G) of width lambda*D/G, each group softly assigned to K clusters
    and weighted by a per-frame, per-group sigmoid attention; the residuals are summed
    over frames and groups, L2-normalised per cluster and batch-normalised:
    [B, K * lambda*D/G].  Far fewer parameters than NetVLAD's D*K at the same K.

    Frames are [B, T, D] (all T, no sampling); ``mask`` [B, T] zeroes padding.
    """

    def __init__(self, feature_size: int, cluster_size: int, expansion: int, groups: int,
                 is_training: bool, float16_flag: bool = False):
        self.width = expansion * feature_size
        if self.width % groups:
            raise ValueError(f"NeXtVLAD: expansion * {feature_size} = {self.width} is not "
                             f"divisible into {groups} groups")
        self.feature_size = feature_size
        self.cluster_size = cluster_size
        self.groups = groups
        self.is_training = is_training
        self.float16_flag = float16_flag

    @property
    def output_size(self) -> int:
        return self.cluster_size * self.width // self.groups

    def _dense(self, rows: tf.Tensor, units: int, scope: str, activation=None,
               float16_flag: bool = False) -> tf.Tensor:
        """slim.fully_connected with a variance-scaling kernel and zero biases."""
        stddev = layers_fp16.variance_scaling_stddev([int(rows.shape[-1]), units])
        return layers_fp16.fully_connected(
            rows, units, activation_fn=activation, scope=scope, float16_flag=float16_flag,
            weights_initializer=_V1.truncated_normal_initializer(stddev=stddev))

    def forward(self, frames: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        """[B, T, D] frames, [B, T] mask -> [B, K * lambda*D/G]."""
        frames_per_video, group_width = int(frames.shape[1]), self.width // self.groups
        slots = frames_per_video * self.groups  # (frame, group) pairs, index t*G + g
        expanded = self._dense(tf.reshape(frames, [-1, self.feature_size]), self.width,
                               "fully_connected", float16_flag=self.float16_flag)
        attention = self._dense(expanded, self.groups, "fully_connected_1", tf.sigmoid)
        attention = tf.reshape(tf.reshape(attention, [-1, frames_per_video, self.groups])
                               * mask[:, :, None], [-1, slots, 1])
        cluster_weights = layers_fp16.variance_scaling_weight(
            "cluster_weights", [self.width, self.groups * self.cluster_size], self.float16_flag)
        logits = layers_fp16.batch_norm(tf.matmul(expanded, cluster_weights), self.is_training,
                                        "cluster_bn")
        assignments = tf.nn.softmax(tf.reshape(logits, [-1, slots, self.cluster_size])) * attention
        centres = layers_fp16.variance_scaling_weight("cluster_weights2",
                                          [1, group_width, self.cluster_size])
        mass = tf.reduce_sum(assignments, axis=1, keepdims=True)  # [B, 1, K]
        vlad = tf.matmul(tf.reshape(expanded, [-1, slots, group_width]), assignments,
                         transpose_a=True) + mass * -centres  # [B, lambda*D/G, K]
        vlad = _flatten(l2_normalize(vlad, 1))
        return layers_fp16.batch_norm(vlad, self.is_training, "vlad_bn")
