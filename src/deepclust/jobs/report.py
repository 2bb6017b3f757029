"""Build the report of a run folder: the pieces (map, montages, matched clusters) and the page."""

from __future__ import annotations

import base64
import datetime
import html
import io
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepclust import runs
from deepclust.data.datasets import load_pixels
from deepclust.data.folders import load_image
from deepclust.errors import DeepclustError
from deepclust.io import atomic_write, read_csv, save_figure, write_json
from deepclust.validation import check_int

log = logging.getLogger("deepclust")

MAP_METHODS = ("tsne", "pca")


@dataclass
class ReportOptions:
    """What the report shows.

    Attributes
    ----------
    map_points : int
        Images on the 2-D map (a seeded random sample above this; t-SNE's cost grows with it).
    map_method : {"tsne", "pca"}
        t-SNE (scikit-learn, after a PCA to 50 dimensions) or the first two principal components.
    per_cluster : int
        Thumbnails per cluster, nearest to the centre first.
    max_clusters : int
        Clusters shown as montages (the largest; every cluster is in the sizes table).
    thumb_size : int
        Longest side of a thumbnail in pixels.
    skipped_rows : int
        Skipped files listed in the page (all are in skipped.csv).
    near_duplicate : float
        Cosine similarity of the embeddings above which two images count as near duplicates
        (camera bursts, the same specimen twice); each cluster lists its groups of them.
    seed : int
    """

    map_points: int = 5000
    map_method: str = "tsne"
    per_cluster: int = 8
    max_clusters: int = 60
    thumb_size: int = 96
    skipped_rows: int = 200
    near_duplicate: float = 0.97
    seed: int = 0

    def check(self) -> None:
        for name in ("map_points", "per_cluster", "max_clusters", "thumb_size"):
            check_int(name, getattr(self, name), 1)
        if not 0 < self.near_duplicate <= 1:
            raise DeepclustError(f"near_duplicate={self.near_duplicate!r} must be a cosine similarity in (0, 1]")
        if self.map_method not in MAP_METHODS:
            raise DeepclustError(f"map_method={self.map_method!r} is not one of {', '.join(MAP_METHODS)}")


def embedding_map(X: np.ndarray, points: int = 5000, method: str = "tsne", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 2-D map of (a sample of) the rows of ``X``: (row indices, (m, 2) coordinates)."""
    from sklearn.decomposition import PCA

    X = np.asarray(X, dtype=np.float32)
    n = len(X)
    rng = np.random.default_rng(seed)
    index = np.sort(rng.choice(n, points, replace=False)) if n > points else np.arange(n)
    Z = X[index]
    if len(Z) < 3:
        return index, np.c_[np.arange(len(Z), dtype=np.float32), np.zeros(len(Z), np.float32)]
    dims = min(50, Z.shape[1], len(Z) - 1)
    Z = PCA(dims, random_state=seed).fit_transform(Z) if Z.shape[1] > dims else Z - Z.mean(0)
    if method == "pca" or len(Z) < 10:
        xy = Z[:, :2] if Z.shape[1] >= 2 else np.c_[Z[:, 0], np.zeros(len(Z))]
    else:
        from sklearn.manifold import TSNE

        xy = TSNE(2, perplexity=min(30.0, (len(Z) - 1) / 3), init="pca", random_state=seed).fit_transform(Z)
    return index, np.asarray(xy, dtype=np.float32)


def match_clusters(labels, clusters) -> dict[str, Any]:
    """Clusters matched one-to-one to classes (Hungarian, most shared images).

    Returns ``classes`` (sorted), ``clusters`` (ids, noise -1 excluded) ordered so the
    matched cluster of class i comes i-th (unmatched ones last), ``table`` (clusters x
    classes counts in that order) and ``match`` {cluster: class or None}."""
    from scipy.optimize import linear_sum_assignment

    labels = np.asarray(labels, dtype=object)
    clusters = np.asarray(clusters)
    keep = clusters >= 0
    classes = sorted(set(labels.tolist()))
    ids = np.unique(clusters[keep])
    table = np.zeros((len(ids), len(classes)), dtype=np.int64)
    np.add.at(table, (np.searchsorted(ids, clusters[keep]), np.searchsorted(np.array(classes, dtype=object), labels[keep])), 1)
    rows, cols = linear_sum_assignment(-table)
    order = [r for _, r in sorted(zip(cols, rows))] + [r for r in range(len(ids)) if r not in set(rows)]
    match = {int(ids[r]): classes[c] for r, c in zip(rows, cols)}
    return {"classes": classes, "clusters": [int(ids[r]) for r in order], "table": table[order],
            "match": {int(c): match.get(int(c)) for c in ids}}


def near_duplicate_groups(X: np.ndarray, clusters: np.ndarray, threshold: float = 0.97,
                          neighbours: int = 8) -> dict[int, list[list[int]]]:
    """Groups of near-duplicate images within each cluster: rows whose embeddings have a
    cosine similarity of at least ``threshold`` with one of their ``neighbours`` nearest
    (one exact faiss search over all rows), joined transitively. Returns {cluster: [[rows],
    ...]}, largest group first; clusters without any are absent."""
    import faiss
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(X)
    if n < 2:
        return {}
    Z = np.ascontiguousarray(X, dtype=np.float32)
    Z = Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
    index = faiss.IndexFlatIP(Z.shape[1])
    index.add(Z)
    sims, idx = index.search(Z, min(neighbours + 1, n))
    rows = np.repeat(np.arange(n), idx.shape[1])
    cols, sims = idx.ravel(), sims.ravel()
    keep = (cols >= 0) & (cols != rows) & (sims >= threshold) & (clusters[rows] == clusters[np.maximum(cols, 0)])
    graph = coo_matrix((np.ones(keep.sum()), (rows[keep], cols[keep])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    groups: dict[int, list[list[int]]] = {}
    ids, counts = np.unique(component, return_counts=True)
    for c in ids[counts > 1]:
        members = np.flatnonzero(component == c)
        groups.setdefault(int(clusters[members[0]]), []).append(members.tolist())
    return {k: sorted(v, key=len, reverse=True) for k, v in groups.items()}


def cluster_montages(clusters: np.ndarray, distances: np.ndarray, per_cluster: int = 8,
                     max_clusters: int | None = None) -> list[dict[str, Any]]:
    """The largest clusters (noise last), each with the row indices of its ``per_cluster``
    most typical members (nearest the centre first)."""
    clusters = np.asarray(clusters)
    distances = np.where(np.isfinite(distances), distances, np.inf)
    ids, sizes = np.unique(clusters, return_counts=True)
    order = sorted(range(len(ids)), key=lambda i: (ids[i] < 0, -sizes[i], ids[i]))
    if max_clusters is not None:
        order = order[:max_clusters]
    out = []
    for i in order:
        members = np.flatnonzero(clusters == ids[i])
        members = members[np.argsort(distances[members], kind="stable")][:per_cluster]
        out.append({"cluster": int(ids[i]), "size": int(sizes[i]), "members": members.tolist()})
    return out


def _old_metrics(run_dir: str) -> dict | None:
    path = runs.run_path(run_dir, runs.METRICS)
    metrics = runs.read_json(path) if os.path.isfile(path) else None
    return metrics if isinstance(metrics, dict) else None


def dataset_pixels(run: runs.Run):
    """The images of a run made from a benchmark array (an end-to-end method's ``dataset:``),
    in the run's row order, as uint8 (n, C, H, W); None for runs of image files."""
    dataset = run.summary.get("config", {}).get("dataset")
    if not dataset:
        return None

    try:
        pixels = load_pixels(dataset=run.resolve_data("", dataset)[1]).images
    except Exception as exc:  # noqa: BLE001  the report goes on without thumbnails
        log.warning("report: the images of %s could not be read (%s); no thumbnails", dataset, exc)
        return None
    return pixels if len(pixels) == len(run.paths) else None


def _image(run: runs.Run, i: int, pixels):
    """Row i's image as RGB PIL image (raises when it cannot be read)."""
    from PIL import Image

    if pixels is None:
        return load_image(run.resolve(run.paths[i]))
    a = np.asarray(pixels[i])
    a = a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)
    return Image.fromarray(a.astype(np.uint8)).convert("RGB")


def _fit(img, size: int):
    """The image scaled to fit a ``size`` square: shrunk, or, when small (28 px benchmark
    digits), enlarged by a whole factor with its pixels kept sharp."""
    from PIL import Image

    if max(img.size) < size:
        scale = size // max(img.size)
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.thumbnail((size, size))
    return img


def thumbnail_jpeg(run: runs.Run, i: int, size: int, pixels=None) -> bytes | None:
    """Row i's image fitted to a ``size`` square, as JPEG bytes; None when it cannot be read.
    (``pixels``: :func:`dataset_pixels` of a run made from a benchmark array.)"""
    try:
        img = _image(run, i, pixels)
    except Exception:  # noqa: BLE001  an unreadable image gets a placeholder, not a failure
        return None
    img = _fit(img, size)
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def _thumbnail(run: runs.Run, i: int, size: int, pixels=None) -> str | None:
    """A JPEG data URI of row i's image, or None when it cannot be read."""
    data = thumbnail_jpeg(run, i, size, pixels)
    return None if data is None else "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


def _png_uri(path: str) -> str:
    with open(path, "rb") as fh:
        return "data:image/png;base64," + base64.b64encode(fh.read()).decode("ascii")


def _colours(values: np.ndarray):
    """Colour per value for scatter plots: tab20 cycled, noise grey."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    ids = {v: i for i, v in enumerate(sorted(set(values.tolist()), key=str))}
    return [(0.6, 0.6, 0.6, 1.0) if v in (-1, "-1") else cmap(ids[v] % 20) for v in values.tolist()]


def _outside_name(run: runs.Run) -> str:
    """What cluster -1 holds: the images ``--unknown`` set aside, or a density method's noise."""
    return "unknown" if "unknown" in run.summary.get("counts", {}) else "noise"


def _name_groups(ax, xy: np.ndarray, values: np.ndarray, legend: bool, outside: str = "noise", most: int = 60) -> None:
    """Say which colour is which: a legend for a few groups, else each of the ``most``
    largest groups' names written at the median of its points."""
    from matplotlib.lines import Line2D

    groups, sizes = np.unique(np.asarray(values).astype(str), return_counts=True)
    colour = dict(zip(np.asarray(values).astype(str).tolist(), _colours(np.asarray(values))))
    if legend:
        handles = [Line2D([], [], marker="o", linestyle="", color=colour[g], label=outside if g == "-1" else g[:24])
                   for g in groups]
        ax.legend(handles=handles, fontsize=7, loc="best", framealpha=0.8)
        return
    for g in groups[np.argsort(-sizes, kind="stable")][:most]:
        mid = np.median(xy[np.asarray(values).astype(str) == g], axis=0)
        ax.annotate(outside if g == "-1" else g[:14], mid, fontsize=6, ha="center", va="center",
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "alpha": 0.6, "lw": 0})


def _plots(run: runs.Run, out: str, options: ReportOptions, xy_index, xy, montages, matched, pixels) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    panels = 2 if run.labels is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 6), squeeze=False)
    by = [("cluster", run.clusters[xy_index])]
    if run.labels is not None:
        by.append(("true class", np.asarray(run.labels, dtype=object)[xy_index]))
    for ax, (name, values) in zip(axes[0], by):
        ax.scatter(xy[:, 0], xy[:, 1], c=_colours(values), s=6 if len(xy) > 2000 else 14, linewidths=0)
        _name_groups(ax, xy, values, legend=len(set(values.tolist())) <= 12, outside=_outside_name(run))
        ax.set_title(f"coloured by {name}" + (" (each labelled at its median)" if len(set(values.tolist())) > 12 else ""))
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{'t-SNE' if options.map_method == 'tsne' else 'PCA'} map of {len(xy)} of {len(run.clusters)} images")
    files["map"] = os.path.join(out, "map.png")
    save_figure(fig, files["map"])

    ids, sizes = np.unique(run.clusters, return_counts=True)
    order = np.argsort(-sizes, kind="stable")
    fig, ax = plt.subplots(figsize=(min(16, 4 + 0.12 * len(ids)), 3.5))
    outside = _outside_name(run)
    ax.bar(np.arange(len(ids)), sizes[order], color=["0.6" if ids[i] < 0 else "tab:blue" for i in order])
    if len(ids) <= 100:
        ax.set_xticks(np.arange(len(ids)), [outside if ids[i] < 0 else str(ids[i]) for i in order],
                      rotation=90, fontsize=6 if len(ids) > 30 else 8)
    ax.set_xlim(-0.6, len(ids) - 0.4)
    ax.set_xlabel("cluster id, largest first" + (f" (grey: {outside})" if (ids < 0).any() else "")
                  + ("" if len(ids) <= 100 else f" ({len(ids)} clusters: ids in the table below)"))
    ax.set_ylabel("images")
    files["sizes"] = os.path.join(out, "sizes.png")
    save_figure(fig, files["sizes"])

    if matched is not None:
        table = matched["table"]
        share = table / np.maximum(table.sum(1, keepdims=True), 1)
        fig, ax = plt.subplots(figsize=(min(18, 3 + 0.16 * table.shape[1]), min(18, 3 + 0.16 * table.shape[0])))
        shown = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        fig.colorbar(shown, ax=ax, label="share of the cluster's images", fraction=0.04)
        if table.shape[0] * table.shape[1] <= 900:  # counts in the cells while they stay legible
            for (r, c), count in np.ndenumerate(table):
                if count:
                    ax.text(c, r, str(count), ha="center", va="center", fontsize=6,
                            color="white" if share[r, c] > 0.6 else "black")
        ax.set_xlabel("true class (matched order)")
        ax.set_ylabel("cluster")
        if table.shape[1] <= 60:
            ax.set_xticks(range(table.shape[1]), [str(c)[:18] for c in matched["classes"]], rotation=90, fontsize=6)
        if table.shape[0] <= 60:
            ax.set_yticks(range(table.shape[0]), [str(c) for c in matched["clusters"]], fontsize=6)
        ax.set_title("images of each cluster per class (colour: share of the cluster)")
        files["confusion"] = os.path.join(out, "confusion.png")
        save_figure(fig, files["confusion"])

    files["montages"] = os.path.join(out, "montages.png")
    _montage_png(run, montages[:20], options, files["montages"], pixels)
    return files


def _montage_png(run: runs.Run, montages, options: ReportOptions, path: str, pixels=None) -> None:
    """One row per cluster of its most typical images, for papers."""
    from PIL import Image, ImageDraw

    size, label = options.thumb_size, 90
    sheet = Image.new("RGB", (label + size * options.per_cluster, size * max(len(montages), 1)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, m in enumerate(montages):
        name = _outside_name(run) if m["cluster"] < 0 else f"cluster {m['cluster']}"
        draw.text((4, row * size + size // 2 - 12), f"{name}\n{m['size']} images", fill="black")
        for col, i in enumerate(m["members"]):
            try:
                img = _image(run, i, pixels)
            except Exception:  # noqa: BLE001  unreadable now: leave the cell blank
                continue
            img = _fit(img, size - 4)
            sheet.paste(img, (label + col * size + (size - img.width) // 2, row * size + (size - img.height) // 2))
    with atomic_write(path, "wb") as fh:
        sheet.save(fh, format="PNG")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em} td,th{border:1px solid #ddd;padding:.2em .6em;text-align:left}
th{background:#f4f4f4} img.figure{max-width:100%;height:auto}
.cluster{margin:1em 0} .thumbs{display:flex;flex-wrap:wrap;gap:6px}
figure{margin:0;width:110px;font-size:.7em;text-align:center;overflow:hidden;word-break:break-all}
figure img{display:block;margin:0 auto;max-width:104px;max-height:104px}
.missing{width:96px;height:96px;background:#eee;display:flex;align-items:center;justify-content:center;margin:0 auto}
nav a{margin-right:1em} .note{color:#666;font-size:.9em} .names{margin:.2em 0;font-style:italic}
"""


def _settings_sections(s: dict) -> list[str]:
    """The run's settings, timings and counts, from its summary."""
    config, resolved = s.get("config", {}), s.get("resolved", {})
    parts = []
    settings = [["command", s.get("command", "")], ["method / algorithm", s.get("method") or config.get("algorithm", "")],
                ["images", config.get("images") or config.get("dataset") or ""],
                ["backbone", resolved.get("backbone", config.get("backbone", ""))],
                ["weights", resolved.get("weights", config.get("weights", ""))],
                ["number of clusters", f"{resolved.get('n_clusters', '')} ({resolved.get('n_clusters_from', '')})"],
                ["device", resolved.get("device", "")], ["seed", s.get("seed", "")], ["run id", s.get("run_id", "")],
                ["deepclust", s.get("versions", {}).get("deepclust", "")]]
    parts.append("<h2 id='settings'>Settings</h2>" + _table(["setting", "value"], settings))
    timings = s.get("timings_seconds", {})
    if timings:
        parts.append("<h3>Timings</h3>" + _table(["step", "seconds"], [[k, _fmt(v)] for k, v in timings.items()]))
    counts = s.get("counts", {})
    if counts:
        parts.append("<h3>Counts</h3>" + _table(["count", "value"], [[k, _fmt(v)] for k, v in counts.items()]))
    return parts


def _caption_name(run: runs.Run, i: int) -> str:
    """Row i's image named by its path under the run's image folder (``card2/IMG_0001.JPG``:
    camera traps repeat file names on every card), else its last two path parts."""
    path = run.paths[i]
    root = run.summary.get("config", {}).get("images")
    if root:
        try:
            rel = os.path.relpath(run.resolve(path), run.resolve(root))
            if not rel.startswith(".."):
                return rel
        except ValueError:  # another drive (Windows)
            pass
    return _short(path)


def _link(run: runs.Run, i: int, pixels) -> str | None:
    """A file:// link to row i's image, or None for images of a benchmark array."""
    if pixels is not None:
        return None
    from pathlib import Path

    return Path(os.path.abspath(run.resolve(run.paths[i]))).as_uri()


def _composition(run: runs.Run, cluster: int, matched) -> str:
    """The cluster's most common true class and its share; the class the matching gave it
    when that differs (the matching pairs clusters and classes one to one)."""
    labels = np.asarray(run.labels, dtype=object)[run.clusters == cluster]
    classes, counts = np.unique(labels.astype(str), return_counts=True)
    top = int(np.argmax(counts))
    text = f" · mostly {html.escape(classes[top])} ({counts[top] / len(labels):.0%} of its images)"
    cls = matched["match"].get(cluster)
    if cls is not None and str(cls) != classes[top]:
        share = float(np.mean(labels.astype(str) == str(cls)))
        text += (f" · matched to class {html.escape(str(cls))} ({share:.0%})" if share > 0
                 else " · matched to no class that it holds")
    return text


def _names_text(row: dict) -> str:
    """A clusters.csv row's names (``--names``) as 'A (0.62, 80% of images); B ...' ('' without)."""
    return "; ".join(f"{n} ({score:.2f}, {share:.0%} of images)" for n, score, share in runs.cluster_names(row))


def _cluster_section(run: runs.Run, m: dict, matched, options: ReportOptions, pixels,
                     duplicates: dict[int, list[list[int]]], per_cluster: dict | None = None) -> str:
    """One cluster of :func:`cluster_montages`: its title, size, confidence, likely names
    (``--names``), composition, the thumbnails of its most typical images (each linked to its
    file) and its groups of near-duplicate images."""
    distances = run.distances
    title = _outside_name(run).capitalize() if m["cluster"] < 0 else f"Cluster {m['cluster']}"
    extra = ""
    if run.confidence is not None and m["cluster"] >= 0:
        margins = run.confidence[run.clusters == m["cluster"]]
        if np.isfinite(margins).any():
            extra += f" · confidence {np.nanmedian(margins):.3f}"
    if matched is not None and m["cluster"] >= 0:
        extra += _composition(run, m["cluster"], matched)
    names = _names_text((per_cluster or {}).get(str(m["cluster"]), {})) if m["cluster"] >= 0 else ""
    named = f"<p class='names'>likely names: {html.escape(names)}</p>" if names else ""
    figs = [_figure(run, i, options, pixels, typical=(k == 0 and m["cluster"] >= 0),
                    note=(f"d={distances[i]:.3f}" if np.isfinite(distances[i]) else "")
                    + (f" c={run.confidence[i]:.3f}" if run.confidence is not None and np.isfinite(run.confidence[i])
                       else "")) for k, i in enumerate(m["members"])]
    groups = duplicates.get(m["cluster"], []) if m["cluster"] >= 0 else []
    dup = ""
    if groups:
        shown = groups[:5]
        dup = (f"<details class='dups'><summary>{len(groups)} group(s) of near-duplicate images "
               f"({sum(map(len, groups))} images, cosine &ge; {options.near_duplicate:g})</summary>"
               + "".join(f"<div class='thumbs'>{''.join(_figure(run, i, options, pixels) for i in g[:8])}</div>"
                         for g in shown)
               + (f"<p class='note'>and {len(groups) - len(shown)} more</p>" if len(groups) > len(shown) else "")
               + "</details>")
    return (f"<div class='cluster' id='cluster-{m['cluster']}'><h3>{title} · {m['size']} images{extra}</h3>{named}"
            f"<div class='thumbs'>{''.join(figs)}</div>{dup}</div>")


def _figure(run: runs.Run, i: int, options: ReportOptions, pixels, typical: bool = False, note: str = "") -> str:
    """One thumbnail with its caption (its path under the image folder), linked to its file."""
    uri = _thumbnail(run, i, options.thumb_size, pixels)
    name = html.escape(_caption_name(run, i))
    img = f"<img src='{uri}' alt='{name}'>" if uri else "<div class='missing'>unreadable</div>"
    link = _link(run, i, pixels)
    if link:
        img = f"<a href='{html.escape(link)}' title='{name}'>{img}</a>"
    caption = ("<b>typical</b><br>" if typical else "") + name + (f"<br>{html.escape(note)}" if note else "")
    return f"<figure>{img}<figcaption>{caption}</figcaption></figure>"


def _short(path: str) -> str:
    """A path's last two parts (its folder and file)."""
    parts = path.replace("\\", "/").split("/")
    return "/".join(parts[-2:])


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                 options: ReportOptions | None = None) -> str:
    """Write the report of ``run_dir`` (to ``RUN_DIR/report`` by default); return the HTML path."""
    options = options or ReportOptions()
    options.check()
    t0 = time.perf_counter()
    run = runs.load_run(run_dir)
    out = os.fspath(out) if out is not None else runs.run_path(run_dir, "report")
    os.makedirs(out, exist_ok=True)
    if not len(run.paths):
        raise DeepclustError(f"'{run_dir}' holds no clustered images; nothing to report")
    distances = run.distances
    log.info("report: map of %d images (%s)", min(len(run.paths), options.map_points), options.map_method)
    xy_index, xy = embedding_map(run.embeddings, options.map_points, options.map_method, options.seed)
    montages = cluster_montages(run.clusters, distances, options.per_cluster, options.max_clusters)
    matched = match_clusters(run.labels, run.clusters) if run.labels is not None else None
    pixels = dataset_pixels(run)
    files = _plots(run, out, options, xy_index, xy, montages, matched, pixels)
    # The scores of this run: summary.json holds them (written last, with the run); a metrics.json
    # beside it is read only for runs that predate that.
    metrics = run.summary.get("metrics") if "metrics" in run.summary else _old_metrics(run_dir)
    skipped = read_csv(runs.run_path(run_dir, runs.SKIPPED)) if os.path.isfile(runs.run_path(run_dir, runs.SKIPPED)) else []

    s = run.summary
    name = os.path.basename(os.path.abspath(run_dir))
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>deepclust report: {html.escape(name)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>deepclust report: {html.escape(name)}</h1>",
             f"<p class='note'>{len(run.paths)} images in {len(set(run.clusters[run.clusters >= 0].tolist()))} clusters"
             + (f", {int((run.clusters < 0).sum())} as {_outside_name(run)}" if (run.clusters < 0).any() else "")
             + f"; written {datetime.datetime.now().isoformat(timespec='seconds')} from {html.escape(os.path.abspath(run_dir))}</p>",
             "<nav>" + "".join(f"<a href='#{k}'>{v}</a>" for k, v in [
                 ("settings", "Settings"), ("scores", "Scores"), ("map", "Map"), ("sizes", "Sizes"), ("clusters", "Clusters"),
                 ("confusion", "Confusion"), ("skipped", "Skipped")] if k not in ("scores", "confusion") or matched is not None) + "</nav>"]

    parts += _settings_sections(s)

    if metrics is not None:
        keys = [k for k in ("CA", "ACC", "NMI", "AMI", "ARI") if k in metrics]
        others = [k for k in metrics if k not in keys]
        parts.append("<h2 id='scores'>Scores against the true classes</h2>"
                     + _table(keys + others, [[_fmt(metrics[k]) for k in keys + others]]))

    parts.append(f"<h2 id='map'>Map</h2><img class='figure' alt='map of the embeddings' src='{_png_uri(files['map'])}'>")
    ids, sizes = np.unique(run.clusters, return_counts=True)
    order = np.argsort(-sizes, kind="stable")
    per_cluster = runs.read_clusters(run_dir)
    named = any(r.get("name_1") for r in per_cluster.values())
    size_rows = [[_outside_name(run) if ids[i] < 0 else int(ids[i]), int(sizes[i])]
                 + ([per_cluster.get(str(ids[i]), {}).get("confidence", ""),
                     _short(per_cluster.get(str(ids[i]), {}).get("typical", ""))] if per_cluster else [])
                 + ([_names_text(per_cluster.get(str(ids[i]), {}))] if named else [])
                 + ([matched["match"].get(int(ids[i])) or "" if ids[i] >= 0 else ""] if matched else []) for i in order]
    parts.append(f"<h2 id='sizes'>Cluster sizes</h2><img class='figure' alt='cluster sizes' src='{_png_uri(files['sizes'])}'>"
                 "<details><summary>All clusters</summary>"
                 + _table(["cluster", "images"] + (["confidence", "typical image"] if per_cluster else [])
                          + (["likely names (score, share of images)"] if named else []) + (["matched class"] if matched else []), size_rows) + "</details>")

    shown = f"the {len(montages)} largest of {len(ids)} clusters" if len(montages) < len(ids) else f"all {len(ids)} clusters"
    parts.append(f"<h2 id='clusters'>Clusters</h2><p class='note'>{shown}; in each, the {options.per_cluster} images "
                 "nearest its centre, the most typical first (d: distance to the centre; c: confidence, the margin "
                 "to the nearest other cluster's centre, negative when nearer another). Each thumbnail opens its "
                 "file. A cluster's confidence is the median of its images'.</p>")
    duplicates = near_duplicate_groups(run.embeddings, run.clusters, options.near_duplicate)
    if named:
        parts.append("<p class='note'>Likely names: the candidates of --names most like the cluster by the backbone's "
                     "text tower; score: the softmax over all candidates of the cluster mean's similarity, share: the "
                     "cluster's images whose own best candidate it is (docs/backbones.md).</p>")
    parts += [_cluster_section(run, m, matched, options, pixels, duplicates, per_cluster) for m in montages]

    if matched is not None:
        parts.append(f"<h2 id='confusion'>Clusters matched to classes</h2><img class='figure' alt='confusion matrix' "
                     f"src='{_png_uri(files['confusion'])}'>")
    listed = skipped[:options.skipped_rows]
    parts.append(f"<h2 id='skipped'>Skipped files</h2><p class='note'>{len(skipped)} file(s) could not be read"
                 + (f"; the first {len(listed)} below, all in skipped.csv" if len(listed) < len(skipped) else "") + ".</p>"
                 + (_table(["path", "reason"], [[r["path"], r["reason"]] for r in listed]) if listed else ""))
    parts.append(f"<p class='note'>Report made in {time.perf_counter() - t0:.1f} s.</p></body></html>")
    path = os.path.join(out, "report.html")
    with atomic_write(path) as fh:
        fh.write("\n".join(parts))
    write_json(os.path.join(out, "report.json"), {"run": os.path.abspath(run_dir), "run_id": s.get("run_id")})
    return path
