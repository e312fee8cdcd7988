"""Runs a script's main under absl with the toolkit's error contract.

A problem the user can fix ends in one ``ERROR:`` line naming the flag, file
or value and a non-zero exit, never in a TensorFlow traceback.
"""
import re
import sys
from typing import Callable

import tensorflow as tf
from absl import app, flags

import app_flags
import readers
from errors import UsageError, disk_full_message, exit_with_message, parse_flags


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


def run(main: Callable[[], None], script: str) -> None:
    """Parses the flags (with ``script``'s defaults) and calls ``main``."""
    app_flags.set_script_defaults(script)
    for flag in app_flags.script_flags(script):  # so --help lists them, not only --helpfull
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)

    def wrapped(argv):
        if len(argv) > 1:
            exit_with_message(f"unexpected arguments {' '.join(argv[1:])}: flags are --name=value")
        app_flags.log_unused_flags(script)
        tf.compat.v1.disable_eager_execution()
        try:
            main()
        except UsageError as e:
            exit_with_message(str(e))
        except tf.errors.OpError as e:
            exit_with_message(describe_op_error(e))

    app.run(wrapped, flags_parser=parse_flags)
