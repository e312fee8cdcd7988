"""Label losses selected by ``--label_loss``: each maps a batch to a scalar mean loss.

Every loss sums over classes and averages over the batch, in float32; labels
may be bool or 0/1 numbers.
"""
import tensorflow as tf

import registry


def _float32(predictions, labels) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.cast(predictions, tf.float32), tf.cast(labels, tf.float32)


class BaseLoss:
    """Base class of the losses; each registered subclass is found by its class name."""

    def calculate_loss(self, predictions: tf.Tensor, labels: tf.Tensor,
                       **unused_params) -> tf.Tensor:
        """Scalar mean loss of predictions [B, C] against labels [B, C]."""
        raise NotImplementedError()


@registry.loss
class CrossEntropyLoss(BaseLoss):
    """Binary cross entropy of probabilities: -[y log(p+e) + (1-y) log(1-p+e)], e = 1e-5."""

    def calculate_loss(self, predictions: tf.Tensor, labels: tf.Tensor,
                       **unused_params) -> tf.Tensor:
        with tf.name_scope("loss_xent"):
            epsilon = 1e-5
            p, y = _float32(predictions, labels)
            per_class = y * tf.math.log(p + epsilon) + (1 - y) * tf.math.log(1 - p + epsilon)
            return tf.reduce_mean(-tf.reduce_sum(per_class, axis=1))


@registry.loss
class HingeLoss(BaseLoss):
    """max(0, b - y' * p) with y' = 2y - 1 in {-1, +1}; trains predictions towards +-1."""

    def calculate_loss(self, predictions: tf.Tensor, labels: tf.Tensor, b: float = 1.0,
                       **unused_params) -> tf.Tensor:
        with tf.name_scope("loss_hinge"):
            p, y = _float32(predictions, labels)
            per_class = tf.maximum(0.0, b - (2 * y - 1) * p)
            return tf.reduce_mean(tf.reduce_sum(per_class, axis=1))


@registry.loss
class SoftmaxLoss(BaseLoss):
    """Cross entropy of softmax(predictions) against the L1-normalised labels.

    Predictions are used as logits, as in the starter code, which allows several
    positive labels per video.  Videos without labels contribute 0.  The log of
    the softmax is taken as ``log_softmax`` so that a vanishing probability cannot
    turn the loss into NaN.
    """

    def calculate_loss(self, predictions: tf.Tensor, labels: tf.Tensor,
                       **unused_params) -> tf.Tensor:
        with tf.name_scope("loss_softmax"):
            p, y = _float32(predictions, labels)
            label_sums = tf.maximum(tf.reduce_sum(y, axis=1, keepdims=True), 1e-7)
            per_class = (y / label_sums) * tf.nn.log_softmax(p, axis=1)
            return tf.reduce_mean(-tf.reduce_sum(per_class, axis=1))


def logit(probabilities: tf.Tensor) -> tf.Tensor:
    """log(p / (1 - p)) in float32, p clipped to [1e-7, 1 - 1e-7] so that 0 and 1 stay finite."""
    p = tf.clip_by_value(tf.cast(probabilities, tf.float32), 1e-7, 1 - 1e-7)
    return tf.math.log(p) - tf.math.log1p(-p)


def soften(probabilities: tf.Tensor, temperature: float) -> tf.Tensor:
    """sigmoid(logit(p) / T): per-class probabilities at temperature T (T = 1: unchanged)."""
    return tf.sigmoid(logit(probabilities) / temperature)


def distillation_loss(loss: BaseLoss, predictions: tf.Tensor, labels: tf.Tensor,
                      teacher: tf.Tensor, weight: float, temperature: float = 1.0) -> tf.Tensor:
    """(1 - w) * loss(p, labels) + w * T^2 * loss(p_T, q_T): the label loss mixed with the
    same loss against the teacher's soft predictions q, both softened at temperature T
    (T^2 keeps the teacher term's gradients at the scale of T = 1, Hinton et al. 2015)."""
    if not 0.0 <= weight <= 1.0 or temperature <= 0:
        raise ValueError(f"distillation weight {weight} must be in [0, 1] and temperature "
                         f"{temperature} above 0")
    hard = loss.calculate_loss(predictions, labels)
    soft = loss.calculate_loss(soften(predictions, temperature), soften(teacher, temperature))
    return (1.0 - weight) * hard + weight * temperature ** 2 * soft


def ensemble_distillation_loss(ensemble_logits: tf.Tensor, branch_logits: tf.Tensor,
                               temperature: float) -> tf.Tensor:
    """mean over videos of sum over branches m of KL(q || p_m), q = softmax(z / T) and
    p_m = softmax(z_m / T) over the classes: each branch's class distribution pulled towards
    the ensemble's (NeXtVLAD's on-the-fly distillation; no T^2 factor, and the gradient
    reaches the ensemble logits z too, as in the public code).

    ``ensemble_logits`` [B, C]; ``branch_logits`` [B, M, C].
    """
    if temperature <= 0:
        raise ValueError(f"distillation temperature {temperature} must be above 0")
    teacher = tf.nn.log_softmax(tf.cast(ensemble_logits, tf.float32)[:, None, :] / temperature)
    student = tf.nn.log_softmax(tf.cast(branch_logits, tf.float32) / temperature)
    kl = tf.reduce_sum(tf.exp(teacher) * (teacher - student), axis=-1)  # [B, M]
    return tf.reduce_mean(tf.reduce_sum(kl, axis=1))
