"""The rows of a Kaggle submission CSV, and the checks that keep it valid.

Kaggle needs one row per test video, with a text id and finite scores; a
broken row is only found when the upload is rejected, after the whole
inference has run.  So every problem here is a UsageError naming the videos
(and their files), raised before the CSV gets its final name.
"""
import csv
import io
from typing import Dict, List, Sequence

import numpy as np

from errors import UsageError

CSV_HEADER = "VideoId,LabelConfidencePairs\n"
# Ids named in one message.
_MAX_NAMED = 5


def _text(value: bytes) -> str:
    """A file name (or other bytes) for a message, whatever its encoding."""
    return value.decode("utf-8", "backslashreplace")


def decode_id(video_id: bytes, file_name: bytes) -> str:
    """The id as text; one that is not UTF-8 cannot be written to the CSV faithfully."""
    try:
        return video_id.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"video id {video_id!r} in {_text(file_name)} is not UTF-8 text, "
                         "which the submission CSV needs") from None


def csv_row(video_id: str, classes: Sequence[int], scores: Sequence[float]) -> str:
    """``id,label score label score ...`` and a newline, the id quoted as standard CSV
    wants when it holds a comma, a quote or a line break (most ids are left as they are)."""
    pairs = " ".join(f"{int(c)} {float(s):g}" for c, s in zip(classes, scores, strict=True))
    buffer = io.StringIO()
    # "\r\n" makes the writer quote a lone "\r" as well as "\n"; the row ends in "\n".
    csv.writer(buffer, lineterminator="\r\n").writerow([video_id, pairs])
    return buffer.getvalue()[:-2] + "\n"


def _named(video_ids: Sequence[bytes]) -> str:
    shown = ", ".join(repr(_text(v)) for v in video_ids[:_MAX_NAMED])
    return shown + (" ..." if len(video_ids) > _MAX_NAMED else "")


def check_finite(finite: np.ndarray, video_ids: Sequence[bytes],
                 file_names: Sequence[bytes]) -> None:
    """Fails naming the videos whose predictions are not all finite ([B] bool ``finite``):
    a NaN score row would be written as ``nan`` and rank nowhere."""
    bad = np.flatnonzero(~np.asarray(finite, bool))
    if bad.size:
        files = sorted({_text(file_names[i]) for i in bad})
        raise UsageError(
            f"the model predicted NaN or Inf for {bad.size} video(s): "
            f"{_named([video_ids[i] for i in bad])} (in {', '.join(files[:_MAX_NAMED])}); "
            "no CSV written: are the checkpoint's weights finite?")


class Tally:
    """How many videos had some property, and the first of them, for one report line."""

    def __init__(self) -> None:
        self.count = 0
        self.example: str | None = None

    def add(self, video_ids: Sequence[bytes], mask: np.ndarray) -> None:
        hits = np.flatnonzero(mask)
        if hits.size and self.example is None:
            self.example = _text(video_ids[hits[0]])
        self.count += int(hits.size)


class DuplicateIds:
    """Counts records whose id came before (Kaggle expects each test id exactly once).

    Keeps every id with the index of its file: O(videos) memory, about 100
    bytes a video.
    """

    def __init__(self) -> None:
        self._first_file: Dict[bytes, int] = {}
        self._file_index: Dict[bytes, int] = {}
        self._file_names: List[bytes] = []
        self.count = 0
        self.example = ""

    def add(self, video_ids: Sequence[bytes], file_names: Sequence[bytes]) -> None:
        for video_id, file_name in zip(video_ids, file_names, strict=True):
            index = self._file_index.setdefault(file_name, len(self._file_names))
            if index == len(self._file_names):
                self._file_names.append(file_name)
            first = self._first_file.get(video_id)
            if first is None:
                self._first_file[video_id] = index
                continue
            self.count += 1
            if not self.example:
                self.example = (f"{_text(video_id)!r} (in {_text(self._file_names[first])}, "
                                f"again in {_text(file_name)})")

    def check(self, flag_name: str) -> None:
        """Fails with the count and an example if any id came twice."""
        if self.count:
            raise UsageError(f"--{flag_name}: {self.count} record(s) repeat an earlier video "
                             f"id, e.g. {self.example}; no CSV written (Kaggle needs each id "
                             "once: remove the repeated records or files)")
