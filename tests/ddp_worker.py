"""Run by tests/test_ddp.py under torchrun: train, then save this rank's weights."""

import sys

import torch

from deepclust.config import TrainConfig, build_config
from deepclust.parallel.ddp import shutdown
from deepclust.methods import create_method

if __name__ == "__main__":
    config = build_config(TrainConfig, sys.argv[1])
    method = create_method(config.method, config)
    method.fit()
    torch.save(method.net_.state_dict(), f"{config.out}/rank{method.dist_.rank}-of-{method.dist_.world_size}.pt")
    shutdown(method.dist_)
