"""One exception type for problems the user can fix, reported in one line."""
import sys
from typing import NoReturn

from absl import logging


class UsageError(Exception):
    """Bad input: a flag, a path, a file's content.  The message names it."""


def exit_with_message(message: str, code: int = 1) -> NoReturn:
    """Prints ``ERROR: message`` on one line to stderr and exits non-zero."""
    logging.flush()
    sys.stderr.write("ERROR: " + " ".join(str(message).split()) + "\n")
    sys.stderr.flush()
    sys.exit(code)
