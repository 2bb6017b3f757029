"""The run folder's summary: one type writes and reads it, whatever command made the run."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from deepclust import runs
from deepclust.runs import RunSummary, read_summary, write_summary


def test_a_summary_round_trips_and_keeps_the_entries_of_its_command(tmp_path):
    summary = RunSummary(command="train", method="mmdc", config={"epochs": 2}, resolved={"n_clusters": 3}, seed=1,
                         counts={"images_clustered": 30}, timings_seconds={"total": 1.5}, metrics={"ACC": 0.5},
                         extra={"runs": [{"seed": 1}], "scores": None})
    summary.write(tmp_path)
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["method"] == "mmdc" and data["runs"] == [{"seed": 1}] and data["run_id"] == summary.run_id
    back = RunSummary.read(tmp_path)
    assert back.to_dict() == summary.to_dict()


def test_the_clustered_space_is_recorded_and_older_runs_are_read_as_before(tmp_path):
    assert RunSummary.from_dict({"command": "cluster", "resolved": {"normalized": False}}).normalized is False
    # written before `normalized` was recorded: cluster runs said it in their config, end-to-end runs never normalised
    assert RunSummary.from_dict({"command": "cluster", "config": {"normalize": True}}).normalized is True
    assert RunSummary.from_dict({"command": "cluster", "config": {"normalize": False}}).normalized is False
    assert RunSummary.from_dict({"command": "train", "method": "mmdc"}).normalized is False


def test_a_plain_dict_is_written_through_the_type_with_a_run_id(tmp_path):
    write_summary(tmp_path, {"command": "cluster"})
    first = read_summary(tmp_path)["run_id"]
    write_summary(tmp_path, {"command": "cluster"})
    assert read_summary(tmp_path)["run_id"] != first  # each run its own id


def test_confidence_is_the_margin_to_the_nearest_other_centre_and_clusters_csv_names_the_typical_image(tmp_path):
    from deepclust.cluster.space import centre_margins, distances_to_centres

    X = np.array([[0.0, 0], [2, 0], [10, 0], [12, 0], [30, 0]])
    clusters = np.array([0, 0, 1, 1, -1])  # centres at 1 and 11; the last image is noise
    margins = centre_margins(X, clusters)
    assert np.allclose(margins[:4], [11 - 1, 9 - 1, 9 - 1, 11 - 1]) and np.isnan(margins[4])
    assert np.allclose(centre_margins(X, np.array([0, 1, 1, 1, -1]))[:4], [8, -4, 8, 8])  # image 1: nearer the other
    assert np.isnan(centre_margins(X, np.zeros(5, int))).all()  # one cluster: no other centre
    assert np.allclose(centre_margins(X, clusters, chunk=2), margins, equal_nan=True)  # chunking changes nothing
    paths = [f"img{i}.jpg" for i in range(5)]
    distances = distances_to_centres(X, clusters)
    runs.write_assignments(tmp_path, paths, clusters, distances, None, margins)
    rows = list(csv.DictReader(open(tmp_path / "clusters.csv")))
    assert [(r["cluster"], r["size"], r["typical"]) for r in rows] == [("0", "2", "img0.jpg"), ("1", "2", "img2.jpg")]
    assert float(rows[0]["confidence"]) == pytest.approx(9.0) and float(rows[0]["cohesion"]) == pytest.approx(1.0)
    assignments = list(csv.DictReader(open(tmp_path / "assignments.csv")))
    assert assignments[0]["confidence"] == "10.000000" and assignments[4]["confidence"] == ""
