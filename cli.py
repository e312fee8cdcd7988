"""The one command-line runner of every script and tool.

It parses the flags and calls the script's ``main`` under the toolkit's error
contract: a problem the user can fix ends in one ``ERROR:`` line naming the
flag, file or value and a non-zero exit, never in a traceback.  The runner
defines no flags itself, so a tool accepts only the flags it defines.
"""
import logging
import re
from typing import Callable, List

import tensorflow as tf
from absl import app, flags

import readers
from errors import UsageError, disk_full_message, exit_with_message


def describe_op_error(error: tf.errors.OpError) -> str:
    """The useful first part of a TensorFlow runtime error, on one line."""
    full = disk_full_message(error)
    if full:
        return full
    data_message = readers.data_error_message(error)
    if data_message:
        return data_message
    message = error.message.split("\n")[0]
    message = re.sub(r"\s*\[\[\{\{node [^}]*\}\}\]\]", "", message)
    return f"{type(error).__name__}: {message}"


def _parse_flags(argv: List[str]) -> List[str]:
    """absl's flag parsing, but a bad flag (``--max_step``) ends in one ``ERROR:`` line
    (absl's own report is two lines, the last of which does not name the flag)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        exit_with_message(f"{e} (--helpfull lists the flags)")


def _quiet_tensorflow_logger() -> None:
    """TensorFlow's Python INFO lines ("Restoring parameters from ...", each printed twice:
    by its own handler and by absl's) are hidden unless --verbosity is given; its
    warnings are printed once."""
    if flags.FLAGS["verbosity"].present:
        return
    tf_logger = tf.get_logger()
    tf_logger.setLevel(logging.WARNING)
    tf_logger.propagate = False


def run(main: Callable[[], None], before_parse: Callable[[], None] | None = None,
        after_parse: Callable[[], None] | None = None) -> None:
    """Parses the flags and calls ``main``.

    ``before_parse`` defines the script's own flags (or sets per-script
    defaults); ``after_parse`` runs before ``main`` under the same contract.
    """
    if before_parse:
        before_parse()

    def wrapped(argv: List[str]) -> None:
        if len(argv) > 1:
            exit_with_message(f"unexpected arguments {' '.join(argv[1:])}: flags are --name=value")
        tf.compat.v1.disable_eager_execution()
        _quiet_tensorflow_logger()
        try:
            if after_parse:
                after_parse()
            main()
        except UsageError as e:
            exit_with_message(str(e))
        except tf.errors.OpError as e:
            exit_with_message(describe_op_error(e))

    app.run(wrapped, flags_parser=_parse_flags)
