"""Training callbacks: hooks the trainer calls at the start and end of fits, steps and epochs."""

from __future__ import annotations

from typing import Any

__all__ = ["Callback", "call_hook"]


class Callback:
    """Base class for training callbacks; override the hooks you need.

    Each hook gets the [`NoiseTrainer`][peftsmoothing.NoiseTrainer]. A callback may set
    ``trainer.should_stop = True``: training then stops after the current
    optimizer step, writes a checkpoint (when ``checkpoint_dir`` is set) and ``fit`` returns;
    ``fit(..., resume=True)`` continues from there.

    Examples:
        >>> class StopAfter(Callback):
        ...     def __init__(self, steps):
        ...         self.steps = steps
        ...     def on_step_end(self, trainer):
        ...         if trainer.step >= self.steps:
        ...             trainer.should_stop = True
    """

    def on_fit_start(self, trainer: Any) -> None:
        """Called once when ``fit`` starts (after resuming)."""

    def on_step_end(self, trainer: Any) -> None:
        """Called after every optimizer step (``trainer.step`` counts them)."""

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        """Called with the epoch's history record."""

    def on_fit_end(self, trainer: Any, history: list[dict[str, Any]]) -> None:
        """Called once when ``fit`` returns normally."""


def call_hook(callbacks: list[Any], hook: str, *args: Any) -> None:
    """Call ``hook(*args)`` on every callback that has it (any object, not only a
    [`Callback`][peftsmoothing.Callback]).

    Examples:
        >>> class Printer:
        ...     def on_fit_start(self, trainer):
        ...         print("start", trainer)
        >>> call_hook([Printer(), object()], "on_fit_start", "t")
        start t
    """
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if callable(fn):
            fn(*args)
