"""Dense layers whose kernel may be stored in float16.

The 2018 float16 ensemble stored its largest matrices in half precision to
halve checkpoint and GPU memory size while computing in float32.  This module
holds the shared pieces: creating such a weight (``get_weight``), applying a
kernel to rank-2 or higher inputs (``dense``) and a TF1 ``core.Dense``-like
layer (``Dense``) with the ``kernel``/``bias`` variable names.
"""
import contextlib
import threading
from typing import Callable, Iterator, Sequence, Tuple

import numpy as np
import tensorflow as tf

Regularizer = Callable[[tf.Tensor], tf.Tensor | None]
Initializer = Callable[..., tf.Tensor]
# An int8 weight W is stored as W (int8) and W + INT8_SCALE_SUFFIX (float32, one per column).
INT8_SCALE_SUFFIX = "_int8_scale"
_INT8_MAX = 127
_STORAGE = threading.local()


@contextlib.contextmanager
def int8_storage(enabled: bool) -> Iterator[None]:
    """Within it, weights asked for compact storage (``float16_flag``) are stored as int8
    plus per-column float32 scales instead (a member built with --quantize_int8)."""
    before = getattr(_STORAGE, "int8", False)
    _STORAGE.int8 = enabled
    try:
        yield
    finally:
        _STORAGE.int8 = before


def quantize_int8(weights: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(int8 values, float32 scales): scale = max |w| of each column / 127, values rounded
    to nearest, so each dequantised weight is within half a scale of w."""
    columns = np.asarray(weights, np.float32).reshape(-1, weights.shape[-1])
    peak = np.abs(columns).max(axis=0)
    scales = np.where(peak > 0, peak / _INT8_MAX, 1.0).astype(np.float32)
    values = np.clip(np.rint(columns / scales), -_INT8_MAX, _INT8_MAX).astype(np.int8)
    return values.reshape(weights.shape), scales


def _int8_weight(name: str, shape: Sequence[int]) -> Tuple[tf.Variable, tf.Tensor]:
    """An int8 weight and its dequantised float32 value; never trained (zero until
    ensemble_fill fills it from a float32 checkpoint)."""
    var = tf.compat.v1.get_variable(name, shape, dtype=tf.int8, trainable=False,
                                    initializer=tf.compat.v1.zeros_initializer())
    scales = tf.compat.v1.get_variable(name + INT8_SCALE_SUFFIX, [shape[-1]], dtype=tf.float32,
                                       trainable=False,
                                       initializer=tf.compat.v1.ones_initializer())
    return var, tf.cast(var, tf.float32) * scales


def get_weight(name: str, shape: Sequence[int], initializer: Initializer,
               float16_flag: bool = False,
               regularizer: Regularizer | None = None) -> tf.Tensor:
    """A get_variable weight, float16-stored under ``float16_flag`` (int8 within
    :func:`int8_storage`), read as float32.

    The regularisation loss is computed on the float32 value, is float32, and
    is added to REGULARIZATION_LOSSES only when the variable is created (not
    when a reusing scope, e.g. a second tower, fetches it again).
    """
    existing = {id(v) for v in tf.compat.v1.global_variables()}
    if float16_flag and getattr(_STORAGE, "int8", False):
        var, value = _int8_weight(name, shape)
        regularizer = None  # a constant: nothing to regularise
    else:
        var = tf.compat.v1.get_variable(
            name, shape, dtype=tf.float16 if float16_flag else tf.float32,
            initializer=initializer)
        value = tf.cast(var, tf.float32)
    if regularizer is not None and id(var) not in existing:
        with tf.name_scope(var.op.name + "/Regularizer/"):
            loss = regularizer(value)
        if loss is not None:
            tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.REGULARIZATION_LOSSES,
                                           tf.cast(loss, tf.float32))
    return value


_INPUT_GRAD_FROM_KERNEL = "MatMulInputGradFromKernel"


@tf.RegisterGradient(_INPUT_GRAD_FROM_KERNEL)
def _matmul_grad_kernel_first(op: tf.Operation, grad: tf.Tensor):
    """MatMul's gradients, the input's as (kernel @ grad^T)^T rather than grad @ kernel^T.

    With a small batch and a large kernel, oneDNN runs the product with the
    kernel as the left operand 5-20% faster, and transposing back the
    [batch, inputs] result costs less than that.  Same values to float32 rounding.
    """
    inputs, kernel = op.inputs
    input_grad = tf.transpose(tf.matmul(kernel, grad, transpose_b=True))
    return input_grad, tf.matmul(inputs, grad, transpose_a=True)


def matmul_last_axis(inputs: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """inputs [..., n] @ kernel [n, m] -> [..., m], in the inputs' dtype."""
    kernel = tf.cast(kernel, inputs.dtype)
    if inputs.shape.rank == 2:
        graph = tf.compat.v1.get_default_graph()
        with graph.gradient_override_map({"MatMul": _INPUT_GRAD_FROM_KERNEL}):
            return tf.matmul(inputs, kernel)
    return tf.tensordot(inputs, kernel, [[inputs.shape.rank - 1], [0]])


def dense(inputs: tf.Tensor, units: int, *, activation: Callable | None = None,
          kernel_name: str, bias_name: str,
          kernel_initializer: Initializer | None = None,
          bias_initializer: Initializer | None = None,
          kernel_regularizer: Regularizer | None = None,
          float16_flag: bool = False) -> tf.Tensor:
    """activation(inputs @ kernel + bias) with variables in the current scope.

    ``bias_initializer=None`` means no bias.  The bias is always float32.
    """
    if inputs.shape.rank is None or inputs.shape.rank < 2:
        raise ValueError(f"dense layer needs a rank >= 2 input, got shape {inputs.shape}")
    kernel = get_weight(kernel_name, [int(inputs.shape[-1]), units],
                        kernel_initializer or tf.compat.v1.glorot_uniform_initializer(),
                        float16_flag, kernel_regularizer)
    outputs = matmul_last_axis(inputs, kernel)
    if bias_initializer is not None:
        bias = tf.compat.v1.get_variable(bias_name, [units], dtype=tf.float32,
                                         initializer=bias_initializer)
        outputs = tf.nn.bias_add(outputs, tf.cast(bias, outputs.dtype))
    return activation(outputs) if activation is not None else outputs


class Dense:
    """TF1 ``core.Dense`` look-alike: ``<name>/kernel`` and ``<name>/bias``.

    The default name is ``dense``, made unique per graph (``dense_1``, ...).
    Calling the same layer again reuses its variables.
    """

    def __init__(self, units: int, activation: Callable | None = None,
                 use_bias: bool = True, kernel_initializer: Initializer | None = None,
                 bias_initializer: Initializer = tf.compat.v1.zeros_initializer(),
                 kernel_regularizer: Regularizer | None = None,
                 float16_flag: bool = False, name: str | None = None):
        self.units = units
        self.activation = activation
        self.use_bias = use_bias
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer
        self.kernel_regularizer = kernel_regularizer
        self.float16_flag = float16_flag
        self.name = name
        self._scope = None

    def __call__(self, inputs: tf.Tensor) -> tf.Tensor:
        if self._scope is None:
            scope_args = dict(name_or_scope=self.name, default_name="dense")
        else:
            scope_args = dict(name_or_scope=self._scope, reuse=True)
        with tf.compat.v1.variable_scope(values=[inputs], **scope_args) as scope:
            self._scope = scope
            return dense(inputs, self.units, activation=self.activation,
                         kernel_name="kernel", bias_name="bias",
                         kernel_initializer=self.kernel_initializer,
                         bias_initializer=self.bias_initializer if self.use_bias else None,
                         kernel_regularizer=self.kernel_regularizer,
                         float16_flag=self.float16_flag)
