"""The one command-line entry point: ``deepclust <verb> ...``.

Every user error ends as a single line ``deepclust: error: ...`` on stderr and exit
code 2, with no traceback. Each command imports its job inside its function: building the
parser loads nothing heavy, so ``--help``, ``--version`` and a typo answer at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import warnings

from deepclust.errors import DeepclustError

log = logging.getLogger("deepclust")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def _param(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as YAML (``eps=0.3``, ``linkage=average``, ``n_neighbors=15``)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. eps=0.3)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.strip().replace("-", "_"), parsed


#: The names of deepclust.cluster.list_clusterers(), for the help text: building the parser must not
#: import the clusterers (torch, scikit-learn: seconds), so --help, --version and a typo answer at once.
ALGORITHMS = ("agglomerative", "c2m", "dbscan", "gmm", "hdbscan", "kmeans", "optics", "spectral")


def _algorithm_names() -> str:
    return ", ".join(ALGORITHMS)


def _given_options(args: argparse.Namespace) -> dict:
    """The options given on the command line (parsers use SUPPRESS: absent ones are not set)."""
    return {k: v for k, v in vars(args).items() if k not in ("func", "config", "command", "quiet", "verbose")}


def _add_model_options(p, with_defaults: bool) -> None:
    """--backbone, --weights, --image-size, --batch-size, --fast-decode: how images become
    vectors (``cluster`` leaves absent options unset, for its config file to fill)."""
    from deepclust.config import DEFAULT_BACKBONE

    def default(value):
        return {"default": value} if with_defaults else {}

    p.add_argument("--backbone", metavar="NAME", help=f"a short name of `deepclust backbones` (dinov2-s, bioclip, "
                   f"...), a timm or open_clip name, or hf-hub:ORG/REPO (default {DEFAULT_BACKBONE})",
                   **default(DEFAULT_BACKBONE))
    p.add_argument("--weights", metavar="PATH", help="pretrained (default: the model's folder in DEEPCLUST_MODELS "
                   "when set, else downloaded), random, a downloaded model folder (`deepclust fetch-model`), or a "
                   "checkpoint / state-dict file", **default("pretrained"))
    p.add_argument("--image-size", metavar="N", type=_positive_int, help="input side in pixels (default: the short "
                   "name's, else the model's)", **default(None))
    p.add_argument("--pooling", choices=["cls", "mean"], help="a ViT's class token or the mean of its patch tokens "
                   "(default: the model's own)", **default(None))
    p.add_argument("--batch-size", metavar="N", type=_positive_int, help="images per forward pass (default 32)",
                   **default(32))
    p.add_argument("--fast-decode", dest="fast_decode", action="store_true", help="decode large JPEGs directly at "
                   "about twice the model's input side (PIL's draft mode; the default: 5x faster on 12-MP photos, "
                   "the same clusters; docs/scale.md)", **default(True))
    p.add_argument("--no-fast-decode", dest="fast_decode", action="store_false", help="decode every JPEG in full "
                   "(the features of a full decode, for comparison with other tools)", **default(True))


def _add_embedding_run_options(p) -> None:
    """--batch-size, --device, --no-progress of the commands that embed images for a run (predict, select)."""
    p.add_argument("--batch-size", metavar="N", type=_positive_int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--device", metavar="DEV", default="cpu", help="cpu (default), cuda, cuda:N, mps")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def _add_cluster_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "cluster",
        help="cluster a folder of images",
        description="Embed every image under IMAGES_DIR with a pretrained backbone, cluster the "
        "embeddings, and write assignments.csv, summary.json, skipped.csv (and metrics.json when "
        "labels are known) to RUN_DIR. Running again reuses the cached embeddings.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("images", metavar="IMAGES_DIR", nargs="?", help="folder searched recursively for images")
    p.add_argument("--out", metavar="RUN_DIR", required=True, help="run folder to write (reused to resume)")
    p.add_argument("--config", metavar="FILE", help="YAML file of options; command-line options win")
    p.add_argument("--embeddings", metavar="STORE", help="cluster an embedding store of `deepclust embed` instead "
                   "of IMAGES_DIR, block by block (kmeans or spectral; parameters sample_size, lloyd_passes, "
                   "n_init, n_groups, n_neighbors)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="with --embeddings: local[N] (a Dask cluster of N "
                   "processes here), a Dask scheduler address (tcp://host:8786), or none (this process; default)")
    p.add_argument("--n-clusters", metavar="K", help="number of clusters, or auto to estimate it "
                   "(default with --labels: number of classes; density algorithms find their own)")
    p.add_argument("--algorithm", metavar="NAME", help=f"clustering algorithm: {_algorithm_names()} (default kmeans)")
    p.add_argument("--param", metavar="KEY=VALUE", dest="cluster_params", action="append", type=_param,
                   help="a further parameter of the algorithm, e.g. eps=0.3 for dbscan (repeatable)")
    p.add_argument("--k-method", metavar="NAME", help="with --n-clusters auto: generalization, stability, eigengap, "
                   "silhouette, c2m or labels (with --labelled) (default: eigengap for spectral, silhouette otherwise; see docs/selection.md)")
    p.add_argument("--k-min", metavar="K", type=_positive_int, help="with --n-clusters auto: smallest k tried (default 2)")
    p.add_argument("--k-max", metavar="K", type=_positive_int, help="with --n-clusters auto: largest k tried (default 50)")
    p.add_argument("--k-metric", metavar="FILE", help="with --k-method c2m: a learned metric (metric.pt of "
                   "`deepclust train --method c2m`)")
    p.add_argument("--labelled", metavar="SOURCE", help="with --n-clusters auto: choose k as the one whose clustering "
                   "best recovers the images whose class you know (--k-method labels): a feedback.json of `deepclust "
                   "review`, SPLIT:SUBSET (e.g. eu-moths:train: the folders of those classes), or a folder inside "
                   "IMAGES_DIR sorted into class sub-folders")
    _add_model_options(p, with_defaults=False)
    p.add_argument("--num-workers", metavar="N", type=int, help="image-decoding worker processes (default: none on "
                   "a CPU of up to 4 cores, one per 4 cores above it (at most 8), 4 on a GPU)")
    p.add_argument("--device", metavar="DEV", help="cpu (default), cuda, cuda:N, mps")
    p.add_argument("--seed", metavar="N", type=int, help="random seed of the clustering (default 0)")
    p.add_argument("--labels", choices=["folders"], help="folders: each image's parent folder is its true class")
    p.add_argument("--split", metavar="NAME|FILE", help="class-split file or shipped split name (e.g. eu-moths)")
    p.add_argument("--subset", metavar="NAME", help="subset of the split to cluster: train, val or test")
    p.add_argument("--no-normalize", dest="normalize", action="store_false", help="cluster raw, not L2-normalised, embeddings")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    p.add_argument("--flip-average", dest="flip_average", action="store_true", help="embed each image as the mean of it "
                   "and its mirror image: twice the embedding time, usually a little better clusters (docs/methods.md)")
    p.add_argument("--cache", metavar="DIR", help="embedding cache folder (default: the user's shared one, which every "
                   "run, predict and select reuse; see `deepclust cache`)")
    p.add_argument("--unknown", dest="unknown", action="store_true", help="put images far from every other into "
                   "cluster -1, unknown, instead of forcing them into a cluster (docs/usage.md)")
    p.add_argument("--runtime", choices=["auto", "onnxruntime", "openvino", "torch"], help="what runs the backbone: auto (default: "
                   "ONNX Runtime on a CPU where installed, several times faster; else PyTorch), onnxruntime, openvino "
                   "(pip install 'deepclust[openvino]'), torch")
    p.add_argument("--precision", choices=["fp32", "int8", "bf16"], help="fp32 (default: features as PyTorch's); "
                   "int8: ONNX Runtime with a statically quantized model, faster, slightly different features; bf16: "
                   "OpenVINO on CPUs with bf16 instructions (docs/scale.md: what each costs)")
    p.add_argument("--names", metavar="FILE", help="candidate names, one per line (e.g. a species checklist): name "
                   "each cluster by zero-shot matching with a CLIP-family backbone (bioclip, clip-b16, ...); "
                   "the top 3 go to clusters.csv and the report")
    p.add_argument("--report", dest="report", action="store_true",
                   help="also write the HTML report (RUN_DIR/report/report.html; see `deepclust report`)")
    p.set_defaults(func=_cmd_cluster)


def _cmd_cluster(args: argparse.Namespace) -> int:
    from deepclust.config import ClusterConfig, build_config
    from deepclust.jobs.cluster import run_cluster

    options = _given_options(args)
    report = options.pop("report", False)
    if "cluster_params" in options:
        options["cluster_params"] = dict(options["cluster_params"])
    config = build_config(ClusterConfig, getattr(args, "config", None), **options)
    result = run_cluster(config)
    counts, resolved = result.summary["counts"], result.summary["resolved"]
    print(f"clustered {len(result.paths)} images into {counts['clusters']} clusters"
          + (f" ({resolved['n_clusters_from']})" if resolved["k_estimate"] else "")
          + (f", {counts['unknown']} as unknown (cluster -1)" if counts.get("unknown")
             else f", {counts['noise']} as noise" if counts["noise"] else "")
          + (f", skipped {len(result.skipped)}" if result.skipped else ""))
    if result.metrics:
        print("  ".join(f"{k} {result.metrics[k]:.3f}" for k in ("CA", "ACC", "NMI", "AMI", "ARI")))
    print(f"results in {config.out}")
    if report:
        from deepclust.jobs.report import write_report

        print(f"report in {write_report(config.out)}")
    return 0


def _add_embed_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "embed",
        help="embed a large image collection into a store, on Dask workers or here",
        description="Split the images under IMAGES_DIR into partitions and embed them, on the workers of a Dask "
        "cluster (--scheduler) or in this process, into the embedding store STORE (zarr vectors, index.csv, "
        "skipped.csv). Each worker loads the backbone once. Running the same command again redoes only the "
        "partitions that did not finish. Cluster the store with `deepclust cluster --embeddings STORE`.",
    )
    p.add_argument("images", metavar="IMAGES_DIR", help="folder searched recursively for images")
    p.add_argument("--out", metavar="STORE", required=True, help="embedding store folder to write (reused to resume)")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None, help="local[N] (a Dask cluster of N processes "
                   "on this machine, 127.0.0.1 only), a Dask scheduler address such as tcp://10.0.0.5:8786, or "
                   "none (this process; default)")
    _add_model_options(p, with_defaults=True)
    p.add_argument("--partition-size", metavar="N", type=_positive_int, default=1024,
                   help="images per partition: the unit of work, of resuming, and of the store's chunks (default 1024)")
    p.add_argument("--device", metavar="DEV", default="auto", help="auto (default: each worker's GPU when it has "
                   "one, else its CPU; start GPU workers with dask-cuda, one per GPU), cpu or cuda")
    p.add_argument("--split", metavar="NAME|FILE", help="class-split file or shipped split name (e.g. eu-moths)")
    p.add_argument("--subset", metavar="NAME", help="subset of the split to embed: train, val or test")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    p.set_defaults(func=_cmd_embed)


def _cmd_embed(args: argparse.Namespace) -> int:
    from deepclust.data import split_classes
    from deepclust.jobs.embed import embed_images
    from deepclust.parallel.executors import open_executor

    classes = split_classes(args.split, args.subset)
    with open_executor(args.scheduler) as executor:
        table = embed_images(args.images, args.out, args.backbone, args.weights, args.image_size, executor,
                             args.partition_size, args.batch_size, args.device, classes, args.progress,
                             args.fast_decode, args.pooling)
    print(f"embedded {int(table.valid.sum())} images ({table.n_features} features)"
          + (f", skipped {len(table.skipped)}" if table.skipped else "") + f" into {table.folder}")
    return 0


def _add_report_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of a run",
        description="Write RUN_DIR/report/report.html (one file, opens offline): the run's settings and "
        "timings, a 2-D map of the embeddings by cluster (and by true class), the most typical images of "
        "each cluster, cluster sizes, the scores and clusters matched to classes when labels are known, "
        "and the skipped files; with map.png, sizes.png, montages.png and confusion.png beside it.",
    )
    p.add_argument("run", metavar="RUN_DIR", help="run folder of `deepclust cluster` or `deepclust train`")
    p.add_argument("--out", metavar="DIR", help="folder for the report (default RUN_DIR/report)")
    p.add_argument("--map", dest="map_method", choices=["tsne", "pca"], default="tsne", help="2-D map (default tsne)")
    p.add_argument("--map-points", metavar="N", type=_positive_int, default=5000,
                   help="images on the map, a seeded sample above this (default 5000)")
    p.add_argument("--per-cluster", metavar="N", type=_positive_int, default=8, help="thumbnails per cluster (default 8)")
    p.add_argument("--max-clusters", metavar="N", type=_positive_int, default=60,
                   help="clusters shown with thumbnails, the largest (default 60)")
    p.add_argument("--seed", metavar="N", type=int, default=0, help="seed of the map's sample and t-SNE (default 0)")
    p.set_defaults(func=_cmd_report)


def _add_export_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="put each cluster's images in a folder of its own",
        description="Write DIR/cluster-NNN/ (noise/ for noise) holding each cluster's images, as symbolic "
        "links (default) or copies, and DIR/mapping.csv. DIR must be new or empty: your files are never "
        "overwritten, and DIR appears only when it is complete.",
    )
    p.add_argument("run", metavar="RUN_DIR", help="run folder of `deepclust cluster` or `deepclust train`")
    p.add_argument("--to", metavar="DIR", required=True, help="new (or empty) folder to create")
    p.add_argument("--mode", choices=["link", "copy"], default="link", help="symbolic links (default) or copies")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from deepclust.jobs.export import export_clusters

    done = export_clusters(args.run, args.to, args.mode)
    print(f"exported {done['images']} images into {done['clusters']} cluster folders "
          f"({'links' if done['mode'] == 'link' else 'copies'}) in {done['folder']}"
          + (f"; {done['missing']} no longer exist (see mapping.csv)" if done["missing"] else "")
          + (f"; {done['refused']} refused as not the run's own images (see refused.csv)" if done["refused"] else ""))
    return 0


def _add_review_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "review",
        help="look at a run's clusters in your browser and correct them (names, merges, splits, moves)",
        description="Serve a page on this computer only (127.0.0.1, a random port and a secret token in the "
        "address) that shows every cluster, least certain first, and lets you name, confirm, merge and split "
        "clusters, move images, mark images that do not belong or that you cannot place, and undo. Every "
        "action is saved at once to RUN_DIR/feedback.json (and RUN_DIR/review-actions.jsonl, from which a "
        "later review starts where you left); the run's own files are never changed. Then: deepclust refine "
        "RUN_DIR --out NEW_RUN.",
    )
    p.add_argument("run", metavar="RUN_DIR", help="run folder of `deepclust cluster`, `refine` or `train`")
    p.add_argument("--port", metavar="N", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--no-browser", dest="browser", action="store_false", help="only print the address to open")
    p.set_defaults(func=_cmd_review)


def _cmd_review(args: argparse.Namespace) -> int:
    from deepclust.jobs.review_server import serve

    serve(args.run, args.port, args.browser)
    return 0


def _add_refine_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "refine",
        help="re-cluster a run with what you told it (its feedback.json from `deepclust review`)",
        description="Learn from the feedback on RUN_DIR's images (names, confirmed clusters, merges, splits, "
        "moves, images that do not belong): a linear scatter head fitted on the named and grouped images moves "
        "every image's features, then constrained k-means clusters them with each group kept together and "
        "every cannot-link pair apart. Writes an ordinary run to NEW_RUN (report, review, export, predict "
        "and evaluate work on it), which records its parent and the feedback it used; refining it again "
        "goes round the loop once more. RUN_DIR is never changed.",
    )
    p.add_argument("run", metavar="RUN_DIR", help="run folder of `deepclust cluster` (or of an earlier refine)")
    p.add_argument("--out", metavar="NEW_RUN", required=True, help="folder for the refined run")
    p.add_argument("--feedback", metavar="FILE", help="feedback file (default RUN_DIR/feedback.json)")
    p.add_argument("--n-clusters", metavar="K", type=_positive_int,
                   help="clusters to make (default: the run's, or more when the feedback's groups need more)")
    p.add_argument("--algorithm", choices=["spectral", "kmeans"], default="spectral",
                   help="constrained k-means on a spectral embedding of the refined features (default) or on them")
    p.add_argument("--finetune", action="store_true",
                   help="first fine-tune the run's backbone on the feedback's classes (the core method's episodic "
                   "training; minutes on a CPU), then embed every image again")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    p.add_argument("--seed", metavar="N", type=int, default=0, help="seed of the clustering (default 0)")
    p.set_defaults(func=_cmd_refine)


def _cmd_refine(args: argparse.Namespace) -> int:
    from deepclust.jobs.refine import refine_run

    result = refine_run(args.run, args.out, args.feedback, args.n_clusters, args.seed, args.algorithm, args.finetune,
                        args.progress)
    info = result.info
    print(f"refined {len(result.clusters)} images into {len(set(result.clusters.tolist()))} clusters (round "
          f"{info['round']}): {info['images_in_groups']} images in {info['groups']} known groups "
          f"({info['named_groups']} named), {info['cannot_link']} cannot-link pairs; {info['images_moved']} images "
          f"changed cluster; results in {result.out}")
    if "untouched" in info:
        u = info["untouched"]
        print(f"the {u['images']} images the feedback did not touch: "
              + "  ".join(f"{m} {u['before'][m]:.3f} -> {u['after'][m]:.3f}" for m in ("ACC", "NMI", "ARI")))
    return 0


def _add_predict_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="assign new images to a run's clusters",
        description="Embed the images under NEW_IMAGES with the run's backbone and assign each to the nearest "
        "cluster centre; flag as far (perhaps a class the run did not have) an image farther from its nearest "
        "clustered image than the run's own images mostly are from theirs. Writes predictions.csv (path, "
        "cluster, distance, nearest_image_distance, far), "
        "skipped.csv and summary.json.",
    )
    p.add_argument("run", metavar="RUN_DIR", help="run folder of `deepclust cluster`")
    p.add_argument("images", metavar="NEW_IMAGES", help="folder searched recursively for images")
    p.add_argument("--out", metavar="DIR", help="folder for the predictions (default RUN_DIR/predict)")
    p.add_argument("--far-quantile", metavar="Q", type=float, default=0.95,
                   help="flag an image farther from its nearest clustered image than this quantile of the run's "
                   "own such distances (default 0.95)")
    p.add_argument("--labels", choices=["folders"], help="folders: record each image's parent folder as its class")
    p.add_argument("--assign", choices=["centre", "neighbours"], default="centre",
                   help="nearest cluster centre (default), or the cluster of most of the 5 nearest clustered images")
    p.add_argument("--names", metavar="FILE", help="candidate names, one per line: each image's 3 most likely names "
                   "(CLIP-family backbones; default: the file the run was named with, if any)")
    _add_embedding_run_options(p)
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    from deepclust.jobs.predict import predict_images

    result = predict_images(args.run, args.images, args.out, args.far_quantile, args.labels, args.assign,
                            args.batch_size, args.device, progress=args.progress, names=args.names)
    counts = result.summary["counts"]
    print(f"assigned {counts['images_predicted']} images to {counts['clusters_used']} clusters; "
          f"{counts['far']} far from every cluster (possibly new classes)"
          + (f"; skipped {counts['images_skipped']}" if counts["images_skipped"] else ""))
    print(f"predictions in {args.out or os.path.join(args.run, 'predict')}")
    return 0


def _add_export_onnx_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export-onnx",
        help="write a backbone as an ONNX model",
        description="Export the backbone of RUN_DIR (or --backbone NAME with --weights) as an ONNX model: input "
        "'images' (batch, 3, S, S) preprocessed as OUT.json says, output 'embeddings'. With onnxruntime "
        "installed, its outputs are checked against PyTorch's before the file is written.",
    )
    p.add_argument("run", metavar="RUN_DIR", nargs="?", help="run folder whose backbone to export")
    p.add_argument("--backbone", metavar="NAME", help="a timm model name, instead of a run")
    p.add_argument("--weights", metavar="PATH", default="pretrained", help="with --backbone: pretrained (default), "
                   "random, or a checkpoint")
    p.add_argument("--image-size", metavar="N", type=_positive_int, help="input side in pixels (default: the model's)")
    p.add_argument("--out", metavar="FILE", required=True, help="the .onnx file to write")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the onnxruntime comparison")
    p.set_defaults(func=_cmd_export_onnx)


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    from deepclust.jobs.export import export_onnx

    done = export_onnx(args.out, run_dir=args.run, backbone=args.backbone, weights=args.weights,
                       image_size=args.image_size, check=args.check)
    print(f"wrote {done.path} ({done.backbone}, {done.image_size} px -> {done.num_features} features)"
          + (f"; largest difference from PyTorch {done.max_abs_diff:.1e} (outputs up to {done.max_abs_output:.1f})"
             if done.max_abs_diff is not None else ""))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from deepclust.jobs.report import ReportOptions, write_report

    options = ReportOptions(map_points=args.map_points, map_method=args.map_method, per_cluster=args.per_cluster,
                            max_clusters=args.max_clusters, seed=args.seed)
    print(f"report in {write_report(args.run, args.out, options)}")
    return 0


def _add_evaluate_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score a run's embeddings over repeated seeded clusterings",
        description="Cluster the embeddings of RUN_DIR once per seed with each algorithm and write "
        "evaluation.md, evaluation.csv and evaluation.json with CA, ACC, NMI, AMI and ARI as AVG (SD).",
    )
    p.add_argument("run", metavar="RUN_DIR", help="run folder written by `deepclust cluster --labels folders`")
    p.add_argument("--algorithm", metavar="NAME", nargs="+", help=f"algorithms to compare (default: the run's): {_algorithm_names()}")
    p.add_argument("--param", metavar="KEY=VALUE", dest="params", action="append", type=_param,
                   help="a further parameter, given to each algorithm that takes it (repeatable)")
    p.add_argument("--seeds", metavar="N", type=_positive_int, default=5, help="number of seeded runs (default 5)")
    p.add_argument("--n-clusters", metavar="K", type=_positive_int, help="default: the run's number of clusters")
    p.add_argument("--out", metavar="DIR", help="folder for the tables (default RUN_DIR)")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from deepclust.jobs.evaluate import evaluate_run

    params = dict(args.params) if args.params else None
    evaluation = evaluate_run(args.run, args.algorithm, args.seeds, args.n_clusters, args.out, params=params)
    print(evaluation.markdown(), end="")
    print(f"tables in {args.out or args.run}")
    return 0


def _add_select_parser(subparsers) -> None:
    from deepclust.config import DEFAULT_BACKBONE

    p = subparsers.add_parser(
        "select",
        help="choose k, the algorithm and the backbone without labels",
        description="Cluster the images of IMAGES_DIR (or the embeddings of a finished RUN_DIR) with every "
        "algorithm at every k (and every backbone), score each clustering by criteria that need no labels "
        "(generalization, stability, silhouette, eigengap; c2m with --metric), and write selection.csv, "
        "selection.png and selection.json to --out. Prints the choice of --criterion, says when it is weak, "
        "and the `deepclust cluster` command that makes it. See docs/selection.md.",
    )
    p.add_argument("source", metavar="IMAGES_DIR|RUN_DIR", help="image folder, or a run folder of `deepclust cluster`")
    p.add_argument("--out", metavar="DIR", required=True, help="folder for the tables and the plot")
    p.add_argument("--cache", metavar="DIR", help="embedding cache folder (default: the user's shared one; see "
                   "`deepclust cache`)")
    p.add_argument("--k", metavar="MIN:MAX[:STEP]|K,K,...", default="2:30",
                   help="candidate numbers of clusters (default 2:30; a range over 50 wide steps by 10)")
    p.add_argument("--algorithm", metavar="NAME", nargs="+", default=["kmeans"],
                   help="algorithms to compare (default kmeans): kmeans, spectral, agglomerative, gmm")
    p.add_argument("--backbone", metavar="NAME", nargs="+", help=f"backbones to compare (default {DEFAULT_BACKBONE})")
    p.add_argument("--criterion", default="generalization", choices=["generalization", "stability", "silhouette",
                   "eigengap", "c2m"], help="the criterion whose choice is printed (default generalization)")
    p.add_argument("--metric", metavar="FILE", help="a learned C2M metric (metric.pt): adds the c2m criterion")
    p.add_argument("--weights", metavar="PATH", default="pretrained", help="pretrained (default), random, or a checkpoint")
    p.add_argument("--image-size", metavar="N", type=_positive_int, help="input side in pixels (default: the model's)")
    p.add_argument("--runtime", choices=["auto", "onnxruntime", "openvino", "torch"], default="auto",
                   help="what runs the backbone (as for cluster)")
    p.add_argument("--seed", metavar="N", type=int, default=0, help="random seed of the clusterings (default 0)")
    p.add_argument("--no-normalize", dest="normalize", action="store_false", help="score raw, not L2-normalised, embeddings")
    _add_embedding_run_options(p)
    p.set_defaults(func=_cmd_select)


def _cmd_select(args: argparse.Namespace) -> int:
    from deepclust.config import DEFAULT_BACKBONE
    from deepclust.jobs.select import CSV, PLOT, SelectOptions, run_select
    from deepclust.selection import parse_ks

    options = SelectOptions(source=args.source, out=args.out, ks=parse_ks(args.k), algorithms=args.algorithm,
                            backbones=args.backbone or [], criterion=args.criterion, metric=args.metric,
                            weights=args.weights, image_size=args.image_size, batch_size=args.batch_size,
                            device=args.device, runtime=args.runtime, seed=args.seed, normalize=args.normalize,
                            progress=args.progress, cache=args.cache)
    if not options.backbones and not os.path.isfile(os.path.join(args.source, "summary.json")):
        options.backbones = [DEFAULT_BACKBONE]
    _, choice = run_select(options)
    chosen = choice["chosen"]
    print(f"scored {choice['candidates']} candidates on {choice['images']} images in {choice['seconds']['score']:.0f} s")
    for criterion, pick in choice["criteria"].items():
        print(f"  {criterion:<15} k = {pick['k']:<4} {pick['algorithm']:<14} {pick['backbone']}"
              + ("  (weak)" if pick["weak"] else ""))
    print(f"chosen by {choice['criterion']}: k = {chosen['k']}, {chosen['algorithm']}"
          + (f", {chosen['backbone']}" if chosen["backbone"] else ""))
    if chosen["weak"]:
        others = ", ".join(f"k = {r['k']} {r['algorithm']}" for r in chosen["runner_ups"])
        print(f"  the choice is weak: {others} score nearly as high; look at {PLOT}")
    if choice["command"]:
        print(f"  make it with: {choice['command']}")
    print(f"tables in {os.path.join(args.out, CSV)}")
    return 0


def _add_train_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="fine-tune a backbone on labelled classes (episodic, classic), train a clustering network "
        "(mmdc, imc_swav), or learn a clustering metric (c2m)",
        description="episodic / classic: fine-tune a backbone on the training classes of a split and keep "
        "the epoch whose embeddings cluster the validation classes best (K-means cluster accuracy). Writes "
        "best.pt (usable as `deepclust cluster --weights`), last.pt, history.csv and train_summary.json to "
        "OUT. Under `torchrun --nproc_per_node=N -m deepclust train ...` the tasks are split over N "
        "processes (DDP). mmdc, imc_swav: train Multi-Modal Deep Clustering or IMC-SwAV networks from "
        "scratch on a folder of images (--images DIR --n-clusters K) and write a run folder like "
        "`deepclust cluster` does (assignments.csv, embeddings.npy, summary.json, metrics.json with "
        "--labels folders); imc_swav and mmdc also run under torchrun. c2m: learn a clustering metric from the labelled "
        "images (class subfolders) and write metric.pt, for `deepclust cluster --algorithm c2m`. "
        "Running again resumes.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("config", metavar="CONFIG", nargs="?", help="YAML file of training options (see TrainConfig)")
    p.add_argument("--out", metavar="DIR", help="training folder (reused to resume)")
    p.add_argument("--method", metavar="NAME", help="episodic (default), classic, linear (a scatter head in closed "
                   "form on the frozen backbone), mmdc, imc_swav or c2m")
    p.add_argument("--images", metavar="DIR", help="folder of images (class subfolders for episodic/classic)")
    p.add_argument("--split", metavar="NAME|FILE", help="class split with train and val subsets")
    p.add_argument("--backbone", metavar="NAME", help="timm model name (default tf_efficientnet_lite0)")
    p.add_argument("--weights", metavar="W", help="pretrained (default), random, or a checkpoint file")
    p.add_argument("--image-size", metavar="N", type=_positive_int, help="input side in pixels")
    p.add_argument("--alpha", metavar="A", type=float, help="weight of the scatter loss in [0, 1] (default 0)")
    p.add_argument("--epochs", metavar="N", type=_positive_int, help="epochs (default 9)")
    p.add_argument("--n-tasks", metavar="N", type=_positive_int, help="episodic tasks per epoch (default 300); c2m: labelled datasets drawn "
                   "from the images (default 20)")
    p.add_argument("--n-way", metavar="N", type=_positive_int, help="classes per task (default 20)")
    p.add_argument("--trainable-stages", metavar="N", type=_positive_int, help="train only the last N stages")
    p.add_argument("--cache-views", metavar="N", type=int, help="cache the frozen stages for N augmented views")
    p.add_argument("--batch-size", metavar="N", type=_positive_int,
                   help="images per step (classic 64, mmdc 128, imc_swav 256)")
    _add_method_groups(p)
    p.add_argument("--device", metavar="DEV", help="cpu (default), cuda, cuda:N, mps")
    p.add_argument("--seed", metavar="N", type=int, help="random seed (default 0)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    p.set_defaults(func=_cmd_train)


def _add_method_groups(p: argparse.ArgumentParser) -> None:
    """The options of the methods other than fine-tuning, one group each."""
    e2e = p.add_argument_group("end-to-end clustering (mmdc, imc_swav)")
    e2e.add_argument("--n-clusters", metavar="K", type=_positive_int, help="number of clusters (required)")
    e2e.add_argument("--labels", choices=["folders"], help="folders: each image's parent folder is its true class")
    e2e.add_argument("--channels", metavar="C", type=int, choices=[1, 3], help="1 (grey) or 3 (colour, default)")
    e2e.add_argument("--runs", metavar="N", type=_positive_int, help="seeded runs combined into an ensemble (default 1)")
    e2e.add_argument("--ensemble", choices=["majority", "lowest_loss"], help="how runs are combined (default majority)")
    e2e.add_argument("--lr", metavar="LR", type=float,
                     help="learning rate (mmdc: 0.05 VGG, 0.01 ResNet; imc_swav: 5e-4, Adam)")
    e2e.add_argument("--no-flip", dest="flip", action="store_false", help="no random horizontal flips (digits, text)")
    mmdc = p.add_argument_group("mmdc")
    mmdc.add_argument("--refine-epochs", metavar="N", type=int, help="epochs of the k-means refinement stage (default 0)")
    mmdc.add_argument("--repetitions", metavar="R", type=_positive_int, help="augmented copies per image (default 3)")
    mmdc.add_argument("--no-sobel", dest="sobel", action="store_false", help="train on the image, not its Sobel gradients")
    mmdc.add_argument("--no-rotation", dest="rotation_task", action="store_false", help="no RotNet auxiliary epochs")
    imc = p.add_argument_group("imc_swav")
    imc.add_argument("--prototypes", dest="n_prototypes", metavar="N", type=_positive_int,
                     help="SwAV prototypes k' (default 1000)")
    imc.add_argument("--beta", metavar="B", type=float, help="weight of the cluster-marginal entropy (default 4)")
    imc.add_argument("--eval-every", metavar="N", type=_positive_int,
                     help="with --labels, score the clusters every N epochs (the learning curve; default 1)")
    c2m = p.add_argument_group("c2m (a clustering metric learned from labelled images)")
    c2m.add_argument("--subset", metavar="NAME", help="with --split: the subset whose classes it learns from (e.g. train)")
    c2m.add_argument("--task-size", metavar="N", type=_positive_int,
                     help="points in each labelled dataset drawn from the images (default 200)")
    c2m.add_argument("--max-clusters", metavar="K", type=_positive_int,
                     help="most classes per drawn dataset and most clusters the metric finds (default 50)")
    c2m.add_argument("--preset", choices=["images", "transferable", "paper"],
                     help="images (default: carries over to unseen classes of image embeddings), transferable "
                     "(2-D shapes: from blobs to moons and rings) or paper (Algorithm 2 as published)")
    c2m.add_argument("--param", metavar="KEY=VALUE", dest="params", action="append", type=_param,
                     help="a further argument of deepclust.methods.C2M, e.g. objective=ranking (repeatable)")


def _cmd_train(args: argparse.Namespace) -> int:
    from deepclust.config import build_config, load_yaml
    from deepclust.methods import config_class, create_method
    from deepclust.parallel.ddp import shutdown

    options = _given_options(args)
    file = getattr(args, "config", None)
    name = options.get("method") or (load_yaml(file).get("method") if file else None) or "episodic"
    if "params" in options:
        options["params"] = dict(options["params"])
    config = build_config(config_class(name), file, **options)
    method = create_method(config.method, config)
    try:
        method.fit()
    finally:  # under torchrun: leave the process group cleanly, also after an error
        shutdown()
    for line in method.outcome():
        print(line)
    return 0


def _add_experiment_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "experiment",
        help="run a paper protocol from a config file (train, select, cluster, tables)",
        description="Core method (no `method:` in the file): train the classic baseline and the episodic "
        "method for a list of alphas, select each on the validation classes, cluster the test classes with "
        "every model over several seeds, and write table1.md, results.csv, results.json and figure3.png. "
        "End-to-end methods (`method: mmdc`): train every variant over several seeds, score single runs, "
        "the lowest-loss run and the majority vote, before and after refinement, against k-means on raw "
        "pixels, and write table.md, results.csv, results.json and figure.png. C2M (`method: c2m`): learn "
        "metrics from labelled sets (synthetic blobs, or one image collection), cluster new sets of other "
        "families or collections with k unknown, run the critic checks, and write the same files. Running again "
        "resumes; "
        "finished steps are not redone.",
    )
    p.add_argument("config", metavar="CONFIG", help="experiment YAML file (see configs/)")
    p.add_argument("--out", metavar="DIR", help="experiment folder (default: the config's out)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="hide progress bars")
    p.set_defaults(func=_cmd_experiment)


def _cmd_experiment(args: argparse.Namespace) -> int:
    from deepclust.experiments.runner import run_experiment_file

    overrides = {k: v for k, v in (("out", args.out), ("progress", args.progress)) if v is not None}
    config, results, table = run_experiment_file(args.config, **overrides)
    with open(table, encoding="utf-8") as fh:
        print(fh.read(), end="")
    print(f"results in {config.out} ({results['seconds']:.0f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    import deepclust

    parser = argparse.ArgumentParser(
        prog="deepclust",
        description="Cluster images of the same kind (species, digits, objects) with deep features.",
    )
    parser.add_argument("--version", action="version", version=f"deepclust {deepclust.__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only results and errors")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show debugging messages and those of the libraries deepclust uses")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    # -q and -v work where users type them: before the command or among its options
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("-q", "--quiet", action="store_true", help="print only results and errors")
    common.add_argument("-v", "--verbose", action="store_true", help="also show debugging messages and other libraries' own")
    add_parser = subparsers.add_parser
    subparsers.add_parser = lambda *a, **k: add_parser(*a, parents=[common], **k)
    _add_cluster_parser(subparsers)
    _add_embed_parser(subparsers)
    _add_evaluate_parser(subparsers)
    _add_select_parser(subparsers)
    _add_train_parser(subparsers)
    _add_experiment_parser(subparsers)
    _add_report_parser(subparsers)
    _add_export_parser(subparsers)
    _add_predict_parser(subparsers)
    _add_review_parser(subparsers)
    _add_refine_parser(subparsers)
    _add_export_onnx_parser(subparsers)
    _add_cache_parser(subparsers)
    _add_backbones_parser(subparsers)
    _add_fetch_model_parser(subparsers)
    return parser


def _add_backbones_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "backbones",
        help="list the backbones to choose from",
        description="The short names --backbone takes, with their source (timm or open_clip, and the id the weights "
        "come from), feature size, input size, images per second on a CPU relative to lite0 (the default; "
        "benchmarks/backbone_speed.py), whether they name clusters (--names), and their licence. --backbone also "
        "takes any timm or open_clip name and hf-hub:ORG/REPO ids. README: which to choose for what.",
    )
    p.set_defaults(func=_cmd_backbones)


def _cmd_backbones(args: argparse.Namespace) -> int:
    from deepclust.jobs.models import format_backbones

    print(format_backbones())
    return 0


def _add_fetch_model_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "fetch-model",
        help="download a backbone into a models folder, for machines with no network",
        description="Download NAME (a short name of `deepclust backbones`, a timm or open_clip name with its "
        "pretrained tag, or hf-hub:ORG/REPO) from the Hugging Face hub into DIR/NAME: only the files its library "
        "reads, then load it once to check it. On a machine without network, copy DIR there and set "
        "DEEPCLUST_MODELS=DIR (or pass --weights DIR/NAME).",
    )
    p.add_argument("name", metavar="NAME", help="the backbone, as --backbone takes it")
    p.add_argument("--to", metavar="DIR", required=True, help="the models folder to write into")
    p.add_argument("--no-check", dest="check", action="store_false", help="do not load the model after downloading")
    p.set_defaults(func=_cmd_fetch_model)


def _cmd_fetch_model(args: argparse.Namespace) -> int:
    from deepclust.jobs.models import fetch_model

    folder = fetch_model(args.name, args.to, check=args.check)
    print(f"{args.name} in {folder}; use it offline with DEEPCLUST_MODELS={args.to} (or --weights {folder})")
    return 0


def _add_cache_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "cache",
        help="see and clear the embedding cache",
        description="The embedding cache keeps every image's vector per backbone, so that no run, predict or "
        "select embeds an image twice. Lists what it holds (one row per backbone signature: vectors, size, last "
        "used); --clear removes everything, --clear-older-than DAYS what was not used for that long. Its folder "
        "is DEEPCLUST_CACHE/embeddings (default ~/.cache/deepclust/embeddings) and its size limit "
        "DEEPCLUST_CACHE_LIMIT (default 20G: the least recently used backbones go first).",
    )
    p.add_argument("--cache", metavar="DIR", help="the cache folder (default: the user's shared one)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--clear", action="store_true", help="remove every cached vector")
    group.add_argument("--clear-older-than", metavar="DAYS", type=float, help="remove backbones unused for DAYS days")
    p.set_defaults(func=_cmd_cache)


def _cmd_cache(args: argparse.Namespace) -> int:
    import time

    from deepclust.features.cache import cache_entries, cache_limit, clear_cache, embedding_cache

    root = embedding_cache(args.cache)
    if args.clear or args.clear_older_than is not None:
        removed = clear_cache(root, args.clear_older_than)
        freed = sum(r["bytes"] for r in removed) / 2**20
        print(f"removed {len(removed)} backbone folder(s), {sum(r['vectors'] for r in removed)} vectors, "
              f"{freed:.1f} MiB from {root}")
        return 0
    rows = cache_entries(root)
    total = sum(r["bytes"] for r in rows)
    print(f"embedding cache {root}: {len(rows)} backbone signature(s), {sum(r['vectors'] for r in rows)} vectors, "
          f"{total / 2**20:.1f} MiB of {cache_limit() / 2**30:.0f} GiB")
    for r in rows:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["last_used"]))
        print(f"  {r['vectors']:>9} vectors {r['bytes'] / 2**20:>9.1f} MiB  used {used}  {r['signature'][:90]}")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"deepclust: warning: {message}", file=sys.stderr)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the work done so far is saved on the way out."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _own(record: logging.LogRecord) -> bool:
    return record.name == "deepclust" or record.name.startswith("deepclust.")


class _OwnMessages(logging.Filter):
    """deepclust's own messages; other libraries' only when ``--verbose`` or when they are
    errors (faiss's loader and the ONNX exporter talk a lot at INFO)."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        return _own(record) or self.verbose or record.levelno >= logging.ERROR


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"deepclust: {text}" if _own(record) else f"deepclust: [{record.name}] {text}"


def _setup_logging(quiet: bool, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Format("%(message)s"))
    handler.addFilter(_OwnMessages(verbose))
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, handlers=[handler], force=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.quiet, args.verbose)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    if args.quiet and args.command == "cluster" and not hasattr(args, "progress"):
        args.progress = False
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return args.func(args)
    except DeepclustError as exc:
        print(f"deepclust: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"deepclust: {what}; the work done so far is saved: run the same command again to resume",
              file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":
    sys.exit(main())
