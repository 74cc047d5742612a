"""Noise training: [`NoiseTrainer`][peftsmoothing.NoiseTrainer] and its options,
[`TrainerConfig`][peftsmoothing.TrainerConfig].

The package's modules, each with one concern:

* ``config``: [`TrainerConfig`][peftsmoothing.TrainerConfig], the one declaration of every option
(with the help
  text and flag that ``peftsmoothing train`` generates its command line from);
* ``loop``: [`NoiseTrainer`][peftsmoothing.NoiseTrainer] (fit, the epoch loop, the optimizer step,
non-finite
  losses, the progress bar);
* ``checkpoint``: the trainer-state format, atomic writing, finding and loading
  checkpoints, ``history.jsonl``; ``rng``: the random streams saved for exact resume;
* ``distributed``: ``torchrun`` / DDP set-up, sharded loaders, collectives;
* ``evaluate``: clean and noisy accuracy; ``metrics``: the epoch's running sums;
  ``batches``: checks of the loader's batches; ``callbacks``: [`Callback`][peftsmoothing.Callback].

Training imports only the leaf modules of the package (``losses``, ``params``, ``trainable``,
``precision``, ``seeds``, ``validation``, ``_io``), never the methods or smoothing
(docs/design.md, "Contracts").

Examples:
    >>> from peftsmoothing.training import NoiseTrainer, TrainerConfig
    >>> TrainerConfig(epochs=2).epochs
    2
"""

from __future__ import annotations

from .build import lr_factor as _lr_factor
from .callbacks import Callback
from .checkpoint import HISTORY_FILE, TRAINER_STATE_FILE
from .config import NONFINITE, OPTIMIZERS, PRECISIONS, SCHEDULES, TrainerConfig
from .loop import NoiseTrainer

__all__ = [
    "HISTORY_FILE",
    "NONFINITE",
    "OPTIMIZERS",
    "PRECISIONS",
    "SCHEDULES",
    "TRAINER_STATE_FILE",
    "Callback",
    "NoiseTrainer",
    "TrainerConfig",
]

_ = _lr_factor  # kept importable: ``from peftsmoothing.training import _lr_factor``
