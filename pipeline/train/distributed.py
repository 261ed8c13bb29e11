"""torchrun (DDP) where several processes are launched; a plain single process otherwise."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Runtime:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_runtime(threads: int = 0) -> Runtime:
    """Join the process group torchrun set up (NCCL on GPUs, Gloo on CPUs), or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // world))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(rank=rank, world=world, device=device)


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather_interleaved(rows: torch.Tensor, total: int, rank: int, world: int) -> torch.Tensor:
    """Every rank's `rows` (rank r holds rows r, r + world, ... of `total`) as one [total, ...] tensor on each rank."""
    if world == 1:
        return rows
    size = -(-total // world)
    padded = rows.new_zeros((size, *rows.shape[1:]))
    padded[:len(rows)] = rows
    shares = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(shares, padded)
    full = rows.new_empty((total, *rows.shape[1:]))
    for r, share in enumerate(shares):
        full[r::world] = share[:len(range(r, total, world))]
    return full
