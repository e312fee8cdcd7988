"""Every flag of train.py, eval.py and inference.py, defined once, and the one place
that turns them into the typed configuration (model_config.py).

Users paste one flag line into all three scripts, so each script accepts every
flag defined here and logs the given ones it does not use.  A flag defined
nowhere (a typo such as ``--max_step``) is rejected by absl at parse time.
Only the scripts import this module; what they build from it is passed down.

A run directory's model_flags.json wins over the flags: a model flag given on
the command line must agree with it (``--ensemble_wts`` excepted: the ensemble
workflow evaluates one graph with several mixings), and the flags not given
take the file's values.
"""
import dataclasses
import sys
from typing import Any, Callable, Dict, Iterable, Iterator, List, NoReturn, Sequence, Tuple

from absl import flags, logging

import registry
from errors import UsageError, require_positive
from model_config import (
    SETTING_NAMES,
    STORAGE_SETTINGS,
    TRAINING_FIELDS,
    DataConfig,
    MemberConfig,
    ModelConfig,
    ModelSettings,
    StoredConfig,
    TrainingConfig,
    read_json,
    split_feature_lists,
    split_names,
    split_sizes,
)

FLAGS = flags.FLAGS

TRAIN, EVAL, INFERENCE = "train", "eval", "inference"
_ALL = (TRAIN, EVAL, INFERENCE)
_TRAIN_EVAL = (TRAIN, EVAL)

# flag name -> scripts that read it, and its --help group; filled by _define.
_USERS: Dict[str, Tuple[str, ...]] = {}
_GROUP: Dict[str, str] = {}
HELP_GROUPS = ("data", "model", "training", "evaluation", "output")
_group = "data"  # the group of the flags defined next


def _define(kind: str, name: str, default: Any, help_text: str, users=_ALL, **kw) -> None:
    getattr(flags, "DEFINE_" + kind)(name, default, help_text, **kw)
    _USERS[name] = tuple(users)
    _GROUP[name] = _group


# --- Paths and data --------------------------------------------------------
_define("string", "train_dir", "/tmp/yt8m_model/",
        "Directory for checkpoints, model_flags.json and summaries.")
_define("string", "train_data_pattern", "",
        "Comma-separated globs of training TFRecord files.", (TRAIN,))
_define("string", "exclude_data_pattern", "",
        "Comma-separated globs (or @FILE with one name per line) of files kept "
        "out of training, e.g. held-out validate files.", (TRAIN,))
_define("string", "eval_data_pattern", "",
        "Comma-separated globs of evaluation TFRecord files.", (EVAL,))
_define("string", "input_data_pattern", "",
        "Comma-separated globs of TFRecord files to predict.", (INFERENCE,))
_DATA, _TRAINING = DataConfig(), TrainingConfig()
_define("string", "feature_names", ",".join(_DATA.feature_names),
        "Comma-separated feature names, in the order they are concatenated.")
_define("string", "feature_sizes", ",".join(map(str, _DATA.feature_sizes)),
        "Comma-separated feature sizes, one per feature name.")
_define("bool", "frame_features", _DATA.frame_features,
        "True for frame-level (SequenceExample) data, False for video-level.")
_define("integer", "num_classes", _DATA.num_classes,
        "Number of classes (3862 for 2018 data, 4716 for 2017 data).")
_define("integer", "max_frames", _DATA.max_frames, "Frames kept per video (truncate or zero-pad).")
_define("bool", "skip_corrupt_records", _TRAINING.skip_corrupt_records,
        "Skip and count corrupt TFRecord entries instead of failing.")
_define("integer", "num_readers", _TRAINING.num_readers, "Files read in parallel.")
_define("integer", "batch_size", _TRAINING.batch_size,
        "Examples per batch (per tower in training).")

# --- Training ----------------------------------------------------------------
_group = "training"
_define("string", "checkpoint_file", "",
        "Checkpoint in train_dir to resume from (train) or evaluate (eval).", _TRAIN_EVAL)
_define("string", "model", "NetVLADModelLF",
        "Model class from frame_level_models or video_level_models.")
_define("list", "member_models", [],
        "Model class per ensemble member, comma-separated, for an ensemble mixing models "
        "(e.g. NeXtVLADModel,NetVLADModelLF); default: --model for every member.")
_define("bool", "start_new_model", False,
        "Clear train_dir and train from scratch.", (TRAIN,))
_define("integer", "num_gpu", _TRAINING.num_gpu, "GPUs to split each training step over.", (TRAIN,))
_define("bool", "cpu_towers", _TRAINING.cpu_towers,
        "Advanced/testing: run the --num_gpu towers on as many virtual CPU devices "
        "(without it, a machine with fewer GPUs trains with fewer towers).", (TRAIN,))
_define("string", "label_loss", "CrossEntropyLoss", "Loss class from losses.py.")
_define("float", "regularization_penalty", _TRAINING.regularization_penalty,
        "Weight of the regularisation losses in the total loss.", (TRAIN,))
_define("float", "base_learning_rate", _TRAINING.base_learning_rate,
        "Initial learning rate.", (TRAIN,))
_define("float", "learning_rate_decay", _TRAINING.learning_rate_decay,
        "Learning rate decay factor per learning_rate_decay_examples.", (TRAIN,))
_define("float", "learning_rate_decay_examples", _TRAINING.learning_rate_decay_examples,
        "Examples seen between two learning-rate decays (staircase).", (TRAIN,))
_define("integer", "num_epochs", _TRAINING.num_epochs, "Passes over the training data.", (TRAIN,))
_define("integer", "max_steps", _TRAINING.max_steps, "Stop after this global step.", (TRAIN,))
_define("integer", "export_model_steps", _TRAINING.export_model_steps,
        "Steps between checkpoints.", (TRAIN,))
_define("integer", "save_checkpoint_secs", _TRAINING.save_checkpoint_secs,
        "Also save a checkpoint when this many seconds passed since the last.", (TRAIN,))
_define("string", "optimizer", _TRAINING.optimizer,
        "Optimizer class from tf.compat.v1.train.", (TRAIN,))
_define("float", "clip_gradient_norm", _TRAINING.clip_gradient_norm,
        "Per-tensor gradient norm clip; <= 0 disables clipping.", (TRAIN,))
_define("string", "teacher_predictions", _TRAINING.teacher_predictions,
        "Distillation: a teacher's predictions of the training files, written by inference.py "
        "--output_teacher_dir (one shard per file, same base name).", (TRAIN,))
_define("float", "distillation_weight", _TRAINING.distillation_weight,
        "Distillation: loss = (1 - w) * loss(labels) + w * T^2 * loss(teacher) at "
        "temperature T.", (TRAIN,))
_define("float", "distillation_temperature", _TRAINING.distillation_temperature,
        "Distillation: temperature T of both predictions in the teacher term.", (TRAIN,))
_define("bool", "log_device_placement", _TRAINING.log_device_placement,
        "Log where ops run.", (TRAIN,))
_define("bool", "export_saved_model", _TRAINING.export_saved_model,
        "Also write a SavedModel under train_dir/export/step_N at each checkpoint.", (TRAIN,))
_define("string", "saved_model_signature", _TRAINING.saved_model_signature,
        "serving_default of the SavedModels: toolkit (serialized_examples -> video_ids, "
        "classes, scores) or 2018 (example_bytes -> video_id, class_indexes, predictions); "
        "both are exported.", (TRAIN,))
_define("integer", "random_seed", _TRAINING.random_seed,
        "Graph-level random seed; None draws a fresh one.", (TRAIN,))

# --- Speed (performance.py) -----------------------------------------------------
_define("string", "mixed_precision", _TRAINING.mixed_precision,
        "none, bfloat16 (matmuls in bfloat16 on CPUs with AVX512_BF16/AMX) or float16 "
        "(GPUs, with dynamic loss scaling); changes results beyond float32 round-off.",
        (TRAIN,))
_define("bool", "xla", _TRAINING.xla,
        "Compile the training step with XLA auto-clustering (GPUs; CPUs keep oneDNN).",
        (TRAIN,))
_define("integer", "intra_op_threads", _TRAINING.intra_op_threads,
        "Threads per op; 0: one per core.", (TRAIN,))
_define("integer", "inter_op_threads", _TRAINING.inter_op_threads,
        "Ops run at once; 0: one per core.", (TRAIN,))

# --- Ensembles -------------------------------------------------------------------
_group = "model"
_define("integer", "ensemble_num", 1, "Number of models in one graph.")
_define("multi_float", "ensemble_wts", [1.0],
        "Mixing weight per ensemble member (repeat the flag per member).")
_define("list", "member_storage", [],
        "Storage of the large matrices per ensemble member, comma-separated: float32, "
        "float16 or int8 (e.g. float16,int8); default: --float16_flag / --quantize_int8 for "
        "every member.")

# --- Evaluation ----------------------------------------------------------------
_group = "evaluation"
_define("bool", "run_once", False, "Evaluate one checkpoint and stop.", (EVAL,))
_define("integer", "top_k", 20, "Predictions per video kept for GAP and the CSV.",
        (EVAL, INFERENCE))
_define("string", "checkpoint", "",
        "Checkpoint in train_dir to evaluate: model.ckpt-N or model.ckpt-N.index.", (EVAL,))
_define("bool", "create_meta_only", False,
        "Re-save the checkpoint with its inference meta graph and stop.", (EVAL,))
_define("bool", "force_output_model_name", False,
        "Re-save the evaluated checkpoint as train_dir/inference_model.", (EVAL,))
_define("integer", "eval_interval_secs", 60,
        "Seconds to sleep between looks for a new checkpoint.", (EVAL,))
_define("string", "checkpoints", "",
        "Sweep: evaluate these steps of train_dir/model.ckpt-N in one run (e.g. 150010,170010).",
        (EVAL,))
_define("string", "checkpoints_start_end", "",
        "Sweep: 'START,END', every train_dir/model.ckpt-N with START <= N <= END.", (EVAL,))
_define("integer", "num_last_checkpoints", 0,
        "Sweep: the N checkpoints train_dir/model.ckpt-N with the highest steps.", (EVAL,))
_define("integer", "sweep_models_per_pass", 0,
        "Advanced: checkpoints scored per pass over the eval data in a sweep (one model copy "
        "each); 0 picks as many as fit in half the free memory.", (EVAL,))
_define("float", "progress_interval_secs", 10.0,
        "Advanced: seconds between progress lines (0: one per batch).", (EVAL, INFERENCE))

# --- Inference -------------------------------------------------------------------
_group = "output"
_define("string", "input_model_tgz", "",
        "A .tgz holding the inference model files and model_flags.json.", (INFERENCE,))
_define("string", "untar_model_dir", "",
        "Where --input_model_tgz is unpacked (kept). Default: a fresh private temporary "
        "folder, removed at exit (2018: the shared /tmp/yt8m-model).", (INFERENCE,))
_define("string", "inference_model_file", "inference_model",
        "Name of the inference checkpoint in train_dir.", (INFERENCE,))
_define("string", "output_file", "", "Submission CSV to write.", (INFERENCE,))
_define("string", "output_teacher_dir", "",
        "Also (or instead of the CSV) write each video's --top_k classes and scores here, "
        "one TFRecord shard per input file, as the teacher of train.py "
        "--teacher_predictions (reads the files one at a time).", (INFERENCE,))
_define("string", "output_model_tgz", "",
        "Also pack the inference model into this .tgz.", (INFERENCE,))

# --- Models: one flag per setting of model_config.ModelSettings, with its default ---------
_SETTING_HELP = {
    "iterations": "Frames sampled per video.",
    "sample_random_frames": "Sample frames at random with replacement; False samples a random run.",
    "sample_random_frames_at_eval": "Sample frames at random in eval and inference too "
                                    "(2018 behaviour).",
    "netvlad_cluster_size": "Cluster size per ensemble member (repeat the flag per member).",
    "netvlad_hidden_size": "Hidden size per ensemble member (repeat the flag per member).",
    "netvlad_add_batch_norm": "Batch norm in the pooling blocks.",
    "netvlad_relu": "ReLU after the hidden layer (no effect on NetVLADModelLF, as in 2018).",
    "gating": "Context gating after the hidden layers.",
    "gating_remove_diag": "Remove the diagonal of probability gating.",
    "lightvlad": "Use LightVLAD pooling.",
    "vlagd": "Use NetVLAGD pooling.",
    "float16_flag": "Store the large weight matrices in float16.",
    "video_level_classifier_model": "Classifier on top of frame-level pooling.",
    "moe_num_mixtures": "Experts per class in MoeModel.",
    "moe_l2": "L2 penalty of the MoE weights.",
    "moe_prob_gating": "Gate the MoE probabilities.",
    "moe_prob_gating_input": "Input of probability gating: 'prob', or anything else for the "
                             "hidden input.",
    "moe_low_rank_gating": "Rank of low-rank MoE gates; -1 is full.",
    "dbof_add_batch_norm": "Batch norm on the DBoF input.",
    "dbof_cluster_size": "DBoF cluster units.",
    "dbof_hidden_size": "DBoF hidden units.",
    "dbof_relu": "ReLU after the DBoF hidden layer.",
    "dbof_activation": "DBoF cluster activation: relu or glu.",
    "dbof_pooling_method": "DbofModel frame pooling: max or average.",
    "softdbof_maxpool": "Add max pooling to SoftDBoF.",
    "fc_dimred": "Hidden layer after DBoF pooling.",
    "fv_cluster_size": "NetFV clusters.",
    "fv_hidden_size": "NetFV hidden units.",
    "fv_relu": "ReLU after the NetFV hidden layer.",
    "fv_couple_weights": "Couple NetFV centres to the cluster weights.",
    "fv_coupling_factor": "NetFV coupling factor.",
    "lstm_cells": "LSTM units per layer.",
    "lstm_layers": "LSTM layers.",
    "lstm_random_sequence": "Sample frames before the LSTM.",
    "lstm_backward": "Read frames backwards in the LSTM.",
    "gru_cells": "GRU units per layer.",
    "gru_layers": "GRU layers.",
    "gru_random_sequence": "Sample frames before the GRU.",
    "gru_backward": "Read frames backwards in the GRU.",
    "nextvlad_cluster_size": "NeXtVLAD clusters of the rgb stream (audio: half).",
    "nextvlad_hidden_size": "NeXtVLAD hidden units.",
    "groups": "NeXtVLAD groups of the rgb stream (audio: half).",
    "expansion": "NeXtVLAD expansion factor of the frame features.",
    "drop_rate": "NeXtVLAD dropout rate after the aggregation (training only).",
    "gating_reduction": "NeXtVLAD reduction factor of the SE context gating.",
    "mix_number": "MixNeXtVLADModel: NeXtVLAD branches, mixed by learned per-video weights.",
    "cl_temperature": "MixNeXtVLADModel: softmax temperature of the distillation from the "
                      "mixture to each branch.",
    "cl_lambda": "MixNeXtVLADModel: weight of the distillation term in the training loss.",
    "quantize_int8": "Store the large matrices (those --float16_flag stores in float16) as "
                     "int8 with per-column float32 scales; filled from float32 checkpoints by "
                     "build_ensemble.py / overwrite_float16_ckpt.py, never trained.",
}
# Settings that may differ per ensemble member: the flag is repeated, once per member.
MEMBER_FLAGS = ("netvlad_cluster_size", "netvlad_hidden_size")
_KINDS = {bool: "bool", int: "integer", float: "float", str: "string"}


def _define_settings() -> None:
    global _group
    _group = "model"
    for setting in dataclasses.fields(ModelSettings):
        kind = _KINDS[type(setting.default)]
        if setting.name in MEMBER_FLAGS:
            _define("multi_" + kind, setting.name, [setting.default], _SETTING_HELP[setting.name])
        else:
            _define(kind, setting.name, setting.default, _SETTING_HELP[setting.name])


_define_settings()

_SCRIPT_DEFAULTS = {
    INFERENCE: {"train_dir": "", "batch_size": 512, "num_readers": 12},
}
# Help texts that differ per script.
_SCRIPT_HELP = {
    (INFERENCE, "batch_size"): "Videos per batch.",
    (EVAL, "batch_size"): "Videos per batch.",
    (INFERENCE, "train_dir"): "Run directory holding the inference model (eval.py's re-save) "
                              "and model_flags.json.",
    (EVAL, "train_dir"): "Run directory: its model_flags.json describes the model.",
}
# Flags that describe the model or its data: eval.py and inference.py read them from
# model_flags.json, and check any given one against it.
_MODEL_GROUP_NOTE = (
    "The model and its data format come from TRAIN_DIR/model_flags.json. Every model flag "
    "of train.py (--model, --iterations, --netvlad_cluster_size, --feature_names, ...) is "
    "accepted and must agree with the file; --ensemble_wts may change the mixing weights.")


def value(name: str) -> Any:
    """The flag's value: parsed if the flags were parsed, else its default."""
    return FLAGS[name].value


def present(name: str) -> bool:
    """True when the flag was given on the command line."""
    return FLAGS[name].present > 0


def set_script_defaults(script: str) -> None:
    """Applies the per-script defaults of shared flag names (before parsing)."""
    for name, default in _SCRIPT_DEFAULTS.get(script, {}).items():
        FLAGS.set_default(name, default)


def log_unused_flags(script: str) -> None:
    """Logs once which flags given on the command line this script ignores."""
    unused = sorted(name for name, users in _USERS.items()
                    if FLAGS[name].present and script not in users)
    if unused:
        logging.info("%s.py does not use these given flags: %s", script, ", ".join(unused))


# What the model reads, though defined among the data and training flags.
_GROUP.update({name: "model" for name in ("feature_names", "feature_sizes", "frame_features",
                                          "num_classes", "max_frames", "model", "label_loss",
                                          "member_models")})


def _flag_help(script: str, flag: flags.Flag) -> str:
    text = _SCRIPT_HELP.get((script, flag.name), flag.help)
    default = flag.default_as_str if flag.default is not None else "none"
    return f"  --{flag.name}: {text} (default: {default})"


def help_text(script: str, doc: str) -> str:
    """``script``'s --help: its docstring, then the flags it reads, by group."""
    lines = [doc.strip(), ""]
    for group in HELP_GROUPS:
        names = [n for n in sorted(_USERS) if _GROUP[n] == group and script in _USERS[n]]
        if script != TRAIN and group == "model":
            names = ["ensemble_wts"] if script == EVAL else []
            lines += ["model flags:", "  " + _MODEL_GROUP_NOTE]
        elif names:
            lines.append(f"{group} flags:")
        lines += [_flag_help(script, FLAGS[name]) for name in names]
        if names or group == "model":
            lines.append("")
    lines.append("--helpfull lists every flag, TensorFlow's and absl's included.")
    return "\n".join(lines)


def answer_help(script: str, doc: str) -> NoReturn:
    """Prints ``script``'s --help (``doc``: its docstring) and exits; quiet_startup calls it
    before the script imports TensorFlow, which takes longer than the help."""
    set_script_defaults(script)
    print(help_text(script, doc))
    sys.exit(0)


def runner_hooks(script: str) -> Tuple[Callable[[], None], Callable[[], None]]:
    """cli.run's (before_parse, after_parse) for ``script``: its defaults, and one log line
    naming given flags it ignores (its --help was answered by :func:`answer_help`)."""
    def before() -> None:
        set_script_defaults(script)

    def after() -> None:
        log_unused_flags(script)
    return before, after


def positive(name: str) -> int:
    """An integer flag that must be at least 1 (``--top_k``, ``--batch_size``, ...)."""
    number = value(name)
    require_positive(number, name)
    return number


def define_member_checkpoints() -> None:
    """--member_checkpoints, of build_ensemble.py and search_ensemble_weights.py."""
    flags.DEFINE_string("member_checkpoints", "",
                        "Comma-separated single-model checkpoints (full paths), one per "
                        "ensemble member, in the order of the repeated model flags.")


def tool_model_config() -> ModelConfig:
    """The model of a tool that builds one (search, size report): --train_dir's
    model_flags.json when --train_dir is given and has one (flags must agree), else the
    flags."""
    stored = None
    if present("train_dir"):
        stored = read_json(value("train_dir"))
    return resolve_model_config(stored)


# --- Flags -> configuration ------------------------------------------------------


def _per_member(name: str, members: int) -> List[Any]:
    """A repeated flag's values, one per member; a single value is broadcast."""
    values = list(value(name))
    if len(values) == 1:
        values = values * members
    if len(values) != members:
        raise UsageError(f"--{name} was given {len(values)} times but --ensemble_num={members}")
    return values


def data_config() -> DataConfig:
    names, sizes = split_feature_lists(value("feature_names"), value("feature_sizes"))
    return DataConfig(feature_names=names, feature_sizes=sizes,
                      frame_features=bool(value("frame_features")),
                      num_classes=value("num_classes"), max_frames=value("max_frames"))


def member_size_settings(model: str, members: int) -> Dict[str, str]:
    """Which setting each repeated member flag sets: in an ensemble, as in 2018, member i's
    --netvlad_cluster_size / --netvlad_hidden_size are the cluster and hidden size of
    whatever model it is (DbofModelLF: dbof_cluster_size, NeXtVLADModel:
    nextvlad_cluster_size, ...); a model without such a size keeps the flag's own setting
    (and refuses a changed one)."""
    targets = {name: name for name in MEMBER_FLAGS}
    if members > 1:
        arguments = registry.find_model(model).SETTINGS
        for flag, argument in (("netvlad_cluster_size", "cluster_size"),
                               ("netvlad_hidden_size", "hidden_size")):
            targets[flag] = next((s for s, a in arguments.items() if a == argument), flag)
    return targets


def member_models(count: int) -> List[str]:
    """Each member's model: --member_models (an ensemble mixing models), else --model."""
    models = list(value("member_models"))
    if not models:
        return [value("model")] * count
    if present("model"):
        raise UsageError("--model and --member_models are both given: an ensemble mixing "
                         "models takes --member_models alone")
    if len(models) != count:
        raise UsageError(f"--member_models names {len(models)} models but "
                         f"--ensemble_num={count}")
    return models


def member_storage(count: int) -> List[str]:
    """Each member's --member_storage, checked; empty when the flag is not given."""
    storages = list(value("member_storage"))
    if not present("member_storage"):
        return []
    given = f"--member_storage={','.join(storages)}"
    for flag in ("float16_flag", "quantize_int8"):
        if present(flag):
            raise UsageError(f"{given} and --{flag} are both given: --member_storage sets "
                             "each member's storage alone")
    if len(storages) != count:
        raise UsageError(f"{given} names {len(storages)} storages but --ensemble_num={count}")
    unknown = next((s for s in storages if s not in STORAGE_SETTINGS), None)
    if unknown is not None:
        raise UsageError(f"{given}: {unknown!r} is not one of {', '.join(STORAGE_SETTINGS)}")
    return storages


def _check_compact_storage(storages: Sequence[str], index: int, model: str,
                           classifier: str) -> None:
    """A member stored float16 or int8 must have matrices to store so (read float16_flag)."""
    if (storages[index] != "float32"
            and "float16_flag" not in registry.settings_read_by(model, classifier)):
        raise UsageError(f"--member_storage={','.join(storages)}: member {index} "
                         f"({model}) has no float16 or int8 storage; give it float32")


Sources = Dict[str, str]


def _member_settings(models: Sequence[str]) -> List[Tuple[Dict[str, Any], Sources]]:
    """Per member, its settings from the flags and the flag that set each one.

    In an ensemble mixing models a shared flag goes only to the members whose model
    reads it (the others keep its default); a given flag no member reads is an error.
    """
    count, mixed = len(models), len(set(models)) > 1
    repeated = {name: _per_member(name, count) for name in MEMBER_FLAGS}
    storages = member_storage(count)
    classifier = value(registry.CLASSIFIER_SETTING)
    result = []
    for index, model in enumerate(models):
        reads = registry.settings_read_by(model, classifier) if mixed else SETTING_NAMES
        sources = {name: name for name in SETTING_NAMES
                   if name not in MEMBER_FLAGS and name in reads}
        for flag, setting in member_size_settings(model, count).items():
            sources[setting] = flag
        settings = {setting: repeated[flag][index] if flag in MEMBER_FLAGS else value(flag)
                    for setting, flag in sources.items()}
        if storages:
            _check_compact_storage(storages, index, model, classifier)
            settings.update(STORAGE_SETTINGS[storages[index]])
        result.append((settings, sources))
    if mixed:
        used = {flag for _, sources in result for flag in sources.values()}
        unread = [n for n in SETTING_NAMES if present(n) and n not in used]
        if unread:
            raise UsageError(f"--{unread[0]} is not a setting of any of --member_models="
                             f"{','.join(models)}")
    return result


def model_config() -> ModelConfig:
    """The model configuration the command line describes (no file consulted)."""
    count = value("ensemble_num")
    if count < 1:
        raise UsageError(f"--ensemble_num={count} must be at least 1")
    models = member_models(count)
    weights = _per_member("ensemble_wts", count)
    members = tuple(
        MemberConfig(model=models[i], weight=float(weights[i]), settings=ModelSettings(**settings))
        for i, (settings, _) in enumerate(_member_settings(models)))
    return ModelConfig(data=data_config(), members=members, label_loss=value("label_loss"))


def training_config(stored: TrainingConfig | None = None) -> TrainingConfig:
    """The training settings: the flags given, else ``stored``'s (a resumed run's), else
    the flags' defaults."""
    return TrainingConfig(**{
        name: value(name) if stored is None or present(name) else getattr(stored, name)
        for name in TRAINING_FIELDS})


def _text(values: Any) -> str:
    if isinstance(values, (list, tuple)):
        return ",".join(str(v) for v in values)
    return str(values)


def _disagree(name: str, flag_value: Any, path: str, stored_value: Any) -> UsageError:
    return UsageError(f"--{name}={_text(flag_value)} disagrees with {path}, which says "
                      f"{name}={_text(stored_value)}; drop the flag, or use another --train_dir")


def _stored_values(config: ModelConfig) -> Dict[str, Any]:
    """What the file says for each model flag, in the flags' form (per member: a list)."""
    data = config.data
    stored: Dict[str, Any] = {
        "feature_names": data.feature_names, "feature_sizes": data.feature_sizes,
        "frame_features": data.frame_features, "num_classes": data.num_classes,
        "max_frames": data.max_frames, "label_loss": config.label_loss,
        "ensemble_num": len(config.members), "model": [m.model for m in config.members],
        "member_storage": [m.settings.storage for m in config.members]}
    for name in SETTING_NAMES:
        stored[name] = [getattr(m.settings, name) for m in config.members]
    return stored


# One agreement check: (flag, key of _stored_values, member index or None for the
# whole value, the value the flags give).
Check = Tuple[str, str, int | None, Any]


def _flag_values(models: Sequence[str]) -> Iterator[Check]:
    """The given model flags as checks against :func:`_stored_values`, members ``models``
    (the file's); lazily, so a disagreeing model or member count is reported first."""
    members = len(models)
    for name in ("feature_names", "feature_sizes", "frame_features", "num_classes",
                 "max_frames", "label_loss", "ensemble_num", "model", "member_models",
                 "member_storage"):
        if not present(name):
            continue
        if name == "feature_names":  # each alone: the other may come from the file
            yield name, name, None, split_names(value(name))
        elif name == "feature_sizes":
            yield name, name, None, split_sizes(value(name))
        elif name == "model":
            yield name, name, None, [value(name)] * members
        elif name == "member_models":
            yield name, "model", None, list(value(name))
        else:
            yield name, name, None, value(name)
    for index, (settings, sources) in enumerate(_member_settings(models)):
        for setting, flag in sources.items():
            if present(flag):
                yield flag, setting, index, settings[setting]


def _check_agreement(stored: Dict[str, Any], checks: Iterable[Check], path: str) -> None:
    for flag, key, index, flag_value in checks:
        if key not in stored:
            continue
        stored_value = stored[key] if index is None else stored[key][index]
        if list(_as_list(flag_value)) != list(_as_list(stored_value)):
            raise _disagree(flag, value(flag), path, _shown(stored[key]))


def _as_list(values: Any) -> Sequence[Any]:
    return values if isinstance(values, (list, tuple)) else [values]


def _shown(values: Any) -> Any:
    """A per-member list whose members agree, as one value."""
    if isinstance(values, list) and values and all(v == values[0] for v in values):
        return values[0]
    return values


def resolve_model_config(stored: StoredConfig | None) -> ModelConfig:
    """The model configuration of a run: the file's, checked against the given flags.

    No file: the flags'.  A 2018 file (five keys) or a format-2 one (seven):
    its keys, checked against the given flags, and the flags for the rest; a
    2018 file's ``model`` is ignored (the 2018 code recorded --model but
    always built NetVLADModelLF), unless --model is given.
    """
    if stored is None:
        return model_config()
    if stored.model is None:
        known = dict(stored.partial)
        if stored.legacy_2018:
            known["model"] = value("model") if present("model") else "NetVLADModelLF"
        from_flags = model_config()
        members = len(from_flags.members)
        file_values = {k: ([v] * members if k == "model" else v) for k, v in known.items()}
        _check_agreement(file_values, _flag_values([known["model"]] * members), stored.path)
        data = dataclasses.replace(from_flags.data, **{
            k: v for k, v in known.items() if k in ("feature_names", "feature_sizes",
                                                    "frame_features", "num_classes")})
        members_config = tuple(dataclasses.replace(m, model=known["model"])
                               for m in from_flags.members)
        return ModelConfig(data=data, members=members_config, label_loss=known["label_loss"])
    config = stored.model
    _check_agreement(_stored_values(config), _flag_values([m.model for m in config.members]),
                     stored.path)
    if present("ensemble_wts"):
        config = config.with_weights(_per_member("ensemble_wts", len(config.members)))
    return config
