"""Capture and restore every random stream a training run draws from, for exact resume.

A checkpoint holds, per rank, the state of torch (CPU and CUDA), numpy, Python's ``random``
and the ``torch.Generator`` objects of the training loader; tensors and plain types only, so
it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..core.seeds import derive_seed

__all__ = ["loader_generators", "rng_state", "seed_everything", "set_rng_state"]


def loader_generators(loader: Any) -> list[torch.Generator]:
    """The distinct ``torch.Generator`` objects of a loader and its (batch) sampler.

    Examples:
        >>> from torch.utils.data import DataLoader
        >>> g = torch.Generator()
        >>> loader_generators(DataLoader(range(4), shuffle=True, generator=g))[0] is g
        True
    """
    owners = (loader, getattr(loader, "sampler", None),
              getattr(getattr(loader, "batch_sampler", None), "sampler", None))
    found = (getattr(owner, "generator", None) for owner in owners)
    return list({id(g): g for g in found if isinstance(g, torch.Generator)}.values())  # once each


def rng_state(loader: Any) -> dict[str, Any]:
    """The current state of every random stream (see the module docstring).

    Examples:
        >>> sorted(rng_state([]))
        ['cuda', 'loader', 'numpy', 'python', 'torch']
    """
    np_state: Any = np.random.get_state()
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if cuda else None,
        "numpy": {
            "name": str(np_state[0]), "keys": torch.from_numpy(np.asarray(np_state[1], np.int64)),
            "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": random.getstate(),
        "loader": [g.get_state() for g in loader_generators(loader)],
    }


def set_rng_state(state: Mapping[str, Any], loader: Any) -> None:
    """Restore what ``rng_state`` captured (the loader's generators in the same order).

    Examples:
        >>> saved = rng_state([])
        >>> a = torch.rand(1)
        >>> set_rng_state(saved, [])
        >>> bool(torch.rand(1) == a)
        True
    """
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    for g, s in zip(loader_generators(loader), state.get("loader", []), strict=False):
        g.set_state(s)


def seed_everything(seed: int, rank: int, *path: int | str) -> None:
    """Seed torch, numpy and ``random``: with ``seed + rank``, or the stream ``path`` of it.

    Examples:
        >>> seed_everything(0, 0); a = torch.rand(1)
        >>> seed_everything(0, 0); bool(torch.rand(1) == a)
        True
    """
    value = seed + rank if not path else derive_seed(seed, rank, *path) % (2**32)
    torch.manual_seed(value)
    np.random.seed(value % (2**32))
    random.seed(value)
