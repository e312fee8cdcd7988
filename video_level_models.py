"""Video-level classifiers: the mixture of experts and logistic regression.

They classify a pooled [batch, features] activation; every frame-level model
ends in one of them (``--video_level_classifier_model``).  Variable names are
those of the 2018 checkpoints.
"""
import math
from typing import Dict

import tensorflow as tf

import core_fp16
import layers_fp16
import registry


@registry.classifier
class LogisticModel:
    """Logistic regression: ``fully_connected/{weights,biases}``, sigmoid; the weights
    float16 under ``float16_flag`` (NeXtVLAD's classifier in the public scripts)."""

    SETTINGS: Dict[str, str] = {"float16_flag": "float16_flag"}

    def create_model(self, model_input: tf.Tensor, vocab_size: int, is_training: bool = True,
                     l2_penalty: float = 1e-8,
                     float16_flag: bool = False) -> Dict[str, tf.Tensor]:
        """``l2_penalty`` is the starter code's 1e-8; ``is_training`` changes nothing.
        Returns the ``predictions`` and their ``logits``."""
        logits = layers_fp16.fully_connected(
            model_input, vocab_size, activation_fn=None,
            weights_regularizer=layers_fp16.l2_regularizer(l2_penalty),
            float16_flag=float16_flag)
        return {"predictions": tf.sigmoid(logits), "logits": logits}


@registry.classifier
class MoeModel:
    """Per-class softmax over M logistic experts plus a dummy expert that says 0.

    Optionally the class probabilities are re-weighted by probability gating
    (``gating_prob_weights``, ``gating_prob_bn``).  No variable scope of its
    own: ``gates``, ``experts``, ... sit in the caller's scope.
    """

    SETTINGS = {"moe_num_mixtures": "num_mixtures", "moe_l2": "l2_penalty",
                "float16_flag": "float16_flag", "moe_prob_gating": "prob_gating",
                "moe_prob_gating_input": "prob_gating_input",
                "gating_remove_diag": "remove_diag", "moe_low_rank_gating": "low_rank_gating"}

    def create_model(self, model_input: tf.Tensor, vocab_size: int, is_training: bool = True,
                     num_mixtures: int = 5, l2_penalty: float = 1e-8,
                     float16_flag: bool = False, prob_gating: bool = False,
                     prob_gating_input: str = "prob", remove_diag: bool = False,
                     low_rank_gating: int = -1) -> Dict[str, tf.Tensor]:
        """Returns {"predictions": [batch, vocab_size]}; the defaults are the 2018 flags'.

        ``gating_prob_bn`` is always a batch norm (SPEC 4.1).
        """

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
