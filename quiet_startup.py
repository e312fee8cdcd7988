"""Keeps TensorFlow's start-up noise off stderr; imported by every script before TensorFlow.

TensorFlow's C++ code logs through absl before anything initialises it, so
TF_CPP_MIN_LOG_LEVEL no longer silences it: each process prints about a
dozen INFO lines (oneDNN, cudart stub, ...) and, on a machine without an
NVIDIA driver, a ``failed call to cuInit`` ERROR that says only that there is
no GPU.  This module routes file descriptor 2 through a filter thread that
drops exactly those lines and passes everything else on, in order: warnings
and errors of TensorFlow, a cuInit failure on a machine that has a GPU, and
every line of the toolkit.  A user who sets TF_CPP_MIN_LOG_LEVEL or gives
--verbosity sees TensorFlow's output untouched.

Being first, it also answers the --help of train.py, eval.py and inference.py
(app_flags.answer_help) before they spend seconds importing TensorFlow.
"""
import atexit
import os
import re
import sys
import threading

# absl's notice before its initialisation, INFO lines of C++ sources (with the second
# line of the CPU feature notice), and oneDNN's notice that float16 falls back to Eigen
# on CPUs without AVX-512, logged as an error although nothing failed.
_NOISE = re.compile(
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
    rb"STDERR|I\d{4} [\d:.]+ +\d+ [\w./-]+\.cc:\d+\] .*"
    rb"|To enable the following instructions: .* rebuild TensorFlow with the appropriate "
    rb"compiler flags\."
    rb"|E\d{4} [\d:.]+ +\d+ util\.cc:\d+\] oneDNN supports DT_HALF only on platforms with "
    rb"AVX-512\. Falling back to the default Eigen-based implementation if present\.")
# The CUDA probe of a machine without an NVIDIA driver.
_NO_GPU_PROBE = re.compile(rb"E\d{4} [\d:.]+ +\d+ cuda_\w+\.cc:\d+\] failed call to cuInit.*")
_NVIDIA_DEVICE = "/dev/nvidiactl"
# A session's echo of an op error on its way to Python, where the script reports it in one
# line (a data error, a full disk): the warning and its "\t [[node]]" context lines.
_ERROR_ECHO = re.compile(rb"W\d{4} [\d:.]+ +\d+ local_rendezvous\.cc:\d+\] Local rendezvous is "
                         rb"aborting with status: .*")
_ECHO_CONTEXT = re.compile(rb"\t \[\[.*\]\]")
# The scripts whose flags app_flags defines, and absl's help flags but --helpfull (which
# lists TensorFlow's flags too).
_FLAG_SCRIPTS = ("train", "eval", "inference")
_HELP_ARGS = ("--help", "-h", "--helpshort", "-?")


def _wanted() -> bool:
    user_asked = "TF_CPP_MIN_LOG_LEVEL" in os.environ or any(
        arg.startswith(("--verbosity", "-v=", "--v=")) for arg in sys.argv[1:])
    return not user_asked and "tensorflow" not in sys.modules


class _Filter:
    """Decides line by line what reaches the terminal (context lines follow their echo)."""

    def __init__(self, has_gpu: bool) -> None:
        self.has_gpu = has_gpu
        self.in_echo = False

    def dropped(self, line: bytes) -> bool:
        text = line.rstrip(b"\r\n")
        if self.in_echo and _ECHO_CONTEXT.fullmatch(text):
            return True
        self.in_echo = bool(_ERROR_ECHO.fullmatch(text))
        return self.in_echo or bool(_NOISE.fullmatch(text)) or (
            not self.has_gpu and bool(_NO_GPU_PROBE.fullmatch(text)))


def _forward(reader: int, target: int, has_gpu: bool) -> None:
    line_filter = _Filter(has_gpu)
    with os.fdopen(reader, "rb", buffering=0) as source:
        pending = b""
        while True:
            chunk = source.read(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if not line_filter.dropped(line))
            if kept:
                os.write(target, kept)
        if pending and not line_filter.dropped(pending):
            os.write(target, pending)


def _answer_help() -> None:
    """train.py, eval.py and inference.py answer --help here, before they import TensorFlow
    (seconds); app_flags, which defines their flags, imports none of it."""
    main = sys.modules.get("__main__")
    script = os.path.splitext(os.path.basename(getattr(main, "__file__", None) or ""))[0]
    if script in _FLAG_SCRIPTS and any(arg in _HELP_ARGS for arg in sys.argv[1:]):
        import app_flags

        app_flags.answer_help(script, main.__doc__ or "")


def install() -> None:
    """Starts the filter (once per process, before TensorFlow is imported)."""
    if not _wanted():
        return
    sys.stderr.flush()
    original = os.dup(2)
    reader, writer = os.pipe()
    os.dup2(writer, 2)
    os.close(writer)
    thread = threading.Thread(target=_forward, args=(reader, original, os.path.exists(
        _NVIDIA_DEVICE)), name="stderr-filter", daemon=True)
    thread.start()

    def drain() -> None:
        """At exit: the last lines (an ERROR line among them) reach the terminal."""
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(original, 2)  # closes the pipe's last writer: the thread sees its end
        thread.join(timeout=5)

    atexit.register(drain)


_answer_help()
install()
