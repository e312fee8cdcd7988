"""Every flag of train.py, eval.py and inference.py, defined once.

Users paste one flag line into all three scripts, so each script accepts every
flag defined here and logs the given ones it does not use.  A flag defined
nowhere (a typo such as ``--max_step``) is rejected by absl at parse time.

Models read their hyperparameters through :func:`value`, which works before
the flags are parsed (tests, notebooks), so an explicit argument can always
win over the flag.
"""
from typing import Any, Dict, List, Tuple

from absl import flags, logging

from errors import UsageError

FLAGS = flags.FLAGS

TRAIN, EVAL, INFERENCE = "train", "eval", "inference"
_ALL = (TRAIN, EVAL, INFERENCE)
_TRAIN_EVAL = (TRAIN, EVAL)

# flag name -> scripts that read it; filled by the _define helpers below.
_USERS: Dict[str, Tuple[str, ...]] = {}


def _define(kind: str, name: str, default: Any, help_text: str, users=_ALL, **kw) -> None:
    getattr(flags, "DEFINE_" + kind)(name, default, help_text, **kw)
    _USERS[name] = tuple(users)


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
_define("string", "feature_names", "mean_rgb",
        "Comma-separated feature names, in the order they are concatenated.")
_define("string", "feature_sizes", "1024",
        "Comma-separated feature sizes, one per feature name.")
_define("bool", "frame_features", False,
        "True for frame-level (SequenceExample) data, False for video-level.")
_define("integer", "num_classes", 3862,
        "Number of classes (3862 for 2018 data, 4716 for 2017 data).")
_define("integer", "max_frames", 300, "Frames kept per video (truncate or zero-pad).")
_define("bool", "skip_corrupt_records", False,
        "Skip and count corrupt TFRecord entries instead of failing.")
_define("integer", "num_readers", 8, "Files read in parallel.")
_define("integer", "batch_size", 1024, "Examples per batch (per tower in training).")

# --- Training ----------------------------------------------------------------
_define("string", "checkpoint_file", "",
        "Checkpoint in train_dir to resume from (train) or evaluate (eval).", _TRAIN_EVAL)
_define("string", "model", "NetVLADModelLF",
        "Model class from frame_level_models or video_level_models.")
_define("bool", "start_new_model", False,
        "Clear train_dir and train from scratch.", (TRAIN,))
_define("integer", "num_gpu", 1, "GPUs to split each training step over.", (TRAIN,))
_define("bool", "cpu_towers", False,
        "Advanced/testing: run the --num_gpu towers on as many virtual CPU devices "
        "(without it, a machine with fewer GPUs trains with fewer towers).", (TRAIN,))
_define("string", "label_loss", "CrossEntropyLoss", "Loss class from losses.py.")
_define("float", "regularization_penalty", 1.0,
        "Weight of the regularisation losses in the total loss.", (TRAIN,))
_define("float", "base_learning_rate", 0.01, "Initial learning rate.", (TRAIN,))
_define("float", "learning_rate_decay", 0.95,
        "Learning rate decay factor per learning_rate_decay_examples.", (TRAIN,))
_define("float", "learning_rate_decay_examples", 4000000,
        "Examples seen between two learning-rate decays (staircase).", (TRAIN,))
_define("integer", "num_epochs", 5, "Passes over the training data.", (TRAIN,))
_define("integer", "max_steps", None, "Stop after this global step.", (TRAIN,))
_define("integer", "export_model_steps", 1000, "Steps between checkpoints.", (TRAIN,))
_define("integer", "save_checkpoint_secs", 900,
        "Also save a checkpoint when this many seconds passed since the last.", (TRAIN,))
_define("string", "optimizer", "AdamOptimizer",
        "Optimizer class from tf.compat.v1.train.", (TRAIN,))
_define("float", "clip_gradient_norm", 1.0,
        "Per-tensor gradient norm clip; <= 0 disables clipping.", (TRAIN,))
_define("bool", "log_device_placement", False, "Log where ops run.", (TRAIN,))
_define("bool", "export_saved_model", False,
        "Also write a SavedModel under train_dir/export/step_N at each checkpoint.", (TRAIN,))
_define("integer", "random_seed", None,
        "Graph-level random seed; None draws a fresh one.", (TRAIN,))

# --- Speed (performance.py) -----------------------------------------------------
_define("string", "mixed_precision", "none",
        "none, bfloat16 (matmuls in bfloat16 on CPUs with AVX512_BF16/AMX) or float16 "
        "(GPUs, with dynamic loss scaling); changes results beyond float32 round-off.",
        (TRAIN,))
_define("bool", "xla", False,
        "Compile the training step with XLA auto-clustering (GPUs; CPUs keep oneDNN).",
        (TRAIN,))
_define("integer", "intra_op_threads", 0, "Threads per op; 0: one per core.", (TRAIN,))
_define("integer", "inter_op_threads", 0, "Ops run at once; 0: one per core.", (TRAIN,))

# --- Ensembles -------------------------------------------------------------------
_define("integer", "ensemble_num", 1, "Number of models in one graph.")
_define("multi_integer", "netvlad_cluster_size", [64],
        "Cluster size per ensemble member (repeat the flag per member).")
_define("multi_integer", "netvlad_hidden_size", [1024],
        "Hidden size per ensemble member (repeat the flag per member).")
_define("multi_float", "ensemble_wts", [1.0],
        "Mixing weight per ensemble member (repeat the flag per member).")

# --- Evaluation ----------------------------------------------------------------
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

# --- Inference -------------------------------------------------------------------
_define("string", "input_model_tgz", "",
        "A .tgz holding the inference model files and model_flags.json.", (INFERENCE,))
_define("string", "untar_model_dir", "",
        "Where --input_model_tgz is unpacked (kept). Default: a fresh private temporary "
        "folder, removed at exit (2018: the shared /tmp/yt8m-model).", (INFERENCE,))
_define("string", "inference_model_file", "inference_model",
        "Name of the inference checkpoint in train_dir.", (INFERENCE,))
_define("string", "output_file", "", "Submission CSV to write.", (INFERENCE,))
_define("string", "output_model_tgz", "",
        "Also pack the inference model into this .tgz.", (INFERENCE,))

# --- Models ------------------------------------------------------------------------
_define("integer", "iterations", 30, "Frames sampled per video.")
_define("bool", "sample_random_frames", True,
        "Sample frames at random with replacement; False samples a random run.")
_define("bool", "sample_random_frames_at_eval", False,
        "Sample frames at random in eval and inference too (2018 behaviour).")
_define("bool", "netvlad_add_batch_norm", True, "Batch norm in the pooling blocks.")
_define("bool", "netvlad_relu", True,
        "ReLU after the hidden layer (no effect on NetVLADModelLF, as in 2018).")
_define("bool", "gating", False, "Context gating after the hidden layers.")
_define("bool", "gating_remove_diag", False, "Remove the diagonal of probability gating.")
_define("bool", "lightvlad", False, "Use LightVLAD pooling.")
_define("bool", "vlagd", False, "Use NetVLAGD pooling.")
_define("bool", "float16_flag", False, "Store the large weight matrices in float16.")
_define("string", "video_level_classifier_model", "MoeModel",
        "Classifier on top of frame-level pooling.")
_define("integer", "moe_num_mixtures", 5, "Experts per class in MoeModel.")
_define("float", "moe_l2", 1e-8, "L2 penalty of the MoE weights.")
_define("bool", "moe_prob_gating", False, "Gate the MoE probabilities.")
_define("string", "moe_prob_gating_input", "prob",
        "Input of probability gating: 'prob', or anything else for the hidden input.")
_define("integer", "moe_low_rank_gating", -1, "Rank of low-rank MoE gates; -1 is full.")
_define("bool", "dbof_add_batch_norm", True, "Batch norm on the DBoF input.")
_define("integer", "dbof_cluster_size", 16384, "DBoF cluster units.")
_define("integer", "dbof_hidden_size", 2048, "DBoF hidden units.")
_define("bool", "dbof_relu", True, "ReLU after the DBoF hidden layer.")
_define("string", "dbof_activation", "relu", "DBoF cluster activation: relu or glu.")
_define("string", "dbof_pooling_method", "max", "DbofModel frame pooling: max or average.")
_define("bool", "softdbof_maxpool", False, "Add max pooling to SoftDBoF.")
_define("bool", "fc_dimred", True, "Hidden layer after DBoF pooling.")
_define("integer", "fv_cluster_size", 64, "NetFV clusters.")
_define("integer", "fv_hidden_size", 2048, "NetFV hidden units.")
_define("bool", "fv_relu", True, "ReLU after the NetFV hidden layer.")
_define("bool", "fv_couple_weights", True, "Couple NetFV centres to the cluster weights.")
_define("float", "fv_coupling_factor", 0.01, "NetFV coupling factor.")
_define("integer", "lstm_cells", 1024, "LSTM units per layer.")
_define("integer", "lstm_layers", 2, "LSTM layers.")
_define("bool", "lstm_random_sequence", False, "Sample frames before the LSTM.")
_define("bool", "lstm_backward", False, "Read frames backwards in the LSTM.")
_define("integer", "gru_cells", 1024, "GRU units per layer.")
_define("integer", "gru_layers", 2, "GRU layers.")
_define("bool", "gru_random_sequence", False, "Sample frames before the GRU.")
_define("bool", "gru_backward", False, "Read frames backwards in the GRU.")

_SCRIPT_DEFAULTS = {
    INFERENCE: {"train_dir": "", "batch_size": 512, "num_readers": 12},
}


def value(name: str) -> Any:
    """The flag's value: parsed if the flags were parsed, else its default."""
    return FLAGS[name].value


def arg_or_flag(argument: Any, name: str) -> Any:
    """A model's explicit argument (even False or 0) wins; None means the flag's value."""
    return value(name) if argument is None else argument


def set_script_defaults(script: str) -> None:
    """Applies the per-script defaults of shared flag names (before parsing)."""
    for name, default in _SCRIPT_DEFAULTS.get(script, {}).items():
        FLAGS.set_default(name, default)


def script_flags(script: str) -> List[flags.Flag]:
    """The flags ``script`` reads, for its --help."""
    return [FLAGS[name] for name, users in _USERS.items() if script in users]


def log_unused_flags(script: str) -> None:
    """Logs once which flags given on the command line this script ignores."""
    unused = sorted(name for name, users in _USERS.items()
                    if FLAGS[name].present and script not in users)
    if unused:
        logging.info("%s.py does not use these given flags: %s", script, ", ".join(unused))


def parse_feature_flags(names: str, sizes: str) -> Tuple[List[str], List[int]]:
    """Splits --feature_names/--feature_sizes; their lengths must agree."""
    feature_names = [n.strip() for n in names.split(",") if n.strip()]
    try:
        feature_sizes = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--feature_sizes={sizes!r} must be comma-separated integers") from None
    if len(feature_names) != len(feature_sizes):
        raise UsageError(
            f"--feature_names={names!r} has {len(feature_names)} entries but "
            f"--feature_sizes={sizes!r} has {len(feature_sizes)}")
    return feature_names, feature_sizes


def ensemble_members() -> List[Tuple[int, int, float]]:
    """(cluster_size, hidden_size, weight) per ensemble member.

    A flag given once is broadcast to every member; otherwise each repeated
    flag must have exactly --ensemble_num values.
    """
    n = value("ensemble_num")
    if n < 1:
        raise UsageError(f"--ensemble_num={n} must be at least 1")
    columns = []
    for name in ("netvlad_cluster_size", "netvlad_hidden_size", "ensemble_wts"):
        values = list(value(name))
        if len(values) == 1:
            values = values * n
        if len(values) != n:
            raise UsageError(
                f"--{name} was given {len(values)} times but --ensemble_num={n}")
        columns.append(values)
    return list(zip(*columns, strict=True))
