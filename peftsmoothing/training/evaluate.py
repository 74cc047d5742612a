"""Clean and noisy accuracy of the trained model (what
[`NoiseTrainer.evaluate`][peftsmoothing.NoiseTrainer.evaluate] returns).

The noise of batch ``b`` on rank ``r`` is drawn from its own generator seeded with
``derive_seed(seed, "eval", r, b)``, so repeated evaluations see the same noise and the
training random state is untouched.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..core.precision import autocast
from ..core.seeds import derive_seed
from .distributed import sum_over_ranks

if TYPE_CHECKING:
    from .loop import NoiseTrainer

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(
    trainer: NoiseTrainer, loader: Iterable[Any], sigma: float | None = None
) -> dict[str, float]:
    """Clean and noisy accuracy and loss of ``trainer``'s model on ``loader``.

    Args:
        trainer: The trainer (its model, device, precision, seed and ranks).
        loader: Yields ``(images, labels)`` with images in [0, 1]; under torch.distributed a
            plain DataLoader is sharded and the results are summed over the ranks.
        sigma: Noise level; default: the largest training sigma.

    Returns:
        ``clean_acc``, ``noisy_acc``, ``clean_loss``, ``noisy_loss``, ``sigma``, ``n``.

    Raises:
        ValueError: For ``sigma < 0``.

    Examples:
        >>> import peftsmoothing as ps
        >>> from torch import nn
        >>> data = [(torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 0, 1]))]
        >>> t = ps.NoiseTrainer(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), progress=False)
        >>> evaluate(t, data, sigma=0.0)["sigma"]
        0.0
    """
    s = float(max(trainer.sigmas)) if sigma is None else float(sigma)
    if s < 0:
        raise ValueError(f"sigma must be >= 0, got {s}")
    sharded = trainer.world_size > 1 and isinstance(loader, DataLoader)
    loader = trainer._prepare_loader(loader, train=False)
    module, device = trainer.module, trainer.device
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    gen = torch.Generator(device=device)
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    try:
        for b, batch in enumerate(loader):
            x, y = trainer._prepare_batch(batch, first=b == 0)
            gen.manual_seed(derive_seed(trainer.config.seed, "eval", trainer.rank, b))
            noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            with autocast(device, trainer.config.precision):
                logits = module(torch.cat([x, noise.mul_(s).add_(x)])).float()
            clean, noisy = logits.chunk(2)
            sums += torch.stack([
                F.cross_entropy(clean, y, reduction="sum").double(),
                F.cross_entropy(noisy, y, reduction="sum").double(),
                (clean.argmax(1) == y).sum().double(),
                (noisy.argmax(1) == y).sum().double(),
                torch.tensor(float(y.shape[0]), dtype=torch.float64, device=device),
            ])
    finally:
        for m, mode in modes:
            m.training = mode
    if sharded:
        sums = sum_over_ranks(sums, trainer.topology)
    cl, nl, cc, nc, n = sums.tolist()
    n_ = max(n, 1.0)
    return {
        "clean_acc": cc / n_,
        "noisy_acc": nc / n_,
        "clean_loss": cl / n_,
        "noisy_loss": nl / n_,
        "sigma": s,
        "n": n,
    }
