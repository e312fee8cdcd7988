"""The one place that turns a model configuration into a model graph.

train.py, eval.py and the inference export all call :func:`build_predictions`,
so a single model lives under ``tower/`` and ensemble member i under
``tower/model{i}/`` everywhere, and checkpoints move freely between them.
"""
import contextlib
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import tensorflow as tf

import checkpoint_utils
import core_fp16
import losses
import registry
from model_config import ModelConfig

TOWER_SCOPE = "tower"
# The collections of the 2018 meta graphs, which notebooks and tools read with
# tf.get_collection: training and inference graphs carry all six.
INPUT_COLLECTION = "input_batch_raw"
NORMALIZED_INPUT_COLLECTION = "input_batch"
NUM_FRAMES_COLLECTION = "num_frames"
PREDICTIONS_COLLECTION = "predictions"
LABELS_COLLECTION = "labels"
LOSS_COLLECTION = "loss"


def validate(config: ModelConfig) -> None:
    """Every check a graph build makes of ``config``, without building it (a
    script validates before it writes anything)."""
    config.validate()
    registry.find_loss(config.label_loss)
    for member in config.members:
        registry.member_arguments(member)


def label_loss(loss: losses.BaseLoss, predictions: tf.Tensor, labels: tf.Tensor,
               teacher: tf.Tensor | None = None, distillation_weight: float = 0.0,
               temperature: float = 1.0) -> tf.Tensor:
    """The label loss of (possibly mixed) predictions; with ``teacher`` predictions, mixed
    with the loss against them (losses.distillation_loss).

    Ensemble weights need not sum to 1 (the 2018 workflow trains its ensemble
    graph with the default weight 1.0 per model), so mixed predictions may
    exceed 1; they are clipped to [0, 1] here, where a single model's sigmoid
    outputs are unchanged.
    """
    predictions = tf.clip_by_value(predictions, 0.0, 1.0)
    if teacher is None:
        return loss.calculate_loss(predictions, labels)
    return losses.distillation_loss(loss, predictions, labels, teacher, distillation_weight,
                                    temperature)


def training_loss(loss: losses.BaseLoss, outputs: "ModelOutputs", labels: tf.Tensor,
                  teacher: tf.Tensor | None = None, distillation_weight: float = 0.0,
                  temperature: float = 1.0) -> tf.Tensor:
    """What a training graph minimises besides the regularisation: the label loss of the
    (mixed) predictions (with a ``teacher``, mixed with the loss against it), plus the
    label loss of every branch prediction, plus the auxiliary loss (MixNeXtVLADModel:
    its branches and their distillation term).  For a model without extra terms it is
    :func:`label_loss` alone."""
    total = label_loss(loss, outputs.predictions, labels, teacher, distillation_weight,
                       temperature)
    terms = [label_loss(loss, p, labels) for p in outputs.branch_predictions]
    if outputs.auxiliary_loss is not None:
        terms.append(outputs.auxiliary_loss)
    return tf.add_n([total, *terms]) if terms else total


@dataclass
class ModelOutputs:
    predictions: tf.Tensor
    regularization_loss: tf.Tensor
    update_ops: List[tf.Operation]
    # Each ensemble member's own predictions, before the mixing weights
    # (search_ensemble_weights.py mixes them itself).
    member_predictions: List[tf.Tensor] = field(default_factory=list)
    # The input as the models see it (L2-normalised per frame): 2018's input_batch.
    model_input: tf.Tensor | None = None
    # Training graphs only (see training_loss): predictions of a model's parts, each
    # trained against the labels, and a label-free loss term (float32), of every member.
    branch_predictions: List[tf.Tensor] = field(default_factory=list)
    auxiliary_loss: tf.Tensor | None = None


def member_scope(index: int) -> str:
    """Variable scope of ensemble member ``index`` inside the tower scope."""
    return "" if index == 0 else f"model{index}"


def _collection_added(key: str, before: int) -> list:
    return tf.compat.v1.get_collection(key)[before:]


def build_predictions(model_input_raw: tf.Tensor, num_frames: tf.Tensor, config: ModelConfig,
                      is_training: bool, reuse: bool = False) -> ModelOutputs:
    """Builds the single model or the ensemble on un-normalised input.

    Returns the (mixed) predictions, this call's regularisation loss (float32)
    and this call's batch-norm update ops, so that towers sharing variables
    do not count them twice.

    Besides ``predictions`` a model's result may hold ``regularization_loss``
    (added to the regularisation) and, read in training graphs only,
    ``branch_predictions`` (a list) and ``auxiliary_loss`` (a scalar): in an
    ensemble those of every member are kept, unweighted by the mixing weights
    (each member's parts train as they would alone).
    """
    members = config.members
    feature_axis = len(model_input_raw.shape) - 1
    model_input = tf.nn.l2_normalize(model_input_raw, feature_axis)
    reg_before = len(tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.REGULARIZATION_LOSSES))
    upd_before = len(tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS))
    mixed, member_predictions = None, []
    model_losses, branch_predictions, auxiliary_losses = [], [], []
    with tf.compat.v1.variable_scope(TOWER_SCOPE, reuse=reuse):
        for index, member in enumerate(members):
            arguments = registry.member_arguments(member)
            if not registry.is_video_level(member.model):
                arguments["num_frames"] = num_frames
            scope = member_scope(index)
            int8 = member.settings.quantize_int8
            if int8:  # int8 takes the place of float16 storage (core_fp16.int8_storage)
                arguments["float16_flag"] = True
            with (tf.compat.v1.variable_scope(scope) if scope else contextlib.nullcontext(),
                  core_fp16.int8_storage(int8)):
                result = registry.find_model(member.model)().create_model(
                    model_input=model_input, vocab_size=config.num_classes,
                    is_training=is_training, **arguments)
            predictions = result["predictions"]
            member_predictions.append(predictions)
            if len(members) > 1:
                predictions = predictions * member.weight
            mixed = predictions if mixed is None else mixed + predictions
            if "regularization_loss" in result:
                model_losses.append(tf.cast(result["regularization_loss"], tf.float32))
            if is_training:
                branch_predictions.extend(result.get("branch_predictions", []))
                if "auxiliary_loss" in result:
                    auxiliary_losses.append(tf.cast(result["auxiliary_loss"], tf.float32))
    reg_losses = [tf.cast(r, tf.float32) for r in _collection_added(
        tf.compat.v1.GraphKeys.REGULARIZATION_LOSSES, reg_before)] + model_losses
    reg = tf.add_n(reg_losses) if reg_losses else tf.constant(0.0)
    return ModelOutputs(
        predictions=mixed,
        regularization_loss=reg,
        update_ops=_collection_added(tf.compat.v1.GraphKeys.UPDATE_OPS, upd_before),
        member_predictions=member_predictions, model_input=model_input,
        branch_predictions=branch_predictions,
        auxiliary_loss=tf.add_n(auxiliary_losses) if auxiliary_losses else None)


def add_2018_collections(raw: tf.Tensor, model_input: tf.Tensor, num_frames: tf.Tensor,
                         predictions: tf.Tensor, labels: tf.Tensor, loss: tf.Tensor) -> None:
    """The six collections of the 2018 meta graphs, one tensor each."""
    for key, tensor in ((INPUT_COLLECTION, raw), (NORMALIZED_INPUT_COLLECTION, model_input),
                        (NUM_FRAMES_COLLECTION, num_frames), (PREDICTIONS_COLLECTION, predictions),
                        (LABELS_COLLECTION, labels), (LOSS_COLLECTION, loss)):
        tf.compat.v1.add_to_collection(key, tensor)


def input_shape(config: ModelConfig) -> Tuple:
    """Static shape of one raw input batch (batch dimension unknown)."""
    width = sum(config.feature_sizes)
    if config.frame_features:
        return (None, config.data.max_frames, width)
    return (None, width)


def model_variables() -> List[tf.Variable]:
    """Variables that belong in an inference checkpoint: model + global_step."""
    return list(copy_variables().values())


def copy_variables(scope: str = "") -> Dict[str, tf.Variable]:
    """The model variables and global_step of the copy built under variable scope ``scope``,
    by their names in a checkpoint (eval.py's sweep scores several copies in one graph)."""
    prefix = scope + "/" if scope else ""
    found = {}
    for var in tf.compat.v1.global_variables():
        name = var.op.name[len(prefix):] if var.op.name.startswith(prefix) else None
        if name and (name.startswith(TOWER_SCOPE + "/") or name == checkpoint_utils.GLOBAL_STEP):
            found[name] = var
    return found


def build_inference_graph(config: ModelConfig) -> tf.Graph:
    """A graph fed through placeholders, for the meta graph inference.py loads.

    It carries the 2018 collections (``input_batch_raw``, ``input_batch``,
    ``num_frames``, ``predictions``, and ``labels``/``loss``, fed only by whoever
    wants the loss); no input pipeline is baked in.
    """
    graph = tf.Graph()
    with graph.as_default():
        checkpoint_utils.create_global_step()
        raw = tf.compat.v1.placeholder(tf.float32, input_shape(config), name="input_batch_raw")
        num_frames = tf.compat.v1.placeholder(tf.int32, [None], name="num_frames")
        outputs = build_predictions(raw, num_frames, config, is_training=False)
        predictions = tf.identity(outputs.predictions, name="predictions")
        labels = tf.compat.v1.placeholder(tf.bool, [None, config.num_classes], name="labels")
        loss = tf.identity(label_loss(registry.find_loss(config.label_loss), predictions,
                                      tf.cast(labels, tf.float32)), name="loss")
        add_2018_collections(raw, outputs.model_input, num_frames, predictions, labels, loss)
    return graph
