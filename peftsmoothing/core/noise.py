"""Gaussian noise in pixel space: the one function that draws it.

Certification (``certify/sampling.py``), training (``training/noise.py``) and the trainer's
evaluation (``training/evaluate.py``) all draw ``x + N(0, sigma^2 I)`` through ``add_noise``.
"""

from __future__ import annotations

import torch

__all__ = ["add_noise"]


def add_noise(
    out: torch.Tensor, x: torch.Tensor, sigma: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fill ``out`` (copies of ``x``'s shape) with ``x + N(0, sigma^2)`` noise, in place.

    The one place Gaussian noise is drawn, for certification, PREDICT, training and evaluation
    alike: ``out.normal_(0, sigma)`` then ``+ x``, so a seeded generator gives the same noise
    whoever draws it.

    Args:
        out: The tensor to fill, shape ``(copies, *x.shape)`` (or ``x.shape``).
        x: The clean image(s), broadcast over ``out``.
        sigma: Noise standard deviation.
        generator: Where the noise comes from (``None``: torch's global generator).

    Returns:
        ``out``.

    Examples:
        >>> gen = torch.Generator().manual_seed(0)
        >>> noisy = add_noise(torch.empty(2, 3), torch.zeros(3), 0.0, gen)
        >>> noisy.tolist()
        [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    """
    return out.normal_(0.0, sigma, generator=generator).add_(x)
