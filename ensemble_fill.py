"""Fills ensemble variables from single-model checkpoints: member i's variables
``tower/model{i}/X`` (``tower/X`` for member 0) from ``tower/X`` of the i-th
checkpoint, converted to the target's dtype (float16 rounds to nearest; an int8 X is quantised per
column and its scales ``X_int8_scale`` computed from the same source, see
core_fp16.quantize_int8).

Shared by overwrite_float16_ckpt.py (targets from a template checkpoint),
build_ensemble.py and search_ensemble_weights.py (targets from a graph).
"""
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
import tensorflow as tf

import checkpoint_utils
import core_fp16
import model_graph
from errors import UsageError


def _model_variables(reader) -> Dict[str, Tuple[List[int], tf.DType]]:
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    return {n: (shapes[n], dtypes[n]) for n in checkpoint_utils.model_variable_names(shapes)}


def template_members(template: str, variables: Sequence[str]) -> Dict[str, Tuple[int, str]]:
    """Member and inner name of every template variable; members must be 0..n-1."""
    members = {}
    for name in variables:
        member = checkpoint_utils.ensemble_member(name)
        if member is None:
            raise UsageError(f"template variable {name} in {template} is not under tower/, "
                             "so no checkpoint can fill it")
        members[name] = member
    indices = sorted({i for i, _ in members.values()})
    if indices != list(range(len(indices))):
        raise UsageError(f"template {template} has ensemble members {indices}; "
                         f"expected 0..{len(indices) - 1}")
    return members


def fill_template(template: str, checkpoints: Sequence[str]) -> Dict[str, np.ndarray]:
    """Value of every template model variable, taken from its member's checkpoint."""
    template_vars = _model_variables(checkpoint_utils.open_checkpoint(template, "template"))
    return fill_variables(template_vars, checkpoints, template)


def fill_variables(template_vars: Mapping[str, Tuple[List[int], tf.DType]],
                   checkpoints: Sequence[str], template: str) -> Dict[str, np.ndarray]:
    """Values for the ensemble variables ``template_vars`` (name -> (shape, dtype)).

    Also used by build_ensemble.py on the variables of a graph built from
    flags; ``template`` names their origin in error messages.
    """
    members = template_members(template, sorted(template_vars))
    num_members = len({i for i, _ in members.values()})
    if len(checkpoints) != num_members:
        raise UsageError(f"--checkpoints has {len(checkpoints)} paths but template {template} "
                         f"holds {num_members} models")
    values = {}
    for index, source in enumerate(checkpoints):
        reader = checkpoint_utils.open_checkpoint(source)
        source_vars = _model_variables(reader)
        wanted = {"tower/" + inner: name for name, (i, inner) in members.items() if i == index}
        scales = _int8_scales(template_vars, wanted)
        for name in sorted(set(source_vars) - set(wanted)):
            raise UsageError(f"checkpoint {source} variable {name} has no counterpart in "
                             f"template {template} (member {index})")
        for source_name, name in sorted(wanted.items()):
            shape, dtype = template_vars[name]
            if source_name in scales:  # computed from the weight it scales
                source_name = scales[source_name]
                shape = template_vars[wanted[source_name]][0]
            if source_name not in source_vars:
                raise UsageError(f"template variable {name} has no source: checkpoint "
                                 f"{source} has no variable {source_name}")
            if source_vars[source_name][0] != shape:
                raise UsageError(
                    f"template variable {name} has shape {shape} but {source_name} in "
                    f"checkpoint {source} has shape {source_vars[source_name][0]}")
            value = checkpoint_utils.read_tensor(reader, source_name, source)
            values[name] = _converted(value, dtype, name.endswith(core_fp16.INT8_SCALE_SUFFIX))
    return values


def _int8_scales(template_vars: Mapping[str, Tuple[List[int], tf.DType]],
                 wanted: Mapping[str, str]) -> Dict[str, str]:
    """Source name of each int8 scale variable -> the source weight it is computed from."""
    suffix = core_fp16.INT8_SCALE_SUFFIX
    return {source: source[:-len(suffix)] for source, name in wanted.items()
            if source.endswith(suffix)
            and template_vars.get(name[:-len(suffix)], (None, None))[1] == tf.int8}


def _converted(value: np.ndarray, dtype: tf.DType, is_scale: bool) -> np.ndarray:
    """A source value in the target's dtype; int8 targets (and their scales) quantised."""
    if is_scale or dtype == tf.int8:
        return core_fp16.quantize_int8(value)[1 if is_scale else 0]
    return value.astype(dtype.as_numpy_dtype)


def graph_variables(graph: tf.Graph) -> Dict[str, tf.Variable]:
    """The model variables (and global_step) of a graph built by model_graph."""
    with graph.as_default():
        return {v.op.name: v for v in model_graph.model_variables()}


def member_values(variables: Mapping[str, tf.Variable], checkpoints: Sequence[str],
                  origin: str) -> Dict[str, np.ndarray]:
    """Value of every variable of ``variables``: the members' weights, global_step 0."""
    specs: Dict[str, Tuple[List[int], tf.DType]] = {
        name: (var.shape.as_list(), var.dtype.base_dtype)
        for name, var in variables.items() if name != checkpoint_utils.GLOBAL_STEP}
    values = fill_variables(specs, checkpoints, origin)
    step = variables.get(checkpoint_utils.GLOBAL_STEP)
    if step is not None:
        values[checkpoint_utils.GLOBAL_STEP] = np.zeros([], step.dtype.base_dtype.as_numpy_dtype)
    return values


def load_members(sess: tf.compat.v1.Session, checkpoints: Sequence[str], origin: str) -> None:
    """Fills every model variable of ``sess.graph`` from the member checkpoints."""
    variables = graph_variables(sess.graph)
    checkpoint_utils.assign_values(sess, variables, member_values(variables, checkpoints, origin))


def member_checkpoints(text: str, members: int) -> List[str]:
    """The comma-separated --member_checkpoints; there must be one per ensemble member."""
    paths = [checkpoint_utils.strip_checkpoint_suffix(p.strip())
             for p in text.split(",") if p.strip()]
    if len(paths) != members:
        raise UsageError(f"--member_checkpoints has {len(paths)} paths but the model "
                         f"describes {members} models (--ensemble_num={members})")
    return paths
