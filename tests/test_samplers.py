"""Few-shot episode sampler: shapes, class structure, determinism, up-front checks."""

from __future__ import annotations

import numpy as np
import pytest

from deepclust.data.samplers import EpisodeSampler
from deepclust.errors import DeepclustError

LABELS = np.repeat([f"species_{i}" for i in range(12)], 11).tolist() + ["rare"] * 4


def test_tasks_have_the_configured_shape_and_class_by_class_layout():
    sampler = EpisodeSampler(LABELS, n_way=5, n_shot=3, n_query=2, n_tasks=20, random_state=0)
    ys, yq = sampler.task_labels()
    tasks = list(sampler)
    assert len(tasks) == len(sampler) == 20
    for task in tasks:
        assert len(task) == 5 * (3 + 2) and len(set(task)) == len(task)  # no image twice
        labels = np.array([LABELS[i] for i in task])
        support, query = labels[:15], labels[15:]
        classes = support[::3]
        assert len(set(classes)) == 5  # five distinct classes
        assert (support == classes[ys]).all() and (query == classes[yq]).all()
        assert "rare" not in classes  # 4 images < 3 + 2 needed


def test_tasks_use_only_the_classes_of_the_labels_given():
    # a sampler over the training subset never reaches an index of another subset
    train = list(range(0, 6 * 11))
    sampler = EpisodeSampler([LABELS[i] for i in train], 4, 5, 6, n_tasks=30, random_state=3)
    assert max(max(t) for t in sampler) < len(train)


def test_the_same_seed_draws_the_same_tasks_and_another_seed_others():
    a = list(EpisodeSampler(LABELS, 5, 2, 2, 10, random_state=7))
    b = list(EpisodeSampler(LABELS, 5, 2, 2, 10, random_state=7))
    c = list(EpisodeSampler(LABELS, 5, 2, 2, 10, random_state=8))
    assert a == b and a != c


def test_successive_passes_draw_new_tasks_and_the_state_can_be_restored():
    sampler = EpisodeSampler(LABELS, 5, 2, 2, 10, random_state=0)
    state = sampler.get_state()
    first, second = list(sampler), list(sampler)
    assert first != second
    sampler.set_state(state)
    assert list(sampler) == first


def test_sampler_raises_when_fewer_classes_than_n_way_have_enough_images():
    with pytest.raises(DeepclustError, match=r"13-way .* 12 such classes \(13 classes, 1 with fewer images\)"):
        EpisodeSampler(LABELS, n_way=13, n_shot=3, n_query=2, n_tasks=1)
    with pytest.raises(DeepclustError, match="need 5 classes with at least 12 images"):
        EpisodeSampler(LABELS, n_way=5, n_shot=6, n_query=6, n_tasks=1)
    with pytest.raises(DeepclustError, match="n_way=1 must be an integer >= 2"):
        EpisodeSampler(LABELS, n_way=1, n_shot=1, n_query=1, n_tasks=1)
