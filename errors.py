"""One exception type for problems the user can fix, reported in one line."""
import sys
from typing import List, NoReturn

from absl import flags, logging


class UsageError(Exception):
    """Bad input: a flag, a path, a file's content.  The message names it."""


def exit_with_message(message: str, code: int = 1) -> NoReturn:
    """Prints ``ERROR: message`` on one line to stderr and exits non-zero."""
    logging.flush()
    sys.stderr.write("ERROR: " + " ".join(str(message).split()) + "\n")
    sys.stderr.flush()
    sys.exit(code)


def parse_flags(argv: List[str]) -> List[str]:
    """absl's flag parsing, but a bad flag (``--max_step``) ends in one ``ERROR:`` line.

    Pass as ``app.run(main, flags_parser=parse_flags)``; absl's own report is
    two lines, the last of which does not name the flag.
    """
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        exit_with_message(f"{e} (--helpfull lists the flags)")


def require_positive(value: int, flag_name: str) -> None:
    """A count flag such as --top_k must be >= 1: checked before any work, since a bad
    value would otherwise fail (or write empty rows) only after the model has run."""
    if value is None or value < 1:
        raise UsageError(f"--{flag_name}={value} must be a positive integer")
