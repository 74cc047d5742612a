"""What the trainer does about nan and inf: the trained buffers of an optimizer step.

A step is non-finite when a loss of its batches, a gradient (without a GradScaler, which skips
steps with inf gradients itself) or a trained buffer holds nan or inf, on any rank. Its forward
passes have already updated the trained buffers (the running statistics of a trained BatchNorm):
a nan image makes them nan, and the model then answers nan on every input. So
``TrainedBuffers`` copies them at the start of each optimizer step and puts them back when the
step is dropped (``nonfinite="skip"``) or training stops (``"stop"``): the model and its
checkpoints stay those of the last finite step. A GradScaler's own skip (inf gradients of a
finite fp16 forward) keeps them: that forward was finite.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.params import trained_keys
from .distributed import Topology, any_rank

__all__ = ["NonfiniteGuard", "TrainedBuffers", "nonfinite_gradients"]


def nonfinite_gradients(params: list[nn.Parameter]) -> torch.Tensor:
    """A device-side flag: does any gradient hold nan or inf? (No host synchronisation.)

    Examples:
        >>> import torch
        >>> p = torch.nn.Parameter(torch.ones(2)); p.grad = torch.tensor([1.0, float("nan")])
        >>> bool(nonfinite_gradients([p]))
        True
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), dtype=torch.bool)
    return ~torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()


class TrainedBuffers:
    """The buffers a checkpoint saves with the trained parameters, and a copy to restore.

    They are the persistent buffers of the modules that own a trained parameter (as in
    ``params.trained_state_dict``); only their floating-point ones can hold nan or inf. The
    copy is made with the object: nothing for methods whose trained modules have no buffers
    (LoRA, prompts, adapters), a few vectors per trained BatchNorm otherwise.

    Examples:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> buffers = TrainedBuffers(net)
        >>> _ = net(torch.tensor([[0.0, 1.0], [float("nan"), 2.0]]))
        >>> bool(buffers.nonfinite()), buffers.first_nonfinite()
        (True, '1.running_mean')
        >>> buffers.restore()
        >>> bool(buffers.nonfinite()), int(net[1].num_batches_tracked)
        (False, 0)
    """

    def __init__(self, module: nn.Module) -> None:
        keys = trained_keys(module)
        saved = module.state_dict().keys()  # persistent buffers only (no tensor is copied)
        self.named = [(k, b) for k, b in module.named_buffers() if k in keys and k in saved]
        self._floating = [(k, b) for k, b in self.named if b.is_floating_point()]
        self._copy = [b.detach().clone() for _, b in self.named]

    def snapshot(self) -> None:
        """Copy the buffers' current values again (the start of an optimizer step)."""
        with torch.no_grad():
            for copy, (_, b) in zip(self._copy, self.named, strict=True):
                copy.copy_(b)

    def restore(self) -> None:
        """Put back the values of the last ``snapshot`` (or of the object's making)."""
        with torch.no_grad():
            for copy, (_, b) in zip(self._copy, self.named, strict=True):
                b.copy_(copy)

    def nonfinite(self) -> torch.Tensor:
        """A device-side flag: does a floating-point buffer hold nan or inf? (No host sync.)"""
        if not self._floating:
            return torch.zeros((), dtype=torch.bool)
        flat = torch.cat([b.detach().reshape(-1) for _, b in self._floating])
        return ~torch.isfinite(flat).all()

    def first_nonfinite(self) -> str | None:
        """The name of the first buffer that holds nan or inf, or ``None`` (one host sync each)."""
        return next((k for k, b in self._floating if not bool(torch.isfinite(b).all())), None)


class NonfiniteGuard:
    """The non-finite check that ends every optimizer step, and what ``nonfinite`` does then.

    Args:
        module: The trained model (not its DDP wrapper).
        params: Its trained parameters, whose gradients are checked.
        policy: ``"stop"`` or ``"skip"`` (``TrainerConfig.nonfinite``).
        topology: The ranks that decide together.
        check_gradients: Check the gradients (``False`` with a GradScaler, which skips steps
            with inf gradients itself).

    Examples:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> guard = NonfiniteGuard(net, list(net.parameters()), "skip", Topology(),
        ...                        check_gradients=True)
        >>> guard.start()
        >>> _ = net(torch.tensor([[0.0, 1.0], [float("nan"), 2.0]]))
        >>> guard.dropped(torch.tensor(False), epoch=1, batch=1)
        True
        >>> bool(torch.isfinite(net[1].running_mean).all())
        True
    """

    def __init__(self, module: nn.Module, params: list[nn.Parameter], policy: str,
                 topology: Topology, *, check_gradients: bool) -> None:
        self.module, self.params, self.policy = module, params, policy
        self.topology, self.check_gradients = topology, check_gradients
        self.buffers = TrainedBuffers(module)

    def start(self) -> None:
        """At the start of an epoch (or of a resumed one): copy the trained buffers as they are."""
        self.buffers = TrainedBuffers(self.module)  # the module's buffers now, after any .to()

    def dropped(self, bad: torch.Tensor, *, epoch: int, batch: int) -> bool:
        """Whether the step ending at ``batch`` is dropped; one host synchronisation.

        The step is non-finite when ``bad`` (a device flag: a non-finite loss) is set, a trained
        buffer or (with ``check_gradients``) a gradient holds nan or inf, on any rank. Its
        buffers are then put back as they were before it; otherwise they are copied, for the
        next step.

        Args:
            bad: Whether a loss of the step was non-finite (on this rank).
            epoch: The epoch, 1-based (for the error).
            batch: The batch that ends the step, 1-based (for the error).

        Returns:
            ``True`` when the step is non-finite and ``policy`` is ``"skip"``.

        Raises:
            FloatingPointError: A non-finite step with ``policy="stop"``, before the step.
        """
        if self.check_gradients:
            bad = bad | nonfinite_gradients(self.params)
        if not any_rank(bad | self.buffers.nonfinite(), self.topology):
            self.buffers.snapshot()  # the forward passes are done: the next step starts here
            return False
        # a trained buffer that went non-finite while the loss and the gradients stayed finite
        buffer = None if bool(bad) else self.buffers.first_nonfinite()
        self.buffers.restore()  # the step's forward passes leave no trace
        if self.policy == "skip":
            return True
        what = f"trained buffer {buffer}" if buffer is not None else "loss or gradient"
        raise FloatingPointError(
            f"non-finite {what} at epoch {epoch}, batch {batch}: training stopped before this "
            "step, so the weights, the trained buffers and the last checkpoint are the last "
            "finite ones; lower lr, clip gradients, use bf16 not fp16, check the data for "
            "nan/inf, or nonfinite='skip'"
        )
