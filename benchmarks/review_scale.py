"""The review at 10,000 images in 200 clusters: opening a session, the state the page loads, and an
action after 100 others (each action replays the log and rewrites feedback.json).

    python benchmarks/review_scale.py
"""
import time, tempfile, numpy as np, json
from deepclust import runs
from deepclust.config import ClusterConfig
from deepclust.cluster.space import centre_margins, distances_to_centres, prepare_features
from deepclust.jobs.review import ReviewSession
rng = np.random.default_rng(0)
n, k = 10000, 200
X = rng.normal(size=(n, 64)).astype(np.float32); clusters = rng.integers(0, k, n)
d = tempfile.mkdtemp(); paths = [f"/photos/card{i//500}/IMG_{i:05d}.JPG" for i in range(n)]
cfg = ClusterConfig(images="/photos", out=d, n_clusters=k)
Xn = prepare_features(X, True)
runs.write_embeddings(d, X); runs.write_run_files(cfg, paths, clusters, distances_to_centres(Xn, clusters), None, None, centre_margins(Xn, clusters))
runs.RunSummary(command="cluster", config=cfg.to_dict(), resolved={"normalized": True}, seed=0, counts={}, timings_seconds={}).write(d)
t = time.perf_counter(); s = ReviewSession(d); print("open %.2f s" % (time.perf_counter() - t))
t = time.perf_counter(); st = s.state(); print("state %.2f s, %.1f MB JSON" % (time.perf_counter() - t, len(json.dumps(st)) / 1e6))
for a in range(100):
    c = st["clusters"][a % 150]["id"]
    s.act({"type": "name", "cluster": c, "name": f"sp{a}"}) if a % 2 else s.act({"type": "move", "images": [int(rng.integers(n))], "to": c})
t = time.perf_counter(); s.act({"type": "confirm", "cluster": st["clusters"][199]["id"]}); print("the 101st action %.2f s" % (time.perf_counter() - t))
