"""``torchrun`` / ``DistributedDataParallel`` plumbing of
[`NoiseTrainer`][peftsmoothing.NoiseTrainer].

Everything that knows about several processes lives here: reading the ``torchrun``
environment, creating the process group, wrapping the model in DDP, sharding the loaders and
the few collectives the trainer needs (sums, a logical or, gathering RNG states). On a single
process every function is a no-op or returns its input.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler, Sampler

__all__ = [
    "Topology", "all_gather_objects", "any_rank", "barrier", "init_process_group",
    "release_process_group", "shard_loader", "sum_over_ranks", "wrap_ddp",
]


@dataclass(frozen=True)
class Topology:
    """This process's place in a ``torchrun`` job (``world_size`` 1 without torchrun).

    Examples:
        >>> Topology.from_env({}).world_size
        1
        >>> Topology.from_env({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"}).rank
        2
    """

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @classmethod
    def from_env(cls, env: Any = None) -> Topology:
        """Read ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (default: ``os.environ``)."""
        env = os.environ if env is None else env
        world = int(env.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(world_size=world)
        return cls(world, int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0")))

    def default_device(self) -> torch.device:
        """``cuda:<LOCAL_RANK>`` when CUDA is available, else the CPU."""
        return torch.device(f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu")


def init_process_group(topology: Topology, device: torch.device) -> bool:
    """Create the process group (nccl on CUDA, gloo otherwise) if torchrun needs one.

    Returns:
        Whether this call created it (then the caller destroys it).

    Examples:
        >>> init_process_group(Topology(), torch.device("cpu"))
        False
    """
    if topology.world_size > 1 and not (dist.is_available() and dist.is_initialized()):
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return True
    return False


def wrap_ddp(module: nn.Module, topology: Topology, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(module)`` under torchrun, else ``module`` itself.

    Examples:
        >>> m = nn.Linear(2, 2)
        >>> wrap_ddp(m, Topology(), torch.device("cpu")) is m
        True
    """
    if topology.world_size <= 1:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(module, device_ids=[device.index] if device.type == "cuda" else None)


def shard_loader(
    loader: Iterable[Any], topology: Topology, *, train: bool, seed: int
) -> Iterable[Any]:
    """Give this rank its shard of a plain ``DataLoader`` (returned unchanged otherwise).

    Training loaders get a ``DistributedSampler`` (shuffled when the original was, seeded with
    ``seed``); evaluation loaders the indices ``rank, rank + world_size, ...`` (a ``range``):
    no padding, so every image counts once.

    Examples:
        >>> data = [(torch.zeros(1, 3, 2, 2), torch.zeros(1))]
        >>> shard_loader(data, Topology(), train=True, seed=0) is data
        True
    """
    if topology.world_size == 1 or not isinstance(loader, DataLoader):
        return loader
    if isinstance(loader.sampler, (DistributedSampler, range)):  # sharded already
        return loader
    if isinstance(loader.dataset, IterableDataset) or loader.batch_size is None:
        if topology.rank == 0:
            warnings.warn(
                "cannot shard this DataLoader (iterable dataset or custom batch_sampler): "
                "every rank sees all of it; shard it yourself", stacklevel=4)
        return loader
    dataset: Any = loader.dataset
    if train:
        sampler: Sampler[int] | range = DistributedSampler(
            dataset, num_replicas=topology.world_size, rank=topology.rank, seed=seed,
            shuffle=isinstance(loader.sampler, RandomSampler), drop_last=loader.drop_last)
    else:
        sampler = range(topology.rank, len(dataset), topology.world_size)
    same = ("batch_size", "num_workers", "collate_fn", "pin_memory", "drop_last", "timeout",
            "worker_init_fn", "multiprocessing_context", "generator", "persistent_workers",
            "pin_memory_device")  # every setting of the loader but its sampler
    return DataLoader(dataset, sampler=sampler, **{k: getattr(loader, k) for k in same},
                      prefetch_factor=loader.prefetch_factor if loader.num_workers > 0 else None)


def sum_over_ranks(values: torch.Tensor, topology: Topology) -> torch.Tensor:
    """``values`` summed over the ranks (``values`` itself on one process); the sum runs on
    ``values``' device under nccl, on the CPU under gloo.

    Examples:
        >>> sum_over_ranks(torch.ones(2, dtype=torch.float64), Topology()).tolist()
        [1.0, 1.0]
    """
    if topology.world_size <= 1:
        return values
    t = values if dist.get_backend() == "nccl" else values.cpu()
    dist.all_reduce(t)
    return t


def any_rank(flag: torch.Tensor, topology: Topology) -> bool:
    """Whether ``flag`` (a bool tensor) is true on any rank; one host synchronisation.

    Examples:
        >>> any_rank(torch.tensor(False), Topology())
        False
    """
    return bool(sum_over_ranks(flag.to(torch.int32), topology))


def all_gather_objects(obj: Any, topology: Topology) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` on one process).

    Examples:
        >>> all_gather_objects({"a": 1}, Topology())
        [{'a': 1}]
    """
    if topology.world_size == 1:
        return [obj]
    out: list[Any] = [None] * topology.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(topology: Topology) -> None:
    """Wait for every rank (nothing on one process).

    Examples:
        >>> barrier(Topology())
    """
    if topology.world_size > 1:
        dist.barrier()


def release_process_group(owned: bool) -> bool:
    """Drop DDP wrappers (garbage-collect them) and destroy the process group if ``owned``.

    A DDP wrapper that outlives its process group can abort the process at exit. Returns
    whether a process group is still owned (always ``False``).

    Examples:
        >>> release_process_group(False)
        False
    """
    import gc

    gc.collect()
    if owned and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return False
