"""peftsmoothing-bitfit: BitFit (Ben Zaken, Ravfogel & Goldberg, 2022) as a peftsmoothing method.

What it shows: a complete third-party PEFT method in one file. It is registered only through the
``peftsmoothing.methods`` entry point declared in ``pyproject.toml`` (``bitfit =
"peftsmoothing_bitfit:BitFit"``); peftsmoothing imports this module the first time a method name
is looked up, so users never import it themselves.
How long it takes: ``pip install -e examples/custom_method_plugin`` takes a few seconds, after
which ``ps.wrap(model, method="bitfit")`` works.

BitFit trains only the bias terms of the frozen model (plus the classification head when
``wrap(..., num_classes=...)`` resets it). It adds no module, so the wrapped model costs exactly
what the base model costs, and there is nothing to merge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

import peftsmoothing as ps

__all__ = ["BitFit", "BitFitConfig"]
__version__ = "0.1.0"


@dataclass(frozen=True)
class BitFitConfig(ps.MethodConfig):
    r"""Options of the ``bitfit`` method (``ps.wrap(model, method="bitfit", **options)``).

    Attributes:
        pattern: Regular expression; only biases whose qualified parameter name matches it
            (``re.search``, e.g. ``r"blocks\.(10|11)\."``) are trained. ``None``: every bias.
    """

    pattern: str | None = None

    def __post_init__(self) -> None:
        # Validate eagerly, with a message that names the option (the peftsmoothing convention).
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as err:
                raise ValueError(f"bitfit: pattern is not a valid regex: {err}") from None


class BitFit(ps.Method[BitFitConfig]):
    """Train only the bias terms of the frozen model.

    Examples:
        >>> import peftsmoothing as ps
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> m = ps.wrap(net, method="bitfit", normalize=None)
        >>> [name for name, _ in m.named_trainable_parameters()]
        ['model.0.bias', 'model.2.bias']
    """

    # Shown by `peftsmoothing methods`.
    description = "BitFit: train only the bias terms"
    Config = BitFitConfig

    def apply(self, model: nn.Module, context: ps.MethodContext) -> None:
        """Unfreeze the selected biases; ``wrap`` has already frozen everything else."""
        cfg = self.config  # a BitFitConfig (ps.Method[BitFitConfig])
        found = 0
        for name, p in model.named_parameters():
            if not name.rsplit(".", 1)[-1].endswith("bias"):
                continue
            if cfg.pattern is not None and not re.search(cfg.pattern, name):
                continue
            p.requires_grad_(True)
            found += 1
        if not found:
            where = "" if cfg.pattern is None else f" matching {cfg.pattern!r}"
            raise ValueError(f"bitfit: the model has no bias parameter{where}")
