"""Progress lines of eval.py and inference.py: videos done, videos/s, percent and time left.

A pass over a large held-out or test set runs for minutes to hours with
nothing to show; these lines say how far it is.  The total is known when the
input files can be counted cheaply (:func:`count_records`): local,
uncompressed TFRecord files, whose record headers are read without the
records.  Otherwise the lines give videos done and videos/s only.
"""
import time
from typing import Callable, Sequence

import tensorflow as tf
from absl import logging

import readers

# Counting stops (total unknown) after this many seconds: a cheap estimate or none.
COUNT_BUDGET_SECS = 2.0
# TFRecord framing: 8-byte length, 4-byte length CRC, data, 4-byte data CRC.
_LENGTH_BYTES, _CRC_BYTES = 8, 4


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _records_in(path: str, deadline: float) -> int | None:
    """Records of one uncompressed TFRecord file by skipping from header to header;
    None for a gzip file or when ``deadline`` passes."""
    count = 0
    with tf.io.gfile.GFile(path, "rb") as f:
        if readers.is_gzip(f.read(12)):
            return None
        f.seek(0)
        while True:
            header = f.read(_LENGTH_BYTES)
            if len(header) < _LENGTH_BYTES:
                return count
            count += 1
            f.seek(int.from_bytes(header, "little") + 2 * _CRC_BYTES, 1)
            if count % 1024 == 0 and time.monotonic() > deadline:
                return None


def count_records(files: Sequence[str], budget_secs: float = COUNT_BUDGET_SECS) -> int | None:
    """The number of records in ``files``, or None when it is not cheap to know.

    Remote files (gs://), gzip files and counts that would take more than
    ``budget_secs`` give None.  A corrupt or truncated file may be counted
    a little high; the progress lines never show more than 100%.
    """
    if not all(_is_local(path) for path in files):
        return None
    deadline, total = time.monotonic() + budget_secs, 0
    for path in files:
        try:
            count = _records_in(path, deadline)
        except (tf.errors.OpError, OSError):
            return None
        if count is None:
            return None
        total += count
    return total


class Progress:
    """Logs "N videos done, R videos/s[, P% of T, S s left]" at most every ``interval_secs``.

    ``interval_secs`` 0 logs every batch (tests; very small sets).
    """

    def __init__(self, what: str, total: int | None, interval_secs: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what, self.total, self.interval = what, total, interval_secs
        self.clock = clock
        self.start = self.last = clock()
        self.done = 0

    def add(self, videos: int) -> None:
        """Counts a batch; logs a line when the interval has passed."""
        self.done += videos
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            logging.info("%s", self.line(now))

    def rate(self, now: float | None = None) -> float:
        """Videos per second so far."""
        elapsed = (self.clock() if now is None else now) - self.start
        return self.done / max(elapsed, 1e-9)

    def line(self, now: float) -> str:
        """The progress line at time ``now``."""
        rate = self.rate(now)
        text = f"{self.what}: {self.done:,} videos done, {rate:.1f} videos/s"
        if self.total:
            done = min(self.done, self.total)
            left = (self.total - done) / max(rate, 1e-9)
            text += f", {100.0 * done / self.total:.1f}% of {self.total:,}, {left:.0f} s left"
        return text
