"""The training noise: which sigma a batch gets and the noisy copies ``x + sigma * randn``.

Both are functions of ``(seed, rank, epoch, batch)`` alone (``peftsmoothing.core.seeds``), so a
resumed run draws the same noise as an uninterrupted one and the global RNG is untouched.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from ..core.noise import add_noise
from ..core.seeds import derive_seed

__all__ = ["TrainingNoise"]


class TrainingNoise:
    """Seeded Gaussian noise in pixel space for the batches of a training run.

    Args:
        sigmas: The noise levels; with several, one is drawn per batch.
        seed: The run's seed.
        device: Where the noise is drawn (the model's device).

    Examples:
        >>> noise = TrainingNoise((0.25, 0.5), seed=0, device=torch.device("cpu"))
        >>> noise.sigma(0, 0, 3) in (0.25, 0.5)
        True
        >>> x = torch.zeros(2, 3, 4, 4)
        >>> a = noise.noisy(x, 0.5, 2, 0, 0, 3)
        >>> len(a), torch.equal(a[0], noise.noisy(x, 0.5, 2, 0, 0, 3)[0])
        (2, True)
    """

    def __init__(self, sigmas: Sequence[float], seed: int, device: torch.device) -> None:
        self.sigmas = tuple(sigmas)
        self.seed = seed
        self._gen = torch.Generator(device=device)

    def sigma(self, rank: int, epoch: int, batch: int) -> float:
        """The noise level of a batch (the only one when there is one)."""
        key = derive_seed(self.seed, "sigma", rank, epoch, batch)
        return random.Random(key).choice(self.sigmas)

    def noisy(self, x: torch.Tensor, sigma: float, copies: int, rank: int, epoch: int,
              batch: int) -> list[torch.Tensor]:
        """``copies`` noisy versions ``x + sigma * randn`` drawn on x's device, in x's dtype."""
        self._gen.manual_seed(derive_seed(self.seed, rank, epoch, batch))
        noisy = torch.empty((copies, *x.shape), device=x.device, dtype=x.dtype)
        return list(add_noise(noisy, x, sigma, self._gen).unbind(0))
