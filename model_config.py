"""train_dir/model_flags.json: what a checkpoint was trained on.

train.py writes it; eval.py and inference.py take the data and model choices
from it, so a checkpoint is always read with the graph it was trained with.
"""
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List

import tensorflow as tf

import app_flags
from errors import UsageError

FILE_NAME = "model_flags.json"
FORMAT_VERSION = 2
# The five keys the 2018 code wrote; our files add num_classes and format_version.
LEGACY_KEYS = ("model", "feature_sizes", "feature_names", "frame_features", "label_loss")


@dataclass(frozen=True)
class ModelConfig:
    """The choices a checkpoint depends on, resolved from flags and json."""

    model: str
    feature_names: List[str]
    feature_sizes: List[int]
    frame_features: bool
    label_loss: str
    num_classes: int

    def to_json_dict(self) -> Dict[str, Any]:
        return {
            "model": self.model,
            "feature_sizes": ",".join(str(s) for s in self.feature_sizes),
            "feature_names": ",".join(self.feature_names),
            "frame_features": self.frame_features,
            "label_loss": self.label_loss,
            "num_classes": self.num_classes,
            "format_version": FORMAT_VERSION,
        }


def from_flags() -> ModelConfig:
    """The configuration the command line asks for."""
    names, sizes = app_flags.parse_feature_flags(
        app_flags.value("feature_names"), app_flags.value("feature_sizes"))
    return ModelConfig(
        model=app_flags.value("model"),
        feature_names=names,
        feature_sizes=sizes,
        frame_features=bool(app_flags.value("frame_features")),
        label_loss=app_flags.value("label_loss"),
        num_classes=int(app_flags.value("num_classes")),
    )


def _path(train_dir: str) -> str:
    return os.path.join(train_dir, FILE_NAME)


def read_json(train_dir: str) -> Dict[str, Any]:
    path = _path(train_dir)
    if not tf.io.gfile.exists(path):
        raise UsageError(f"{path} not found: is --train_dir the directory train.py wrote?")
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            data = json.loads(f.read())
    except ValueError as e:
        raise UsageError(f"{path} is not valid JSON: {e}") from None
    missing = [k for k in LEGACY_KEYS if k not in data]
    if missing:
        raise UsageError(f"{path} lacks the keys {', '.join(missing)}")
    return data


def _normalised(data: Dict[str, Any]) -> Dict[str, Any]:
    """Json values in the ModelConfig's types, for comparisons."""
    frame = data["frame_features"]
    if isinstance(frame, str):
        frame = frame.lower() == "true"
    return {
        "model": data["model"],
        "feature_names": [n.strip() for n in str(data["feature_names"]).split(",")],
        "feature_sizes": [int(s) for s in str(data["feature_sizes"]).split(",")],
        "frame_features": bool(frame),
        "label_loss": data["label_loss"],
    }


def check_or_write(train_dir: str, config: ModelConfig) -> None:
    """Writes model_flags.json, or checks that an existing one agrees."""
    path = _path(train_dir)
    if tf.io.gfile.exists(path):
        data = read_json(train_dir)
        stored = _normalised(data)
        wanted = _normalised(config.to_json_dict())
        stored_classes = data.get("num_classes", config.num_classes)
        diffs = [k for k in wanted if stored[k] != wanted[k]]
        if stored_classes != config.num_classes:
            diffs.append("num_classes")
        if diffs:
            raise UsageError(
                f"{path} disagrees with the flags on {', '.join(diffs)}; use the same flags, "
                "another --train_dir, or --start_new_model to start over")
        return
    tf.io.gfile.makedirs(train_dir)
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(config.to_json_dict(), indent=2, sort_keys=True) + "\n")
    tf.io.gfile.rename(tmp, path, overwrite=True)


def for_evaluation(model_dir: str) -> ModelConfig:
    """Resolves the configuration for eval/inference: the json wins.

    A flag given on the command line with a different value is an error naming
    both.  A 2018 json (no format_version) recorded the --model flag although
    the 2018 code always built NetVLADModelLF, so its model key is ignored.
    """
    data = read_json(model_dir)
    stored = _normalised(data)
    legacy = "format_version" not in data
    if legacy:
        stored["model"] = (app_flags.value("model") if app_flags.FLAGS["model"].present
                           else "NetVLADModelLF")
    flag_values = _normalised({
        "model": app_flags.value("model"),
        "feature_names": app_flags.value("feature_names"),
        "feature_sizes": app_flags.value("feature_sizes"),
        "frame_features": app_flags.value("frame_features"),
        "label_loss": app_flags.value("label_loss"),
    })
    for key in stored:
        if app_flags.FLAGS[key].present and flag_values[key] != stored[key]:
            raise UsageError(
                f"--{key}={app_flags.value(key)} disagrees with {_path(model_dir)}, "
                f"which says {key}={data[key]!r}")
    num_classes = int(data.get("num_classes", app_flags.value("num_classes")))
    if app_flags.FLAGS["num_classes"].present and app_flags.value("num_classes") != num_classes:
        raise UsageError(
            f"--num_classes={app_flags.value('num_classes')} disagrees with "
            f"{_path(model_dir)}, which says num_classes={num_classes}")
    return ModelConfig(num_classes=num_classes, **stored)
