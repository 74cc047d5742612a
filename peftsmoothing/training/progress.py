"""What the trainer shows: a tqdm bar during an epoch, one log line per epoch.

Only rank 0 shows anything; ``progress=False`` silences both; ``progress=None`` shows the bar
only when stderr is a terminal (the epoch lines always).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from .metrics import EpochState

__all__ = ["epoch_line", "make_bar", "set_postfix"]


def make_bar(progress: bool | None, main: bool, total: int, initial: int, desc: str) -> Any:
    """A tqdm bar over the epoch's batches, or ``None`` when none is shown.

    Examples:
        >>> make_bar(False, True, 10, 0, "epoch 1/1") is None
        True
    """
    if not main or progress is False or not (progress or sys.stderr.isatty()):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="batch", leave=True,
                dynamic_ncols=True)


def set_postfix(bar: Any, st: EpochState, elapsed: float) -> None:
    """Show the running loss, accuracy and images per second on the bar."""
    acc = float(st.correct) / st.predicted if st.predicted else float("nan")
    bar.set_postfix(loss=f"{float(st.loss) / max(1, st.losses):.4f}", acc=f"{acc:.3f}",
                    img_s=f"{st.seen / max(elapsed, 1e-9):.0f}")


def epoch_line(record: Mapping[str, Any], epochs: int) -> str:
    """The log line of an epoch's history record.

    Examples:
        >>> epoch_line({"epoch": 1, "step": 4, "train_loss": 0.5, "train_acc": None}, 2)
        'epoch 1/2  step 4  train_loss 0.5'
    """
    parts = [f"epoch {record['epoch']}/{epochs}", f"step {record['step']}"]
    for key, value in record.items():
        if key not in ("epoch", "step") and value is not None:
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return "  ".join(parts)
