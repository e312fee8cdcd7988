"""One exception type for problems the user can fix, reported in one line."""
import errno
import re
import sys
from typing import NoReturn

from absl import logging


class UsageError(Exception):
    """Bad input: a flag, a path, a file's content.  The message names it."""


NO_SPACE = "No space left on device"
# Temporary names our writers (and TensorFlow's) use beside a final name: a
# ``.tmp-<32 hex>-`` (or ``.old-``/``.new-``) prefix, a ``.tmp``, ``.tmp-<hex>``
# or ``.tempstate<digits>`` suffix.
_TEMP_PREFIX = re.compile(r"(^|/)\.(tmp|old|new)-[0-9a-f]{32}-")
_TEMP_SUFFIX = re.compile(r"(\.tmp(-?[0-9a-f]+)?|\.tempstate\d+)+$")


def final_name(path: str) -> str:
    """The name the user asked for, for a temporary file written on its way there."""
    return _TEMP_SUFFIX.sub("", _TEMP_PREFIX.sub(r"\1", path))


def disk_full_message(error: BaseException, path: str | None = None) -> str | None:
    """``No space left on device writing PATH`` when ``error`` is a full disk, else None.

    TensorFlow reports a full disk as a ResourceExhaustedError whose first line
    is "Graph execution error:" and whose hint is about memory; Python as
    OSError(ENOSPC) without the file.  ``path`` names the file when the error
    does not (or names only a temporary file).
    """
    text = getattr(error, "message", None) or str(error)
    is_full = getattr(error, "errno", None) == errno.ENOSPC or NO_SPACE in text
    if not is_full:
        return None
    if path is None:
        path = getattr(error, "filename", None)
    if path is None:
        line = next((line for line in text.splitlines() if NO_SPACE in line), "")
        path = line.split(";")[0].strip() if ";" in line else None
    return f"{NO_SPACE} writing {final_name(str(path))}" if path else NO_SPACE


def exit_with_message(message: str, code: int = 1) -> NoReturn:
    """Prints ``ERROR: message`` on one line to stderr and exits non-zero."""
    logging.flush()
    sys.stderr.write("ERROR: " + " ".join(str(message).split()) + "\n")
    sys.stderr.flush()
    sys.exit(code)


def require_positive(value: int, flag_name: str) -> None:
    """A count flag such as --top_k must be >= 1: checked before any work, since a bad
    value would otherwise fail (or write empty rows) only after the model has run."""
    if value is None or value < 1:
        raise UsageError(f"--{flag_name}={value} must be a positive integer")
