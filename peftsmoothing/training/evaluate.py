"""Clean and noisy accuracy of the trained model (what
[`NoiseTrainer.evaluate`][peftsmoothing.NoiseTrainer.evaluate] returns).

The noise of batch ``b`` on rank ``r`` is drawn from its own generator seeded with
``derive_seed(seed, "eval", r, b)``, so repeated evaluations see the same noise and the
training random state is untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.noise import add_noise
from ..core.precision import autocast, eval_mode
from ..core.seeds import derive_seed
from ..core.validation import check_real
from .distributed import Topology, sum_over_ranks

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(
    module: nn.Module, loader: Iterable[Any], *, sigma: float,
    prepare_batch: Callable[..., tuple[torch.Tensor, torch.Tensor]], precision: str = "fp32",
    seed: int = 0, rank: int = 0, topology: Topology | None = None,
) -> dict[str, float]:
    """Clean and noisy accuracy and loss of ``module`` on ``loader``.

    Args:
        module: The model (images in [0, 1] in, logits out); put in eval mode while it runs.
        loader: Yields batches that ``prepare_batch`` turns into ``(images, labels)`` on the
            model's device; under torch.distributed, this rank's shard (the results are summed
            over the ranks).
        sigma: Noise level, >= 0.
        prepare_batch: ``prepare_batch(batch, first=...)``: the trainer's batch checks.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast.
        seed: The noise of batch ``b`` on rank ``r`` is seeded ``(seed, "eval", r, b)``.
        rank: This process's rank.
        topology: Sum the results over this process group (the loader is this rank's
            shard); ``None``: no sum.

    Returns:
        ``clean_acc``, ``noisy_acc``, ``clean_loss``, ``noisy_loss``, ``sigma``, ``n``.

    Raises:
        ValueError: For a sigma that is not a finite number >= 0.

    Examples:
        >>> from torch import nn
        >>> data = [(torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 0, 1]))]
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
        >>> evaluate(model, data, sigma=0.0, prepare_batch=lambda b, first: b)["n"]
        4.0
    """
    s = check_real(sigma, "sigma", low=0)
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    gen = torch.Generator(device=device)
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    with eval_mode(module):
        for b, batch in enumerate(loader):
            x, y = prepare_batch(batch, first=b == 0)
            gen.manual_seed(derive_seed(seed, "eval", rank, b))
            noisy = add_noise(torch.empty_like(x), x, s, gen)
            with autocast(device, precision):
                logits = module(torch.cat([x, noisy])).float()
            pair = logits.chunk(2)  # clean, noisy
            sums += torch.stack([
                *(F.cross_entropy(z, y, reduction="sum").double() for z in pair),
                *((z.argmax(1) == y).sum().double() for z in pair),
                torch.tensor(float(y.shape[0]), dtype=torch.float64, device=device),
            ])
    if topology is not None:
        sums = sum_over_ranks(sums, topology)
    *totals, n = sums.tolist()
    clean_loss, noisy_loss, clean_acc, noisy_acc = (total / max(n, 1.0) for total in totals)
    return {"clean_acc": clean_acc, "noisy_acc": noisy_acc, "clean_loss": clean_loss,
            "noisy_loss": noisy_loss, "sigma": s, "n": n}
