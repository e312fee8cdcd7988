"""The typed configuration of a run, and ``RUN/model_flags.json``, which stores it.

A run is described by data (what the records hold), model (one entry per
ensemble member, each with every zoo setting) and training settings.  The
scripts build it from their flags (app_flags.py); everything below the scripts
receives it, or plain arguments taken from it, and never reads a flag.  Field
names are the flag names, so an error can always name the flag to change.

``model_flags.json`` keeps the five keys the 2018 code wrote (``model``,
``feature_names``, ``feature_sizes``, ``frame_features``, ``label_loss``) so
2018 tools still read it, and adds the rest under ``format_version`` 3: the
data settings, every member's model and settings, the mixing weights and the
training settings.  A run directory therefore says everything needed to
evaluate, export or resume it.
"""
import dataclasses
import json
import math
import os
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from errors import UsageError

# TensorFlow (tf.io.gfile) is imported inside write_json and read_json, not here: the
# scripts' flags import this module, and their --help answers without loading TensorFlow.
FILE_NAME = "model_flags.json"
FORMAT_VERSION = 3
# The five keys the 2018 code wrote.
LEGACY_KEYS = ("model", "feature_sizes", "feature_names", "frame_features", "label_loss")
MIXED_PRECISION = ("none", "bfloat16", "float16")


@dataclass(frozen=True)
class DataConfig:
    """What the records hold and how they are turned into model input."""

    feature_names: Tuple[str, ...] = ("mean_rgb",)
    feature_sizes: Tuple[int, ...] = (1024,)
    frame_features: bool = False
    num_classes: int = 3862
    max_frames: int = 300

    def validate(self) -> None:
        if len(self.feature_names) != len(self.feature_sizes):
            raise UsageError(
                f"--feature_names={','.join(self.feature_names)} has {len(self.feature_names)} "
                f"entries but --feature_sizes={_csv(self.feature_sizes)} has "
                f"{len(self.feature_sizes)}")
        if not self.feature_names:
            raise UsageError("--feature_names must name at least one feature")
        _at_least("feature_sizes", min(self.feature_sizes), 1, text=_csv(self.feature_sizes))
        _at_least("num_classes", self.num_classes, 1)
        _at_least("max_frames", self.max_frames, 1)


@dataclass(frozen=True)
class ModelSettings:
    """Every hyperparameter of the model zoo, named and defaulted as the 2018 flags.

    One instance per ensemble member; a model reads only the settings it
    declares (its ``SETTINGS``), and a changed setting it does not use is an
    error (registry.member_arguments).
    """

    iterations: int = 30
    sample_random_frames: bool = True
    sample_random_frames_at_eval: bool = False
    netvlad_cluster_size: int = 64
    netvlad_hidden_size: int = 1024
    netvlad_add_batch_norm: bool = True
    netvlad_relu: bool = True
    gating: bool = False
    gating_remove_diag: bool = False
    lightvlad: bool = False
    vlagd: bool = False
    float16_flag: bool = False
    video_level_classifier_model: str = "MoeModel"
    moe_num_mixtures: int = 5
    moe_l2: float = 1e-8
    moe_prob_gating: bool = False
    moe_prob_gating_input: str = "prob"
    moe_low_rank_gating: int = -1
    dbof_add_batch_norm: bool = True
    dbof_cluster_size: int = 16384
    dbof_hidden_size: int = 2048
    dbof_relu: bool = True
    dbof_activation: str = "relu"
    dbof_pooling_method: str = "max"
    softdbof_maxpool: bool = False
    fc_dimred: bool = True
    fv_cluster_size: int = 64
    fv_hidden_size: int = 2048
    fv_relu: bool = True
    fv_couple_weights: bool = True
    fv_coupling_factor: float = 0.01
    lstm_cells: int = 1024
    lstm_layers: int = 2
    lstm_random_sequence: bool = False
    lstm_backward: bool = False
    gru_cells: int = 1024
    gru_layers: int = 2
    gru_random_sequence: bool = False
    gru_backward: bool = False
    nextvlad_cluster_size: int = 64
    nextvlad_hidden_size: int = 1024
    groups: int = 8
    expansion: int = 2
    drop_rate: float = 0.5
    gating_reduction: int = 8
    mix_number: int = 3
    cl_temperature: float = 2.0
    cl_lambda: float = 1.0
    quantize_int8: bool = False

    @property
    def storage(self) -> str:
        """How the large matrices are stored, as --member_storage names it."""
        return "int8" if self.quantize_int8 else "float16" if self.float16_flag else "float32"

    def validate(self) -> None:
        for name in ("iterations", "netvlad_hidden_size", "moe_num_mixtures", "dbof_cluster_size",
                     "dbof_hidden_size", "fv_hidden_size", "lstm_cells", "lstm_layers",
                     "gru_cells", "gru_layers", "nextvlad_hidden_size", "expansion",
                     "gating_reduction", "mix_number"):
            _at_least(name, getattr(self, name), 1)
        _finite_positive("cl_temperature", self.cl_temperature)
        _finite_at_least("cl_lambda", self.cl_lambda, 0.0)
        # NeXtVLAD's audio stream gets half the clusters and half the groups.
        _at_least("nextvlad_cluster_size", self.nextvlad_cluster_size, 2)
        _at_least("groups", self.groups, 2)
        if not 0.0 <= self.drop_rate < 1.0:
            raise UsageError(f"--drop_rate={self.drop_rate} must be in [0, 1)")
        # The audio streams get half (NetVLAD, NetFV) or an eighth (DBoF) of the clusters.
        _at_least("netvlad_cluster_size", self.netvlad_cluster_size, 2)
        _at_least("fv_cluster_size", self.fv_cluster_size, 2)
        _at_least("dbof_cluster_size", self.dbof_cluster_size, 8)
        _finite_at_least("moe_l2", self.moe_l2, 0.0)
        _finite_at_least("fv_coupling_factor", self.fv_coupling_factor, -math.inf)
        if self.moe_low_rank_gating != -1:
            _at_least("moe_low_rank_gating", self.moe_low_rank_gating, 1,
                      hint=" (or -1 for full-rank gates)")
        if self.quantize_int8 and self.float16_flag:
            raise UsageError("--quantize_int8 and --float16_flag both store the large "
                             "matrices: choose one")
        _one_of("dbof_activation", self.dbof_activation, ("relu", "glu"))
        _one_of("dbof_pooling_method", self.dbof_pooling_method, ("max", "average"))


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(ModelSettings))
# Each --member_storage value: the settings that store a member's large matrices so.
STORAGE_SETTINGS = {"float32": {}, "float16": {"float16_flag": True},
                    "int8": {"quantize_int8": True}}
DEFAULT_SETTINGS = ModelSettings()


@dataclass(frozen=True)
class MemberConfig:
    """One model of the graph: its class name, mixing weight and settings."""

    model: str = "NetVLADModelLF"
    weight: float = 1.0
    settings: ModelSettings = field(default_factory=ModelSettings)


@dataclass(frozen=True)
class ModelConfig:
    """What a checkpoint depends on: the graph and the input it was trained on."""

    data: DataConfig = field(default_factory=DataConfig)
    members: Tuple[MemberConfig, ...] = (MemberConfig(),)
    label_loss: str = "CrossEntropyLoss"

    @property
    def model(self) -> str:
        """The model class name (member 0's; the flags give every member the same)."""
        return self.members[0].model

    @property
    def feature_names(self) -> Tuple[str, ...]:
        return self.data.feature_names

    @property
    def feature_sizes(self) -> Tuple[int, ...]:
        return self.data.feature_sizes

    @property
    def frame_features(self) -> bool:
        return self.data.frame_features

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def weights(self) -> List[float]:
        return [m.weight for m in self.members]

    def with_weights(self, weights: Sequence[float]) -> "ModelConfig":
        members = tuple(dataclasses.replace(m, weight=float(w))
                        for m, w in zip(self.members, weights, strict=True))
        return dataclasses.replace(self, members=members)

    def validate(self) -> None:
        """Checks every value; model names and settings are checked by the registry."""
        self.data.validate()
        _at_least("ensemble_num", len(self.members), 1)
        weights = self.weights
        if len(weights) > 1:
            for weight in weights:
                _finite_at_least("ensemble_wts", weight, 0.0)
            if not any(weights):
                raise UsageError("--ensemble_wts are all 0: give at least one member a weight")
        for member in self.members:
            member.settings.validate()


@dataclass(frozen=True)
class TrainingConfig:
    """How train.py trains; none of it changes the graph a checkpoint is read with."""

    batch_size: int = 1024
    num_readers: int = 8
    skip_corrupt_records: bool = False
    optimizer: str = "AdamOptimizer"
    base_learning_rate: float = 0.01
    learning_rate_decay: float = 0.95
    learning_rate_decay_examples: float = 4e6
    regularization_penalty: float = 1.0
    clip_gradient_norm: float = 1.0
    num_epochs: int = 5
    max_steps: int | None = None
    export_model_steps: int = 1000
    save_checkpoint_secs: int = 900
    random_seed: int | None = None
    num_gpu: int = 1
    cpu_towers: bool = False
    mixed_precision: str = "none"
    xla: bool = False
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    export_saved_model: bool = False
    saved_model_signature: str = "toolkit"
    log_device_placement: bool = False
    teacher_predictions: str = ""
    distillation_weight: float = 0.5
    distillation_temperature: float = 1.0

    def validate(self) -> None:
        for name in ("batch_size", "num_readers", "num_epochs", "export_model_steps", "num_gpu"):
            _at_least(name, getattr(self, name), 1)
        for name in ("save_checkpoint_secs", "intra_op_threads", "inter_op_threads"):
            _at_least(name, getattr(self, name), 0)
        if self.max_steps is not None:
            _at_least("max_steps", self.max_steps, 0)
        _finite_positive("base_learning_rate", self.base_learning_rate)
        _finite_positive("learning_rate_decay", self.learning_rate_decay)
        _finite_positive("learning_rate_decay_examples", self.learning_rate_decay_examples)
        _finite_at_least("regularization_penalty", self.regularization_penalty, 0.0)
        _finite_at_least("clip_gradient_norm", self.clip_gradient_norm, -math.inf)
        _one_of("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _one_of("saved_model_signature", self.saved_model_signature, ("toolkit", "2018"))
        if not 0.0 <= self.distillation_weight <= 1.0:
            raise UsageError(f"--distillation_weight={self.distillation_weight} must be in [0, 1]")
        _finite_positive("distillation_temperature", self.distillation_temperature)


TRAINING_FIELDS = tuple(f.name for f in dataclasses.fields(TrainingConfig))


def split_names(names: str) -> Tuple[str, ...]:
    """The comma-separated --feature_names."""
    return tuple(n.strip() for n in names.split(",") if n.strip())


def split_sizes(sizes: str) -> Tuple[int, ...]:
    """The comma-separated --feature_sizes."""
    try:
        return tuple(int(s) for s in sizes.split(",") if s.strip())
    except ValueError:
        raise UsageError(f"--feature_sizes={sizes!r} must be comma-separated integers") from None


def split_feature_lists(names: str, sizes: str) -> Tuple[Tuple[str, ...], Tuple[int, ...]]:
    """Splits --feature_names/--feature_sizes; their lengths must agree."""
    feature_names, feature_sizes = split_names(names), split_sizes(sizes)
    if len(feature_names) != len(feature_sizes):
        raise UsageError(
            f"--feature_names={names!r} has {len(feature_names)} entries but "
            f"--feature_sizes={sizes!r} has {len(feature_sizes)}")
    return feature_names, feature_sizes


def _csv(values: Sequence[Any]) -> str:
    return ",".join(str(v) for v in values)


def _at_least(name: str, value: int, minimum: int, text: str | None = None,
              hint: str = "") -> None:
    if value < minimum:
        raise UsageError(f"--{name}={value if text is None else text} must be at least "
                         f"{minimum}{hint}")


def _finite_at_least(name: str, value: float, minimum: float) -> None:
    if not math.isfinite(value) or value < minimum:
        bound = "finite" if minimum == -math.inf else f"finite and at least {minimum:g}"
        raise UsageError(f"--{name}={value} must be {bound}")


def _finite_positive(name: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"--{name}={value} must be a finite number above 0")


def _one_of(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise UsageError(f"--{name}={value} must be one of {', '.join(choices)}")


# --- model_flags.json ---------------------------------------------------------


@dataclass(frozen=True)
class StoredConfig:
    """What a model_flags.json holds: a full configuration (format 3) or, for a
    2018 or format-2 file, only the keys it has (``partial``)."""

    path: str
    partial: Dict[str, Any]
    model: ModelConfig | None = None
    training: TrainingConfig | None = None
    legacy_2018: bool = False


def json_path(train_dir: str) -> str:
    return os.path.join(train_dir, FILE_NAME)


def to_json_dict(model: ModelConfig, training: TrainingConfig | None = None) -> Dict[str, Any]:
    """The file's content: the 2018 keys first, then everything else."""
    data = model.data
    content: Dict[str, Any] = {
        "model": model.model,
        "feature_sizes": _csv(data.feature_sizes),
        "feature_names": _csv(data.feature_names),
        "frame_features": data.frame_features,
        "label_loss": model.label_loss,
        "format_version": FORMAT_VERSION,
        "num_classes": data.num_classes,
        "max_frames": data.max_frames,
        "ensemble_num": len(model.members),
        "ensemble_wts": model.weights,
        "members": [{"model": m.model, "weight": m.weight,
                     "settings": dataclasses.asdict(m.settings)} for m in model.members],
    }
    if training is not None:
        content["training"] = dataclasses.asdict(training)
    return content


def write_json(train_dir: str, model: ModelConfig, training: TrainingConfig | None = None) -> str:
    """Writes model_flags.json atomically (temporary name, then rename); returns its path."""
    import tensorflow as tf

    path = json_path(train_dir)
    tf.io.gfile.makedirs(train_dir)
    temporary = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with tf.io.gfile.GFile(temporary, "w") as f:
            f.write(json.dumps(to_json_dict(model, training), indent=2) + "\n")
        tf.io.gfile.rename(temporary, path, overwrite=True)
    finally:
        if tf.io.gfile.exists(temporary):
            tf.io.gfile.remove(temporary)
    return path


def read_json(train_dir: str) -> StoredConfig | None:
    """The run directory's model_flags.json, or None when there is none."""
    import tensorflow as tf

    path = json_path(train_dir)
    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            content = json.loads(f.read())
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{path} is not valid JSON: {e}") from None
    except tf.errors.OpError as e:
        raise UsageError(f"cannot read {path}: {e.message}") from None
    if not isinstance(content, dict):
        raise UsageError(f"{path} is not a JSON object")
    missing = [k for k in LEGACY_KEYS if k not in content]
    if missing:
        raise UsageError(f"{path} lacks the keys {', '.join(missing)}")
    try:
        partial = _partial(content)
        if content.get("format_version", 0) < FORMAT_VERSION:
            return StoredConfig(path, partial, legacy_2018="format_version" not in content)
        return StoredConfig(path, partial, model=_model_from_json(content),
                            training=_training_from_json(content.get("training")))
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"{path} does not describe a model: {type(e).__name__}: {e}") from None


def _partial(content: Mapping[str, Any]) -> Dict[str, Any]:
    """The keys every format has, in the configuration's types."""
    frame = content["frame_features"]
    if isinstance(frame, str):
        frame = frame.lower() == "true"
    partial = {
        "model": str(content["model"]),
        "feature_names": tuple(n.strip() for n in str(content["feature_names"]).split(",")),
        "feature_sizes": tuple(int(s) for s in str(content["feature_sizes"]).split(",")),
        "frame_features": bool(frame),
        "label_loss": str(content["label_loss"]),
    }
    if "num_classes" in content:
        partial["num_classes"] = int(content["num_classes"])
    return partial


def _typed(cls, values: Mapping[str, Any], what: str):
    """``cls(**values)`` with each value checked against the field's default type."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(unknown)}")
    typed = {}
    for name, value in values.items():
        default = known[name].default
        if isinstance(default, bool) and not isinstance(value, bool):
            raise TypeError(f"{what} {name}={value!r} is not true/false")
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if default is not None and not isinstance(value, type(default)):
            raise TypeError(f"{what} {name}={value!r} is not a {type(default).__name__}")
        typed[name] = value
    return cls(**typed)


def _model_from_json(content: Mapping[str, Any]) -> ModelConfig:
    partial = _partial(content)
    data = DataConfig(feature_names=partial["feature_names"],
                      feature_sizes=partial["feature_sizes"],
                      frame_features=partial["frame_features"],
                      num_classes=partial["num_classes"],
                      max_frames=int(content["max_frames"]))
    members = tuple(
        MemberConfig(model=str(m["model"]), weight=float(m["weight"]),
                     settings=_typed(ModelSettings, m.get("settings", {}), "setting"))
        for m in content["members"])
    if not members:
        raise ValueError("no members")
    return ModelConfig(data=data, members=members, label_loss=partial["label_loss"])


def _training_from_json(values: Mapping[str, Any] | None) -> TrainingConfig | None:
    return None if values is None else _typed(TrainingConfig, values, "training setting")
