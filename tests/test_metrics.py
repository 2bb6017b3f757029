import numpy as np
import pytest
from sklearn import metrics as skm

from deepclust.cluster import KMeans
from deepclust.errors import DeepclustError
from deepclust.metrics import (
    METRICS,
    RepeatedScores,
    cluster_accuracy,
    hungarian_match,
    matched_accuracy,
    repeat_clustering,
    score_clustering,
)

# (y_true, y_pred, CA, ACC), computed by hand.
HAND_CASES = [
    # one image of class 0 lands with class 1: both CA and ACC 5/6
    ([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1], 5 / 6, 5 / 6),
    # more clusters than classes: every cluster pure (CA 1), but only two clusters can be matched
    ([0, 0, 1, 1], [0, 1, 2, 3], 1.0, 2 / 4),
    # fewer clusters than classes: one cluster, majority 2 of 6
    ([0, 1, 2, 0, 1, 2], [7, 7, 7, 7, 7, 7], 2 / 6, 2 / 6),
    # CA (purity) and ACC differ: two clusters share majority class "a"
    (["a", "a", "a", "a", "b", "b"], [0, 0, 1, 1, 1, 1], 4 / 6, 4 / 6),
    (["a", "a", "a", "b", "b", "c"], [0, 0, 1, 1, 1, 2], 5 / 6, 5 / 6),
    (["a", "a", "b", "a", "b", "b"], [0, 0, 0, 1, 1, 1], 4 / 6, 4 / 6),
    (["a", "a", "a", "b", "a", "a"], [0, 0, 0, 1, 1, 1], 5 / 6, 4 / 6),
]


@pytest.mark.parametrize("y_true, y_pred, ca, acc", HAND_CASES)
def test_ca_and_acc_match_hand_computed_values(y_true, y_pred, ca, acc):
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(ca)
    assert matched_accuracy(y_true, y_pred) == pytest.approx(acc)


def test_hungarian_match_maps_clusters_to_classes_one_to_one():
    assert hungarian_match(["x", "x", "y", "y", "y"], [5, 5, 3, 3, 5]) == {5: "x", 3: "y"}
    mapping = hungarian_match([0, 0, 1, 1], [0, 1, 2, 3])
    assert len(mapping) == 2 and len(set(mapping.values())) == 2


def test_nmi_ami_ari_equal_scikit_learn():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 7, 300)
    y_pred = np.where(rng.random(300) < 0.7, y_true, rng.integers(0, 9, 300))
    scores = score_clustering(y_true, y_pred)
    assert scores["NMI"] == pytest.approx(skm.normalized_mutual_info_score(y_true, y_pred))
    assert scores["AMI"] == pytest.approx(skm.adjusted_mutual_info_score(y_true, y_pred))
    assert scores["ARI"] == pytest.approx(skm.adjusted_rand_score(y_true, y_pred))


@pytest.mark.parametrize("name", list(METRICS))
def test_every_metric_is_one_for_a_perfect_clustering_and_invariant_to_renaming(name):
    metric = METRICS[name]
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 5, 100)
    renamed = (y_true * 7 + 3) % 5 + 10  # a bijection of cluster ids
    assert metric(y_true, renamed) == pytest.approx(1.0)
    y_pred = rng.integers(0, 6, 100)
    permuted = np.array([4, 0, 5, 1, 3, 2])[y_pred]
    assert metric(y_true, y_pred) == pytest.approx(metric(y_true, permuted))
    assert -0.5 <= metric(y_true, y_pred) <= 1.0
    if name in ("CA", "ACC", "NMI"):
        assert metric(y_true, y_pred) >= 0.0


def test_metrics_reject_mismatched_or_empty_labels():
    with pytest.raises(DeepclustError, match="3 labels but y_pred has 2"):
        cluster_accuracy([0, 1, 1], [0, 1])
    with pytest.raises(DeepclustError, match="empty"):
        matched_accuracy([], [])


def test_repeated_scores_report_avg_and_sample_sd_like_the_papers():
    scores = RepeatedScores(seeds=[0, 1, 2], runs=[{"ARI": 0.8}, {"ARI": 0.9}, {"ARI": 1.0}])
    assert scores.mean()["ARI"] == pytest.approx(0.9)
    assert scores.std()["ARI"] == pytest.approx(0.1)
    assert scores.formatted() == {"ARI": "0.900 (0.100)"}
    assert RepeatedScores([0], [{"CA": 0.5}]).formatted() == {"CA": "0.500 (0.000)"}


def test_repeat_clustering_runs_once_per_seed_and_scores_each_run():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 5)) * 10
    y = np.repeat(np.arange(4), 25)
    X = centres[y] + rng.normal(size=(100, 5))
    seen = []

    def make(seed):
        seen.append(seed)
        return KMeans(n_clusters=4, random_state=seed)

    result = repeat_clustering(X, y, make, seeds=[3, 4, 5])
    assert seen == [3, 4, 5] and result.seeds == [3, 4, 5]
    assert all(run["ARI"] == pytest.approx(1.0) for run in result.runs)
    assert result.metrics == ["CA", "ACC", "NMI", "AMI", "ARI"]
