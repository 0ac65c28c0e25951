"""Multi-process training through PyTorch's own engine (``torchrun`` + DistributedDataParallel).

``torchrun --nproc_per_node=N train_2d.py ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; each
process then trains on its share of every global batch, gradients are averaged by DDP, and rank
0 alone writes files. Without those variables everything here is a no-op for one process.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0


def init_distributed(use_cuda):
    """Join the process group when launched by torchrun (NCCL on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return info


def broadcast_object(obj, info):
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_object(obj, info):
    """Every rank's ``obj``, as a list in rank order, on every rank (``[obj]`` for one process).

    Every rank must call it at the same point.
    """
    if not info.enabled:
        return [obj]
    box = [None] * info.world_size
    dist.all_gather_object(box, obj)
    return box


def any_rank(flag, info):
    """True on every rank if ``flag`` is true on any rank (keeps ranks stopping at the same step)."""
    if not info.enabled:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean_over_ranks(values, info, device=None):
    """``{name: float}`` averaged over all ranks (the same dict on one process).

    Every rank must call it at the same point with the same keys. ``device`` is where the
    reduction runs (a CUDA device for NCCL; the CPU for gloo).
    """
    if not info.enabled:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.to(device if device is not None and torch.device(device).type == "cuda" else "cuda")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist())}


def barrier(info):
    if info.enabled:
        dist.barrier()


def shutdown(info):
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
