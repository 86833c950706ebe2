"""PyTorch DDP plumbing for `infantino-train fit` under torchrun: gloo on CPU, nccl on GPUs, no new code paths.

A plain `python` run is a world of one; torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR)
turns on the process group. Only rank 0 logs to MLflow and writes files.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from infantino.runtime.contract.errors import InfantinoError

log = logging.getLogger(__name__)


@dataclass
class DistContext:
    """Where this process sits: rank, world size, local rank, its device and the collective backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def pick_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' -> this process's GPU if there is one, else CPU; 'cpu', 'cuda' or 'cuda:N' as given."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InfantinoError(f"device {device!r} requested but no CUDA GPU is available; use --device cpu")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


def init_distributed(device: str = "auto") -> DistContext:
    """Join torchrun's process group if launched by it (env://), else a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world <= 1:
        return DistContext(device=dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    owns = False
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, init_method="env://")
        owns = True
    ctx = DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=dev,
                      backend=dist.get_backend(), owns_group=owns)
    log.debug("rank %d/%d on %s (%s)", ctx.rank, ctx.world_size, dev, ctx.backend)
    return ctx


def all_reduce_sum(ctx: DistContext, t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (in place, returned); identity for one process."""
    if ctx.is_distributed:
        moved = t.to(ctx.device)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        t.copy_(moved.to(t.device))
    return t


def broadcast_object(ctx: DistContext, obj, src: int = 0):
    """rank src's picklable object on every rank."""
    if not ctx.is_distributed:
        return obj
    box = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(box, src=src, device=ctx.device if ctx.backend == "nccl" else None)
    return box[0]


def broadcast_buffers(ctx: DistContext, module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank src's buffers (BatchNorm running statistics) to every rank.

    DDP syncs buffers at the start of each forward, so after the last step of an epoch each rank holds the
    statistics of its own last batch; this makes evaluation and checkpoints identical on all ranks.
    """
    if not ctx.is_distributed:
        return
    for b in module.buffers():
        moved = b.data.to(ctx.device)
        dist.broadcast(moved, src=src)
        b.data.copy_(moved.to(b.device))


def barrier(ctx: DistContext) -> None:
    if ctx.is_distributed:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    """Leave the process group if this context created it."""
    if ctx.is_distributed and ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["DistContext", "init_distributed", "pick_device", "all_reduce_sum", "broadcast_object",
           "broadcast_buffers", "barrier", "shutdown"]
