"""One training process per run directory: ``RUN/.train.lock`` names the holder.

Two train.py processes on one --train_dir would overwrite each other's
checkpoints.  The lock file is created with O_EXCL and holds the host name and
pid of its owner; a second process refuses to start and names them.  A lock
left by a dead process of this host (kill -9, a crash) is taken over with a
warning.  Object stores (gs://) have no atomic create-if-absent through gfile,
so there the lock is not taken: one training job per directory is then the
user's rule (see the README).
"""
import json
import os
import socket
from typing import Dict

from absl import logging

from errors import UsageError

LOCK_NAME = ".train.lock"


def _is_local(directory: str) -> bool:
    return "://" not in directory


def process_alive(pid: int) -> bool:
    """True when process ``pid`` of this machine exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(path: str) -> Dict[str, object] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class RunLock:
    """Held from :meth:`acquire` to :meth:`release` (also a context manager)."""

    def __init__(self, train_dir: str):
        self.path = os.path.join(train_dir, LOCK_NAME)
        self.local = _is_local(train_dir)
        self.held = False

    def acquire(self) -> "RunLock":
        if not self.local:
            return self
        me = {"host": socket.gethostname(), "pid": os.getpid()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale(me)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise UsageError(f"cannot take the lock {self.path}: another process keeps creating it")

    def _take_over_if_stale(self, me: Dict[str, object]) -> None:
        owner = _owner(self.path)
        if owner is None:  # being written this instant, or unreadable: treat as held
            owner = {"host": "?", "pid": "?"}
        same_host = owner.get("host") == me["host"]
        if same_host and isinstance(owner.get("pid"), int) and not process_alive(owner["pid"]):
            logging.warning("Taking over %s, left by process %s on %s, which is gone.",
                            self.path, owner["pid"], owner["host"])
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
            return
        raise UsageError(
            f"another train.py (host {owner.get('host')}, pid {owner.get('pid')}) is writing "
            f"this --train_dir ({self.path}); wait for it, stop it, or use another --train_dir")

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
