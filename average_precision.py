"""Non-interpolated average precision (AP), vectorised with numpy.

AP of a ranked list = (1/M) * sum_i precision@i * rel(i), where M is the number
of positives, which may include positives that never made it into the list (so
a list that misses some of them cannot reach 1).  Lists are ranked by score,
descending; equal scores keep their input order (a stable sort), so every
result is deterministic.  The 2016 starter code shuffled ties at random instead.
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


def ap_at_n(predictions: np.ndarray, actuals: np.ndarray, n: int | None = 20,
            total_num_positives: int | None = None) -> float:
    """AP over the top ``n`` predictions (all of them when n is None).

    ``actuals`` > 0 are positives.  M is ``total_num_positives`` when given (for
    lists that miss some positives), else the positives in ``actuals``; the AP is
    0 when M is 0.  Unlike the starter code's ap_at_n, M is not capped at n: the
    same definition as GAP.
    """
    predictions = np.asarray(predictions)
    relevant = np.asarray(actuals) > 0
    if predictions.ndim != 1 or predictions.shape != relevant.shape:
        raise ValueError("predictions and actuals must be 1-D arrays of the same length, got "
                         f"shapes {predictions.shape} and {relevant.shape}")
    if n is not None and (not isinstance(n, (int, np.integer)) or n <= 0):
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    num_listed = int(np.count_nonzero(relevant))
    if total_num_positives is None:
        total_num_positives = num_listed
    elif total_num_positives < num_listed:
        raise ValueError(f"total_num_positives={total_num_positives} is smaller than the "
                         f"{num_listed} positives in actuals")
    top = rank_order(predictions)[:n]
    return ranked_ap(relevant[top], total_num_positives)


def ap(predictions: np.ndarray, actuals: np.ndarray) -> float:
    """AP over the whole list (``ap_at_n`` with n=None)."""
    return ap_at_n(predictions, actuals, n=None)
