"""Training on several processes or machines: PyTorch DDP under torchrun.

``torchrun --nproc_per_node=N -m deepclust train CONFIG`` starts N processes with the
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` environment variables set; outside torchrun a
run is one process of rank 0 and the helpers here do nothing. (Embedding and clustering
large collections run on Dask instead: :mod:`deepclust.parallel.executors`.)
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


log = logging.getLogger("deepclust")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly one-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launch_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun): which process writes,
    known before (and without) joining the process group."""
    return int(os.environ.get("RANK", "0"))


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun; return the rank and the device.

    The backend is NCCL on CUDA (each process takes GPU ``LOCAL_RANK``) and gloo on a CPU.
    The timeout is long: rank 0 validates and writes while the others wait.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(), device
    rank, local_rank = launch_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=6)
        )
    return DistInfo(rank, world_size, local_rank), device


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo | None = None) -> None:  # info: kept for callers that pass it
    """Leave the process group, if this process joined one (under torchrun)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@torch.no_grad()
def average_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Average floating-point buffers (batch-norm running statistics) over the ranks.

    DDP keeps parameters in step but each rank updates its running statistics from its
    own batches; after this every rank holds the same, better-estimated, statistics.
    """
    if not info.enabled:
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(info.world_size)


def rank_seed(*parts: int) -> int:
    """A 63-bit seed from integers (the run seed, the epoch, the rank)."""
    value = 0x9E3779B97F4A7C15
    for p in parts:
        value = (value * 6364136223846793005 + (int(p) & 0xFFFFFFFF) + 1442695040888963407) % (1 << 63)
    return value


def wrap_ddp(net: nn.Module, device: torch.device, info: DistInfo, find_unused_parameters: bool = False) -> nn.Module:
    """``net`` in DistributedDataParallel when the run has several processes, else ``net``.

    On CUDA the batch-norm layers become SyncBatchNorm first (statistics over the whole
    global batch); on a CPU they stay as they are, because SyncBatchNorm refuses CPU
    tensors, and :func:`average_buffers` brings the ranks' running statistics together
    after each epoch instead. The conversion shares the parameters and buffers of
    ``net``, so the checkpoints of ``net`` are unchanged in form. ``find_unused_parameters``:
    for networks whose steps use different heads (MMDC's clustering and rotation steps).
    """
    if not info.enabled:
        return net
    if device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(net)  # in place: net's children are replaced
    return nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                               find_unused_parameters=find_unused_parameters)
