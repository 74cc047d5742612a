"""The trainer's checkpoints: ``last/``, ``best/`` and ``history.jsonl`` in ``checkpoint_dir``.

A checkpoint directory holds the trained tensors (written by the model's own ``save`` when it
is ``peftsmoothing.core.trainable.Trainable``, else ``trainable.safetensors``; release 0.1's
``trainable.pt`` is still read) and
``trainer_state.pt``: optimizer, scheduler, scaler, RNG states, history and config, tensors and
plain types only (``torch.load(weights_only=True)``). A directory is written next to its final
place and swapped in, so a crash leaves the previous checkpoint intact. Only rank 0 writes.
The format is that of release 0.1 (version 1): those checkpoints still resume.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..core.files import atomic_save, clean_stale_temporaries, fsync_dir, temporary_prefix
from ..core.params import trained_state_dict
from ..core.trainable import Trainable
from ..model.serialization import TENSORS_FILE, read_tensors, write_tensors
from .config import TrainerConfig
from .distributed import Topology, all_gather_objects, barrier
from .metrics import EpochState
from .nonfinite import TrainedBuffers
from .rng import rng_state, seed_everything, set_rng_state
from .state import TrainState

__all__ = [
    "HISTORY_FILE",
    "TENSORS_FILE",
    "TRAINER_STATE_FILE",
    "check_finite_weights",
    "find_checkpoint",
    "load_checkpoint",
    "restore_rng",
    "save_epoch",
    "save_interrupt",
    "sigint_guard",
    "write_history",
]

class Checkpointed(Protocol):
    """What checkpointing uses of a trainer (``NoiseTrainer`` is one): its public parts and
    its ``TrainState``."""

    state: TrainState
    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR | None
    scaler: torch.amp.GradScaler | None
    config: TrainerConfig
    checkpoint_dir: Path | None
    metadata: dict[str, Any]
    topology: Topology
    device: torch.device
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool: ...


TRAINER_STATE_FILE = "trainer_state.pt"
HISTORY_FILE = "history.jsonl"
_STATE_FORMAT = "peftsmoothing-trainer-state"
_STATE_VERSION = 1


def _swap_dir(tmp: Path, final: Path) -> None:
    """Replace directory ``final`` by ``tmp``; a crash in between leaves ``.<name>.old``."""
    old = final.parent / f".{final.name}.old"
    if old.exists() and not final.exists():
        os.replace(old, final)  # the only good copy a crash left: keep it until tmp is in place
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(
    resume: bool | str | os.PathLike[str], checkpoint_dir: Path | None, *, quiet: bool
) -> Path | None:
    """The checkpoint ``fit(resume=...)`` continues from, or ``None`` to start fresh.

    Args:
        resume: ``True``: ``checkpoint_dir/last`` (or the ``.last.old`` a crash left) if it
            exists; a path: that checkpoint directory, which must exist.
        checkpoint_dir: The trainer's checkpoint directory.
        quiet: Do not print the "starting from scratch" note.

    Raises:
        ValueError: ``resume=True`` without a checkpoint directory.
        FileNotFoundError: A path that is not a trainer checkpoint.

    Examples:
        >>> import tempfile
        >>> find_checkpoint(True, Path(tempfile.mkdtemp()), quiet=True) is None
        True
    """
    if resume is True:
        if checkpoint_dir is None:
            raise ValueError("resume=True needs checkpoint_dir")
        for name in ("last", ".last.old"):
            p = checkpoint_dir / name
            if (p / TRAINER_STATE_FILE).is_file():
                return p
        if not quiet:
            # the normal first run of a resumable script: a note, not a warning
            print(f"no checkpoint in {checkpoint_dir / 'last'} yet: starting from "
                  "scratch", file=sys.stderr)
        return None
    p = Path(resume)  # type: ignore[arg-type]
    if not (p / TRAINER_STATE_FILE).is_file():
        raise FileNotFoundError(f"{p} is not a NoiseTrainer checkpoint ({TRAINER_STATE_FILE})")
    return p


def prepare_dir(checkpoint_dir: Path) -> None:
    """Check before any training that checkpoints can be written to ``checkpoint_dir``, and
    remove the temporary files that killed runs left there (a live run's stay).

    Raises:
        ValueError: If it is a file, or cannot be created or written (one line, naming it).

    Examples:
        >>> import tempfile
        >>> prepare_dir(Path(tempfile.mkdtemp()) / "checkpoints")
    """
    try:
        if checkpoint_dir.exists() and not checkpoint_dir.is_dir():
            raise ValueError(f"checkpoint directory {checkpoint_dir} is a file")
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=checkpoint_dir, prefix=temporary_prefix("probe"),
                                     suffix=".tmp")  # fmt: skip
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(
            f"cannot write checkpoints to {checkpoint_dir}: {err.strerror or err}"
        ) from None
    clean_stale_temporaries(checkpoint_dir, folders=True)


def _read(
    path: Path, device: torch.device, expected: Mapping[str, torch.Tensor]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The trainer state and trained tensors (exactly ``expected``'s, see
    ``serialization.read_tensors``) of checkpoint ``path``, or a one-line error."""
    file = path / TRAINER_STATE_FILE
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{file} is missing") from None
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise ValueError(f"{file} is corrupt or truncated ({type(err).__name__})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{file} is corrupt: it holds a {type(state).__name__}")
    if state.get("format") != _STATE_FORMAT:
        raise ValueError(f"{file} is not a NoiseTrainer state")
    try:
        return state, read_tensors(path, device, expected)
    except FileNotFoundError:
        raise ValueError(f"{path / TENSORS_FILE} is missing") from None


def resume(
    trainer: Checkpointed, resume: bool | str | os.PathLike[str], *, quiet: bool
) -> dict[str, Any] | None:
    """Load the checkpoint ``fit(resume=...)`` continues from; ``None`` to start fresh.

    With ``resume=True`` a corrupt ``last`` checkpoint (a file truncated by a full disk, say)
    falls back to ``best`` with a warning; if both are unreadable the error names both.

    Raises:
        ValueError: No readable checkpoint where one must be, or one that does not fit.
    """
    path = find_checkpoint(resume, trainer.checkpoint_dir, quiet=quiet)
    if path is None:
        return None
    try:
        return load_checkpoint(trainer, path)
    except _Unreadable as err:
        best = path.parent / "best"
        if resume is not True or not (best / TRAINER_STATE_FILE).is_file():
            raise ValueError(str(err)) from None
        try:
            state = load_checkpoint(trainer, best)
        except _Unreadable as err2:
            raise ValueError(f"no readable checkpoint: {err}; and {err2}") from None
        warnings.warn(f"{err}; resuming from {best} instead", UserWarning, stacklevel=3)
        return state


class _Unreadable(ValueError):
    """A checkpoint file that cannot be read (as opposed to one that does not fit)."""


def _trainer_state(
    trainer: Checkpointed, *, rng: list[Any], epoch_start_rng: Any, partial: Any
) -> dict[str, Any]:
    assert trainer.scheduler is not None
    return {
        "format": _STATE_FORMAT,
        "format_version": _STATE_VERSION,
        "epochs_done": trainer.state.epoch,
        "batches_done": trainer.state.batches_done,
        "step": trainer.state.step,
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "rng": rng,
        "epoch_start_rng": epoch_start_rng,
        "partial_epoch": partial,
        "history": trainer.state.history,
        "best": trainer.state.best,
        "config": trainer.config.to_dict(),
        "world_size": trainer.world_size,
    }


def _write(trainer: Checkpointed, name: str, state: Mapping[str, Any]) -> Path:
    assert trainer.checkpoint_dir is not None
    root = trainer.checkpoint_dir
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=temporary_prefix(name), suffix=".tmp"))
    try:
        meta = dict(trainer.metadata)
        meta["training"] = {
            "epochs_done": trainer.state.epoch,
            "step": trainer.state.step,
            "sigma": trainer.config.to_dict()["sigma"],
            "loss": trainer.config.loss,
            "last": trainer.state.history[-1] if trainer.state.history else None,
            "config": trainer.config.to_dict(),  # the whole recipe, for the card
        }
        if isinstance(trainer.module, Trainable):
            trainer.module.save(tmp, metadata=meta)
        else:
            write_tensors(tmp, trained_state_dict(trainer.module))
        atomic_save(dict(state), tmp / TRAINER_STATE_FILE)
        fsync_dir(tmp)
        _swap_dir(tmp, root / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root / name


def write_history(checkpoint_dir: Path, history: list[dict[str, Any]]) -> None:
    """Write ``history.jsonl`` (one JSON record per epoch) atomically.

    Examples:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()); write_history(d, [{"epoch": 1}])
        >>> (d / HISTORY_FILE).read_text()
        '{"epoch": 1}\\n'
    """
    text = "".join(json.dumps(r) + "\n" for r in history)
    atomic_save(text.encode(), checkpoint_dir / HISTORY_FILE)


def _update_best(trainer: Checkpointed, record: Mapping[str, Any]) -> bool:
    key = trainer.config.monitor or ("val_noisy_acc" if "val_noisy_acc" in record else "train_acc")
    value = record.get(key)
    if value is None:
        return False
    minimise = "loss" in key
    best = trainer.state.best
    if best is None or (value < best["value"] if minimise else value > best["value"]):
        trainer.state.best = {"metric": key, "value": float(value), "epoch": record["epoch"]}
        return True
    return False


def check_finite_weights(module: nn.Module, epoch: int) -> None:
    """Refuse to checkpoint weights that are not finite: the trained parameters and the
    buffers saved with them (the running statistics of a trained BatchNorm).

    Raises:
        FloatingPointError: Naming the first non-finite trained tensor.

    Examples:
        >>> check_finite_weights(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), epoch=1)
    """
    for name, p in module.named_parameters():
        if p.requires_grad and not bool(torch.isfinite(p).all()):
            raise FloatingPointError(
                f"the trained parameter {name} holds nan or inf after epoch {epoch}: "
                "not saved, so the last checkpoint stays the last finite one"
            )
    buffer = TrainedBuffers(module).first_nonfinite()
    if buffer is not None:
        raise FloatingPointError(
            f"the trained buffer {buffer} holds nan or inf after epoch {epoch}: "
            "not saved, so the last checkpoint stays the last finite one"
        )


def save_epoch(trainer: Checkpointed, loader: Any, record: Mapping[str, Any]) -> None:
    """End-of-epoch checkpoint: ``last/``, ``best/`` when the monitored value improved, and
    the history; a collective call (every rank gathers its RNG state to rank 0)."""
    check_finite_weights(trainer.module, trainer.state.epoch)
    gather = trainer.checkpoint_dir is not None  # the same on every rank: a collective or none
    rng = all_gather_objects(rng_state(loader), trainer.topology) if gather else []
    improved = _update_best(trainer, record)
    if trainer.checkpoint_dir is None or not trainer.is_main:
        barrier(trainer.topology)
        return
    state = _trainer_state(trainer, rng=rng, epoch_start_rng=None, partial=None)
    last = _write(trainer, "last", state)
    if improved:
        tmp = Path(tempfile.mkdtemp(dir=trainer.checkpoint_dir, prefix=temporary_prefix("best"),
                                    suffix=".tmp"))  # fmt: skip
        shutil.rmtree(tmp)
        shutil.copytree(last, tmp)
        _swap_dir(tmp, trainer.checkpoint_dir / "best")
    write_history(trainer.checkpoint_dir, trainer.state.history)
    barrier(trainer.topology)


def save_interrupt(trainer: Checkpointed, loader: Any) -> None:
    """Checkpoint at the last completed optimizer step (rank 0 only, no collectives)."""
    if trainer.checkpoint_dir is None or not trainer.is_main or trainer.scheduler is None:
        return
    if trainer.state.updating:
        warnings.warn("interrupted during an optimizer step: no checkpoint written",
                      stacklevel=3)
        return
    try:
        check_finite_weights(trainer.module, trainer.state.epoch)
    except FloatingPointError as err:
        warnings.warn(f"{err}; no checkpoint written", stacklevel=3)
        return
    run = trainer.state
    partial = run.epoch_sums.to_dict() if run.epoch_sums is not None else None
    rng = [run.boundary_rng if run.boundary_rng is not None else rng_state(loader)]
    state = _trainer_state(trainer, rng=rng, epoch_start_rng=run.epoch_start_rng, partial=partial)
    path = _write(trainer, "last", state)
    write_history(trainer.checkpoint_dir, run.history)
    print(f"checkpoint written to {path} (epoch {trainer.state.epoch + 1}, "
          f"{trainer.state.batches_done} batches done); resume with fit(..., resume=True)",
          file=sys.stderr, flush=True)


@contextlib.contextmanager
def sigint_guard(trainer: Checkpointed) -> Iterator[None]:
    """First Ctrl-C: set ``trainer.state.interrupted`` (the loop finishes the optimizer step,
    checkpoints and raises KeyboardInterrupt). Second Ctrl-C: raise at once. Only in the main
    thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if trainer.state.interrupted:
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        trainer.state.interrupted = True

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def load_checkpoint(trainer: Checkpointed, path: Path) -> dict[str, Any]:
    """Load the checkpoint at ``path`` into the trainer (weights, optimizer, counters).

    Warns when the options differ from the checkpoint's (other than ``epochs``).

    Returns:
        The trainer state (for the RNG streams).

    Raises:
        ValueError: Not a (readable) trainer state, or tensors that do not fit the model.
    """
    try:
        state, tensors = _read(path, trainer.device, trained_state_dict(trainer.module))
    except ValueError as err:
        raise _Unreadable(str(err)) from None
    current = trainer.module.state_dict()
    bad = [k for k in tensors if k not in current or current[k].shape != tensors[k].shape]
    missing = [
        n for n, p in trainer.module.named_parameters() if p.requires_grad and n not in tensors
    ]
    if bad or missing:
        raise ValueError(
            f"the checkpoint {path} does not fit this model: " + ", ".join((bad + missing)[:10])
        )
    trainer.module.load_state_dict(tensors, strict=False)
    trainer.optimizer.load_state_dict(state["optimizer"])
    assert trainer.scheduler is not None
    trainer.scheduler.load_state_dict(state["scheduler"])
    if trainer.scaler is not None and state.get("scaler") is not None:
        trainer.scaler.load_state_dict(state["scaler"])
    saved = dict(state.get("config", {}))
    now = trainer.config.to_dict()
    changed = [k for k in now if k not in ("epochs",) and saved.get(k, now[k]) != now[k]]
    if changed and trainer.is_main:
        warnings.warn(
            f"resuming with changed options: {', '.join(changed)} (checkpoint: "
            + ", ".join(f"{k}={saved.get(k)!r}" for k in changed) + ")",
            stacklevel=4,
        )
    trainer.state.epoch = int(state["epochs_done"])
    trainer.state.step = int(state["step"])
    trainer.state.batches_done = int(state["batches_done"])
    trainer.state.history = list(state.get("history", []))
    trainer.state.best = state.get("best")
    partial = state.get("partial_epoch")
    trainer.state.epoch_sums = (
        EpochState.from_dict(partial, trainer.device) if partial is not None else None
    )
    return state


def restore_rng(trainer: Checkpointed, state: Mapping[str, Any], loader: Any) -> None:
    """Continue this rank's random streams from a checkpoint (reseeded reproducibly from
    ``(seed, rank, "resume", step)`` when an interrupt under torchrun saved only rank 0's)."""
    rngs = state.get("rng") or []
    rank = trainer.rank
    mine = rngs[rank] if rank < len(rngs) and rngs[rank] is not None else None
    if mine is None:
        seed_everything(trainer.config.seed, trainer.rank, "resume", trainer.state.step)
        return
    set_rng_state(mine, loader)
