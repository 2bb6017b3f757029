"""`deepclust review`: the session's actions and feedback, the server's guards, and the page in Chromium."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from conftest import launch_chromium, needs_chromium, watch_page
from deepclust import runs
from deepclust.cluster.space import centre_margins, distances_to_centres, prepare_features
from deepclust.config import ClusterConfig
from deepclust.errors import DeepclustError
from deepclust.feedback import load_feedback, resolve
from deepclust.jobs.review import ReviewSession
from deepclust.jobs.review_server import ReviewServer

K, PER = 5, 6
#: What the page shows: per cluster card, its id, name and images (number, marks, loaded).
CARDS = ("[...document.querySelectorAll('.card')].map(c => [c.dataset.cluster, c.querySelector('input.name').value, "
         "[...c.querySelectorAll('img')].map(i => [i.dataset.image, i.className, i.naturalWidth > 0])])")


@pytest.fixture
def small_run(tmp_path):
    """A run of 30 small PNG images in 5 clusters (image i of cluster c is a square of colour c),
    written as `deepclust cluster` writes one; returns (folder, paths)."""
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    paths, clusters, X = [], [], []
    for c in range(K):
        for j in range(PER):
            path = images / f"c{c}_{j}.png"
            Image.new("RGB", (40, 30), (50 * c, 255 - 40 * c, 30 * j)).save(path)
            paths.append(str(path))
            clusters.append(c)
            X.append(np.eye(K)[c] * 5 + rng.normal(0, 0.3 + 0.2 * j, K))
    folder = tmp_path / "run"
    folder.mkdir()
    config = ClusterConfig(images=str(images), out=str(folder), n_clusters=K)
    X, clusters = np.array(X, dtype=np.float32), np.array(clusters)
    Xn = prepare_features(X, True)
    runs.write_embeddings(folder, X)
    runs.write_run_files(config, paths, clusters, distances_to_centres(Xn, clusters), None, None,
                         centre_margins(Xn, clusters))
    runs.RunSummary(command="cluster", config=config.to_dict(), resolved={"normalized": True}, seed=0, counts={},
                    timings_seconds={}).write(folder)
    return folder, paths


def _digest(folder, names) -> dict:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names}


def test_each_action_becomes_feedback_and_undo_and_reopening_replay_it(small_run):
    folder, paths = small_run
    own = _digest(folder, ["assignments.csv", "embeddings.npy", "summary.json", "config.yaml"])
    s = ReviewSession(folder)
    state = s.state()
    assert [c["images"][0] for c in state["clusters"] if c["id"] == 0] == [0]  # most typical first (lowest noise)
    assert sorted(len(c["images"]) for c in state["clusters"]) == [PER] * K
    ids = sorted({c["id"]: c["confidence"] for c in state["clusters"]}.items(), key=lambda kv: kv[1])
    first_round = state["queue"][:K]  # one image of each cluster, the least sure cluster first ...
    assert [int(s.run.clusters[i]) for i in first_round] == [c for c, _ in ids]
    for i in first_round:  # ... each its least certain image
        members = np.flatnonzero(s.run.clusters == s.run.clusters[i])
        assert s.margin[i] == s.margin[members].min()
    s.act({"type": "name", "cluster": 0, "name": "Agrotis"})
    s.act({"type": "move", "images": [7], "to": 0})  # an image of cluster 1 belongs with cluster 0
    s.act({"type": "reject", "images": [5]})  # image 5 is not an Agrotis
    s.act({"type": "merge", "clusters": [2, 3]})
    s.act({"type": "split", "images": [24, 25]})  # out of cluster 4: a new cluster 5
    s.act({"type": "unknown", "images": [29]})
    s.act({"type": "confirm", "cluster": 1})
    s.act({"type": "unknown", "images": [28]})
    state = s.act({"type": "undo"})  # takes back the last unknown
    assert state["unknown"] == [29] and state["can_undo"]
    fb = load_feedback(folder / "feedback.json")
    agrotis = {p for p, name in fb.labels.items() if name == "Agrotis"}
    assert agrotis == {paths[i] for i in (0, 1, 2, 3, 4, 7)}  # kept in cluster 0, with the moved image
    groups = sorted(sorted(paths.index(p) for p in g) for g in fb.must_link)
    assert groups == [[6, 8, 9, 10, 11], [12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23], [24, 25],
                      [26, 27, 28]]  # confirmed 1 (less 7), merged 2+3, the split-off pair, what stayed in 4
    pairs = [sorted(paths.index(p) for p in pair) for pair in fb.cannot_link]
    assert [0, 5] in pairs  # image 5 against cluster 0's most typical image
    assert any(set(pair) & {24, 25} and set(pair) & {26, 27, 28} for pair in pairs)  # the split
    assert fb.unknown == [paths[29]]
    resolved = resolve(fb, paths)  # consistent: refine can use it
    assert resolved.group[5] == -1 and resolved.group[7] == resolved.group[0]
    again = ReviewSession(folder)  # a new review starts where this one stopped
    assert again.state()["clusters"] == state["clusters"] and again.feedback() == fb
    assert _digest(folder, own) == own  # the run's own files are never changed
    for bad, message in (({"type": "paint"}, "unknown action"), ({"type": "move", "images": [99], "to": 0},
                                                                 "image numbers from 0 to 29"),
                         ({"type": "merge", "clusters": [0]}, "at least 2 existing clusters"),
                         ({"type": "name", "cluster": 42, "name": "x"}, "there is no cluster 42")):
        with pytest.raises(DeepclustError, match=message):
            s.act(bad)
    assert len(s.actions) == 9  # refused actions are not logged


def _get(url, headers=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_the_server_needs_its_token_and_its_own_address_and_serves_only_the_runs_images(small_run):
    folder, _ = small_run
    server = ReviewServer(ReviewSession(folder))
    server.start()
    try:
        base, token = f"http://127.0.0.1:{server.port}", server.token
        assert server.server_address[0] == "127.0.0.1"
        assert _get(f"{base}/api/state")[0] == 403
        assert _get(f"{base}/api/state?t=wrong")[0] == 403
        assert _get(f"{base}/api/state", {"Host": f"attacker.example:{server.port}",
                                          "X-Deepclust-Token": token})[0] == 403  # DNS rebinding
        status, body = _get(f"{base}/api/state?t={token}")
        assert status == 200 and json.loads(body)["n_images"] == K * PER
        status, body = _get(f"{base}/thumb/3?s=96&t={token}")
        assert status == 200 and body[:2] == b"\xff\xd8"  # a JPEG
        for outside in ("/thumb/30", "/thumb/-1", "/thumb/../../etc/passwd", "/thumb/3?s=4096",
                        "/../summary.json", "/etc/passwd"):
            sep = "&" if "?" in outside else "?"
            assert _get(f"{base}{outside}{sep}t={token}")[0] == 404, outside
        request = urllib.request.Request(f"{base}/api/action?t={token}", data=b'{"type": "paint"}',
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            urllib.request.urlopen(request, timeout=10)
            raise AssertionError("a bad action was accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code == 400 and "unknown action" in json.loads(exc.read())["error"]
    finally:
        server.shutdown()
        server.server_close()


@needs_chromium
def test_the_review_page_in_chromium_merges_splits_names_moves_marks_and_survives_a_reload(small_run, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    folder, paths = small_run
    server = ReviewServer(ReviewSession(folder))
    server.start()
    try:
        with playwright.sync_playwright() as p:
            browser = launch_chromium(p)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                errors, requests = watch_page(page)
                page.goto(server.url)
                page.wait_for_selector("#status:has-text('ready')")
                assert page.locator(".card").count() == K

                def saved(n):
                    page.wait_for_selector(f"#status:has-text('saved ({n} action')")

                card = page.locator(".card[data-cluster='0']")
                card.locator("input.name").fill("Agrotis")
                card.locator(".do-name").click()
                saved(1)
                page.locator("img[data-image='7']").first.click()  # move image 7 into cluster 0
                page.select_option("#move-target", "0")
                page.click("#move")
                saved(2)
                page.locator(".card[data-cluster='2'] select.merge-with").select_option("3")
                page.locator(".card[data-cluster='2'] .do-merge").click()
                saved(3)
                for n, (cluster, images, button) in enumerate([(4, (24, 25), "split"), (0, (5,), "reject"),
                                                               (4, (29,), "unknown"), (4, (28,), "unknown")], 4):
                    for i in images:  # select, then act on the selection
                        page.locator(f".card[data-cluster='{cluster}'] img[data-image='{i}']").click()
                    page.click(f"#{button}")
                    saved(n)
                page.click("#undo")
                saved(6)
                shot = tmp_path / "review.png"
                page.screenshot(path=str(shot))
                before = page.evaluate(CARDS)
                page.reload()
                page.wait_for_selector("#status:has-text('ready (6 actions so far)')")
                after = page.evaluate(CARDS)
                for _ in range(100):  # (wait_for_function would evaluate a string, which the page's CSP forbids)
                    if page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)"):
                        break
                    page.wait_for_timeout(100)
                else:
                    raise AssertionError("the thumbnails did not load")
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()
    assert errors == []
    assert all(u.startswith(f"http://127.0.0.1:{server.port}/") for u in requests)  # nothing from elsewhere
    clean = [[c, name, sorted((int(i), cls.replace("selected", "").strip()) for i, cls, _ in imgs)]
             for c, name, imgs in before]
    assert clean == [[c, name, sorted((int(i), cls.strip()) for i, cls, _ in imgs)] for c, name, imgs in after]
    by_cluster = {c: (name, dict(imgs)) for c, name, imgs in clean}
    assert by_cluster["0"][0] == "Agrotis" and set(by_cluster["0"][1]) == {0, 1, 2, 3, 4, 5, 7}
    assert by_cluster["0"][1][5] == "rejected" and by_cluster["4"][1][29] == "unknown"
    assert "3" not in by_cluster and set(by_cluster["2"][1]) == set(range(12, 24))  # merged
    assert set(by_cluster["5"][1]) == {24, 25}  # the split-off cluster
    fb = load_feedback(folder / "feedback.json")
    assert {paths.index(p) for p, n in fb.labels.items() if n == "Agrotis"} == {0, 1, 2, 3, 4, 7}
    assert fb.unknown == [paths[29]] and {paths[0], paths[5]} in [set(pair) for pair in fb.cannot_link]
    assert sorted(sorted(paths.index(p) for p in g) for g in fb.must_link) == [
        [12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23], [24, 25], [26, 27, 28]]
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.std() > 10  # a page was drawn
