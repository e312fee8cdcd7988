"""Frame-level models: zero-padded frames [B, max_frames, 1152] -> class probabilities.

NetVLADModelLF is the 2018 flagship (SPEC 4.1); the others are the classic
model zoo (ZOO.md), built from the shared blocks of pooling.py and rnn_cells.py.
Every ``create_model`` takes its hyperparameters as keyword arguments whose
defaults are the 2018 flags' (``SETTINGS`` maps the setting names to them, see
registry.py); the remaining keyword arguments go to the video-level classifier
(``video_level_classifier_model``), e.g. ``num_mixtures`` or ``prob_gating``
for MoeModel, which refuses any it does not know.  The input is already
L2-normalised per frame by the graph builder.  Variable names are the 2018
checkpoints' (relative to the caller's scope, ``tower/`` or ``tower/model{i}/``).
"""
import math
from typing import Any, Dict, Tuple

import tensorflow as tf

import core_fp16
import layers_fp16
import losses
import model_utils
import pooling
import registry
import rnn_cells
import video_level_models
from errors import UsageError

# The 2018 models split each frame's features at a fixed column: rgb first,
# then audio, as --feature_names=rgb,audio --feature_sizes=1024,128 lays them out.
VIDEO_FEATURE_SIZE = 1024
AUDIO_FEATURE_SIZE = 128
FRAME_FEATURE_SIZE = VIDEO_FEATURE_SIZE + AUDIO_FEATURE_SIZE

Outputs = Dict[str, tf.Tensor]
_V1 = tf.compat.v1

# Settings every model that samples frames reads.
_SAMPLING = {"iterations": "iterations", "sample_random_frames": "sample_random_frames",
             "sample_random_frames_at_eval": "sample_random_frames_at_eval",
             registry.CLASSIFIER_SETTING: "video_level_classifier_model"}


def _check_frame_features(model_input: tf.Tensor, model_name: str) -> None:
    size = model_input.shape[-1]
    if size != FRAME_FEATURE_SIZE:
        raise UsageError(
            f"{model_name} splits each frame into {VIDEO_FEATURE_SIZE} rgb and "
            f"{AUDIO_FEATURE_SIZE} audio features and needs {FRAME_FEATURE_SIZE} per frame "
            f"(--feature_names=rgb,audio --feature_sizes=1024,128), got {size}")


def _sampled_rows(model_input: tf.Tensor, num_frames: tf.Tensor, iterations: int,
                  is_training: bool, random_frames: bool, random_at_eval: bool) -> tf.Tensor:
    """``iterations`` frames per video (SPEC 4.1 step 1), as rows [B*T, F]."""
    frames = model_utils.sample_frames(model_input, num_frames, iterations, is_training,
                                       random_frames, random_at_eval)
    return tf.reshape(frames, [-1, int(model_input.shape[-1])])


def _sampled_streams(model_input: tf.Tensor, num_frames: tf.Tensor, iterations: int,
                     is_training: bool, random_frames: bool,
                     random_at_eval: bool) -> Tuple[tf.Tensor, tf.Tensor]:
    """:func:`_sampled_rows` split into rgb and audio rows, gathered in one pass."""
    index = model_utils.sample_index(model_input, num_frames, iterations, is_training,
                                     random_frames, random_at_eval)
    video, audio = model_utils.gather_feature_blocks(
        model_input, index, [VIDEO_FEATURE_SIZE, AUDIO_FEATURE_SIZE])
    return video, audio


def _split_streams(rows: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """[B*T, 1152] rows -> rgb rows, audio rows."""
    video, audio = tf.split(rows, [VIDEO_FEATURE_SIZE, AUDIO_FEATURE_SIZE], axis=1)
    return video, audio


def _input_bn(rows: tf.Tensor, add_batch_norm: bool, is_training: bool) -> tf.Tensor:
    return layers_fp16.batch_norm(rows, is_training, "input_bn") if add_batch_norm else rows


def _pool_streams(streams: Tuple[tf.Tensor, tf.Tensor], video_block: pooling.PoolingBlock,
                  audio_block: pooling.PoolingBlock, suffix: str) -> tf.Tensor:
    """Pools rgb in scope ``video_<suffix>`` and audio in ``audio_<suffix>``; concatenated."""
    video, audio = streams
    with _V1.variable_scope("video_" + suffix):
        video = video_block.forward(video)
    with _V1.variable_scope("audio_" + suffix):
        audio = audio_block.forward(audio)
    return tf.concat([video, audio], 1)


def _hidden_layer(inputs: tf.Tensor, size: int, stddev: float, is_training: bool,
                  batch_norm: bool, relu: bool, weights_in_own_scope: bool = False,
                  float16_flag: bool = False) -> tf.Tensor:
    """inputs @ ``hidden1_weights`` (no bias), then ``hidden1_bn`` or
    ``hidden1_biases`` (normal 0.01), then relu6 if ``relu``.

    NetVLADModelLF nests the weights (``hidden1_weights/hidden1_weights``).
    """
    weights = pooling.normal_weight(
        "hidden1_weights", [int(inputs.shape[-1]), size], stddev,
        scope="hidden1_weights" if weights_in_own_scope else None, float16_flag=float16_flag)
    activation = pooling.batch_norm_or_biases(core_fp16.matmul_last_axis(inputs, weights),
                                              batch_norm, is_training, "hidden1_bn",
                                              "hidden1_biases", 0.01)
    return tf.nn.relu6(activation) if relu else activation


def _classify(activation: tf.Tensor, vocab_size: int, is_training: bool,
              classifier: str, params: Dict[str, Any]) -> Outputs:
    """The video-level classifier on the pooled [B, d] activation."""
    return registry.find_classifier(classifier)().create_model(
        model_input=activation, vocab_size=vocab_size, is_training=is_training, **params)


@registry.model
class FrameLevelLogisticModel:
    """Logistic regression on the mean of each video's real frames (no sampling)."""

    SETTINGS: Dict[str, str] = {}

    def create_model(self, model_input: tf.Tensor, vocab_size: int, num_frames: tf.Tensor,
                     is_training: bool = True, l2_penalty: float = 1e-8) -> Outputs:
        """``fully_connected/{weights,biases}``; padded rows are zero, so a sum over all
        rows divided by the frame count is the mean (a 0-frame video scores zeros)."""
        counts = tf.maximum(tf.cast(tf.reshape(num_frames, [-1, 1]), tf.float32), 1.0)
        mean = tf.reduce_sum(model_input, axis=1) / counts
        return video_level_models.LogisticModel().create_model(mean, vocab_size,
                                                               l2_penalty=l2_penalty)


@registry.model
class DbofModel:
    """The starter's Deep Bag of Frames: one projection of all 1152 features, relu6,
    pooling over frames (``dbof_pooling_method``), hidden layer, classifier."""

    SETTINGS = {**_SAMPLING, "dbof_cluster_size": "cluster_size",
                "dbof_hidden_size": "hidden_size", "dbof_add_batch_norm": "add_batch_norm",
                "dbof_pooling_method": "dbof_pooling_method"}

    def create_model(self, model_input: tf.Tensor, vocab_size: int, num_frames: tf.Tensor,
                     is_training: bool = True, iterations: int = 30,
                     cluster_size: int = 16384, hidden_size: int = 2048,
                     add_batch_norm: bool = True, sample_random_frames: bool = True,
                     sample_random_frames_at_eval: bool = False,
                     dbof_pooling_method: str = "max",
                     video_level_classifier_model: str = "MoeModel",
                     **params) -> Outputs:
        """``params`` go to the classifier."""
        method = dbof_pooling_method
        if method not in ("max", "average"):
            raise UsageError(f"--dbof_pooling_method={method} must be max or average")
        rows = _input_bn(_sampled_rows(model_input, num_frames, iterations, is_training,
                                       sample_random_frames, sample_random_frames_at_eval),
                         add_batch_norm, is_training)
        feature_size = int(rows.shape[-1])
        weights = pooling.normal_weight("cluster_weights", [feature_size, cluster_size],
                                        1 / math.sqrt(feature_size))
        activation = tf.nn.relu6(pooling.cluster_logits(rows, weights, add_batch_norm,
                                                        is_training))
        pooled = model_utils.FramePooling(
            tf.reshape(activation, [-1, iterations, cluster_size]), method)
        hidden = _hidden_layer(pooled, hidden_size, 1 / math.sqrt(cluster_size), is_training,
                               batch_norm=add_batch_norm, relu=True)
        return _classify(hidden, vocab_size, is_training, video_level_classifier_model, params)


class BaseDbofModelLF:
    """Shared body of the WILLOW DBoF models: sampled frames, ``input_bn``, a
    ``video_DBOF`` and an ``audio_DBOF`` block (K and K//8 clusters), the
    hidden layer (``fc_dimred``) and the classifier.  Subclasses pick the blocks.
    """

    # DbofModelLF always has the hidden layer; the others follow --fc_dimred.
    optional_hidden_layer = True

    def _blocks(self, frames: int, cluster_size: int, add_batch_norm: bool, is_training: bool,
                activation: str, max_pool: bool
                ) -> Tuple[pooling.PoolingBlock, pooling.PoolingBlock, int]:
        """(video block, audio block, K setting the hidden weights' stddev 1/sqrt(K))."""
        raise NotImplementedError

    SETTINGS = {**_SAMPLING, "dbof_cluster_size": "cluster_size",
                "dbof_hidden_size": "hidden_size", "dbof_add_batch_norm": "add_batch_norm",
                "dbof_relu": "dbof_relu", "softdbof_maxpool": "softdbof_maxpool",
                "fc_dimred": "fc_dimred"}

    def create_model(self, model_input: tf.Tensor, vocab_size: int, num_frames: tf.Tensor,
                     is_training: bool = True, iterations: int = 30,
                     cluster_size: int = 16384, hidden_size: int = 2048,
                     add_batch_norm: bool = True, sample_random_frames: bool = True,
                     sample_random_frames_at_eval: bool = False,
                     dbof_relu: bool = True, dbof_activation: str = "relu",
                     softdbof_maxpool: bool = False, fc_dimred: bool = True,
                     video_level_classifier_model: str = "MoeModel",
                     **params) -> Outputs:
        """``dbof_activation`` is read by DbofModelLF, ``softdbof_maxpool`` and
        ``fc_dimred`` by the others; ``params`` go to the classifier."""
        _check_frame_features(model_input, type(self).__name__)
        relu = dbof_relu
        video_block, audio_block, clusters = self._blocks(
            iterations, cluster_size, add_batch_norm, is_training, dbof_activation,
            softdbof_maxpool)
        rows = _input_bn(_sampled_rows(model_input, num_frames, iterations, is_training,
                                       sample_random_frames, sample_random_frames_at_eval),
                         add_batch_norm, is_training)
        activation = _pool_streams(_split_streams(rows), video_block, audio_block, "DBOF")
        if not self.optional_hidden_layer or fc_dimred:
            activation = _hidden_layer(activation, hidden_size, 1 / math.sqrt(clusters),
                                       is_training,
                                       batch_norm=add_batch_norm and relu, relu=relu)
        return _classify(activation, vocab_size, is_training, video_level_classifier_model,
                         params)


@registry.model
class DbofModelLF(BaseDbofModelLF):
    """DBoF blocks with ``dbof_activation`` applied (relu6, or glu on 2K units)."""

    optional_hidden_layer = False
    SETTINGS = {name: argument for name, argument in
                {**BaseDbofModelLF.SETTINGS, "dbof_activation": "dbof_activation"}.items()
                if name not in ("softdbof_maxpool", "fc_dimred")}

    def _blocks(self, frames, cluster_size, add_batch_norm, is_training, activation, max_pool):
        if activation not in pooling.DBoF.ACTIVATIONS:
            raise UsageError(f"--dbof_activation={activation} must be relu or glu")
        if activation == "glu":
            cluster_size *= 2
            if (cluster_size // 8) % 2:
                raise UsageError(f"--dbof_activation=glu needs an even audio cluster count "
                                 f"2 * dbof_cluster_size // 8, got {cluster_size // 8}")

        def block(feature_size, clusters):
            return pooling.DBoF(feature_size, frames, clusters, activation, add_batch_norm,
                                is_training)
        return (block(VIDEO_FEATURE_SIZE, cluster_size),
                block(AUDIO_FEATURE_SIZE, cluster_size // 8), cluster_size)


@registry.model
class GatedDbofModelLF(BaseDbofModelLF):
    """GatedDBoF on rgb, SoftDBoF on audio."""

    def _blocks(self, frames, cluster_size, add_batch_norm, is_training, activation, max_pool):
        return (pooling.GatedDBoF(VIDEO_FEATURE_SIZE, frames, cluster_size, add_batch_norm,
                                  is_training),
                pooling.SoftDBoF(AUDIO_FEATURE_SIZE, frames, cluster_size // 8, max_pool,
                                 add_batch_norm, is_training),
                cluster_size)


@registry.model
class SoftDbofModelLF(BaseDbofModelLF):
    """SoftDBoF on rgb and audio."""

    def _blocks(self, frames, cluster_size, add_batch_norm, is_training, activation, max_pool):
        def block(feature_size, clusters):
            return pooling.SoftDBoF(feature_size, frames, clusters, max_pool, add_batch_norm,
                                    is_training)
        return (block(VIDEO_FEATURE_SIZE, cluster_size),
                block(AUDIO_FEATURE_SIZE, cluster_size // 8), cluster_size)


@registry.model
class NetVLADModelLF:
    """The 2018 flagship (SPEC 4.1): NetVLAD (or LightVLAD / NetVLAGD) on rgb and
    audio, hidden1 + BN + relu6, linear hidden2, optional context gating, classifier.
    """

    SETTINGS = {**_SAMPLING, "netvlad_cluster_size": "cluster_size",
                "netvlad_hidden_size": "hidden_size", "netvlad_add_batch_norm": "add_batch_norm",
                "gating": "gating", "lightvlad": "lightvlad", "vlagd": "vlagd",
                "float16_flag": "float16_flag", "netvlad_relu": "netvlad_relu"}

    def create_model(self, model_input: tf.Tensor, vocab_size: int, num_frames: tf.Tensor,
                     is_training: bool = True, iterations: int = 30,
                     cluster_size: int = 64, hidden_size: int = 1024,
                     add_batch_norm: bool = True, sample_random_frames: bool = True,
                     sample_random_frames_at_eval: bool = False,
                     gating: bool = False, lightvlad: bool = False,
                     vlagd: bool = False, float16_flag: bool = False,
                     netvlad_relu: bool = True,
                     video_level_classifier_model: str = "MoeModel",
                     **params) -> Outputs:
        """``float16_flag`` is handed to the classifier too; ``netvlad_relu`` has no
        effect, as in 2018; the other ``params`` go to the classifier."""
        _check_frame_features(model_input, "NetVLADModelLF")
        del netvlad_relu  # the hidden layer always ends in relu6, as in the 2018 model
        if lightvlad:
            block_cls = pooling.LightVLAD
        elif vlagd:
            block_cls = pooling.NetVLAGD
        else:
            block_cls = pooling.NetVLAD

        streams = _sampled_streams(model_input, num_frames, iterations, is_training,
                                   sample_random_frames, sample_random_frames_at_eval)
        vlad = _pool_streams(
            streams,
            block_cls(VIDEO_FEATURE_SIZE, iterations, cluster_size, add_batch_norm, is_training),
            block_cls(AUDIO_FEATURE_SIZE, iterations, cluster_size // 2, add_batch_norm,
                      is_training),
            "VLAD")
        activation = _hidden_layer(vlad, hidden_size, 1 / math.sqrt(int(vlad.shape[-1])),
                                   is_training, batch_norm=True, relu=True,
                                   weights_in_own_scope=True, float16_flag=float16_flag)
        hidden2_weights = pooling.normal_weight("hidden2_weights", [hidden_size, 2 * hidden_size],
                                                1 / math.sqrt(hidden_size),
                                                scope="hidden2_weights")
        hidden2_biases = pooling.normal_weight("hidden2_biases", [2 * hidden_size], 0.01)
        activation = core_fp16.matmul_last_axis(activation, hidden2_weights) + hidden2_biases
        if gating:
            activation = layers_fp16.context_gating(activation, is_training, add_batch_norm)
        return _classify(activation, vocab_size, is_training, video_level_classifier_model,
                         dict(params, float16_flag=float16_flag))


@registry.model
class NetFVModelLF:
    """NetFV on rgb and audio, hidden layer, optional context gating
    (``gating_weights_2``), classifier."""

    SETTINGS = {**_SAMPLING, "fv_cluster_size": "cluster_size", "fv_hidden_size": "hidden_size",
                "netvlad_add_batch_norm": "add_batch_norm", "fv_relu": "fv_relu",
                "fv_couple_weights": "fv_couple_weights",
                "fv_coupling_factor": "fv_coupling_factor", "gating": "gating"}

    def create_model(self, model_input: tf.Tensor, vocab_size: int, num_frames: tf.Tensor,
                     is_training: bool = True, iterations: int = 30,
                     cluster_size: int = 64, hidden_size: int = 2048,
                     add_batch_norm: bool = True, sample_random_frames: bool = True,
                     sample_random_frames_at_eval: bool = False,
                     fv_relu: bool = True, fv_couple_weights: bool = True,
                     fv_coupling_factor: float = 0.01, gating: bool = False,
                     video_level_classifier_model: str = "MoeModel",
                     **params) -> Outputs:
        """``params`` go to the classifier."""
        _check_frame_features(model_input, "NetFVModelLF")
        relu, couple_weights, coupling_factor = fv_relu, fv_couple_weights, fv_coupling_factor

        def block(feature_size, clusters):
            return pooling.NetFV(feature_size, iterations, clusters, add_batch_norm,
                                 is_training, couple_weights, coupling_factor)

        rows = _input_bn(_sampled_rows(model_input, num_frames, iterations, is_training,
                                       sample_random_frames, sample_random_frames_at_eval),
                         add_batch_norm, is_training)
        fv = _pool_streams(_split_streams(rows), block(VIDEO_FEATURE_SIZE, cluster_size),
                           block(AUDIO_FEATURE_SIZE, cluster_size // 2), "FV")
        activation = _hidden_layer(fv, hidden_size, 1 / math.sqrt(cluster_size), is_training,
                                   batch_norm=add_batch_norm and relu, relu=relu)
        if gating:
            activation = layers_fp16.context_gating(
                activation, is_training, add_batch_norm, weights_name="gating_weights_2",
                weights_in_own_scope=False)
        return _classify(activation, vocab_size, is_training, video_level_classifier_model,
                         params)


class BaseRecurrentModel:
    """Shared body of LstmModel and GruModel: a stack of cells in scope ``RNN`` over
    the frames (or over ``iterations`` sampled frames), classifier on the final
    concatenated state of all layers."""

    def _cell(self, num_units: int):
        raise NotImplementedError

    def create_model(self, model_input: tf.Tensor, vocab_size: int, num_frames: tf.Tensor,
                     is_training: bool = True, num_units: int = 1024,
                     num_layers: int = 2, random_sequence: bool = False,
                     backward: bool = False, iterations: int = 30,
                     sample_random_frames_at_eval: bool = False,
                     video_level_classifier_model: str = "MoeModel",
                     **params) -> Outputs:
        """``random_sequence`` samples ``iterations`` frames (random with replacement
        in training despite the name, evenly spaced in eval) and runs over all of
        them; ``backward`` reverses each video's real frames.  ``params`` go to the
        classifier.
        """
        lengths = tf.cast(tf.reshape(num_frames, [-1]), tf.int32)
        if random_sequence:
            model_input = model_utils.sample_frames(model_input, num_frames, iterations,
                                                    is_training, random_frames=True,
                                                    random_at_eval=sample_random_frames_at_eval)
            lengths = tf.fill(tf.shape(lengths), iterations)
        else:
            lengths = tf.minimum(lengths, tf.shape(model_input)[1])
        if backward:
            model_input = tf.reverse_sequence(model_input, lengths, seq_axis=1, batch_axis=0)
        cells = [self._cell(num_units) for _ in range(num_layers)]
        with _V1.variable_scope("RNN"):
            _, state = rnn_cells.dynamic_rnn(cells, model_input, lengths)
        return _classify(state, vocab_size, is_training, video_level_classifier_model, params)


def _recurrent_settings(prefix: str) -> Dict[str, str]:
    """The settings <prefix>_cells, _layers, _random_sequence, _backward (and iterations)."""
    return {"iterations": "iterations", registry.CLASSIFIER_SETTING: "video_level_classifier_model",
            f"{prefix}_cells": "num_units", f"{prefix}_layers": "num_layers",
            f"{prefix}_random_sequence": "random_sequence", f"{prefix}_backward": "backward",
            "sample_random_frames_at_eval": "sample_random_frames_at_eval"}


@registry.model
class LstmModel(BaseRecurrentModel):
    """Stacked BasicLSTMCells (forget bias 1.0); classifier input [c_0, h_0, c_1, h_1, ...]."""

    SETTINGS = _recurrent_settings("lstm")

    def _cell(self, num_units):
        return rnn_cells.BasicLSTMCell(num_units, forget_bias=1.0)


@registry.model
class GruModel(BaseRecurrentModel):
    """Stacked GRUCells; classifier input [h_0, h_1, ...]."""

    SETTINGS = _recurrent_settings("gru")

    def _cell(self, num_units):
        return rnn_cells.GRUCell(num_units)


def _nextvlad_branch(model_input: tf.Tensor, vocab_size: int, num_frames: tf.Tensor,
                     is_training: bool, cluster_size: int, hidden_size: int, groups: int,
                     expansion: int, drop_rate: float, gating_reduction: int,
                     float16_flag: bool, classifier: str, params: Dict[str, Any],
                     stream_scopes: Tuple[str, str] = ("video_VLAD", "audio_VLAD")) -> Outputs:
    """One NeXtVLAD network in the current scope: NeXtVLAD on rgb and audio (in
    ``stream_scopes``), dropout, ``hidden1_weights`` + ``hidden1_bn`` (no relu), SE context
    gating, classifier (``params`` and ``float16_flag`` go to it)."""
    vlad = _nextvlad_aggregate(model_input, num_frames, cluster_size, groups, expansion,
                               is_training, float16_flag, stream_scopes)
    if is_training and drop_rate > 0:
        vlad = tf.nn.dropout(vlad, rate=drop_rate, name="vlad_dropout")
    hidden1_weights = layers_fp16.variance_scaling_weight(
        "hidden1_weights", [int(vlad.shape[-1]), hidden_size], float16_flag)
    activation = layers_fp16.batch_norm(core_fp16.matmul_last_axis(vlad, hidden1_weights),
                                        is_training, "hidden1_bn")
    try:
        activation = layers_fp16.se_context_gating(activation, gating_reduction,
                                                   is_training, float16_flag)
    except ValueError as e:
        raise UsageError(f"--gating_reduction={gating_reduction}: {e}") from None
    return _classify(activation, vocab_size, is_training, classifier,
                     dict(params, float16_flag=float16_flag))


def _nextvlad_aggregate(model_input: tf.Tensor, num_frames: tf.Tensor, cluster_size: int,
                        groups: int, expansion: int, is_training: bool, float16_flag: bool,
                        stream_scopes: Tuple[str, str]) -> tf.Tensor:
    """[rgb NeXtVLAD, audio NeXtVLAD] of every (unpadded) frame: [B, vlad size]."""
    mask = tf.sequence_mask(tf.reshape(num_frames, [-1]), int(model_input.shape[1]),
                            dtype=tf.float32)
    video, audio = tf.split(model_input, [VIDEO_FEATURE_SIZE, AUDIO_FEATURE_SIZE], axis=2)
    outputs = []
    video_scope, audio_scope = stream_scopes
    for scope, frames, size, clusters, stream_groups in (
            (video_scope, video, VIDEO_FEATURE_SIZE, cluster_size, groups),
            (audio_scope, audio, AUDIO_FEATURE_SIZE, cluster_size // 2, groups // 2)):
        try:
            block = pooling.NeXtVLAD(size, clusters, expansion, stream_groups, is_training,
                                     float16_flag)
        except ValueError as e:
            raise UsageError(f"--expansion={expansion} --groups={groups}: {e}") from None
        with _V1.variable_scope(scope):
            outputs.append(block.forward(frames, mask))
    return tf.concat(outputs, 1)


@registry.model
class NeXtVLADModel:
    """NeXtVLAD (Lin, Xiao, Fan 2018, the 3rd-place single model): NeXtVLAD on all rgb
    frames (K clusters, G groups) and audio frames (K/2, G/2) in ``video_VLAD`` and
    ``audio_VLAD``, dropout, ``hidden1_weights`` + ``hidden1_bn`` (no relu), SE context
    gating (``gating_reduction``), classifier.  ``float16_flag`` stores the expansion,
    cluster, hidden, gating and classifier matrices in float16.
    """

    SETTINGS = {"nextvlad_cluster_size": "cluster_size", "nextvlad_hidden_size": "hidden_size",
                "groups": "groups", "expansion": "expansion", "drop_rate": "drop_rate",
                "gating_reduction": "gating_reduction", "float16_flag": "float16_flag",
                registry.CLASSIFIER_SETTING: "video_level_classifier_model"}

    def create_model(self, model_input: tf.Tensor, vocab_size: int, num_frames: tf.Tensor,
                     is_training: bool = True, cluster_size: int = 64, hidden_size: int = 1024,
                     groups: int = 8, expansion: int = 2, drop_rate: float = 0.5,
                     gating_reduction: int = 8, float16_flag: bool = False,
                     video_level_classifier_model: str = "MoeModel", **params) -> Outputs:
        """``params`` go to the classifier, with ``float16_flag``."""
        _check_frame_features(model_input, "NeXtVLADModel")
        return _nextvlad_branch(model_input, vocab_size, num_frames, is_training, cluster_size,
                                hidden_size, groups, expansion, drop_rate, gating_reduction,
                                float16_flag, video_level_classifier_model, params)

    @staticmethod
    def parameter_count(vocab_size: int, cluster_size: int = 64, hidden_size: int = 1024,
                        groups: int = 8, expansion: int = 2, gating_reduction: int = 8,
                        num_mixtures: int | None = 5) -> int:
        """Trainable parameters (batch-norm moving statistics excluded), for the README's
        size column; ``num_mixtures=None`` counts a LogisticModel classifier."""
        def stream(size: int, clusters: int, stream_groups: int) -> Tuple[int, int]:
            width = expansion * size
            out = clusters * width // stream_groups
            count = (size * width + width + width * stream_groups + stream_groups
                     + width * stream_groups * clusters + 2 * stream_groups * clusters
                     + out + 2 * out)  # fc, attention, cluster weights + BN, centres, vlad_bn
            return count, out

        video, video_out = stream(VIDEO_FEATURE_SIZE, cluster_size, groups)
        audio, audio_out = stream(AUDIO_FEATURE_SIZE, cluster_size // 2, groups // 2)
        squeeze = hidden_size // gating_reduction
        top = ((video_out + audio_out) * hidden_size + 2 * hidden_size
               + 2 * hidden_size * squeeze + 2 * squeeze)
        if num_mixtures is None:
            classifier = hidden_size * vocab_size + vocab_size
        else:
            classifier = (hidden_size * vocab_size * (2 * num_mixtures + 1)
                          + vocab_size * num_mixtures)
        return video + audio + top + classifier


@registry.model
class MixNeXtVLADModel:
    """The 3rd-place YouTube-8M 2018 model (Lin, Xiao, Fan 2018): ``mix_number`` NeXtVLAD
    networks (scopes ``branch_0``, ``branch_1``, ...; each with its own ``video_vlad``,
    ``audio_vlad``, hidden layer, gating and classifier) whose class logits z_m are mixed
    by per-video weights w = softmax(``mix_weights``(BN_``mix_weights_bn``(frame mean)))
    into z = sum_m w_m z_m; the prediction is sigmoid(z).

    A training graph also returns each branch's predictions (``branch_predictions``, each
    trained against the labels) and ``auxiliary_loss`` = ``cl_lambda`` x the distillation
    of the mixture into every branch at temperature ``cl_temperature``
    (losses.ensemble_distillation_loss).  The logits are a LogisticModel classifier's own
    (the public code's classifier); another classifier's are logit(p).
    """

    SETTINGS = {**NeXtVLADModel.SETTINGS, "mix_number": "mix_number",
                "cl_temperature": "cl_temperature", "cl_lambda": "cl_lambda"}

    def create_model(self, model_input: tf.Tensor, vocab_size: int, num_frames: tf.Tensor,
                     is_training: bool = True, mix_number: int = 3,
                     cl_temperature: float = 2.0, cl_lambda: float = 1.0,
                     cluster_size: int = 64, hidden_size: int = 1024, groups: int = 8,
                     expansion: int = 2, drop_rate: float = 0.5, gating_reduction: int = 8,
                     float16_flag: bool = False,
                     video_level_classifier_model: str = "MoeModel", **params) -> Outputs:
        """``params`` go to every branch's classifier, with ``float16_flag``."""
        _check_frame_features(model_input, "MixNeXtVLADModel")
        if mix_number < 1:
            raise UsageError(f"--mix_number={mix_number} must be at least 1")
        weights = self._mix_weights(model_input, mix_number, is_training)  # [B, M]
        branches = []
        for index in range(mix_number):
            with _V1.variable_scope(f"branch_{index}"):
                branches.append(_nextvlad_branch(
                    model_input, vocab_size, num_frames, is_training, cluster_size,
                    hidden_size, groups, expansion, drop_rate, gating_reduction, float16_flag,
                    video_level_classifier_model, params, ("video_vlad", "audio_vlad")))
        logits = tf.stack([_logits(branch) for branch in branches], axis=1)  # [B, M, C]
        mixed = tf.reduce_sum(weights[:, :, None] * logits, axis=1)
        result = {"predictions": tf.sigmoid(mixed)}
        if is_training:
            result["branch_predictions"] = [branch["predictions"] for branch in branches]
            result["auxiliary_loss"] = cl_lambda * losses.ensemble_distillation_loss(
                mixed, logits, cl_temperature)
        return result

    @staticmethod
    def _mix_weights(model_input: tf.Tensor, mix_number: int, is_training: bool) -> tf.Tensor:
        """softmax over the branches of ``mix_weights`` (weights and biases) applied to the
        batch-normalised (``mix_weights_bn``) mean of all max_frames rows, padding included
        as in the public code."""
        frame_mean = layers_fp16.batch_norm(tf.reduce_mean(model_input, axis=1), is_training,
                                            "mix_weights_bn")
        stddev = layers_fp16.variance_scaling_stddev([int(frame_mean.shape[-1]), mix_number])
        return tf.nn.softmax(layers_fp16.fully_connected(
            frame_mean, mix_number, activation_fn=None, scope="mix_weights",
            weights_initializer=_V1.truncated_normal_initializer(stddev=stddev)), axis=-1)

    @staticmethod
    def parameter_count(vocab_size: int, mix_number: int = 3, cluster_size: int = 64,
                        hidden_size: int = 1024, groups: int = 8, expansion: int = 2,
                        gating_reduction: int = 8, num_mixtures: int | None = 5) -> int:
        """``mix_number`` NeXtVLAD networks plus the mixing weights' batch norm and layer
        (trainable parameters; ``num_mixtures=None`` counts LogisticModel classifiers)."""
        branch = NeXtVLADModel.parameter_count(vocab_size, cluster_size, hidden_size, groups,
                                               expansion, gating_reduction, num_mixtures)
        return (mix_number * branch + 2 * FRAME_FEATURE_SIZE
                + FRAME_FEATURE_SIZE * mix_number + mix_number)


def _logits(outputs: Outputs) -> tf.Tensor:
    """A classifier's logits: its own when it returns them, else logit(predictions)."""
    if "logits" in outputs:
        return tf.cast(outputs["logits"], tf.float32)
    return losses.logit(outputs["predictions"])
