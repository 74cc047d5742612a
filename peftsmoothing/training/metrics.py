"""Running sums of a training epoch and the history record made from them.

Sums stay on the device (no host synchronisation per batch); the batches of an optimizer step
are folded in only when the step is taken, so a skipped non-finite step leaves no trace.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch

from .distributed import Topology, sum_over_ranks
from .losses import LossOutput

__all__ = ["EpochState", "epoch_record"]

BatchSums = tuple[torch.Tensor, torch.Tensor, int, int, dict[str, torch.Tensor]]


class EpochState:
    """Running sums of one epoch, and the batches of the current optimizer step (``pending``,
    with a device flag ``bad`` that says whether a loss among them was non-finite), folded in
    when the step ends.

    Examples:
        >>> from peftsmoothing.training.losses import LossOutput
        >>> st = EpochState(torch.device("cpu"))
        >>> logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> st.add(LossOutput(torch.tensor(0.5), logits), torch.tensor([0, 0]), 2)
        >>> st.end_step(dropped=False)
        >>> float(st.correct), st.predicted, st.seen, st.pending
        (1.0, 2, 2, [])
        >>> EpochState.from_dict(st.to_dict(), torch.device("cpu")).seen
        2
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.loss = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.float64)
        self.predicted = 0  # predictions counted for accuracy
        self.seen = 0  # images
        self.losses = 0  # batches
        self.terms: dict[str, torch.Tensor] = {}
        self.elapsed = 0.0
        self.nonfinite_steps = 0  # optimizer steps dropped for a non-finite loss
        self.pending: list[BatchSums] = []  # the current step's batches (never saved)
        self.bad = torch.zeros((), dtype=torch.bool, device=device)

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers (stored in an interrupt checkpoint as ``partial_epoch``)."""
        return {
            "loss": float(self.loss), "correct": float(self.correct), "predicted": self.predicted,
            "seen": self.seen, "losses": self.losses,
            "terms": {k: float(v) for k, v in self.terms.items()},
            "elapsed": self.elapsed, "nonfinite_steps": self.nonfinite_steps,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], device: torch.device) -> EpochState:
        """The state ``to_dict`` wrote (``nonfinite_steps`` 0 in 0.1 checkpoints)."""
        st = cls(device)
        st.loss += float(d["loss"])
        st.correct += float(d["correct"])
        st.predicted, st.seen, st.losses = int(d["predicted"]), int(d["seen"]), int(d["losses"])
        st.terms = {k: torch.tensor(float(v), device=device, dtype=torch.float64)
                    for k, v in d["terms"].items()}
        st.elapsed = float(d["elapsed"])
        st.nonfinite_steps = int(d.get("nonfinite_steps", 0))
        return st

    def add(self, out: LossOutput, y: torch.Tensor, batch: int) -> None:
        """Record a batch of ``batch`` images of the current step: its loss, correct
        predictions (when the loss returns logits), counts and terms; no host synchronisation."""
        loss = out.loss.detach()
        self.bad |= ~torch.isfinite(loss).all()
        logits = out.logits
        if logits is not None and logits.ndim == 2 and logits.shape[0] % batch == 0:
            labels = y.repeat(logits.shape[0] // batch)
            correct = (logits.detach().argmax(dim=1) == labels).sum().to(torch.float64)
            predicted = logits.shape[0]
        else:  # no logits: no prediction (a zero made only then, not on every batch)
            correct, predicted = torch.zeros_like(self.correct), 0
        terms = {k: v.detach().to(torch.float64) for k, v in out.terms.items()}
        self.pending.append((loss.to(torch.float64), correct, predicted, batch, terms))

    def end_step(self, *, dropped: bool) -> None:
        """Add the step's batches to the sums (a ``dropped`` step: count it instead)."""
        if dropped:
            self.nonfinite_steps += 1
            self.pending.clear()
        for loss, correct, predicted, seen, terms in self.pending:
            self.loss += loss
            self.correct += correct
            self.predicted += predicted
            self.seen += seen
            self.losses += 1
            for k, v in terms.items():
                self.terms[k] = self.terms.get(k, 0) + v  # float64 since ``add``
        self.pending.clear()
        self.bad.zero_()


def epoch_record(
    st: EpochState, *, epoch: int, step: int, lr: float, topology: Topology
) -> dict[str, Any]:
    """The history record of a finished epoch (``epoch`` counted from 1), summed over ranks.

    Examples:
        >>> st = EpochState(torch.device("cpu"))
        >>> epoch_record(st, epoch=1, step=0, lr=0.1, topology=Topology())["train_acc"] is None
        True
    """
    d = st.to_dict()  # its sums, counts and terms (as train_<name>) summed over the ranks
    sums = {k: d[k] for k in ("loss", "correct", "predicted", "seen", "losses")}
    sums.update((f"train_{k}", d["terms"][k]) for k in sorted(d["terms"]))
    values = torch.tensor(list(sums.values()), dtype=torch.float64, device=st.device)
    s = dict(zip(sums, sum_over_ranks(values, topology).tolist(), strict=True))
    losses = max(1, s["losses"])
    record: dict[str, Any] = {
        "epoch": epoch, "step": step, "lr": lr, "train_loss": s["loss"] / losses,
        "train_acc": s["correct"] / s["predicted"] if s["predicted"] else None,
        **{k: v / losses for k, v in s.items() if k.startswith("train_")},
    }
    if st.nonfinite_steps:
        record["nonfinite_steps"] = st.nonfinite_steps
        warnings.warn(f"epoch {epoch}: skipped {st.nonfinite_steps} optimizer step(s) with a "
                      "non-finite loss, gradient or trained buffer (nonfinite='skip')",
                      RuntimeWarning, stacklevel=3)
    record["images"] = int(s["seen"])
    record["images_per_s"] = s["seen"] / st.elapsed if st.elapsed > 0 else None
    record["time_s"] = st.elapsed
    return record
