"""Speed options of the training session: threads, XLA and mixed precision.

All are off (TensorFlow's defaults) unless a flag asks, because the
mixed-precision ones change the numbers beyond float32 round-off:

- ``--mixed_precision=bfloat16``: the oneDNN grappler pass runs matmuls and
  the ops around them in bfloat16 on CPUs that have it (AVX512_BF16, AMX);
  variables, optimizer and loss stay float32.  No loss scaling is needed
  (bfloat16 has float32's exponent range).
- ``--mixed_precision=float16``: the CUDA grappler pass does the same in
  float16 on GPUs, and the optimizer is wrapped with dynamic loss scaling
  (a step whose gradients overflow is skipped and the scale halved).
- ``--xla``: XLA compiles clusters of ops on GPUs; TensorFlow does not
  auto-cluster CPU ops (forced, the step ran 1.3x slower than with oneDNN).
- ``--intra_op_threads`` / ``--inter_op_threads``: 0 keeps TensorFlow's
  choice (one thread per core for each pool).
"""
import tensorflow as tf
from tensorflow.core.protobuf import rewriter_config_pb2

from model_config import TrainingConfig


def session_config(training: TrainingConfig, config: tf.compat.v1.ConfigProto | None = None
                   ) -> tf.compat.v1.ConfigProto:
    """``config`` (or a fresh ConfigProto) with the speed settings of ``training`` applied
    (threads, --xla, --mixed_precision; validated by TrainingConfig.validate)."""
    config = config if config is not None else tf.compat.v1.ConfigProto()
    config.intra_op_parallelism_threads = training.intra_op_threads
    config.inter_op_parallelism_threads = training.inter_op_threads
    if training.xla:
        config.graph_options.optimizer_options.global_jit_level = (
            tf.compat.v1.OptimizerOptions.ON_1)
    rewrites = config.graph_options.rewrite_options
    if training.mixed_precision == "bfloat16":
        rewrites.auto_mixed_precision_onednn_bfloat16 = rewriter_config_pb2.RewriterConfig.ON
    elif training.mixed_precision == "float16":
        rewrites.auto_mixed_precision = rewriter_config_pb2.RewriterConfig.ON
    return config


def wrap_optimizer(optimizer: tf.compat.v1.train.Optimizer,
                   mixed_precision: str) -> tf.compat.v1.train.Optimizer:
    """Dynamic loss scaling for --mixed_precision=float16; the optimizer itself otherwise."""
    if mixed_precision != "float16":
        return optimizer
    return tf.compat.v1.mixed_precision.MixedPrecisionLossScaleOptimizer(optimizer, "dynamic")
