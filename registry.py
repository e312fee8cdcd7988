"""One registry of the classes a flag names: models, video-level classifiers, label
losses and optimizers, and the one place that turns a member's settings into its
model's arguments.

Models register themselves with :func:`model` (frame-level) or
:func:`classifier` (video-level, usable alone or on top of a frame-level
model); losses with :func:`loss`.  Each model declares ``SETTINGS``, a map
from the setting (flag) names it reads to its ``create_model`` argument names;
a setting changed from its default that the chosen model does not read is an
error, so no flag is silently ignored.
"""
import importlib
from typing import Any, Dict, Mapping

from errors import UsageError
from model_config import DEFAULT_SETTINGS, SETTING_NAMES, MemberConfig

_MODELS: Dict[str, type] = {}
_CLASSIFIERS: Dict[str, type] = {}
_LOSSES: Dict[str, type] = {}
_ZOO_MODULES = ("frame_level_models", "video_level_models", "losses")
# The tf.compat.v1.train optimizers that take the learning rate as their only argument.
_OPTIMIZERS = ("AdamOptimizer", "AdagradOptimizer", "AdadeltaOptimizer",
               "GradientDescentOptimizer", "RMSPropOptimizer", "FtrlOptimizer",
               "ProximalAdagradOptimizer", "ProximalGradientDescentOptimizer")
CLASSIFIER_SETTING = "video_level_classifier_model"
# Read by model_graph for every model with compact storage (one that reads float16_flag).
INT8_SETTING = "quantize_int8"


def model(cls: type) -> type:
    """Class decorator: a frame-level model selectable by --model."""
    _MODELS[cls.__name__] = cls
    return cls


def classifier(cls: type) -> type:
    """Class decorator: a video-level model, for --model and --video_level_classifier_model."""
    _CLASSIFIERS[cls.__name__] = cls
    return model(cls)


def loss(cls: type) -> type:
    """Class decorator: a label loss selectable by --label_loss."""
    _LOSSES[cls.__name__] = cls
    return cls


def _find(table: Mapping[str, Any], name: str, flag: str, what: str) -> Any:
    for module in _ZOO_MODULES:
        importlib.import_module(module)
    if name not in table:
        raise UsageError(f"--{flag}={name} is not {what}; choices: {', '.join(sorted(table))}")
    return table[name]


def find_model(name: str) -> type:
    return _find(_MODELS, name, "model", "a model")


def is_video_level(name: str) -> bool:
    """True for a video-level model, which takes no ``num_frames``."""
    find_model(name)
    return name in _CLASSIFIERS


def find_classifier(name: str) -> type:
    return _find(_CLASSIFIERS, name, CLASSIFIER_SETTING, "a video-level model")


def find_loss(name: str) -> Any:
    """An instance of the loss class named by --label_loss."""
    return _find(_LOSSES, name, "label_loss", "a loss")()


def find_optimizer(name: str) -> type:
    # TensorFlow is imported here, not at the top: the scripts' flags import this module,
    # and their --help answers without loading TensorFlow.
    import tensorflow as tf

    table = {n: getattr(tf.compat.v1.train, n) for n in _OPTIMIZERS}
    return _find(table, name, "optimizer", "an optimizer that takes only a learning rate")


def settings_read_by(model_name: str, classifier_name: str) -> Dict[str, str]:
    """Setting name -> create_model argument of the model and, for a frame-level model,
    of its classifier (whose arguments the model passes on)."""
    cls = find_model(model_name)
    used = dict(cls.SETTINGS)
    if CLASSIFIER_SETTING in used:
        for name, argument in find_classifier(classifier_name).SETTINGS.items():
            used.setdefault(name, argument)
    if "float16_flag" in used:
        used[INT8_SETTING] = INT8_SETTING
    return used


def member_arguments(member: MemberConfig) -> Dict[str, Any]:
    """The ``create_model`` keyword arguments of one ensemble member.

    A setting that differs from its default and that the model does not read
    is a UsageError naming it (e.g. per-member NetVLAD sizes for an LstmModel
    ensemble, which would otherwise build identical members).
    """
    settings = member.settings
    used = settings_read_by(member.model, settings.video_level_classifier_model)
    ignored = [name for name in SETTING_NAMES if name not in used
               and getattr(settings, name) != getattr(DEFAULT_SETTINGS, name)]
    if ignored:
        name = ignored[0]
        raise UsageError(f"--{name}={getattr(settings, name)} is not a setting of "
                         f"{member.model}, which reads only "
                         f"{', '.join(sorted(used)) or 'no settings'}")
    return {argument: getattr(settings, name) for name, argument in used.items()
            if name != INT8_SETTING}
