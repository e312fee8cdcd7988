"""The starter code's way of computing the metrics: the benchmark's reference.

Written here (not copied) after how the 2017 YouTube-8M starter code works,
so that eval_util's speed-up is measured against it: per video a Python loop
takes the top-k with argpartition, every (score, label) pair is pushed into a
Python heap per class and into one global heap, per-class positives are
summed column by column, PERR loops over videos, and at the end each heap is
sorted with a Python key function and its AP summed in a Python loop.  It
computes the SPEC's definitions (GAP over every top-k entry, mAP over the
classes with positives), so its GAP and mAP must equal eval_util's.
"""
import heapq
from typing import Dict, List, Tuple

import numpy as np


class HeapAveragePrecision:
    """One AP accumulator: every pushed (score, label) pair kept in a heap."""

    def __init__(self) -> None:
        self._heap: List[Tuple[float, float]] = []
        self._positives = 0

    def accumulate(self, scores, labels, num_positives: int) -> None:
        self._positives += int(num_positives)
        for pair in zip(scores, labels, strict=True):
            heapq.heappush(self._heap, pair)

    @property
    def positives(self) -> int:
        return self._positives

    def peek_ap(self) -> float:
        """AP of everything pushed, ranked by score (denominator: all positives)."""
        if self._positives <= 0 or not self._heap:
            return 0.0
        scores, labels = zip(*self._heap, strict=True)
        order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
        found, total = 0, 0.0
        for rank, index in enumerate(order, start=1):
            if labels[index] > 0:
                found += 1
                total += found / rank
        return total / self._positives


def _top_k_triplets(scores: np.ndarray, labels: np.ndarray, k: int):
    indices = np.argpartition(scores, -k)[-k:]
    return [(index, scores[index], labels[index]) for index in indices]


def _hit_at_one(predictions: np.ndarray, labels: np.ndarray) -> float:
    top = np.argmax(predictions, 1)
    return float(np.mean(labels[np.arange(len(top)), top]))


def _perr(predictions: np.ndarray, labels: np.ndarray) -> float:
    total = 0.0
    for row in range(labels.shape[0]):
        num_labels = int(np.sum(labels[row]))
        top = np.argpartition(predictions[row], -num_labels)[-num_labels:]
        precision = 0.0
        for index in top:
            if predictions[row][index] > 0:
                precision += labels[row][index]
        total += precision / top.size
    return total / labels.shape[0]


class HeapEvaluationMetrics:
    """EvaluationMetrics' interface (accumulate, get), computed the starter code's way."""

    def __init__(self, num_class: int, top_k: int) -> None:
        self.num_class = num_class
        self.top_k = top_k
        self._per_class = [HeapAveragePrecision() for _ in range(num_class)]
        self._global = HeapAveragePrecision()
        self._sum_hit_at_one = self._sum_perr = 0.0
        self.num_examples = 0

    def accumulate(self, predictions: np.ndarray, labels: np.ndarray) -> None:
        batch = labels.shape[0]
        self._sum_hit_at_one += _hit_at_one(predictions, labels) * batch
        self._sum_perr += _perr(predictions, labels) * batch
        k = min(self.top_k, self.num_class)
        triplets = []
        for video in range(batch):
            triplets.extend(_top_k_triplets(predictions[video], labels[video], k))
        class_scores = [[] for _ in range(self.num_class)]
        class_labels = [[] for _ in range(self.num_class)]
        for index, score, label in triplets:
            class_scores[index].append(score)
            class_labels[index].append(label)
        positives = [np.sum(labels[:, c]) for c in range(self.num_class)]
        for c in range(self.num_class):
            self._per_class[c].accumulate(class_scores[c], class_labels[c], positives[c])
        self._global.accumulate([s for scores in class_scores for s in scores],
                                [y for ys in class_labels for y in ys], sum(positives))
        self.num_examples += batch

    def get(self) -> Dict[str, float]:
        aps = [calc.peek_ap() for calc in self._per_class if calc.positives > 0]
        return {"avg_hit_at_one": self._sum_hit_at_one / self.num_examples,
                "avg_perr": self._sum_perr / self.num_examples,
                "gap": self._global.peek_ap(),
                "map": float(np.mean(aps)) if aps else 0.0}
