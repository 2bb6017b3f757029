"""The run folder's summary: one type writes and reads it, whatever command made the run."""

from __future__ import annotations

import json

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
