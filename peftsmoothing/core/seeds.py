"""The one way a seed is split into independent streams (docs/design.md, "Reproducibility").

``derive_seed(seed, *path)`` is numpy's ``SeedSequence`` keyed by a path of non-negative
integers and strings: certification uses ``(seed, image index)`` and ``(seed, stream)``,
training ``(seed, rank, epoch, batch)`` and named streams such as ``"sigma"``.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .validation import check_int

__all__ = ["derive_seed"]


def _key(part: int | str) -> int:
    if isinstance(part, str):
        return int.from_bytes(hashlib.blake2b(part.encode(), digest_size=8).digest(), "little")
    return check_int(part, "seed path element", minimum=0)


def derive_seed(seed: int, *path: int | str) -> int:
    """A 63-bit seed for the stream ``path`` of ``seed``; distinct paths give independent streams.

    Args:
        seed: The master seed (a non-negative integer).
        *path: Non-negative integers and strings naming the stream.

    Returns:
        An integer in ``[0, 2**63)``, usable by ``torch.Generator.manual_seed``.

    Examples:
        >>> derive_seed(0, 1) == derive_seed(0, 1), derive_seed(0, 1) == derive_seed(0, 2)
        (True, False)
        >>> 0 <= derive_seed(3, "sigma", 0, 5) < 2**63
        True
    """
    entropy = check_int(seed, "seed", minimum=0)
    key = tuple(_key(p) for p in path)
    state = np.random.SeedSequence(entropy=entropy, spawn_key=key).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))
