"""YouTube-8M evaluation metrics (the Kaggle definitions), streaming and vectorised.

Hit@1, PERR (precision at equal recall rate), GAP@k (global average precision)
and mAP, computed with numpy so that a 1M-video evaluation spends seconds, not
minutes, in metrics.  The streaming state keeps only every video's top-k
(score, class, hit) triples, the per-class positive counts and the video count:
O(videos * k) memory, never O(videos * classes).

Ties are broken deterministically: within a video, equal scores rank the lower
class id first (as ``tf.math.top_k`` does); globally, entries rank by (score
desc, video index asc, class asc), where the video index counts videos in the
order they were accumulated.  So results do not depend on batch boundaries.
"""
import numpy as np
import tensorflow as tf

import average_precision

# The failure of graph_top_k's check (found in the TensorFlow error's text).
NAN_PREDICTIONS = "predictions contain NaN"


def _as_scores(predictions: np.ndarray) -> np.ndarray:
    """[B, C] float predictions; NaN would silently corrupt every ranking."""
    predictions = np.asarray(predictions)
    if predictions.ndim != 2:
        raise ValueError(f"predictions must be [batch, classes], got shape {predictions.shape}")
    if predictions.dtype.kind != "f":
        predictions = predictions.astype(np.float64)
    if np.isnan(predictions).any():
        raise ValueError("predictions contain NaN")
    return predictions


def _as_labels(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """[B, C] bool labels (any value > 0 is a positive) matching ``predictions``."""
    labels = np.asarray(labels) > 0
    if labels.shape != predictions.shape:
        raise ValueError(f"labels have shape {labels.shape}, predictions {predictions.shape}")
    return labels


# Classes per group in _kth_largest (a few times faster than a full partition at k=20).
_GROUP_SIZE = 16


def _kth_largest(predictions: np.ndarray, k: int) -> np.ndarray:
    """Each row's k-th largest score, [B, 1].

    The classes are split into G groups (group g: classes g, g + G, g + 2G, ...,
    so each group's maximum is an elementwise maximum of contiguous slices); the
    k groups with the largest maxima hold every top-k score, ties included,
    so a partition of their members alone finds the k-th largest.
    """
    batch, num_classes = predictions.shape
    groups = -(-num_classes // _GROUP_SIZE)
    if groups <= k:
        return np.partition(predictions, num_classes - k, axis=1)[:, num_classes - k, None]
    full_rows = num_classes // groups
    maxima = predictions[:, :full_rows * groups].reshape(batch, full_rows, groups).max(axis=1)
    rest = num_classes - full_rows * groups
    if rest:
        maxima[:, :rest] = np.maximum(maxima[:, :rest], predictions[:, full_rows * groups:])
    best = np.argpartition(maxima, groups - k, axis=1)[:, groups - k:]
    members = (best[:, :, None] + groups * np.arange(-(-num_classes // groups))).reshape(batch, -1)
    rows = num_classes * np.arange(batch)[:, None]
    candidates = predictions.reshape(-1).take(np.minimum(members, num_classes - 1) + rows)
    candidates[members >= num_classes] = -np.inf
    size = candidates.shape[1]
    return np.partition(candidates, size - k, axis=1)[:, size - k, None]


def _select_top_k(predictions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each video's top-k (scores, classes), rows in ascending class order.

    O(B*C): the k-th largest score of each row is found (:func:`_kth_largest`);
    every score above it is taken, and of the scores equal to it, the lowest classes.
    """
    if k <= 0:
        raise ValueError(f"k must be a positive integer, got {k}")
    num_classes = predictions.shape[1]
    k = min(k, num_classes)
    kth = _kth_largest(predictions, k)
    chosen = predictions >= kth
    # Rows with more candidates than k have ties at the k-th score: of those, keep the
    # lowest classes (a cumulative count, only over the few rows that need it).
    tied = np.flatnonzero(np.count_nonzero(chosen, axis=1) > k)
    if tied.size:
        rows, row_kth = predictions[tied], kth[tied]
        at_kth = rows == row_kth
        room = k - np.count_nonzero(rows > row_kth, axis=1)[:, None]
        chosen[tied] &= ~at_kth | (np.cumsum(at_kth, axis=1) <= room)
    # Row-major positions: ascending class within each row, exactly k per row.
    classes = (np.flatnonzero(chosen) % num_classes).reshape(-1, k)
    return np.take_along_axis(predictions, classes, axis=1), classes


def _sort_rows(key: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """``arrays`` with each row reordered by the row's ``key`` ascending (stable)."""
    order = np.argsort(key, axis=1, kind="stable")
    return tuple(np.take_along_axis(a, order, axis=1) for a in arrays)


def _top_by_score(predictions: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Each video's top-k (scores, classes), by score descending, lower class first on ties."""
    scores, classes = _select_top_k(predictions, k)
    return _sort_rows(-scores, scores, classes)


def top_k_per_video(predictions: np.ndarray, k: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Each video's top-k (scores, classes), [B, min(k, C)], by score descending.

    Equal scores rank the lower class first, as ``tf.math.top_k`` does.
    """
    return _top_by_score(_as_scores(predictions), k)


def _perr_per_video(scores: np.ndarray, hits: np.ndarray, num_labels: np.ndarray) -> np.ndarray:
    """PERR of each video from its top-D by score, D >= its number of labels L.

    The precision of the top L, counting a hit only where the score is > 0;
    0 for videos without labels.
    """
    in_top_l = np.arange(scores.shape[1]) < num_labels[:, None]
    found = np.count_nonzero(hits & in_top_l & (scores > 0), axis=1)
    return found / np.maximum(num_labels, 1)


def _top_with_hits(predictions: np.ndarray, labels: np.ndarray,
                   k: int) -> tuple[np.ndarray, ...]:
    """Top-D by score with hits and label counts, D = max(k, most labels of a video)."""
    num_labels = np.count_nonzero(labels, axis=1)
    depth = max(k, int(num_labels.max(initial=0)))
    scores, classes = _top_by_score(predictions, depth)
    return scores, classes, np.take_along_axis(labels, classes, axis=1), num_labels


def _gap(scores: np.ndarray, hits: np.ndarray, num_positives: int) -> tuple[float, np.ndarray]:
    """GAP of [N, k] entries whose rows are in ascending class order, and the rank order.

    A stable sort of the row-major entries by score then gives exactly the
    (score desc, video asc, class asc) ranking.
    """
    order = average_precision.rank_order(scores.ravel())
    return average_precision.ranked_ap(hits.ravel()[order], num_positives), order


def graph_top_k(predictions: tf.Tensor, labels: tf.Tensor, top_k: int) -> dict:
    """In-graph part of the metrics, so that only [batch, depth] arrays leave the graph.

    predictions [B, C] float, labels [B, C] (bool or 0/1).  Returns tensors
    ``scores``, ``classes`` (int32), ``hits`` (bool): each video's top
    depth = min(C, max(top_k, most labels of a video in the batch)) entries by
    score descending, lower class first on ties (``tf.math.top_k``'s order,
    the same as :func:`top_k_per_video`); ``num_labels`` [B] and
    ``class_positives`` [C].  Feed them to EvaluationMetrics.accumulate_top_k.
    """
    positive = tf.cast(labels, tf.bool)
    num_labels = tf.math.count_nonzero(positive, axis=1, dtype=tf.int32)
    num_classes = tf.shape(predictions)[1]
    depth = tf.minimum(num_classes, tf.maximum(top_k, tf.reduce_max(num_labels)))
    check = tf.debugging.Assert(tf.logical_not(tf.reduce_any(tf.math.is_nan(predictions))),
                                [NAN_PREDICTIONS])
    with tf.control_dependencies([check]):
        scores, classes = tf.math.top_k(predictions, depth, sorted=True)
    return {"scores": scores, "classes": classes,
            "hits": tf.gather(positive, classes, batch_dims=1),
            "num_labels": num_labels,
            "class_positives": tf.math.count_nonzero(positive, axis=0, dtype=tf.int32)}


def calculate_hit_at_one(predictions: np.ndarray, actuals: np.ndarray) -> float:
    """Mean over videos of the label of the top-scored class (lowest class on ties)."""
    predictions = _as_scores(predictions)
    labels = _as_labels(actuals, predictions)
    top = np.argmax(predictions, axis=1)
    return float(np.mean(labels[np.arange(labels.shape[0]), top]))


def calculate_precision_at_equal_recall_rate(predictions: np.ndarray,
                                             actuals: np.ndarray) -> float:
    """PERR: mean over all videos of the precision of a video's top-L (L = its labels).

    A top-L entry counts as a hit only if its score is > 0; videos without
    labels count 0.
    """
    predictions = _as_scores(predictions)
    labels = _as_labels(actuals, predictions)
    scores, _, hits, num_labels = _top_with_hits(predictions, labels, 1)
    return float(np.mean(_perr_per_video(scores, hits, num_labels)))


def calculate_gap(predictions: np.ndarray, actuals: np.ndarray, top_k: int = 20) -> float:
    """GAP@top_k: AP of every video's top-k entries ranked together.

    The denominator is the number of positive labels of the whole set,
    including positives that are in no video's top-k.
    """
    predictions = _as_scores(predictions)
    labels = _as_labels(actuals, predictions)
    scores, classes = _select_top_k(predictions, top_k)
    hits = np.take_along_axis(labels, classes, axis=1)
    return _gap(scores, hits, int(np.count_nonzero(labels)))[0]


class EvaluationMetrics:
    """Accumulates Hit@1, PERR, loss, GAP@top_k and mAP over an evaluation pass.

    mAP is the mean, over the classes that have positives, of the class's AP over
    the entries of the videos whose top-k holds that class (denominator: the
    class's positives).  Classes without positives are skipped; the 2018 code
    averaged them in as 0, which made small evaluation sets look worse.
    """

    def __init__(self, num_class: int, top_k: int):
        if num_class <= 0 or top_k <= 0:
            raise ValueError(f"num_class and top_k must be positive, got {num_class}, {top_k}")
        self.num_class = num_class
        self.top_k = top_k
        # The smallest unsigned type for class ids: less memory, and numpy sorts
        # 8/16-bit keys by radix sort (several times faster for the mAP grouping).
        self._class_dtype = np.min_scalar_type(num_class - 1)
        self.clear()

    def clear(self) -> None:
        """Forgets everything accumulated."""
        self.num_examples = 0
        self._hits_at_one = 0
        self._perr = []  # per-video PERR arrays; summed in one go so batching can't round
        self._sum_loss = 0.0
        self._scores = []  # per-batch [b, top_k] arrays, rows in ascending class order
        self._classes = []
        self._hits = []
        self._class_positives = np.zeros(self.num_class, dtype=np.int64)

    def accumulate(self, predictions: np.ndarray, labels: np.ndarray,
                   loss: float | np.ndarray) -> dict[str, float]:
        """Adds a batch: predictions [B, C], labels [B, C] (0/1 or bool), and the
        batch's loss (a scalar mean or per-video values).

        Returns the batch's {"hit_at_one", "perr", "loss"}.
        """
        predictions = _as_scores(predictions)
        labels = _as_labels(labels, predictions)
        if labels.shape[1] != self.num_class:
            raise ValueError(f"got {labels.shape[1]} classes, expected {self.num_class}")
        scores, classes, hits, num_labels = _top_with_hits(predictions, labels, self.top_k)
        return self.accumulate_top_k(scores, classes, hits, num_labels,
                                     np.count_nonzero(labels, axis=0), loss)

    def accumulate_top_k(self, scores: np.ndarray, classes: np.ndarray, hits: np.ndarray,
                         num_labels: np.ndarray, class_positives: np.ndarray,
                         loss: float | np.ndarray) -> dict[str, float]:
        """:meth:`accumulate` from each video's top entries alone (see :func:`graph_top_k`).

        scores, classes, hits: [B, D] by score descending (lower class first on
        ties), D >= min(C, max(top_k, most labels of a video)); num_labels [B];
        class_positives [C], positives outside the top entries included.
        """
        scores, hits = np.asarray(scores), np.asarray(hits, dtype=bool)
        perr = _perr_per_video(scores, hits, np.asarray(num_labels))
        mean_loss = float(np.mean(loss))
        self._accumulate_video_stats(hits[:, 0], perr, mean_loss)
        k = self.top_k
        self._accumulate_top_k(scores[:, :k], np.asarray(classes)[:, :k], hits[:, :k],
                               class_positives)
        return {"hit_at_one": float(np.mean(hits[:, 0])), "perr": float(np.mean(perr)),
                "loss": mean_loss}

    def _accumulate_video_stats(self, hits_at_one: np.ndarray, perr: np.ndarray,
                                mean_loss: float) -> None:
        """Adds b videos' Hit@1 (bool [b]), PERR ([b]) and their batch's mean loss."""
        self._hits_at_one += int(np.count_nonzero(hits_at_one))
        self._perr.append(np.asarray(perr, dtype=np.float64))
        self._sum_loss += mean_loss * len(perr)
        self.num_examples += len(perr)

    def _accumulate_top_k(self, scores: np.ndarray, classes: np.ndarray, hits: np.ndarray,
                          class_positives: np.ndarray) -> None:
        """Adds videos' GAP/mAP state from their top-k alone (e.g. ``tf.math.top_k``).

        scores, classes, hits: [b, k] in any order within a row (ties at the k-th
        score must already have been cut with lower classes first);
        class_positives: [num_class] positive-label counts of those b videos,
        including positives outside their top-k.
        """
        scores, classes, hits = _sort_rows(classes, np.asarray(scores),
                                           np.asarray(classes, dtype=self._class_dtype),
                                           np.asarray(hits, dtype=bool))
        self._scores.append(scores)
        self._classes.append(classes)
        self._hits.append(hits)
        self._class_positives += np.asarray(class_positives, dtype=np.int64)

    def get(self) -> dict:
        """Metrics of everything accumulated.

        Returns avg_hit_at_one, avg_perr (means over videos), avg_loss (the batch
        losses averaged with batch-size weights), aps (np.ndarray: AP of each class
        with positives, in class order), map (their mean; 0 if none), gap (0 if
        there are no positives) and num_examples.
        """
        if self.num_examples <= 0:
            raise ValueError("no examples were accumulated")
        # Merge the per-batch pieces once, so later calls do not copy them again.
        self._scores, self._classes, self._hits, self._perr = (
            [np.concatenate(pieces)]
            for pieces in (self._scores, self._classes, self._hits, self._perr))
        hits = self._hits[0]
        gap, order = _gap(self._scores[0], hits, int(self._class_positives.sum()))
        class_aps = average_precision.grouped_ranked_ap(
            self._classes[0].ravel()[order], hits.ravel()[order], self._class_positives)
        aps = class_aps[self._class_positives > 0]
        return {
            "avg_hit_at_one": self._hits_at_one / self.num_examples,
            "avg_perr": float(np.sum(self._perr[0]) / self.num_examples),
            "avg_loss": self._sum_loss / self.num_examples,
            "aps": aps,
            "map": float(np.mean(aps)) if aps.size else 0.0,
            "gap": gap,
            "num_examples": self.num_examples,
        }
