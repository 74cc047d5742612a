"""Noise training: [`NoiseTrainer`][peftsmoothing.NoiseTrainer] and its options,
[`TrainerConfig`][peftsmoothing.TrainerConfig].

The package's modules, each with one concern:

* ``config``: [`TrainerConfig`][peftsmoothing.TrainerConfig], the one declaration of every
  option (the help text and flag ``peftsmoothing train`` builds its command line from, and
  ``NoiseTrainer``'s signature); importing it needs no torch;
* ``loop``: [`NoiseTrainer`][peftsmoothing.NoiseTrainer] (fit, the epoch loop, the optimizer
  step); ``state``: ``TrainState``, what a run has done (what checkpoints save);
* ``checkpoint``: the trainer-state format, atomic writing, finding and loading checkpoints,
  ``history.jsonl``; ``rng``: the random streams saved for exact resume;
* ``nonfinite``: what nan/inf losses, gradients and buffers do; ``noise``: the training noise;
* ``distributed``: ``torchrun`` / DDP set-up, sharded loaders, collectives;
* ``evaluate``: clean and noisy accuracy; ``metrics``: the epoch's running sums;
  ``batches``: checks of the loader's batches; ``callbacks``: [`Callback`][peftsmoothing.Callback];
  ``losses``: the training losses and their registry.

Training imports ``core/`` and, for checkpoints, the save format (``model/serialization.py``,
``model/tensorfile.py``); never the methods, ``wrap``/``load`` or certification
(docs/design.md, "Allowed import directions").

Examples:
    >>> from peftsmoothing.training import NoiseTrainer, TrainerConfig
    >>> TrainerConfig(epochs=2).epochs
    2
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .callbacks import Callback
    from .checkpoint import HISTORY_FILE, TRAINER_STATE_FILE
    from .config import NONFINITE, OPTIMIZERS, PRECISIONS, SCHEDULES, TrainerConfig
    from .loop import NoiseTrainer

__all__ = [
    "HISTORY_FILE", "NONFINITE", "OPTIMIZERS", "PRECISIONS", "SCHEDULES", "TRAINER_STATE_FILE",
    "Callback", "NoiseTrainer", "TrainerConfig",
]

#: The module of each name; imported on first use (PEP 562), so that ``training.config`` (the
#: options, torch-free) can be imported without the trainer (torch).
_LAZY: dict[str, str] = {
    **dict.fromkeys(["NONFINITE", "OPTIMIZERS", "PRECISIONS", "SCHEDULES", "TrainerConfig"],
                    ".config"),
    **dict.fromkeys(["HISTORY_FILE", "TRAINER_STATE_FILE"], ".checkpoint"),
    "Callback": ".callbacks",
    "NoiseTrainer": ".loop",
}


def __getattr__(name: str) -> Any:
    """Import the module of ``name`` on first access (PEP 562).

    Raises:
        AttributeError: For a name this package does not have.

    Examples:
        >>> from peftsmoothing.training import TrainerConfig
        >>> TrainerConfig().epochs
        10
    """
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value
