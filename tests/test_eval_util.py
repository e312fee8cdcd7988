"""eval_util and average_precision against brute-force references written here."""
import numpy as np
import pytest

import average_precision
import eval_util

# ---------------------------------------------------------------- references
# Plain per-video / per-entry loops, written from the metric definitions.


def ref_ap(ranked_relevance, num_positives):
    if num_positives == 0:
        return 0.0
    hits, total = 0, 0.0
    for rank, relevant in enumerate(ranked_relevance, start=1):
        if relevant:
            hits += 1
            total += hits / rank
    return total / num_positives


def ref_video_order(row):
    """Classes of one video by score descending, lower class first on ties."""
    return sorted(range(len(row)), key=lambda c: (-row[c], c))


def ref_metrics(predictions, labels, top_k):
    """Hit@1, PERR, GAP, mAP and the per-class APs (classes with positives)."""
    labels = labels > 0
    num_videos, num_classes = labels.shape
    hit_sum, perr_sum, entries = 0, 0.0, []
    for v in range(num_videos):
        row = predictions[v].tolist()
        order = ref_video_order(row)
        hit_sum += bool(labels[v, order[0]])
        num_labels = int(labels[v].sum())
        if num_labels:
            found = sum(1 for c in order[:num_labels] if labels[v, c] and row[c] > 0)
            perr_sum += found / num_labels
        for c in order[:top_k]:
            entries.append((-row[c], v, c, bool(labels[v, c])))
    entries.sort()  # score desc, then video asc, then class asc
    gap = ref_ap([e[3] for e in entries], int(labels.sum()))
    per_class = {}
    for e in entries:
        per_class.setdefault(e[2], []).append(e[3])
    aps = [ref_ap(per_class.get(c, []), int(labels[:, c].sum()))
           for c in range(num_classes) if labels[:, c].any()]
    return {"avg_hit_at_one": hit_sum / num_videos, "avg_perr": perr_sum / num_videos,
            "gap": gap, "aps": np.array(aps), "map": float(np.mean(aps)) if aps else 0.0}


def random_set(num_videos, num_classes, seed, decimals=3, labels_per_video=3.0):
    """Scores with many ties (rounded), some negative rows, some all-equal rows,
    some videos without labels."""
    rng = np.random.default_rng(seed)
    labels = rng.random((num_videos, num_classes)) < labels_per_video / num_classes
    labels[: max(1, num_videos // 50)] = False
    scores = rng.random((num_videos, num_classes)) * 0.6 + 0.4 * labels
    scores[rng.random(num_videos) < 0.1] -= 0.5
    scores = np.round(scores, decimals)
    scores[rng.random(num_videos) < 0.01] = 0.0
    return scores.astype(np.float64), labels


# ------------------------------------------------------------ hand-computed

HAND_P = np.array([[.9, .8, .1, .05], [.2, .7, .6, .3], [.1, .2, .3, .4]])
HAND_Y = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]])


def test_ap_hand_computed():
    scores = [.98, .88, .77, .65, .64, .59, .45, .43, .20, .05]
    labels = [1, 1, 0, 0, 0, 1, 1, 0, 0, 1]
    assert average_precision.ap(scores, labels) == pytest.approx(0.7143, abs=5e-5)
    # (1 + 1 + 3/6 + 4/7 + 5/10) / 5
    assert average_precision.ap(scores, labels) == pytest.approx((3 + 4 / 7) / 5, abs=1e-12)
    # Top 6 only: hits at 1, 2, 6 over the same 5 positives (min(5, 6) = 5: no cap).
    assert average_precision.ap_at_n(scores, labels, n=6) == pytest.approx(2.5 / 5, abs=1e-12)
    assert average_precision.ap_at_n_uncapped(scores, labels, n=6) == pytest.approx(2.5 / 5)
    # Top 2: two hits; the starter's ap_at_n divides by min(5, 2), the uncapped one by 5.
    assert average_precision.ap_at_n(scores, labels, n=2) == 1.0
    assert average_precision.ap_at_n_uncapped(scores, labels, n=2) == pytest.approx(2 / 5)
    # A list that misses positives: M given explicitly.
    assert average_precision.ap_at_n(scores, labels, n=None, total_num_positives=10) == (
        pytest.approx((3 + 4 / 7) / 10, abs=1e-12))
    assert average_precision.ap_at_n(scores, labels, n=3, total_num_positives=10) == (
        pytest.approx(2 / 3, abs=1e-12))


@pytest.mark.parametrize("scores, labels, want", [
    ([.98, .88, .77, .65, .64, .59, .45, .43, .20, .05], [1, 1, 0, 0, 0, 1, 1, 0, 0, 1], .714),
    ([.878, .832, .759, .621, .458, .285, .134], [1, 0, 1, 0, 0, 1, 0], .722),
    ([.98], [1], 1.0),
    ([.56], [0], 0.0),
])
def test_ap_at_n_matches_the_starter_test_data(scores, labels, want):
    """The published expectations of the starter code's AP tests (3 decimals)."""
    for n in (20, None, len(scores)):
        assert round(average_precision.ap_at_n(scores, labels, n=n), 3) == want
        assert round(average_precision.ap_at_n_uncapped(scores, labels, n=n), 3) == want


def test_metrics_hand_computed():
    assert eval_util.calculate_gap(HAND_P, HAND_Y, top_k=2) == pytest.approx(0.5556, abs=5e-5)
    assert eval_util.calculate_gap(HAND_P, HAND_Y, top_k=2) == pytest.approx(5 / 9, abs=1e-12)
    assert eval_util.calculate_hit_at_one(HAND_P, HAND_Y) == pytest.approx(0.6667, abs=5e-5)
    assert eval_util.calculate_precision_at_equal_recall_rate(HAND_P, HAND_Y) == 0.5
    metrics = eval_util.EvaluationMetrics(4, 2)
    batch = metrics.accumulate(HAND_P, HAND_Y.astype(bool), np.array([1.0, 2.0, 3.0]))
    assert batch == pytest.approx({"hit_at_one": 2 / 3, "perr": 0.5, "loss": 2.0})
    result = metrics.get()
    # Class 0: [.9 hit] -> 1; class 1: [.8 miss, .7 hit] -> 1/2; class 2: [.6, .3] -> 0;
    # class 3 has no positives: skipped (2018 code: (1 + .5 + 0 + 0) / 4).
    np.testing.assert_allclose(result["aps"], [1.0, 0.5, 0.0], atol=1e-12)
    assert result["map"] == pytest.approx(0.5, abs=1e-12)
    assert result["gap"] == pytest.approx(5 / 9, abs=1e-12)
    assert result["num_examples"] == 3


# --------------------------------------------------------- average precision

def test_ap_ties_are_stable_and_empty_is_zero():
    assert average_precision.ap([0.5, 0.5], [0, 1]) == 0.5
    assert average_precision.ap([0.5, 0.5], [1, 0]) == 1.0
    assert average_precision.ap([0.3, 0.9], [False, False]) == 0.0
    assert average_precision.ap_at_n([0.3, 0.9], [0, 0], total_num_positives=0) == 0.0


def test_ap_at_n_random_against_reference():
    rng = np.random.default_rng(1)
    for trial in range(30):
        size = int(rng.integers(1, 60))
        scores = np.round(rng.random(size), 1)  # ties
        labels = (rng.random(size) < 0.3).astype(int)
        n = int(rng.integers(1, 70))
        extra = int(rng.integers(0, 3))
        order = sorted(range(size), key=lambda i: (-scores[i], i))[:n]
        want = ref_ap([labels[i] for i in order], int(labels.sum()) + extra)
        got = average_precision.ap_at_n_uncapped(scores, labels, n=n,
                                                 total_num_positives=int(labels.sum()) + extra)
        assert got == pytest.approx(want, abs=1e-12), trial
        capped = ref_ap([labels[i] for i in order], min(int(labels.sum()) + extra, n))
        got = average_precision.ap_at_n(scores, labels, n=n,
                                        total_num_positives=int(labels.sum()) + extra)
        assert got == pytest.approx(capped, abs=1e-12), trial


@pytest.mark.parametrize("function", [average_precision.ap_at_n,
                                      average_precision.ap_at_n_uncapped])
def test_ap_at_n_rejects_bad_input(function):
    with pytest.raises(ValueError):
        function([0.1, 0.2], [1])
    with pytest.raises(ValueError):
        function([0.1, 0.2], [1, 0], n=0)
    with pytest.raises(ValueError):
        function([0.1, 0.2], [1, 1], total_num_positives=1)


# ------------------------------------------------------------------ metrics

def test_large_random_set_matches_reference():
    """10,000 videos x 500 classes, ties, negative rows, label-free videos."""
    predictions, labels = random_set(10_000, 500, seed=2)
    assert (labels.sum(axis=1) == 0).sum() > 100
    want = ref_metrics(predictions, labels, top_k=20)
    metrics = eval_util.EvaluationMetrics(500, 20)
    metrics.accumulate(predictions[:6000], labels[:6000], 0.0)
    metrics.accumulate(predictions[6000:], labels[6000:], 0.0)
    got = metrics.get()
    for key in ("avg_hit_at_one", "avg_perr", "gap", "map"):
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
    np.testing.assert_allclose(got["aps"], want["aps"], rtol=0, atol=1e-9)
    assert got["num_examples"] == 10_000
    assert eval_util.calculate_gap(predictions, labels) == pytest.approx(want["gap"], abs=1e-9)
    assert eval_util.calculate_hit_at_one(predictions, labels) == want["avg_hit_at_one"]
    assert eval_util.calculate_precision_at_equal_recall_rate(predictions, labels) == (
        pytest.approx(want["avg_perr"], abs=1e-12))


@pytest.mark.parametrize("num_classes,top_k,decimals", [(7, 3, 1), (5, 5, 1), (4, 9, 2),
                                                        (60, 20, 6)])
def test_small_random_sets_match_reference(num_classes, top_k, decimals):
    predictions, labels = random_set(300, num_classes, seed=num_classes, decimals=decimals,
                                     labels_per_video=min(3.0, num_classes / 2))
    want = ref_metrics(predictions, labels, top_k)
    metrics = eval_util.EvaluationMetrics(num_classes, top_k)
    metrics.accumulate(predictions, labels.astype(np.float32), 0.0)
    got = metrics.get()
    for key in ("avg_hit_at_one", "avg_perr", "gap", "map"):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    np.testing.assert_allclose(got["aps"], want["aps"], rtol=0, atol=1e-12)


def test_top_k_per_video_breaks_ties_by_class():
    predictions, _ = random_set(200, 30, seed=5, decimals=1)
    scores, classes = eval_util.top_k_per_video(predictions, 8)
    assert scores.shape == classes.shape == (200, 8)
    for v in range(200):
        want = ref_video_order(predictions[v].tolist())[:8]
        assert classes[v].tolist() == want
        np.testing.assert_array_equal(scores[v], predictions[v, want])
    assert eval_util.top_k_per_video(predictions, 50)[1].shape == (200, 30)


def test_results_do_not_depend_on_batch_boundaries():
    predictions, labels = random_set(1000, 40, seed=6, decimals=2)
    losses = np.random.default_rng(6).random(1000)
    results = []
    for batch_size in (1000, 1, 7, 333):
        metrics = eval_util.EvaluationMetrics(40, 5)
        for start in range(0, 1000, batch_size):
            end = start + batch_size
            metrics.accumulate(predictions[start:end], labels[start:end], losses[start:end])
        results.append(metrics.get())
    for result in results[1:]:
        for key in ("avg_hit_at_one", "avg_perr", "gap", "map", "num_examples"):
            assert result[key] == results[0][key], key
        np.testing.assert_array_equal(result["aps"], results[0]["aps"])
        # Per-video losses: the batch-size weighted mean is the mean over videos.
        assert result["avg_loss"] == pytest.approx(losses.mean(), rel=1e-12)


def test_get_is_repeatable_and_streaming_continues_after_get():
    predictions, labels = random_set(500, 25, seed=7, decimals=2)
    metrics = eval_util.EvaluationMetrics(25, 4)
    metrics.accumulate(predictions[:200], labels[:200], 1.0)
    first = metrics.get()
    assert metrics.get()["gap"] == first["gap"]
    metrics.accumulate(predictions[200:], labels[200:], 3.0)
    want = ref_metrics(predictions, labels, 4)
    got = metrics.get()
    assert got["gap"] == pytest.approx(want["gap"], abs=1e-12)
    assert got["map"] == pytest.approx(want["map"], abs=1e-12)
    assert got["avg_loss"] == pytest.approx((200 * 1.0 + 300 * 3.0) / 500)


def test_map_skips_classes_without_positives():
    predictions, labels = random_set(400, 12, seed=8, decimals=2)
    labels[:, [0, 5, 11]] = False
    got = eval_util.EvaluationMetrics(12, 12)
    got.accumulate(predictions, labels, 0.0)
    result = got.get()
    want = ref_metrics(predictions, labels, 12)
    assert result["aps"].shape == (9,)
    assert result["map"] == pytest.approx(want["map"], abs=1e-12)
    # Averaging the empty classes in as 0 (the 2018 way) would give a lower number.
    assert result["map"] > result["aps"].sum() / 12


def test_no_positives_at_all_gives_zero():
    metrics = eval_util.EvaluationMetrics(4, 2)
    metrics.accumulate(HAND_P, np.zeros((3, 4), dtype=bool), 0.5)
    result = metrics.get()
    assert (result["gap"], result["map"], result["avg_perr"], result["avg_hit_at_one"]) == (
        0.0, 0.0, 0.0, 0.0)
    assert result["aps"].size == 0


def test_clear_resets():
    predictions, labels = random_set(300, 20, seed=9, decimals=2)
    fresh = eval_util.EvaluationMetrics(20, 5)
    fresh.accumulate(predictions[100:], labels[100:], 2.0)
    reused = eval_util.EvaluationMetrics(20, 5)
    reused.accumulate(predictions[:100], labels[:100], 7.0)
    reused.get()
    reused.clear()
    with pytest.raises(ValueError):
        reused.get()
    reused.accumulate(predictions[100:], labels[100:], 2.0)
    want, got = fresh.get(), reused.get()
    for key in ("avg_hit_at_one", "avg_perr", "avg_loss", "gap", "map", "num_examples"):
        assert got[key] == want[key], key
    np.testing.assert_array_equal(got["aps"], want["aps"])


def test_top_k_fed_directly_matches_accumulate():
    """A caller with per-video top-k (like tf.math.top_k) gets the same state, whatever
    the order within its rows."""
    predictions, labels = random_set(300, 30, seed=10, decimals=2)
    want = eval_util.EvaluationMetrics(30, 6)
    want.accumulate(predictions, labels, 0.0)
    fed = eval_util.EvaluationMetrics(30, 6)
    for start in (0, 150):
        p, y = predictions[start:start + 150], labels[start:start + 150]
        scores, classes = eval_util.top_k_per_video(p, 6)
        hits = np.take_along_axis(y, classes, axis=1)
        if start:  # reversed rows: lowest score first, ties in descending class order
            scores, classes, hits = scores[:, ::-1], classes[:, ::-1], hits[:, ::-1]
        fed._accumulate_top_k(scores, classes, hits, y.sum(axis=0))
        fed._accumulate_video_stats(hits[:, 0], np.zeros(150), 0.0)
    assert fed.get()["gap"] == want.get()["gap"]
    np.testing.assert_array_equal(fed.get()["aps"], want.get()["aps"])


def test_bad_input_is_rejected():
    metrics = eval_util.EvaluationMetrics(4, 2)
    with pytest.raises(ValueError):
        metrics.accumulate(HAND_P, HAND_Y[:, :3], 0.0)
    with pytest.raises(ValueError):
        metrics.accumulate(HAND_P[:, :3], HAND_Y[:, :3], 0.0)  # wrong class count
    bad = HAND_P.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError):
        eval_util.calculate_gap(bad, HAND_Y)
    with pytest.raises(ValueError):
        eval_util.EvaluationMetrics(4, 0)
