"""The linear scatter head: eq. 1 of the core paper minimised in closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SPLIT_SPECIES, needs_moths
from deepclust.errors import DeepclustError
from deepclust.losses import scatter_loss
from deepclust.methods.scatter_head import ScatterHead


def _eq1(Z, y) -> float:
    return float(scatter_loss(torch.as_tensor(np.asarray(Z, dtype=np.float64)), torch.as_tensor(y)))


def _stretched_classes(k: int, n: int, d: int, seed: int):
    """k classes whose means differ along a few directions, with noise stretched along others:
    the best direction for eq. 1 is not the direction of largest variance."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1.0, (k, d))
    noise = rng.normal(0, 1, (k * n, d)) * np.linspace(3.0, 0.3, d)
    y = np.repeat(np.arange(k), n)
    return means[y] + noise, y


@pytest.mark.parametrize("k", [2, 3])
def test_the_closed_form_direction_is_the_best_of_all_directions_on_the_plane(k):
    X, y = _stretched_classes(k, 40, 2, seed=k)
    head = ScatterHead(n_components=1, shrinkage=0.0, pca_components=None).fit(X, y)
    best = _eq1(head.transform(X), y)
    angles = np.linspace(0, np.pi, 3601)
    brute = min(_eq1(X @ np.array([[np.cos(a)], [np.sin(a)]]), y) for a in angles)
    assert best == pytest.approx(brute, rel=1e-3)
    assert best <= brute + 1e-9


def test_the_learned_projection_beats_random_projections_of_its_size_and_the_identity():
    X, y = _stretched_classes(6, 30, 20, seed=0)
    head = ScatterHead().fit(X, y)
    learned = _eq1(head.transform(X), y)
    rng = np.random.default_rng(1)
    random = [_eq1(X @ rng.normal(size=(20, head.n_components_)), y) for _ in range(50)]
    assert head.n_components_ == 5
    assert learned < min(random)
    assert learned < _eq1(X, y)


def test_the_gradient_solver_on_episodes_goes_down_eq_1_to_its_minimum_one_direction():
    # eq. 1 over several outputs is a ratio of traces: no projection scores below the best single
    # direction (1 / the largest generalised eigenvalue), and the gradient heads there, letting the
    # other outputs fade, where the closed form keeps n_classes - 1 directions of full weight
    X, y = _stretched_classes(6, 30, 20, seed=0)
    closed = ScatterHead(shrinkage=0.0).fit(X, y)
    floor = 1 / closed.eigenvalues_[0]
    assert _eq1(closed.transform(X)[:, :1], y) == pytest.approx(floor, rel=1e-6)
    start = ScatterHead(solver="episodes", episodes=1, random_state=0).fit(X, y)
    trained = ScatterHead(solver="episodes", episodes=300, n_way=4, random_state=0).fit(X, y)
    assert trained.n_components_ == 5 and trained.components_.shape == (20, 5)
    reached = _eq1(trained.transform(X), y)
    assert reached < 0.05 * _eq1(start.transform(X), y)
    assert floor * (1 - 1e-6) <= reached < 1.3 * floor < _eq1(closed.transform(X), y)
    weights = np.linalg.svd(trained.components_, compute_uv=False)
    assert weights[1] < 0.25 * weights[0]  # one direction dominates
    again = ScatterHead(solver="episodes", episodes=300, n_way=4, random_state=0).fit(X, y)
    assert np.array_equal(again.components_, trained.components_)  # seeded: the same episodes, the same head
    with pytest.raises(DeepclustError, match="solver='sgd' is not known"):
        ScatterHead(solver="sgd").fit(X, y)


def test_renaming_the_classes_changes_nothing():
    X, y = _stretched_classes(4, 25, 10, seed=2)
    names = np.array(["moth", "bee", "ant", "fly"])
    a = ScatterHead().fit(X, y).transform(X)
    b = ScatterHead().fit(X, names[y]).transform(X)  # string names, sorted into another order of classes
    c = ScatterHead().fit(X, (y + 2) % 4).transform(X)
    for other in (b, c):  # components are defined up to their sign: compare the geometry
        assert np.allclose(a @ a.T, other @ other.T, atol=1e-3)


def test_it_refuses_one_class_and_classes_of_a_single_image_with_a_clear_message():
    X = np.random.default_rng(0).normal(size=(6, 4))
    with pytest.raises(DeepclustError, match="at least 2 classes; got 1"):
        ScatterHead().fit(X, np.zeros(6, int))
    with pytest.raises(DeepclustError, match=r"1 class\(es\) have a single labelled image \(e.g. 'c'\)"):
        ScatterHead().fit(X, np.array(["a", "a", "b", "b", "b", "c"]))
    with pytest.raises(DeepclustError, match="shrinkage=2"):
        ScatterHead(shrinkage=2).fit(X, np.array([0, 0, 0, 1, 1, 1]))
    with pytest.raises(DeepclustError, match="not fitted"):
        ScatterHead().transform(X)



@needs_moths
def test_train_linear_writes_a_backbone_with_its_head_that_every_job_embeds_through(moth_split, tmp_path, capsys):
    import json

    from deepclust.cli import main
    from deepclust.features.backbones import create_backbone
    from deepclust.runs import load_run

    images, split = moth_split
    out = tmp_path / "head"
    assert main(["-q", "train", "--method", "linear", "--images", str(images), "--split", str(split), "--out", str(out),
                 "--image-size", "96", "--no-progress"]) == 0
    assert "checkpoint" in capsys.readouterr().out
    summary = json.loads((out / "train_summary.json").read_text())
    assert len(summary["history"]) == 10 and summary["best_setting"]["setting"] >= 1  # 9 settings + the bare backbone
    head = create_backbone("tf_efficientnet_lite0", weights=str(out / "best.pt"), image_size=96)
    plain = create_backbone("tf_efficientnet_lite0", image_size=96)
    assert head.head is not None and head.num_features == summary["best_setting"]["n_components"] <= 3
    assert head.signature() != plain.signature()  # the cache keys the head's file
    run = tmp_path / "run"
    assert main(["-q", "cluster", str(images), "--split", str(split), "--subset", "test", "--labels", "folders",
                 "--out", str(run), "--weights", str(out / "best.pt"), "--image-size", "96", "--no-progress"]) == 0
    assert load_run(run).embeddings.shape[1] == head.num_features
    assert main(["-q", "predict", str(run), str(images / SPLIT_SPECIES["test"][0]), "--out", str(tmp_path / "p"),
                 "--no-progress"]) == 0
    assert (tmp_path / "p" / "predictions.csv").is_file()
