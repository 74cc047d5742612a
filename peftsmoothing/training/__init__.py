"""Noise training: :class:`NoiseTrainer` and its options, :class:`TrainerConfig`.

The package's modules, each with one concern:

* :mod:`.config`: :class:`TrainerConfig`, the one declaration of every option (with the help
  text and flag that ``peftsmoothing train`` generates its command line from);
* :mod:`.loop`: :class:`NoiseTrainer` (fit, the epoch loop, the optimizer step, non-finite
  losses, the progress bar);
* :mod:`.checkpoint`: the trainer-state format, atomic writing, finding and loading
  checkpoints, ``history.jsonl``; :mod:`.rng`: the random streams saved for exact resume;
* :mod:`.distributed`: ``torchrun`` / DDP set-up, sharded loaders, collectives;
* :mod:`.evaluate`: clean and noisy accuracy; :mod:`.metrics`: the epoch's running sums;
  :mod:`.batches`: checks of the loader's batches; :mod:`.callbacks`: :class:`Callback`.

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
