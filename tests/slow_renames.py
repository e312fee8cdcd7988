"""Runs a script of the repo with every gfile rename and remove in one folder slowed down.

    python tests/slow_renames.py SCRIPT [ARGS...]   (SLOW_RENAMES_DIR, SLOW_RENAMES_SECS)

Replacing a small checkpoint takes well under a millisecond, so a kill -9 at a
random moment would almost never land in it; with each file operation under
SLOW_RENAMES_DIR delayed, the replacement spans a few hundred milliseconds
and random kills land in every step of it.  The operations themselves are
TensorFlow's own.
"""
import functools
import os
import runpy
import sys
import time

import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _slowed(operation, folder: str, seconds: float):
    @functools.wraps(operation)
    def slow(path, *args, **kwargs):
        if str(path).startswith(folder):
            time.sleep(seconds)
        return operation(path, *args, **kwargs)
    return slow


def main() -> None:
    folder, seconds = os.environ["SLOW_RENAMES_DIR"], float(os.environ["SLOW_RENAMES_SECS"])
    for name in ("rename", "remove"):
        setattr(tf.io.gfile, name, _slowed(getattr(tf.io.gfile, name), folder, seconds))
    script = os.path.join(REPO, sys.argv[1] + ".py")
    sys.argv = [script, *sys.argv[2:]]
    sys.path.insert(0, REPO)
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
