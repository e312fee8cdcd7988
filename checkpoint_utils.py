"""Checkpoint naming, listing, reading and atomic writing, in one place.

Training checkpoints are ``DIR/model.ckpt-<step>``; every other checkpoint
(eval re-saves, averaged and overwritten ones) lives beside them under other
names.  Only training saves are recorded in the ``checkpoint`` state file, so
resuming never picks up an inference checkpoint; and ``latest_checkpoint``
ignores that file altogether and looks at the ``model.ckpt-N.index`` files.

Replacing a checkpoint.  A checkpoint is several files (``NAME.index``,
``NAME.meta``, ``NAME.data-*``), so no single rename replaces it.  The rule,
for a write of ``DIR/NAME`` with a fresh 32-hex ``T``:

1. the Saver writes the new files as ``DIR/.tmp-T-NAME.*``;
2. the old ``NAME.*`` move aside to ``.old-T-NAME.*``, the index first;
3. the commit: ``.tmp-T-NAME.index`` is renamed ``.new-T-NAME.index``;
4. the new data and meta move to ``NAME.*``, then the index, last;
5. the old files are deleted.

So ``NAME.index`` exists only when ``NAME`` is complete.  After a kill -9 at
any moment, the next write of ``NAME`` (every writer calls
:func:`repair_checkpoint` first; train.py also at its start, for its whole
series) finishes the new checkpoint when ``.new-T-NAME.index`` exists, else
moves ``.old-T-NAME`` back, and deletes the rest of the temporary files:
``NAME`` loads as the old or the new checkpoint.  ``T`` starts with the
writer's pid, so a repair leaves alone the files of another live process of
the same machine (two evaluations re-saving one checkpoint at once: the last
to finish wins).

All paths go through ``tf.io.gfile``: local, ``gs://`` and ``ram://`` work.
"""
import os
import posixpath
import re
import uuid
from typing import Any, Callable, Collection, Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging
from google.protobuf import text_format

import run_lock
from errors import UsageError, disk_full_message

gfile = tf.io.gfile

TRAIN_BASENAME = "model.ckpt"
GLOBAL_STEP = "global_step"

# Slot names of the tf.compat.v1.train optimizers (default optimizer names and
# the `_1`, `_2` suffixes TF adds to the second and third slot of one variable).
# Used when the list of all variable names is not at hand.
_KNOWN_SLOT = re.compile(
    r"/(Adam|Momentum|RMSProp|Adagrad|AdagradDA|ProximalAdagrad|Ftrl|Adadelta|"
    r"ExponentialMovingAverage)(_\d+)?$")
_BETA_POWER = re.compile(r"(^|/)beta[12]_power(_\d+)?$")
_MEMBER = re.compile(r"^tower/model(\d+)/(.*)$")
_STEP_SUFFIX = re.compile(r"-(\d+)$")
_FILE_SUFFIX = re.compile(r"\.(index|meta|data-\d+-of-\d+)$")
# The replacement rule's temporary files (module docstring): kind, token, base,
# suffix (with the .tempstate* / .tmp* of a file still being written).
_TEMP_KINDS = ("tmp", "old", "new")
_TEMP_FILE = re.compile(r"\.(tmp|old|new)-([0-9a-f]{32})-(.+)"
                        r"(\.(?:index|meta|data-\d+-of-\d+)(?:\.tempstate\d+|\.tmp-?[0-9a-f]*)?)")


def _join(directory: str, name: str) -> str:
    """Joins with '/', which is right for local, gs:// and ram:// alike."""
    return posixpath.join(directory, name) if directory else name


def _split(path: str) -> Tuple[str, str]:
    """(directory, basename) of a checkpoint prefix, for any file system."""
    return posixpath.split(path)


def strip_checkpoint_suffix(path: str) -> str:
    """``model.ckpt-10.index`` (or .meta, .data-*) -> ``model.ckpt-10``."""
    return _FILE_SUFFIX.sub("", path)


def checkpoint_exists(path: str) -> bool:
    """True when the checkpoint prefix ``path`` has its ``.index`` file."""
    return gfile.exists(path + ".index")


def step_of(path: str) -> int | None:
    """The N of ``...-N`` (``model.ckpt-170010`` -> 170010); None otherwise."""
    match = _STEP_SUFFIX.search(strip_checkpoint_suffix(path))
    return int(match.group(1)) if match else None


def list_checkpoints(prefix_or_dir: str) -> List[Tuple[int, str]]:
    """Every ``<prefix>-N`` that has an .index, as (N, path) sorted by N.

    ``prefix_or_dir`` is a prefix such as ``DIR/model.ckpt``, or a directory,
    which means ``DIR/model.ckpt``.  Names with anything after the step
    (``model.ckpt-10_backup``) are not checkpoints of this series.
    """
    prefix = prefix_or_dir
    index_files = [] if prefix.endswith("/") else gfile.glob(prefix + "-*.index")
    if not index_files and gfile.isdir(prefix):
        prefix = _join(prefix.rstrip("/"), TRAIN_BASENAME)
        index_files = gfile.glob(prefix + "-*.index")
    directory, base = _split(prefix)
    pattern = re.compile(re.escape(base) + r"-(\d+)\.index")
    found = []
    for index_file in index_files:
        match = pattern.fullmatch(_split(index_file)[1])
        if match:
            found.append((int(match.group(1)), _join(directory, base + "-" + match.group(1))))
    return sorted(found)


def latest_checkpoint(train_dir: str, basename: str = TRAIN_BASENAME) -> str | None:
    """The ``train_dir/<basename>-N`` with the highest N, or None.

    The ``checkpoint`` state file is deliberately not consulted: 2018 tools
    rewrote it to point at inference checkpoints.
    """
    found = list_checkpoints(_join(train_dir.rstrip("/"), basename))
    return found[-1][1] if found else None


def inference_name(checkpoint_basename: str, force_output_model_name: bool,
                   ensemble_weights: Sequence[float]) -> str | None:
    """Name of eval.py's inference re-save of a checkpoint (SPEC 7), None for none.

    ``inference_model`` when forced; an ``inference_model*ensemble*`` name
    gets the weights spliced in (``ensemble`` -> ``ensemble_039_026_021_014``);
    any other inference model is not re-saved; ``model.ckpt-170010`` becomes
    ``inference_model_170010``; an averaged checkpoint (``avg`` in the name)
    becomes ``inference_model_<name>``.
    """
    name = checkpoint_basename
    if force_output_model_name:
        return "inference_model"
    if "inference_model" in name:
        if "ensemble" not in name:
            return None
        text = repr([float(w) for w in ensemble_weights]).replace(",", "").replace(" ", "_")
        for char in ".[]":
            text = text.replace(char, "")
        return name.replace("ensemble", "ensemble_" + text)
    if "avg" not in name:
        return "inference_model_" + name.rsplit("-", 1)[-1]
    return "inference_model_" + name


def ensemble_member(name: str) -> Tuple[int, str] | None:
    """(member index, name inside the model) of an ensemble variable, else None.

    ``tower/model10/X`` -> (10, ``X``); ``tower/X`` -> (0, ``X``).  The exact
    pattern keeps model1 and model10 apart.
    """
    match = _MEMBER.match(name)
    if match:
        return int(match.group(1)), match.group(2)
    if name.startswith("tower/"):
        return 0, name[len("tower/"):]
    return None


def _parent(name: str) -> str | None:
    return name.rsplit("/", 1)[0] if "/" in name else None


def is_model_variable(name: str, all_names: Collection[str] | None = None) -> bool:
    """False for optimizer state and ``global_step``, True for model weights.

    Optimizer slots are named ``<var>/<SlotName>``: when ``all_names`` (every
    variable of the same checkpoint or graph) is given, a variable whose
    parent name is itself a variable is a slot, whatever the optimizer; the
    default slot names of the tf.compat.v1.train optimizers are recognised
    without it.  Adam's ``beta1_power``/``beta2_power`` are dropped too.
    """
    if name == GLOBAL_STEP or _BETA_POWER.search(name) or _KNOWN_SLOT.search(name):
        return False
    return not (all_names is not None and _parent(name) in all_names)


def model_variable_names(names: Iterable[str]) -> List[str]:
    """The model variables among ``names`` (all of one checkpoint), in order."""
    names = list(names)
    everything = set(names)
    return [n for n in names if is_model_variable(n, everything)]


def model_variables(var_list: Sequence[tf.Variable]) -> List[tf.Variable]:
    """``var_list`` without optimizer slots, beta powers and global_step."""
    keep = set(model_variable_names(v.op.name for v in var_list))
    return [v for v in var_list if v.op.name in keep]


def restorable_variables(checkpoint: str,
                         variables: Sequence[tf.Variable] | Mapping[str, tf.Variable],
                         hint: str) -> List[tf.Variable]:
    """The ``variables`` that ``checkpoint`` holds, checked against it.

    ``variables``: a list (checkpoint names = their names) or a mapping from
    checkpoint names.  A model variable the checkpoint lacks, or holds in
    another shape, means the flags describe another graph: a UsageError naming
    it, ending in ``hint`` (restoring would otherwise "succeed" and fail later
    in a reshape, or write a broken re-save).  Missing training state is the
    caller's to handle.
    """
    stored = open_checkpoint(checkpoint).get_variable_to_shape_map()
    named = dict(variables) if isinstance(variables, Mapping) else {
        v.op.name: v for v in variables}
    names = list(named)
    for name, var in named.items():
        if name in stored and list(stored[name]) != var.shape.as_list():
            raise UsageError(f"checkpoint {checkpoint} has {name} with shape {stored[name]} but "
                             f"the flags give {var.shape.as_list()}; {hint}")
    missing_model = [n for n in names if n not in stored and is_model_variable(n, names)]
    if missing_model:
        raise UsageError(f"checkpoint {checkpoint} lacks {len(missing_model)} variables of the "
                         f"graph the flags describe (e.g. {missing_model[0]}); {hint}")
    return [var for name, var in named.items() if name in stored]


def create_global_step(graph: tf.Graph | None = None) -> tf.Variable:
    """An int32 ``global_step`` variable (0), as in every 2018 artefact.

    TF2's get_or_create_global_step makes an int64 one, which cannot restore
    a 2018 checkpoint.  Call it at the top variable scope.
    """
    graph = graph or tf.compat.v1.get_default_graph()
    with graph.as_default():
        return tf.compat.v1.get_variable(
            GLOBAL_STEP, shape=[], dtype=tf.int32,
            initializer=tf.compat.v1.zeros_initializer(), trainable=False,
            collections=[tf.compat.v1.GraphKeys.GLOBAL_VARIABLES,
                         tf.compat.v1.GraphKeys.GLOBAL_STEP])


def open_checkpoint(path: str, what: str = "checkpoint") -> Any:
    """A reader for ``path``; a missing or unreadable one is a UsageError."""
    if not checkpoint_exists(path):
        raise UsageError(f"{what} {path} does not exist (no {path}.index)")
    try:
        return tf.compat.v1.train.NewCheckpointReader(path)
    except Exception as e:  # the reader raises OpError, ValueError, IndexError, ...
        raise UsageError(f"cannot read {what} {path}: {describe_error(e)}") from None


def model_bytes(path: str) -> int:
    """Bytes of the model variables of checkpoint ``path`` (optimizer state left out)."""
    reader = open_checkpoint(path)
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    return sum(int(np.prod(shapes[name])) * dtypes[name].size
               for name in model_variable_names(shapes))


def read_tensor(reader: Any, name: str, path: str) -> np.ndarray:
    """One tensor of a checkpoint; a corrupt data file is a UsageError naming it."""
    try:
        return reader.get_tensor(name)
    except Exception as e:  # the reader raises OpError, ValueError, IndexError, ...
        raise UsageError(
            f"cannot read {name} from checkpoint {path}: {describe_error(e)}") from None


def describe_error(error: Exception) -> str:
    """One line of an error's message: TF messages run on for pages.

    A full disk says so and names the file; for a "Graph execution error:"
    the cause is the line before the failing node's ``[[{{node ...}}]]``.
    """
    full = disk_full_message(error)
    if full:
        return full
    lines = [line.strip() for line in (getattr(error, "message", None) or str(error)).splitlines()
             if line.strip()]
    if not lines:
        return type(error).__name__
    if lines[0] == "Graph execution error:":
        causes = [lines[i - 1] for i in range(1, len(lines)) if lines[i].startswith("[[")]
        return causes[0] if causes else lines[-1]
    return lines[0]


def save_atomically(saver: tf.compat.v1.train.Saver, sess: tf.compat.v1.Session,
                    save_path: str, global_step: Any = None, write_meta_graph: bool = True,
                    record_in_state: bool = False,
                    write_meta: Callable[[str], None] | None = None) -> str:
    """Saves to ``save_path`` (``-<global_step>`` appended) by the replacement rule.

    See the module docstring: the final name holds the old checkpoint or the
    new one, never a mix, whenever the process dies.  ``write_meta`` writes
    the meta graph to the path it is given, instead of the Saver's.
    ``record_in_state`` (training saves only) records every kept checkpoint of
    this series in the directory's ``checkpoint`` state file.  Returns the
    final checkpoint prefix.
    """
    if global_step is not None and not isinstance(global_step, (int, np.integer)):
        global_step = tf.compat.v1.train.global_step(sess, global_step)
    final = save_path if global_step is None else f"{save_path}-{int(global_step)}"
    directory, base = _split(final)
    if directory:
        gfile.makedirs(directory)
    repair_checkpoint(final)
    token = _new_token()
    temp = _temp_prefix(directory, "tmp", token, base)
    try:
        saver.save(sess, temp, write_meta_graph=write_meta_graph and write_meta is None,
                   write_state=False)
        if write_meta:
            write_meta(temp + ".meta")
        _install(directory, base, token)
    except BaseException:
        _repair_after_failure(final)
        raise
    if record_in_state:
        kept = [path for _, path in list_checkpoints(save_path)]
        write_checkpoint_state(directory, final, kept)
    return final


def write_checkpoint_state(directory: str, latest: str, kept: Sequence[str]) -> None:
    """Writes ``directory/checkpoint`` (the state file 2018 tools and TensorBoard read)
    under a temporary name, then renames it; what update_checkpoint_state wrote."""
    state = tf.compat.v1.train.generate_checkpoint_state_proto(
        directory, latest, all_model_checkpoint_paths=list(kept))
    path = _join(directory, "checkpoint")
    temp = f"{_join(directory, '.tmp-')}{uuid.uuid4().hex}-checkpoint"
    try:
        with gfile.GFile(temp, "w") as f:
            f.write(text_format.MessageToString(state))
        gfile.rename(temp, path, overwrite=True)
    finally:
        if gfile.exists(temp):
            gfile.remove(temp)


def _new_token() -> str:
    """32 hex digits: this process's pid, then random ones (see :func:`_live_writer`)."""
    return f"{os.getpid() & 0xFFFFFFFF:08x}{uuid.uuid4().hex[:24]}"


def _live_writer(directory: str, token: str) -> bool:
    """True when ``token``'s files belong to another live process of this machine, which
    is still writing them (two evaluations re-saving one checkpoint at once): a repair
    must leave them alone.  Object stores (gs://) are shared between machines, where a
    pid says nothing; there the rule stays one writer per name."""
    if "://" in directory:
        return False
    pid = int(token[:8], 16)
    return pid not in (0, os.getpid()) and run_lock.process_alive(pid)


def repair_checkpoint(path: str) -> None:
    """Finishes or undoes an interrupted write of checkpoint ``path``; removes its temporary files.

    Forward to the new checkpoint once its index was committed, else back to
    the old one (see the module docstring).  Only for a writer of ``path``,
    before it writes: never while another process writes ``path``.
    """
    directory, base = _split(path)
    tokens = {token: names for token, names in _temp_files(directory).get(base, {}).items()
              if not _live_writer(directory, token)}
    if not checkpoint_exists(path):
        committed = [t for t, names in tokens.items() if ("new", ".index") in names]
        moved_aside = [t for t, names in tokens.items() if ("old", ".index") in names]
        if committed:
            _roll_forward(directory, base, committed[0])
            logging.warning("Finished the interrupted write of checkpoint %s", path)
        elif moved_aside:
            _move(_temp_prefix(directory, "old", moved_aside[0], base), path, index_last=True)
            logging.warning("Restored checkpoint %s after an interrupted write", path)
    for token in tokens:
        _remove_temp_files(directory, base, token)


def repair_checkpoints(directory: str, basename: str = TRAIN_BASENAME) -> None:
    """:func:`repair_checkpoint` for each ``<basename>-N`` with temporary files in ``directory``."""
    series = re.compile(re.escape(basename) + r"-\d+")
    for base in _temp_files(directory):
        if series.fullmatch(base):
            repair_checkpoint(_join(directory, base))


def _temp_prefix(directory: str, kind: str, token: str, base: str) -> str:
    return _join(directory, f".{kind}-{token}-{base}")


def _temp_files(directory: str) -> Dict[str, Dict[str, set]]:
    """base -> token -> {(kind, suffix)} of the replacement rule's files in ``directory``."""
    found: Dict[str, Dict[str, set]] = {}
    for kind in _TEMP_KINDS:
        for path in gfile.glob(_join(directory, f".{kind}-*")):
            match = _TEMP_FILE.fullmatch(_split(path)[1])
            if match:
                kind_found, token, base, suffix = match.groups()
                found.setdefault(base, {}).setdefault(token, set()).add((kind_found, suffix))
    return found


def _checkpoint_files(prefix: str) -> List[str]:
    """The index, meta and data files of checkpoint ``prefix``: no other name."""
    return [path for path in gfile.glob(prefix + ".*")
            if _FILE_SUFFIX.fullmatch(path[len(prefix):])]


def _move(source: str, target: str, index_last: bool) -> None:
    """Renames the files of checkpoint ``source`` to ``target``, the index first or last."""
    files = _checkpoint_files(source)
    index = [path for path in files if path.endswith(".index")]
    others = [path for path in files if not path.endswith(".index")]
    for path in others + index if index_last else index + others:
        gfile.rename(path, target + path[len(source):], overwrite=True)


def _install(directory: str, base: str, token: str) -> None:
    """Replaces checkpoint ``base`` by the complete ``.tmp-<token>-<base>``."""
    final = _join(directory, base)
    _move(final, _temp_prefix(directory, "old", token, base), index_last=False)
    gfile.rename(_temp_prefix(directory, "tmp", token, base) + ".index",
                 _temp_prefix(directory, "new", token, base) + ".index")
    _roll_forward(directory, base, token)


def _roll_forward(directory: str, base: str, token: str) -> None:
    """Moves the committed new checkpoint of ``token`` in (index last), then drops the old."""
    final = _join(directory, base)
    _move(_temp_prefix(directory, "tmp", token, base), final, index_last=True)
    gfile.rename(_temp_prefix(directory, "new", token, base) + ".index", final + ".index",
                 overwrite=True)
    _remove_temp_files(directory, base, token)


def _remove_temp_files(directory: str, base: str, token: str) -> None:
    for kind in _TEMP_KINDS:
        for path in gfile.glob(_temp_prefix(directory, kind, token, base) + "*"):
            if gfile.isdir(path):
                gfile.rmtree(path)
            else:
                gfile.remove(path)


def _repair_after_failure(path: str) -> None:
    """A failed save: the old checkpoint back, no temporary files; the error is the caller's."""
    try:
        repair_checkpoint(path)
    except Exception as e:  # the file system failing: the next write of path repairs
        logging.warning("Could not clean up after the failed write of %s: %s", path,
                        describe_error(e))


def check_writable(path: str, flag: str, is_directory: bool = False) -> None:
    """Fails early, naming ``--flag``, when ``path`` (a file, or a directory) cannot be written.

    Creates the (parent) directory and a probe file in it, which is removed
    again; an hour of work should not end in "cannot write the output".
    """
    try:
        if not is_directory and gfile.isdir(path):
            raise UsageError(f"--{flag}={path} is a directory; give a file name")
        directory = path.rstrip("/") if is_directory else _split(path)[0]
        if directory:
            gfile.makedirs(directory)
        probe = _join(directory, f".tmp-{uuid.uuid4().hex}-write-test")
        with gfile.GFile(probe, "w") as f:
            f.write("")
        gfile.remove(probe)
    except (tf.errors.OpError, OSError) as e:
        raise UsageError(f"--{flag}={path} is not writable: {describe_error(e)}") from None


def copy_atomically(local_path: str, target: str) -> None:
    """Copies a finished file to ``target`` (any file system) under a temporary
    name, then renames it: ``target`` is the old file or the new one, never
    part of one, and a failed copy leaves no temporary file behind."""
    temp = f"{target}.tmp-{uuid.uuid4().hex}"
    try:
        gfile.copy(local_path, temp, overwrite=True)
        gfile.rename(temp, target, overwrite=True)
    finally:
        if gfile.exists(temp):
            gfile.remove(temp)


def write_checkpoint(values: Mapping[str, np.ndarray], save_path: str, global_step: int = 0,
                     meta_graph_path: str | None = None) -> str:
    """Writes ``values`` (name -> array) as checkpoint ``<save_path>-<global_step>``.

    The checkpoint also holds an int32 ``global_step``.  Its meta graph is a
    graph of plain variables, or, with ``meta_graph_path``, that meta graph
    (which must have a variable of the same shape and dtype for every value),
    so scripts that load the meta graph can restore the result.  Written
    atomically; the ``checkpoint`` state file is not touched.
    """
    with tf.Graph().as_default() as graph:
        if meta_graph_path:
            tf.compat.v1.train.import_meta_graph(meta_graph_path, clear_devices=True)
        variables: Dict[str, tf.Variable] = {
            v.op.name: v for v in tf.compat.v1.global_variables()}
        if GLOBAL_STEP not in variables:
            variables[GLOBAL_STEP] = create_global_step(graph)
        step_dtype = variables[GLOBAL_STEP].dtype.base_dtype.as_numpy_dtype
        feed = {GLOBAL_STEP: np.asarray(global_step, step_dtype)}
        for name, value in values.items():
            value = np.asarray(value)
            var = variables.get(name)
            if var is None:
                if meta_graph_path:
                    raise UsageError(f"meta graph {meta_graph_path} has no variable {name}")
                var = variables[name] = _plain_variable(name, value)
            _check_matches(var, value, meta_graph_path)
            feed[name] = value
        saved = {name: variables[name] for name in feed}
        saver = tf.compat.v1.train.Saver(var_list=saved, allow_empty=True)
        with tf.compat.v1.Session(graph=graph) as sess:
            assign_values(sess, saved, feed)
            return save_atomically(saver, sess, save_path, global_step=global_step,
                                   write_meta_graph=True, record_in_state=False)


def assign_values(sess: tf.compat.v1.Session, variables: Mapping[str, tf.Variable],
                  values: Mapping[str, np.ndarray]) -> None:
    """Sets ``variables[name]`` to ``values[name]`` for every name of ``values``.

    What Variable.load does: run the initializer with its initial value fed,
    so the values are not embedded in the graph as constants.
    """
    for name, value in values.items():
        var = variables[name]
        sess.run(var.initializer, {var.initializer.inputs[1]: value})


def _plain_variable(name: str, value: np.ndarray) -> tf.Variable:
    """A variable of ``value``'s shape and dtype; the value is fed, not embedded."""
    return tf.compat.v1.get_variable(
        name, shape=value.shape, dtype=tf.as_dtype(value.dtype),
        initializer=tf.compat.v1.zeros_initializer(), trainable=False)


def _check_matches(var: tf.Variable, value: np.ndarray, meta_graph_path: str | None) -> None:
    shape = var.shape.as_list()
    dtype = var.dtype.base_dtype
    if shape != list(value.shape) or dtype != tf.as_dtype(value.dtype):
        raise UsageError(
            f"variable {var.op.name} is {dtype.name}{shape} in meta graph {meta_graph_path} "
            f"but {tf.as_dtype(value.dtype).name}{list(value.shape)} in its checkpoint")
