"""Kept for the names the README showed before the house was rebuilt: torchrun's DDP helpers
live in :mod:`deepclust.parallel.ddp`, the Dask executors in :mod:`deepclust.parallel.executors`."""

from deepclust.parallel.ddp import (DistInfo, average_buffers, barrier, init_distributed, rank_seed, shutdown,
                                    wrap_ddp)
from deepclust.parallel.executors import DaskExecutor, LocalExecutor, open_executor, parse_scheduler

__all__ = ["DaskExecutor", "DistInfo", "LocalExecutor", "average_buffers", "barrier", "init_distributed",
           "open_executor", "parse_scheduler", "rank_seed", "shutdown", "wrap_ddp"]
