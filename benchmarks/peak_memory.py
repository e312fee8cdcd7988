"""Runs a Python script and reports its peak resident memory when it exits.

    python benchmarks/peak_memory.py SCRIPT.py ARGS...

The peak is the process's VmHWM, which starts afresh at exec: a child's
ru_maxrss would include the parent's memory at fork time (the benchmark
process holds gigabytes).  The last stderr line is ``PEAK_RSS_BYTES=<n>``.
"""
import atexit
import os
import runpy
import sys

MARKER = "PEAK_RSS_BYTES="


def peak_rss_bytes() -> int:
    """This process's peak resident set size since exec (Linux), else ru_maxrss."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    atexit.register(lambda: print(f"{MARKER}{peak_rss_bytes()}", file=sys.stderr, flush=True))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
