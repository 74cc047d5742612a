"""Counting trainable and total parameters, per module."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ModuleCount", "ParameterReport", "parameter_report", "trained_state_dict"]


@dataclass(frozen=True)
class ModuleCount:
    """Parameter counts of one module (its own parameters, not its children's)."""

    name: str
    trainable: int
    total: int


@dataclass(frozen=True)
class ParameterReport:
    """Trainable and total parameter counts of a model, with a per-module breakdown.

    ``str(report)`` is a plain-text table;
    [`to_markdown`][peftsmoothing.ParameterReport.to_markdown] a markdown one.

    Attributes:
        trainable: Number of parameters with ``requires_grad``.
        total: Number of parameters (shared tensors counted once).
        modules: One row per module that owns trainable parameters.
    """

    trainable: int
    total: int
    modules: tuple[ModuleCount, ...]

    @property
    def fraction(self) -> float:
        """``trainable / total`` (0.0 for a model without parameters)."""
        return self.trainable / self.total if self.total else 0.0

    def summary(self) -> str:
        """One line: ``trainable 36,864 / 5,526,346 (0.667%)``."""
        return f"trainable {self.trainable:,} / {self.total:,} ({100 * self.fraction:.3g}%)"

    def _rows(self) -> list[tuple[str, str, str]]:
        return [(m.name or "(root)", f"{m.trainable:,}", f"{m.total:,}") for m in self.modules]

    def __str__(self) -> str:
        rows = [("module", "trainable", "total"), *self._rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [
            f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}" for r in rows
        ]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join([*lines, "", self.summary()])

    def to_markdown(self) -> str:
        """The per-module table and the summary as markdown."""
        lines = ["| module | trainable | total |", "|---|---:|---:|"]
        lines += [f"| `{n}` | {t} | {a} |" for n, t, a in self._rows()]
        return "\n".join([*lines, "", self.summary()])


def parameter_report(model: nn.Module) -> ParameterReport:
    """Count trainable and total parameters of ``model``, per module.

    Args:
        model: Any module (wrapped or not).

    Returns:
        A [`ParameterReport`][peftsmoothing.ParameterReport]; ``print()`` it for a table.

    Examples:
        >>> import peftsmoothing as ps
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
        >>> net[0].requires_grad_(False)  # doctest: +ELLIPSIS
        Linear(...)
        >>> r = ps.parameter_report(net)
        >>> r.trainable, r.total, [m.name for m in r.modules]
        (8, 23, ['1'])
    """
    seen: set[int] = set()  # a shared tensor counts once, in the first module that owns it
    rows: list[ModuleCount] = []
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        trainable = sum(p.numel() for p in own if p.requires_grad)
        if trainable:
            rows.append(ModuleCount(name, trainable, sum(p.numel() for p in own)))
    total = sum(p.numel() for p in model.parameters())  # each shared tensor once
    return ParameterReport(sum(m.trainable for m in rows), total, tuple(rows))


def trained_keys(model: nn.Module) -> set[str]:
    """The ``state_dict`` keys that training changes (see ``trained_state_dict``).

    Examples:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> _ = net[0].requires_grad_(False)
        >>> sorted(trained_keys(net))
        ['1.bias', '1.weight']
    """
    keys: set[str] = set()
    for prefix, module in model.named_modules():
        own = [n for n, p in module.named_parameters(prefix, recurse=False) if p.requires_grad]
        if own:
            keys.update(own, (n for n, _ in module.named_buffers(prefix, recurse=False)))
    return keys


def trained_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors that training changes, detached copies keyed as in ``model.state_dict()``.

    Trainable parameters, plus the persistent buffers of every module that owns a trainable
    parameter (e.g. the running statistics of a BatchNorm that is trained).

    Examples:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> _ = net[0].requires_grad_(False)
        >>> sorted(trained_state_dict(net))
        ['1.bias', '1.num_batches_tracked', '1.running_mean', '1.running_var', '1.weight']
    """
    state = model.state_dict()
    return {k: state[k].detach().clone() for k in sorted(trained_keys(model)) if k in state}


def freeze_frozen_batchnorm(model: nn.Module) -> None:
    """Put every BatchNorm without trainable parameters in eval mode.

    Such a BatchNorm belongs to the frozen backbone: updating its running statistics in
    training would change the backbone, which checkpoints (holding only trained tensors) do
    not save (docs/design.md, invariant 3).

    Examples:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)).train()
        >>> _ = net[1].requires_grad_(False)
        >>> freeze_frozen_batchnorm(net)
        >>> net[0].training, net[1].training
        (True, False)
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in module.parameters(recurse=False)
        ):
            module.eval()
