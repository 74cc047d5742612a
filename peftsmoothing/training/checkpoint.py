"""The trainer's checkpoints: ``last/``, ``best/`` and ``history.jsonl`` in ``checkpoint_dir``.

A checkpoint directory holds the trained tensors (written by the model's own ``save`` when it
is ``peftsmoothing.core.trainable.Trainable``, else ``trainable.safetensors``; release 0.1's
``trainable.pt`` is still read) and
``trainer_state.pt``: optimizer, scheduler, scaler, RNG states, history and config, tensors and
plain types only (``torch.load(weights_only=True)``, once its zip directory shows no record
claims more memory than the file holds). A directory is written next to its final
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

from ..core.files import atomic_write, clean_stale_temporaries, fsync_dir, temporary_prefix
from ..core.params import trained_state_dict
from ..core.trainable import Trainable
from ..model.serialization import TENSORS_FILE, read_tensors, write_tensors
from ..model.tensorfile import check_torch_zip
from .config import TrainerConfig
from .distributed import Topology, all_gather_objects, barrier
from .metrics import EpochState
from .nonfinite import TrainedBuffers
from .rng import rng_state, seed_everything, set_rng_state
from .state import TrainState

__all__ = [
    "HISTORY_FILE", "TRAINER_STATE_FILE", "check_finite_weights", "load_checkpoint", "prepare_dir",
    "resume", "restore_rng", "save_epoch", "save_interrupt", "sigint_guard", "write_history",
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

    @property
    def is_main(self) -> bool: ...


TRAINER_STATE_FILE = "trainer_state.pt"
HISTORY_FILE = "history.jsonl"
_STATE_FORMAT = "peftsmoothing-trainer-state"
_STATE_VERSION = 1


@contextlib.contextmanager
def _replacing(final: Path) -> Iterator[Path]:
    """A new directory next to ``final`` to write, swapped in for ``final`` once written, or
    removed on an error; a crash during the swap leaves ``.<name>.old``."""
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=temporary_prefix(final.name),
                                suffix=".tmp"))
    old = final.parent / f".{final.name}.old"
    try:
        yield tmp
        fsync_dir(tmp)
        if final.exists():  # else an .old a crash left is the only good copy: kept until tmp is in
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


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
        with tempfile.NamedTemporaryFile(dir=checkpoint_dir, prefix=temporary_prefix("probe"),
                                         suffix=".tmp"):
            pass
    except OSError as err:
        raise ValueError(
            f"cannot write checkpoints to {checkpoint_dir}: {err.strerror or err}"
        ) from None
    clean_stale_temporaries(checkpoint_dir, folders=True)


class _Unreadable(ValueError):
    """A checkpoint that cannot be read, or whose tensors do not fit (``resume`` may fall back)."""


def _read(
    path: Path, device: torch.device, expected: Mapping[str, torch.Tensor]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The trainer state and trained tensors (exactly ``expected``'s, see
    ``serialization.read_tensors``) of checkpoint ``path``, or a one-line ``_Unreadable``."""
    file = path / TRAINER_STATE_FILE
    try:
        check_torch_zip(file)  # no record may claim more memory than the file holds
    except FileNotFoundError:
        raise _Unreadable(f"{file} is missing") from None
    except (OSError, ValueError) as err:
        raise _Unreadable(str(err)) from None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise _Unreadable(f"{file} is corrupt or truncated ({type(err).__name__})") from None
    if not isinstance(state, dict):
        raise _Unreadable(f"{file} is corrupt: it holds a {type(state).__name__}")
    if state.get("format") != _STATE_FORMAT:
        raise _Unreadable(f"{file} is not a NoiseTrainer state")
    try:
        return state, read_tensors(path, device, expected)
    except FileNotFoundError:
        raise _Unreadable(f"{path / TENSORS_FILE} is missing") from None
    except ValueError as err:
        raise _Unreadable(str(err)) from None


def resume(trainer: Checkpointed, resume: bool | str | os.PathLike[str], *, quiet: bool) -> bool:
    """Load the checkpoint ``fit(resume=...)`` continues from; ``False``: start fresh.

    Args:
        trainer: The trainer to load into.
        resume: ``True``: ``checkpoint_dir/last`` (or the ``.last.old`` a crash left) if it
            exists; a corrupt one (a file truncated by a full disk, say) falls back to ``best``
            with a warning, and if both are unreadable the error names both. A path: that
            checkpoint directory, which must exist.
        quiet: Do not print the "starting from scratch" note.

    Raises:
        ValueError: ``resume=True`` without a checkpoint directory, no readable checkpoint
            where one must be, or one that does not fit.
        FileNotFoundError: A path that is not a trainer checkpoint.
    """
    if resume is not True:
        path = Path(resume)  # type: ignore[arg-type]
        if not (path / TRAINER_STATE_FILE).is_file():
            raise FileNotFoundError(
                f"{path} is not a NoiseTrainer checkpoint ({TRAINER_STATE_FILE})")
        load_checkpoint(trainer, path)
        return True
    root = trainer.checkpoint_dir
    if root is None:
        raise ValueError("resume=True needs checkpoint_dir")
    found = [p for p in (root / "last", root / ".last.old") if (p / TRAINER_STATE_FILE).is_file()]
    if not found:
        if not quiet:  # the normal first run of a resumable script: a note, not a warning
            print(f"no checkpoint in {root / 'last'} yet: starting from scratch", file=sys.stderr)
        return False
    try:
        load_checkpoint(trainer, found[0])
    except _Unreadable as err:
        best = root / "best"
        if not (best / TRAINER_STATE_FILE).is_file():
            raise
        try:
            load_checkpoint(trainer, best)
        except _Unreadable as err2:
            raise ValueError(f"no readable checkpoint: {err}; and {err2}") from None
        warnings.warn(f"{err}; resuming from {best} instead", UserWarning, stacklevel=3)
    return True


def _write(trainer: Checkpointed, rng: list[Any]) -> Path:
    """Write ``last/`` (the trained tensors with the model config, and ``trainer_state.pt``;
    ``rng``: the RNG streams of every rank; within an epoch, its start's and its sums too), then
    ``history.jsonl``."""
    assert trainer.checkpoint_dir is not None and trainer.scheduler is not None
    run, config = trainer.state, trainer.config.to_dict()
    partial = run.epoch_sums.to_dict() if run.epoch_sums is not None else None
    state = {
        "format": _STATE_FORMAT, "format_version": _STATE_VERSION,
        "epochs_done": run.epoch, "batches_done": run.batches_done, "step": run.step,
        "optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "rng": rng, "epoch_start_rng": run.epoch_start_rng, "partial_epoch": partial,
        "history": run.history, "best": run.best, "config": config,
        "world_size": trainer.topology.world_size,
    }
    last = run.history[-1] if run.history else None
    meta = {**trainer.metadata, "training": {  # "config": the whole recipe, for the card
        "epochs_done": run.epoch, "step": run.step, "sigma": config["sigma"],
        "loss": trainer.config.loss, "last": last, "config": config,
    }}
    trainer.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    with _replacing(trainer.checkpoint_dir / "last") as tmp:
        if isinstance(trainer.module, Trainable):
            trainer.module.save(tmp, metadata=meta)
        else:
            write_tensors(tmp, trained_state_dict(trainer.module))
        atomic_write(tmp / TRAINER_STATE_FILE, lambda f: torch.save(state, f))
    write_history(trainer.checkpoint_dir, run.history)
    return trainer.checkpoint_dir / "last"


def write_history(checkpoint_dir: Path, history: list[dict[str, Any]]) -> None:
    """Write ``history.jsonl`` (one JSON record per epoch) atomically.

    Examples:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()); write_history(d, [{"epoch": 1}])
        >>> (d / HISTORY_FILE).read_text()
        '{"epoch": 1}\\n'
    """
    text = "".join(json.dumps(r) + "\n" for r in history)
    atomic_write(checkpoint_dir / HISTORY_FILE, text.encode())


def _update_best(trainer: Checkpointed, record: Mapping[str, Any]) -> bool:
    """Whether the monitored value of ``record`` is the best so far (then ``state.best``)."""
    key = trainer.config.monitor or ("val_noisy_acc" if "val_noisy_acc" in record else "train_acc")
    value, best = record.get(key), trainer.state.best
    sign = -1 if "loss" in key else 1  # keys with "loss" are minimised
    if value is None or not (best is None or sign * value > sign * best["value"]):
        return False
    trainer.state.best = {"metric": key, "value": float(value), "epoch": record["epoch"]}
    return True


def check_finite_weights(module: nn.Module, epoch: int) -> None:
    """Refuse to checkpoint weights that are not finite: the trained parameters and the
    buffers saved with them (the running statistics of a trained BatchNorm).

    Raises:
        FloatingPointError: Naming the first non-finite trained tensor.

    Examples:
        >>> check_finite_weights(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), epoch=1)
    """
    trained: list[tuple[str, torch.Tensor]] = [
        (f"parameter {n}", p) for n, p in module.named_parameters() if p.requires_grad
    ]
    trained += [(f"buffer {n}", b) for n, b in TrainedBuffers(module).named]
    bad = next((name for name, t in trained if not bool(torch.isfinite(t).all())), None)
    if bad is not None:
        raise FloatingPointError(
            f"the trained {bad} holds nan or inf after epoch {epoch}: not saved, so the last "
            "checkpoint stays the last finite one"
        )


def save_epoch(trainer: Checkpointed, loader: Any, record: Mapping[str, Any]) -> None:
    """End-of-epoch checkpoint: ``last/``, ``best/`` when the monitored value improved, and
    the history; a collective call (every rank gathers its RNG state to rank 0)."""
    check_finite_weights(trainer.module, trainer.state.epoch)
    improved = _update_best(trainer, record)
    if trainer.checkpoint_dir is not None:  # the same on every rank: a collective or none
        rng = all_gather_objects(rng_state(loader), trainer.topology)
        if trainer.is_main:
            last = _write(trainer, rng)
            if improved:
                with _replacing(last.parent / "best") as tmp:
                    shutil.copytree(last, tmp, dirs_exist_ok=True)
    barrier(trainer.topology)


def save_interrupt(trainer: Checkpointed, loader: Any) -> None:
    """Checkpoint at the last completed optimizer step (rank 0 only, no collectives)."""
    run = trainer.state
    if trainer.checkpoint_dir is None or not trainer.is_main or trainer.scheduler is None:
        return
    if run.updating:
        warnings.warn("interrupted during an optimizer step: no checkpoint written",
                      stacklevel=3)
        return
    try:
        check_finite_weights(trainer.module, run.epoch)
    except FloatingPointError as err:
        warnings.warn(f"{err}; no checkpoint written", stacklevel=3)
        return
    rng = [run.boundary_rng if run.boundary_rng is not None else rng_state(loader)]
    path = _write(trainer, rng)
    print(f"checkpoint written to {path} (epoch {run.epoch + 1}, {run.batches_done} batches "
          "done); resume with fit(..., resume=True)", file=sys.stderr, flush=True)


@contextlib.contextmanager
def sigint_guard(trainer: Checkpointed) -> Iterator[None]:
    """First Ctrl-C: set ``trainer.state.interrupted`` (the loop finishes the optimizer step,
    checkpoints and raises KeyboardInterrupt). Second Ctrl-C: raise at once. Only in the main
    thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if trainer.state.interrupted:
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        trainer.state.interrupted = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def load_checkpoint(trainer: Checkpointed, path: Path) -> None:
    """Load the checkpoint at ``path`` into the trainer (weights, optimizer, counters, and
    this rank's random streams into its ``TrainState``).

    Warns when the options differ from the checkpoint's (other than ``epochs``).

    Raises:
        ValueError: Not a (readable) trainer state, or tensors that do not fit the model.
    """
    state, tensors = _read(path, trainer.device, trained_state_dict(trainer.module))
    trainer.module.load_state_dict(tensors, strict=False)
    trainer.optimizer.load_state_dict(state["optimizer"])
    assert trainer.scheduler is not None
    trainer.scheduler.load_state_dict(state["scheduler"])
    if trainer.scaler is not None and state.get("scaler") is not None:
        trainer.scaler.load_state_dict(state["scaler"])
    saved, now = state.get("config", {}), trainer.config.to_dict()
    changed = [k for k in now if k != "epochs" and saved.get(k, now[k]) != now[k]]
    if changed and trainer.is_main:
        old = ", ".join(f"{k}={saved[k]!r}" for k in changed)
        warnings.warn(f"resuming with changed options: {', '.join(changed)} (checkpoint: {old})",
                      stacklevel=4)
    partial = state.get("partial_epoch")
    sums = EpochState.from_dict(partial, trainer.device) if partial is not None else None
    rngs, rank = state.get("rng") or [], trainer.topology.rank
    trainer.state = TrainState(
        epoch=int(state["epochs_done"]), step=int(state["step"]), epoch_sums=sums,
        history=list(state.get("history", [])), best=state.get("best"),
        batches_done=int(state["batches_done"]), epoch_start_rng=state.get("epoch_start_rng"),
        boundary_rng=rngs[rank] if rank < len(rngs) else None)


def restore_rng(trainer: Checkpointed, loader: Any) -> None:
    """Continue this rank's random streams from the loaded ``state.boundary_rng`` (reseeded
    reproducibly from ``(seed, rank, "resume", step)`` when an interrupt under torchrun saved
    only rank 0's)."""
    run = trainer.state
    if run.boundary_rng is not None:
        set_rng_state(run.boundary_rng, loader)
    else:
        seed_everything(trainer.config.seed, trainer.topology.rank, "resume", run.step)
