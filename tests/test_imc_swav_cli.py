"""IMC-SwAV from the command line, as an experiment, and under torchrun (real CIFAR-10 JPEGs)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from deepclust.cli import main
from deepclust.runs import load_run
from test_mmdc_cli import three_classes  # noqa: F401  (fixture: 30 CIFAR JPEGs of 3 classes + a corrupt file)

TINY = ["--backbone", "cifar_resnet20", "--image-size", "16", "--prototypes", "20", "--batch-size", "16",
        "--no-progress"]


def test_train_imc_swav_on_a_folder_writes_a_run_folder_with_a_learning_curve(three_classes, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    args = ["train", "--method", "imc_swav", "--images", str(three_classes), "--out", str(out), "--n-clusters", "3",
            "--labels", "folders", "--epochs", "2", "--runs", "2"] + TINY
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "clustered 30 images" in printed and "ACC" in printed
    run = load_run(out)
    assert len(run.paths) == 30 and run.embeddings.shape == (30, 128)
    assert np.allclose(np.linalg.norm(run.embeddings, axis=1), 1, atol=1e-5)
    assert set(np.unique(run.clusters)) <= {0, 1, 2}
    assert "broken.jpg" in (out / "skipped.csv").read_text()
    summary = run.summary
    assert summary["method"] == "imc_swav" and [r["seed"] for r in summary["runs"]] == [0, 1]
    assert summary["resolved"]["crops"] == [[2, 14, [0.2, 1.0]], [4, 9, [0.08, 0.4]]]
    assert set(summary["scores"]["ensembles"]) == {"main"}
    with open(out / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["seed"], r["epoch"]) for r in rows] == [("0", "1"), ("0", "2"), ("1", "1"), ("1", "2")]
    assert all(0 <= float(r["ACC"]) <= 1 and r["swav"] and r["mi"] for r in rows)
    assert (out / "seed0" / "last.pt").is_file() and (out / "seed1" / "last.pt").is_file()
    first = (out / "assignments.csv").read_text()
    assert main(args) == 0  # finished runs are loaded, not retrained
    assert (out / "assignments.csv").read_text() == first
    assert main(["evaluate", str(out), "--algorithm", "kmeans", "--seeds", "2"]) == 0


def test_train_imc_swav_names_what_is_wrong(three_classes, tmp_path, capsys):  # noqa: F811
    base = ["train", "--method", "imc_swav", "--images", str(three_classes), "--out", str(tmp_path / "r"),
            "--epochs", "1"] + TINY
    for extra, message in (([], "imc_swav needs the number of clusters; pass --n-clusters K"),
                           (["--n-clusters", "3", "--no-sobel"], "imc_swav has no setting sobel"),
                           (["--n-clusters", "3", "--beta", "-1"], "beta=-1.0 must be a number >= 0.0")):
        assert main(base + extra) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "r" / "seed0").exists()  # nothing trained


def test_a_tiny_imc_swav_experiment_with_the_multi_crop_ablation(three_classes, tmp_path):  # noqa: F811
    config = {
        "name": "tiny", "method": "imc_swav", "out": str(tmp_path / "exp"), "images": str(three_classes),
        "labels": "folders", "image_size": 16, "n_clusters": 3, "seeds": 2, "baseline_seeds": 2,
        "settings": {"backbone": "cifar_resnet20", "epochs": 2, "batch_size": 16, "n_prototypes": 20},
        "variants": {"2x16": {"crops": [[2, 16, [0.2, 1.0]]]},
                     "2x14+2x9": {"crops": [[2, 14, [0.2, 1.0]], [2, 9, [0.08, 0.4]]]}},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["experiment", str(path), "--no-progress"]) == 0
    table = (tmp_path / "exp" / "table.md").read_text()
    assert "| k-means on raw pixels | - | mean of 2 seeds |" in table
    for variant in ("2x16", "2x14+2x9"):
        assert f"| {variant} | main | single runs (mean of 2) |" in table
    assert "refined" not in table and "swapped prediction + eq. 6" in table
    results = json.loads((tmp_path / "exp" / "results.json").read_text())
    curve = results["variants"]["2x16"]["history"]["1"]
    assert [h["epoch"] for h in curve] == [1, 2] and all("ACC" in h for h in curve)
    assert (tmp_path / "exp" / "figure.png").stat().st_size > 10_000


@pytest.mark.ddp
def test_two_gloo_processes_share_the_sinkhorn_and_end_with_identical_weights(tmp_path):
    import torch

    worker = tmp_path / "worker.py"
    worker.write_text(
        "import sys, numpy as np, torch, torch.distributed as dist\n"
        "from deepclust.losses import sinkhorn\n"
        "from deepclust.methods.imc_swav import IMCSwAV\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from test_mmdc import _bars\n"
        "images, _ = _bars(8)\n"
        "m = IMCSwAV(3, backbone='cifar_resnet20', backbone_kwargs={'widths': [8, 16, 32]}, n_prototypes=12,\n"
        "            proj_hidden=32, proj_dim=16, cls_hidden=16, epochs=2, batch_size=12, flip=False, warmup_steps=2,\n"
        "            random_state=0, checkpoint_dir=sys.argv[1] + '/ckpt').fit(images)\n"
        "rank = dist.get_rank()\n"
        "scores = torch.randn(10, 6, generator=torch.Generator().manual_seed(7))\n"
        "mine = sinkhorn(scores[rank * 5:(rank + 1) * 5], distributed=True)\n"
        "torch.save({'net': m.net_.state_dict(), 'q': mine}, f'{sys.argv[1]}/rank{rank}.pt')\n"
        "dist.destroy_process_group()\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    tests_dir = os.path.dirname(__file__)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(worker), str(tmp_path), tests_dir], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key, value in rank0["net"].items():
        assert torch.equal(value, rank1["net"][key]), key
    from deepclust.losses import sinkhorn

    whole = sinkhorn(torch.randn(10, 6, generator=torch.Generator().manual_seed(7)))
    assert torch.allclose(torch.cat([rank0["q"], rank1["q"]]), whole, atol=1e-6)  # one Sinkhorn over both ranks
    assert (tmp_path / "ckpt" / "last.pt").is_file()


def test_predict_new_images_into_an_imc_swav_run_with_its_own_network(three_classes, tmp_path):  # noqa: F811
    import csv

    out = tmp_path / "run"
    assert main(["-q", "train", "--method", "imc_swav", "--images", str(three_classes), "--out", str(out),
                 "--n-clusters", "3", "--epochs", "2"] + TINY) == 0
    stamp = (out / "seed0" / "last.pt").stat().st_mtime_ns
    assert main(["-q", "predict", str(out), str(three_classes), "--out", str(tmp_path / "p"), "--no-progress"]) == 0
    assert (out / "seed0" / "last.pt").stat().st_mtime_ns == stamp  # restored, not trained again
    with open(tmp_path / "p" / "predictions.csv", encoding="utf-8", newline="") as fh:
        rows = {r["path"]: r for r in csv.DictReader(fh)}
    run = load_run(out)
    assert len(rows) == 30
    assert all(float(rows[p]["nearest_image_distance"]) < 1e-5 for p in run.paths)  # the run's own projections
