"""What the trainer builds from its options: the optimizer, the LR schedule, the reference.

The optimizer holds only the trained parameters (docs/design.md, invariant 3: the frozen
backbone gets no optimizer state).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from ..core.trainable import Trainable
from .config import TrainerConfig

__all__ = ["OptimizerFactory", "lr_factor", "make_optimizer", "make_reference", "make_scheduler"]

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


def make_optimizer(
    config: TrainerConfig, params: list[nn.Parameter], factory: OptimizerFactory | None = None
) -> torch.optim.Optimizer:
    """``factory(params)``, or the optimizer ``config.optimizer`` names (SGD: momentum 0.9).

    Raises:
        TypeError: A factory that does not return a ``torch.optim.Optimizer``.

    Examples:
        >>> make_optimizer(TrainerConfig(optimizer="sgd"), list(nn.Linear(2, 2).parameters()))
        ... # doctest: +ELLIPSIS
        SGD (...
    """
    if factory is not None:
        opt = factory(params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError("the optimizer factory must return a torch.optim.Optimizer")
        return opt
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    adam = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return adam(params, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(schedule: str, step: int, warmup: int, total: int) -> float:
    """The learning-rate multiplier at optimizer step ``step`` (linear warmup, then decay).

    Args:
        schedule: ``"cosine"``, ``"linear"`` (to 0) or ``"constant"``.
        step: Optimizer steps taken so far.
        warmup: Steps of linear warmup.
        total: Total optimizer steps of the run.

    Returns:
        The factor applied to the peak learning rate.

    Examples:
        >>> lr_factor("cosine", 5, 0, 10), lr_factor("constant", 0, 3, 10)
        (0.5, 0.25)
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainerConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The warmup + ``config.schedule`` learning-rate schedule over ``total_steps`` steps.

    Examples:
        >>> opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
        >>> make_scheduler(opt, TrainerConfig(warmup_steps=1), 10).get_last_lr()
        [0.5]
    """
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(config.schedule, s, config.warmup_steps, total_steps))


def make_reference(
    module: nn.Module, reference: nn.Module | None, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The frozen classifier of losses that need one (``stability``).

    ``reference`` if given; for a ``Trainable`` with a pixel-space
    module (a denoiser), the model without it; otherwise a frozen copy of ``module`` as it is.

    Examples:
        >>> ref = make_reference(nn.Linear(2, 2), None, torch.device("cpu"))
        >>> ref.training, any(p.requires_grad for p in ref.parameters())
        (False, False)
    """
    if reference is None and isinstance(module, Trainable):
        # A denoiser in front of a frozen classifier: the classifier alone (with the
        # wrapper's resize and normalization) is the reference.
        frozen = module.frozen_reference()
        if frozen is not None:
            return frozen
    ref = reference.to(device) if reference is not None else copy.deepcopy(module)
    return ref.eval().requires_grad_(False)
