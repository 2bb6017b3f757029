"""The feedback file, constrained k-means and `deepclust refine`: the user's corrections go back in."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from conftest import needs_moths
from deepclust import runs
from deepclust.cli import main
from deepclust.cluster.constrained import ConstrainedKMeans
from deepclust.config import ClusterConfig
from deepclust.errors import DeepclustError
from deepclust.feedback import Feedback, load_feedback, parse_feedback, resolve
from deepclust.jobs.refine import refine_run
from deepclust.metrics import adjusted_rand


def _hidden_classes(n_classes=6, per_class=40, d=40, seed=0):
    """Classes that differ only along a few quiet directions while loud nuisance directions
    carry most of the variance: unsupervised clustering finds the nuisance, labels fix it."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), per_class)
    X = rng.normal(0, 0.05, (len(y), d))
    X[:, :4] += rng.normal(0, 1.0, (n_classes, 4))[y]  # the classes: 4 quiet directions
    X[:, 4:14] += rng.normal(0, 1.5, (len(y), 10))  # the nuisance: 10 loud ones, unrelated to the class
    X[:, 14:] += 3.0  # away from the origin, so L2-normalising keeps the geometry
    return X.astype(np.float32), y


def _write_run(folder, X, y, clusters) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = [f"imgs/c{c}/img{i:04d}.jpg" for i, c in enumerate(y)]
    config = ClusterConfig(images="imgs", out=str(folder), n_clusters=int(clusters.max()) + 1, backbone="",
                           labels="folders")
    runs.write_embeddings(folder, X)
    runs.write_run_files(config, paths, clusters, np.zeros(len(y)), [f"c{c}" for c in y], None)
    runs.RunSummary(command="cluster", config=config.to_dict(), resolved={"normalized": True}, seed=0,
                    counts={}, timings_seconds={}).write(folder)
    return paths


def _digest(folder) -> dict:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in sorted(os.listdir(folder))}


# -- the feedback file -------------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    ([], "must hold a JSON object"),
    ({"labels": {}, "colour": 1}, "unknown key.s. colour"),
    ({"version": 2}, "version 2 is not known"),
    ({"labels": {"a.jpg": ""}}, "'labels' must map image paths to non-empty class names"),
    ({"must_link": [["a.jpg"]]}, "each 'must_link' entry needs at least 2 paths"),
    ({"cannot_link": [["a.jpg", "b.jpg", "c.jpg"]]}, "each 'cannot_link' entry needs exactly 2 paths"),
    ({"unknown": "a.jpg"}, "'unknown' must be a list of image paths"),
])
def test_a_malformed_feedback_file_is_refused_naming_the_entry(content, message):
    with pytest.raises(DeepclustError, match=message):
        parse_feedback(content, "f.json")


def test_feedback_resolves_into_groups_and_refuses_paths_and_contradictions(tmp_path):
    paths = [f"p{i}.jpg" for i in range(8)]
    fb = Feedback(labels={"p0.jpg": "moth", "p1.jpg": "moth", "p5.jpg": "bee"},
                  must_link=[["p1.jpg", "p2.jpg"], ["p3.jpg", "p4.jpg"]], cannot_link=[["p0.jpg", "p6.jpg"]],
                  unknown=["p7.jpg"])
    fb.save(tmp_path / "f.json")
    r = resolve(load_feedback(tmp_path / "f.json"), paths)
    assert r.group[0] == r.group[1] == r.group[2] != r.group[3] == r.group[4]  # a label joins its must-link group
    assert r.names[r.group[0]] == "moth" and r.names[r.group[3]] is None and r.names[r.group[5]] == "bee"
    assert r.group[6] == -1 and r.group[7] == -1 and r.cannot == [(0, 6)] and list(r.unknown) == [7]
    assert r.touched.tolist() == [True] * 8
    with pytest.raises(DeepclustError, match="names 'elsewhere.jpg' and 1 more, which the run did not cluster"):
        resolve(Feedback(labels={"elsewhere.jpg": "x"}, unknown=["gone.jpg"]), paths)
    with pytest.raises(DeepclustError, match="puts '(moth|bee)' and '(moth|bee)' in one class"):
        resolve(Feedback(labels={"p0.jpg": "moth", "p1.jpg": "bee"}, must_link=[["p0.jpg", "p1.jpg"]]), paths)
    with pytest.raises(DeepclustError, match="'p2.jpg' and 'p0.jpg' are of different classes .cannot_link. and of one"):
        resolve(Feedback(labels={"p0.jpg": "moth"}, must_link=[["p0.jpg", "p2.jpg"]],
                         cannot_link=[["p2.jpg", "p0.jpg"]]), paths)
    with pytest.raises(DeepclustError, match="no feedback file"):
        load_feedback(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{labels: }")
    with pytest.raises(DeepclustError, match="cannot read feedback file"):
        load_feedback(tmp_path / "bad.json")


# -- constrained k-means -----------------------------------------------------------------

def test_constrained_kmeans_keeps_groups_together_and_cannot_link_pairs_apart():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(c, 0.3, (30, 2)) for c in ((0, 0), (5, 0), (0, 5))])
    y = np.repeat(np.arange(3), 30)
    free = ConstrainedKMeans(3, random_state=0).fit_predict(X)
    assert adjusted_rand(y, free) == 1.0  # without constraints: plain k-means on clear blobs
    group = np.full(90, -1)
    group[[0, 1, 30]] = 0  # the user says these three (two blobs) are one class...
    group[[60, 61]] = 1
    cannot = [(2, 3), (31, 0)]  # ...and these pairs are not
    labels = ConstrainedKMeans(3, random_state=0).fit_predict(X, group, cannot)
    assert labels[0] == labels[1] == labels[30] == 0 and labels[60] == labels[61] == 1
    assert labels[2] != labels[3] and labels[31] != labels[0]
    more = ConstrainedKMeans(2, random_state=0)
    labels = more.fit_predict(X, np.r_[np.arange(3), np.full(87, -1)])
    assert more.n_clusters_ == 3 and len(set(labels[:3])) == 3  # k grows to the number of groups
    with pytest.raises(DeepclustError, match="in one group and in a cannot-link pair"):
        ConstrainedKMeans(3).fit_predict(X, group, [(0, 1)])


# -- refine ------------------------------------------------------------------------------

def test_refine_learns_from_labels_what_clustering_alone_cannot_find(tmp_path):
    X, y = _hidden_classes()
    first = ConstrainedKMeans(6, random_state=0).fit_predict(X / np.linalg.norm(X, axis=1, keepdims=True))
    parent = tmp_path / "run"
    paths = _write_run(parent, X, y, first)
    rng = np.random.default_rng(1)
    picked = rng.choice(len(y), size=len(y) // 5, replace=False)  # 20 % labelled
    Feedback(labels={paths[i]: f"c{y[i]}" for i in picked}).save(parent / "feedback.json")
    before = _digest(parent)
    after_files = tmp_path / "refined"
    result = refine_run(parent, after_files)
    untouched = np.setdiff1d(np.arange(len(y)), picked)
    first_ari = adjusted_rand(y[untouched], first[untouched])
    refined_ari = adjusted_rand(y[untouched], result.clusters[untouched])
    assert first_ari < 0.3 and refined_ari > 0.8, (first_ari, refined_ari)
    assert result.info["untouched"]["after"]["ARI"] == pytest.approx(refined_ari)
    for name in set(f"c{y[i]}" for i in picked):  # every labelled class whole, in a cluster of its own
        assert len({result.clusters[i] for i in picked if f"c{y[i]}" == name}) == 1
    assert len({result.clusters[i] for i in picked}) == len({y[i] for i in picked})
    assert _digest(parent) == before  # the run it starts from is never changed
    new = runs.load_run(after_files)  # an ordinary run
    assert new.paths == paths and np.array_equal(new.clusters, result.clusters)
    lineage = new.summary["refine"]
    assert lineage["round"] == 1 and lineage["parent"] == lineage["root"] == str(parent.resolve())
    assert load_feedback(after_files / "feedback-used.json").labels == load_feedback(parent / "feedback.json").labels

    # round 2: feedback on the refined run, with the first round's, from the root's embeddings
    extra = [i for i in untouched[:10]]
    Feedback(cannot_link=[[paths[extra[0]], paths[picked[0]]]], unknown=[paths[extra[1]]]).save(
        after_files / "feedback.json")
    second = refine_run(after_files, tmp_path / "round2")
    assert second.info["round"] == 2 and second.info["root"] == str(parent.resolve())
    assert second.info["cannot_link"] == 1 and second.info["unknown"] == 1
    assert second.clusters[extra[0]] != second.clusters[picked[0]]
    used = load_feedback(tmp_path / "round2" / "feedback-used.json")
    assert len(used.labels) == len(picked) and len(used.cannot_link) == 1
    with pytest.raises(DeepclustError, match="--out must be a new folder"):
        refine_run(parent, parent)
    # a split: two groups of one first-run cluster said to differ ask for one more cluster
    c = first[0]
    members = np.flatnonzero(first == c)
    Feedback(must_link=[[paths[members[0]], paths[members[1]]], [paths[members[2]], paths[members[3]]]],
             cannot_link=[[paths[members[0]], paths[members[2]]]]).save(tmp_path / "split.json")
    refine_run(parent, tmp_path / "split", tmp_path / "split.json")
    assert runs.load_run(tmp_path / "split").summary["resolved"]["n_clusters"] == 7  # 6 + the split


def test_refine_needs_two_classes_it_can_learn_from(tmp_path, capsys):
    X, y = _hidden_classes(per_class=5)
    paths = _write_run(tmp_path / "run", X, y, y)
    Feedback(labels={paths[0]: "a", paths[1]: "a", paths[7]: "b"}).save(tmp_path / "run" / "feedback.json")
    assert main(["refine", str(tmp_path / "run"), "--out", str(tmp_path / "new")]) == 2
    assert "the feedback has 1 class(es) of at least 2 images; refine learns from at least 2" in \
        capsys.readouterr().err


@needs_moths
def test_refine_cli_on_real_moths_writes_a_run_that_predict_embeds_through_its_head(moth_split, tmp_path, capsys):
    images, _ = moth_split
    run = tmp_path / "run"
    assert main(["-q", "cluster", str(images), "--out", str(run), "--labels", "folders", "--n-clusters", "8",
                 "--image-size", "128", "--no-progress"]) == 0
    first = runs.load_run(run)
    rng = np.random.default_rng(0)
    picked = rng.choice(len(first.paths), size=len(first.paths) // 4, replace=False)
    feedback = {"version": 1, "labels": {first.paths[i]: first.labels[i] for i in picked}}
    (tmp_path / "mine.json").write_text(json.dumps(feedback))
    capsys.readouterr()
    assert main(["refine", str(run), "--feedback", str(tmp_path / "mine.json"), "--out", str(tmp_path / "new")]) == 0
    out = capsys.readouterr().out
    assert "(round 1)" in out and "images the feedback did not touch: ACC" in out
    refined = runs.load_run(tmp_path / "new")
    assert refined.summary["config"]["weights"] == str((tmp_path / "new" / "head.pt").resolve())
    assert refined.embeddings.shape[1] <= 128
    assert main(["-q", "predict", str(tmp_path / "new"), str(images), "--out", str(tmp_path / "pred")]) == 0
    rows = list(__import__("csv").DictReader(open(tmp_path / "pred" / "predictions.csv")))
    by_path = dict(zip(refined.paths, refined.clusters))
    agree = np.mean([int(r["cluster"]) == by_path[r["path"]] for r in rows if r["path"] in by_path])
    assert agree > 0.9  # the run's own images, embedded again through head.pt, land in their clusters


@needs_moths
def test_refine_finetune_trains_the_backbone_on_the_feedbacks_classes_then_embeds_again(moth_split, tmp_path, capsys):
    images, _ = moth_split
    run = tmp_path / "run"
    assert main(["-q", "cluster", str(images), "--out", str(run), "--labels", "folders", "--n-clusters", "8",
                 "--backbone", "test_efficientnet", "--weights", "random", "--image-size", "32", "--no-progress"]) == 0
    first = runs.load_run(run)
    rng = np.random.default_rng(0)
    picked = rng.choice(len(first.paths), size=len(first.paths) // 2, replace=False)
    Feedback(labels={first.paths[i]: first.labels[i] for i in picked}).save(run / "feedback.json")
    capsys.readouterr()
    assert main(["-q", "refine", str(run), "--out", str(tmp_path / "new"), "--finetune", "--no-progress"]) == 0
    new = runs.load_run(tmp_path / "new")
    tuned = new.summary["refine"]["finetuned"]
    assert tuned["weights"] == str(tmp_path / "new" / "finetune" / "train" / "best.pt")
    split = json.loads((tmp_path / "new" / "finetune" / "split.json").read_text())
    assert len(split["subsets"]["train"]) == 6 and len(split["subsets"]["val"]) == 2  # a fifth held back, at least 2
    linked = [os.path.realpath(p) for p in (tmp_path / "new" / "finetune" / "images").rglob("*.jpg")]
    assert sorted(linked) == sorted(os.path.realpath(first.paths[i]) for i in picked)  # links, not copies
    history = json.loads((tmp_path / "new" / "finetune" / "train" / "train_summary.json").read_text())["history"]
    assert history[-1]["epoch"] == 4 and "Lm" in history[-1]  # the scatter loss trained
    # the head's checkpoint carries the fine-tuned backbone: predict puts the run's images back
    assert main(["-q", "predict", str(tmp_path / "new"), str(images), "--out", str(tmp_path / "pred")]) == 0
    rows = list(__import__("csv").DictReader(open(tmp_path / "pred" / "predictions.csv")))
    by_path = dict(zip(new.paths, new.clusters))
    assert np.mean([int(r["cluster"]) == by_path[r["path"]] for r in rows]) > 0.9
    Feedback(labels={first.paths[i]: first.labels[i] for i in picked[:6]}).save(tmp_path / "few.json")
    assert main(["refine", str(run), "--feedback", str(tmp_path / "few.json"), "--out", str(tmp_path / "x"),
                 "--finetune"]) == 2
    assert "--finetune needs at least 6 classes of 2 or more images" in capsys.readouterr().err
