"""Non-interpolated average precision (AP), vectorised with numpy.

AP of a ranked list = (1/M) * sum_i precision@i * rel(i), where M is the number
of positives, which may include positives that never made it into the list (so
a list that misses some of them cannot reach 1).  Lists are ranked by score,
descending; equal scores keep their input order (a stable sort), so every
result is deterministic.  The 2016 starter code shuffled ties at random instead.
Its ``ap_at_n`` caps M at n; :func:`ap_at_n` keeps that, :func:`ap_at_n_uncapped` does not.
"""
import numpy as np


def rank_order(scores: np.ndarray) -> np.ndarray:
    """Indices that sort 1-D ``scores`` descending; equal scores keep input order."""
    scores = np.asarray(scores)
    # Negating as float keeps every order and tie exactly (ints and bools included).
    keys = -scores.astype(np.promote_types(scores.dtype, np.float32), copy=False)
    return np.argsort(keys, kind="stable")


def ranked_ap(relevant: np.ndarray, num_positives: int) -> float:
    """AP of a list already in rank order; ``relevant`` is its 0/1 (bool) relevance.

    Returns 0 when ``num_positives`` is 0.
    """
    if num_positives <= 0:
        return 0.0
    hit_ranks = np.flatnonzero(relevant) + 1
    # The j-th hit (1-based) sits at rank hit_ranks[j-1]: its precision is j / rank.
    precisions = np.arange(1, hit_ranks.size + 1) / hit_ranks
    return float(np.sum(precisions) / num_positives)


def _starts(counts: np.ndarray) -> np.ndarray:
    """Where each group begins in a list sorted by group, given the group sizes."""
    return np.cumsum(counts) - counts


def grouped_ranked_ap(groups: np.ndarray, relevant: np.ndarray,
                      num_positives: np.ndarray) -> np.ndarray:
    """Per-group AP of entries given in rank order (e.g. per-class AP).

    Group g's ranked list is its entries in the given order.  ``groups`` are ints
    in [0, G), ``num_positives`` is [G]; groups without positives get 0.
    """
    groups, num_positives = np.asarray(groups), np.asarray(num_positives)
    num_groups = num_positives.size
    by_group = np.argsort(groups, kind="stable")
    sorted_groups = groups[by_group]
    group_starts = _starts(np.bincount(sorted_groups, minlength=num_groups))
    hit_positions = np.flatnonzero(np.asarray(relevant)[by_group])
    hit_groups = sorted_groups[hit_positions]
    hit_starts = _starts(np.bincount(hit_groups, minlength=num_groups))
    # 1-based hit number and rank of each hit inside its own group's list.
    hit_numbers = np.arange(hit_positions.size) - hit_starts[hit_groups] + 1
    hit_ranks = hit_positions - group_starts[hit_groups] + 1
    sums = np.bincount(hit_groups, weights=hit_numbers / hit_ranks, minlength=num_groups)
    return np.divide(sums, num_positives, out=np.zeros(num_groups),
                     where=num_positives > 0)


def _ap_at_n(predictions, actuals, n: int | None, total_num_positives: int | None,
             cap: bool) -> float:
    predictions = np.asarray(predictions)
    relevant = np.asarray(actuals) > 0
    if predictions.ndim != 1 or predictions.shape != relevant.shape:
        raise ValueError("predictions and actuals must be 1-D arrays of the same length, got "
                         f"shapes {predictions.shape} and {relevant.shape}")
    if n is not None and (not isinstance(n, (int, np.integer)) or n <= 0):
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    num_positives = int(np.count_nonzero(relevant))
    if total_num_positives is not None:
        if total_num_positives < num_positives:
            raise ValueError(f"total_num_positives={total_num_positives} is smaller than the "
                             f"{num_positives} positives in actuals")
        num_positives = int(total_num_positives)
    if cap and n is not None:
        num_positives = min(num_positives, n)
    top = rank_order(predictions)[:n]
    return ranked_ap(relevant[top], num_positives)


def ap_at_n(predictions: np.ndarray, actuals: np.ndarray, n: int | None = 20,
            total_num_positives: int | None = None) -> float:
    """The starter code's AP@n: AP of the top ``n`` predictions with M capped at n.

    ``actuals`` > 0 are positives; M = min(``total_num_positives`` (default: the
    positives in ``actuals``), n), so a top-n list of n hits scores 1 however
    many positives there are: the 2018 / starter semantics, kept under their
    name.  n=None ranks the whole list, uncapped.  The AP is 0 when M is 0.
    """
    return _ap_at_n(predictions, actuals, n, total_num_positives, cap=True)


def ap_at_n_uncapped(predictions: np.ndarray, actuals: np.ndarray, n: int | None = 20,
                     total_num_positives: int | None = None) -> float:
    """:func:`ap_at_n` with M not capped at n: GAP's definition for one list.

    A top-n list that misses positives scores below 1, whatever n is (so the
    AP of a video's top-20 is comparable with the GAP that ranks it).
    """
    return _ap_at_n(predictions, actuals, n, total_num_positives, cap=False)


def ap(predictions: np.ndarray, actuals: np.ndarray) -> float:
    """AP over the whole list (``ap_at_n`` with n=None)."""
    return ap_at_n(predictions, actuals, n=None)
