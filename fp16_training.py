"""Training float16-stored variables without float16 arithmetic in the optimizer.

Adam's second moment of a small gradient underflows in float16 and its
epsilon (1e-8) rounds to zero, so a float16 variable updated in place turns
NaN within a few steps.  Each float16 variable therefore gets a float32
master copy ``<variable>/fp32_master``: the optimizer updates the master (its
slots are float32 too) and the float16 variable receives the rounded result.
The master sits under the variable's name, so checkpoint tools treat it like
an optimizer slot (training state, not a model variable).
"""
from typing import List, Tuple

import tensorflow as tf

MASTER_NAME = "fp32_master"


def _master_for(variable: tf.Variable) -> tf.Variable:
    with tf.compat.v1.variable_scope(variable.op.name, reuse=False):
        return tf.compat.v1.get_variable(
            MASTER_NAME, initializer=tf.cast(variable.initial_value, tf.float32),
            trainable=False)


def apply_gradients(optimizer: tf.compat.v1.train.Optimizer,
                    grads_and_vars: List[Tuple[tf.Tensor, tf.Variable]],
                    global_step: tf.Variable) -> Tuple[tf.Operation, tf.Operation]:
    """Applies float32 gradients; returns (train op, op syncing masters from variables).

    Run the sync op after restoring a checkpoint, so the masters start from the
    restored float16 values.
    """
    updates, copies, syncs = [], [], []
    for grad, var in grads_and_vars:
        if var.dtype.base_dtype != tf.float16:
            updates.append((tf.cast(grad, var.dtype.base_dtype), var))
            continue
        master = _master_for(var)
        updates.append((tf.cast(grad, tf.float32), master))
        copies.append((var, master))
        syncs.append(master.assign(tf.cast(var, tf.float32)))
    apply_op = optimizer.apply_gradients(updates, global_step=global_step)
    with tf.control_dependencies([apply_op]):
        copy_ops = [var.assign(tf.cast(master, tf.float16)) for var, master in copies]
    train_op = tf.group(apply_op, *copy_ops)
    return train_op, tf.group(*syncs)
