"""Slim-compatible graph layers (no slim, no Keras), with float16 weight storage.

Variable names match what ``tf.contrib.slim`` wrote in 2018 so old checkpoints
load: ``<scope>/weights``, ``<scope>/biases`` for fully_connected and
``<scope>/{beta,gamma,moving_mean,moving_variance}`` for batch_norm.
"""
import math
from typing import Callable, Sequence

import tensorflow as tf

import core_fp16

_V1 = tf.compat.v1


def l2_regularizer(scale: float) -> Callable[[tf.Tensor], tf.Tensor | None]:
    """slim.l2_regularizer: ``scale * sum(w^2) / 2`` in float32 (scale 0: no loss)."""
    if scale < 0:
        raise ValueError(f"L2 regularisation scale must be >= 0, got {scale}")
    if scale == 0:
        return lambda _: None

    def l2(weights: tf.Tensor) -> tf.Tensor:
        return tf.multiply(float(scale), tf.nn.l2_loss(tf.cast(weights, tf.float32)),
                           name="l2_regularizer")
    return l2


def fully_connected(inputs: tf.Tensor, num_outputs: int,
                    activation_fn: Callable | None = tf.nn.relu,
                    weights_initializer=None,
                    weights_regularizer: Callable | None = None,
                    biases_initializer=_V1.zeros_initializer(),
                    scope: str | None = None,
                    float16_flag: bool = False) -> tf.Tensor:
    """slim.fully_connected: glorot-uniform ``weights``, zero ``biases`` (None: none).

    Without ``scope`` the layer is named ``fully_connected``, then
    ``fully_connected_1``, ... per graph, as slim did.
    """
    with _V1.variable_scope(scope, default_name="fully_connected", values=[inputs]):
        return core_fp16.dense(inputs, num_outputs, activation=activation_fn,
                               kernel_name="weights", bias_name="biases",
                               kernel_initializer=weights_initializer,
                               bias_initializer=biases_initializer,
                               kernel_regularizer=weights_regularizer,
                               float16_flag=float16_flag)


def weight_variable(name: str, shape: Sequence[int], stddev: float,
                    float16_flag: bool = False,
                    regularizer: Callable | None = None, truncated: bool = False) -> tf.Tensor:
    """A normal(0, stddev) (or truncated normal) weight in the current scope, as float32."""
    initializer = (_V1.truncated_normal_initializer if truncated
                   else _V1.random_normal_initializer)(stddev=stddev)
    return core_fp16.get_weight(name, shape, initializer, float16_flag, regularizer)


def variance_scaling_stddev(shape: Sequence[int]) -> float:
    """sqrt(1.3 * 2 / fan_in), fan_in = product of all but the last dim: the stddev of
    slim.variance_scaling_initializer() (factor 2, FAN_IN, truncated normal)."""
    return math.sqrt(2.6 / math.prod(int(d) for d in shape[:-1]))


def variance_scaling_weight(name: str, shape: Sequence[int],
                            float16_flag: bool = False) -> tf.Tensor:
    """A weight initialised as slim.variance_scaling_initializer() (NeXtVLAD's)."""
    return weight_variable(name, shape, variance_scaling_stddev(shape), float16_flag,
                           truncated=True)


def _moving_stat(name: str, depth: int, initializer) -> tf.Variable:
    return _V1.get_variable(
        name, [depth], dtype=tf.float32, initializer=initializer, trainable=False,
        collections=[_V1.GraphKeys.GLOBAL_VARIABLES, _V1.GraphKeys.MOVING_AVERAGE_VARIABLES])


def batch_norm(inputs: tf.Tensor, is_training: bool, scope: str, center: bool = True,
               scale: bool = True, epsilon: float = 1e-3, decay: float = 0.999) -> tf.Tensor:
    """slim.batch_norm (fused rank-2 semantics) over all axes but the last.

    Training normalises with the batch mean and biased variance and adds to
    UPDATE_OPS ``m <- m - (1 - decay) * (m - stat)`` (no zero-debiasing), where
    the variance statistic is the unbiased one, n / (n - 1) times the biased
    variance over the n rows.  Otherwise the moving statistics are used.
    ``is_training`` is a Python bool.
    """
    rank = inputs.shape.rank
    if rank is None or rank < 2:
        raise ValueError(f"batch_norm needs a rank >= 2 input, got shape {inputs.shape}")
    depth = int(inputs.shape[-1])
    with _V1.variable_scope(scope, values=[inputs]):
        beta = (_V1.get_variable("beta", [depth], dtype=tf.float32,
                                 initializer=_V1.zeros_initializer()) if center else None)
        gamma = (_V1.get_variable("gamma", [depth], dtype=tf.float32,
                                  initializer=_V1.ones_initializer()) if scale else None)
        moving_mean = _moving_stat("moving_mean", depth, _V1.zeros_initializer())
        moving_variance = _moving_stat("moving_variance", depth, _V1.ones_initializer())
        if is_training:
            mean, variance = tf.nn.moments(inputs, axes=list(range(rank - 1)))
            rows = tf.cast(tf.size(inputs, out_type=tf.int64) // depth, tf.float32)
            unbiased_variance = variance * (rows / tf.maximum(rows - 1.0, 1.0))
            for var, stat in ((moving_mean, mean), (moving_variance, unbiased_variance)):
                update = var.assign_sub((var - stat) * (1.0 - decay), read_value=False)
                _V1.add_to_collection(_V1.GraphKeys.UPDATE_OPS, update)
        else:
            mean, variance = moving_mean, moving_variance
        return tf.nn.batch_normalization(inputs, mean, variance, beta, gamma, epsilon)


def context_gating(inputs: tf.Tensor, is_training: bool, add_batch_norm: bool = True,
                   weights_name: str = "gating_weights", weights_in_own_scope: bool = True,
                   bn_scope: str = "gating_bn", biases_name: str = "gating_biases",
                   remove_diag: bool = False) -> tf.Tensor:
    """inputs * sigmoid(BN(inputs @ W)), W [d, d] ~ normal(0, 1/sqrt(d)).

    ``weights_in_own_scope`` names W ``<weights_name>/<weights_name>`` (NetVLAD)
    rather than ``<weights_name>`` (NetFV).  Without batch norm a
    ``biases_name`` [d] bias (normal(0, 1/sqrt(d))) is added instead.
    ``remove_diag`` subtracts each unit's own contribution diag(W) * inputs.
    """
    dim = int(inputs.shape[-1])
    stddev = 1 / math.sqrt(dim)
    if weights_in_own_scope:
        with _V1.variable_scope(weights_name):
            weights = weight_variable(weights_name, [dim, dim], stddev)
    else:
        weights = weight_variable(weights_name, [dim, dim], stddev)
    gates = core_fp16.matmul_last_axis(inputs, weights)
    if remove_diag:
        gates -= tf.linalg.diag_part(weights) * inputs
    if add_batch_norm:
        gates = batch_norm(gates, is_training, bn_scope)
    else:
        gates += _V1.get_variable(biases_name, [dim], dtype=tf.float32,
                                  initializer=_V1.random_normal_initializer(stddev=stddev))
    return inputs * tf.sigmoid(gates)


def se_context_gating(inputs: tf.Tensor, reduction: int, is_training: bool,
                      float16_flag: bool = False) -> tf.Tensor:
    """NeXtVLAD's squeeze-and-excitation gating: inputs * sigmoid(relu(BN(inputs @ W1)) @ W2),
    W1 ``gating_weights_1`` [d, d/r], BN ``gating_bn``, W2 ``gating_weights_2`` [d/r, d];
    two thin matrices instead of context gating's d x d."""
    dim = int(inputs.shape[-1])
    if dim // reduction < 1:
        raise ValueError(f"gating reduction {reduction} leaves no units of {dim}")
    squeeze = variance_scaling_weight("gating_weights_1", [dim, dim // reduction],
                                      float16_flag)
    gates = tf.nn.relu(batch_norm(core_fp16.matmul_last_axis(inputs, squeeze), is_training,
                                  "gating_bn"))
    excite = variance_scaling_weight("gating_weights_2", [dim // reduction, dim], float16_flag)
    return inputs * tf.sigmoid(core_fp16.matmul_last_axis(gates, excite))
