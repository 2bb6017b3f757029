"""Multi-process training with PyTorch DDP (gloo backend, CPU) under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from deepclust.features.backbones import create_backbone

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.mark.ddp
@pytest.mark.parametrize("method", ["episodic", "classic"])
def test_two_gloo_processes_end_with_identical_weights(moth_split, tmp_path, method):
    images, split = moth_split
    config = dict(method=method, images=str(images), split=str(split), out=str(tmp_path / "run"),
                  backbone="test_efficientnet", weights="random", image_size=32, n_way=3, n_shot=2, n_query=2,
                  n_tasks=6, epochs=2, lr=0.05, alpha=0.3, batch_size=8, classic_images_per_epoch=48, progress=False)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
         str(tmp_path / "train.yaml")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "run" / "rank0-of-2.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "run" / "rank1-of-2.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    torch.manual_seed(0)
    initial = create_backbone("test_efficientnet", weights="random", image_size=32).model.state_dict()
    assert any(not torch.equal(initial[k], rank0["model." + k]) for k in initial)  # it trained
    # rank 0 alone validated and wrote
    summary = yaml.safe_load((tmp_path / "run" / "train_summary.json").read_text())
    assert [row["epoch"] for row in summary["history"]] == [0, 1, 2]
    assert (tmp_path / "run" / "best.pt").is_file()
