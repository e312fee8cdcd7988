"""Video-level classifiers: the mixture of experts and logistic regression.

They classify a pooled [batch, features] activation; every frame-level model
ends in one of them (``--video_level_classifier_model``).  Variable names are
those of the 2018 checkpoints.
"""
import math
from typing import Dict

import tensorflow as tf

import app_flags
import core_fp16
import layers_fp16


class LogisticModel:
    """Logistic regression: ``fully_connected/{weights,biases}``, sigmoid."""

    def create_model(self, model_input: tf.Tensor, vocab_size: int,
                     l2_penalty: float | None = None, **unused_params) -> Dict[str, tf.Tensor]:
        """``l2_penalty`` defaults to 1e-8, as in the starter code."""
        l2_penalty = 1e-8 if l2_penalty is None else l2_penalty
        predictions = layers_fp16.fully_connected(
            model_input, vocab_size, activation_fn=tf.sigmoid,
            weights_regularizer=layers_fp16.l2_regularizer(l2_penalty))
        return {"predictions": predictions}


class MoeModel:
    """Per-class softmax over M logistic experts plus a dummy expert that says 0.

    Optionally the class probabilities are re-weighted by probability gating
    (``gating_prob_weights``, ``gating_prob_bn``).  No variable scope of its
    own: ``gates``, ``experts``, ... sit in the caller's scope.
    """

    def create_model(self, model_input: tf.Tensor, vocab_size: int, is_training: bool = True,
                     num_mixtures: int | None = None, l2_penalty: float | None = None,
                     float16_flag: bool | None = None, prob_gating: bool | None = None,
                     prob_gating_input: str | None = None, remove_diag: bool | None = None,
                     low_rank_gating: int | None = None, add_batch_norm: bool | None = None,
                     **unused_params) -> Dict[str, tf.Tensor]:
        """Returns {"predictions": [batch, vocab_size]}.

        Each None argument takes its flag (moe_num_mixtures, moe_l2,
        float16_flag, moe_prob_gating, moe_prob_gating_input,
        gating_remove_diag, moe_low_rank_gating).  ``add_batch_norm`` is
        accepted for interface symmetry and ignored: ``gating_prob_bn`` is
        always a batch norm (SPEC 4.1).
        """
        del add_batch_norm
        num_mixtures = app_flags.arg_or_flag(num_mixtures, "moe_num_mixtures")
        l2_penalty = app_flags.arg_or_flag(l2_penalty, "moe_l2")
        float16_flag = app_flags.arg_or_flag(float16_flag, "float16_flag")
        prob_gating = app_flags.arg_or_flag(prob_gating, "moe_prob_gating")
        prob_gating_input = app_flags.arg_or_flag(prob_gating_input, "moe_prob_gating_input")
        remove_diag = app_flags.arg_or_flag(remove_diag, "gating_remove_diag")
        low_rank_gating = app_flags.arg_or_flag(low_rank_gating, "moe_low_rank_gating")

        def linear(inputs, units, scope, biases_initializer=None):
            return layers_fp16.fully_connected(
                inputs, units, activation_fn=None, biases_initializer=biases_initializer,
                weights_regularizer=layers_fp16.l2_regularizer(l2_penalty), scope=scope,
                float16_flag=float16_flag)

        gate_units = vocab_size * (num_mixtures + 1)
        if low_rank_gating == -1:
            gate_logits = linear(model_input, gate_units, "gates")
        else:
            gate_logits = linear(linear(model_input, low_rank_gating, "gates1"),
                                 gate_units, "gates2")
        expert_logits = linear(model_input, vocab_size * num_mixtures, "experts",
                               biases_initializer=tf.compat.v1.zeros_initializer())

        gating = tf.nn.softmax(tf.reshape(gate_logits, [-1, num_mixtures + 1]))
        experts = tf.sigmoid(tf.reshape(expert_logits, [-1, num_mixtures]))
        # The dummy expert says 0: padding the experts with a zero column costs half
        # of slicing the gates (whose gradient, StridedSliceGrad, is slow).
        probabilities = tf.reshape(
            tf.reduce_sum(gating * tf.pad(experts, [[0, 0], [0, 1]]), axis=1), [-1, vocab_size])
        if prob_gating:
            probabilities *= self._probability_gates(
                probabilities, model_input, is_training, prob_gating_input == "prob",
                remove_diag, float16_flag)
        return {"predictions": probabilities}

    @staticmethod
    def _probability_gates(probabilities, model_input, is_training, from_probabilities,
                           remove_diag, float16_flag):
        """sigmoid(BN(input @ gating_prob_weights)); input = probabilities or features.

        ``remove_diag`` (probability input only) drops each class's own term.
        """
        vocab_size = int(probabilities.shape[-1])
        gate_input = probabilities if from_probabilities else model_input
        weights = layers_fp16.weight_variable(
            "gating_prob_weights", [int(gate_input.shape[-1]), vocab_size],
            1 / math.sqrt(vocab_size), float16_flag)
        gates = core_fp16.matmul_last_axis(gate_input, weights)
        if remove_diag and from_probabilities:
            gates -= tf.linalg.diag_part(weights) * probabilities
        return tf.sigmoid(layers_fp16.batch_norm(gates, is_training, "gating_prob_bn"))
