"""What a training run has done so far: ``TrainState``, which checkpoints save and restore."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .metrics import EpochState

__all__ = ["TrainState"]


@dataclass
class TrainState:
    """The counters, history and position inside an epoch of a training run.

    ``NoiseTrainer`` updates it; ``training/checkpoint.py`` saves and restores it, so no module
    reads the trainer's own attributes to checkpoint it.

    Attributes:
        epoch: Completed epochs.
        step: Optimizer steps taken.
        history: One record per completed epoch.
        best: The monitored metric's best value so far (``metric``, ``value``, ``epoch``).
        batches_done: Batches of the current epoch already trained (0 at an epoch boundary).
        epoch_sums: The current epoch's partial sums, or ``None`` at an epoch boundary.
        boundary_rng: The RNG streams after the last optimizer step (an interrupt saves them).
        epoch_start_rng: The RNG streams at the start of the current epoch.
        updating: An optimizer step is running (an interrupt then writes no checkpoint).
        interrupted: Ctrl-C was pressed once: finish the step, checkpoint and stop.

    Examples:
        >>> state = TrainState()
        >>> state.epoch, state.step, state.batches_done
        (0, 0, 0)
    """

    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    batches_done: int = 0
    epoch_sums: EpochState | None = None
    boundary_rng: dict[str, Any] | None = None
    epoch_start_rng: dict[str, Any] | None = None
    updating: bool = False
    interrupted: bool = False

    def end_epoch(self, record: dict[str, Any]) -> None:
        """Record a completed epoch and move to the next one's start."""
        self.history.append(record)
        self.epoch += 1
        self.batches_done = 0
        self.epoch_sums = self.epoch_start_rng = None
