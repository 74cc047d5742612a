"""``NoiseTrainer``: fine-tune the trainable parameters of a model on Gaussian-noised images.

The model takes images in [0, 1] (DESIGN.md invariant 1); the trainer adds
``sigma * randn`` to them on the model's device and optimises only the parameters with
``requires_grad`` (invariant 3: the frozen backbone gets no gradient and no optimizer state).
Losses come from :mod:`peftsmoothing.losses`. Runs on one device or, under ``torchrun``, on
several processes with ``DistributedDataParallel``. Checkpoints are atomic and resumable.

This module depends neither on the methods nor on smoothing: a :class:`peftsmoothing.PEFTModel`
is recognised by duck typing (``save`` and ``trained_state_dict``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler, Sampler

from ._io import atomic_save, fsync_dir
from .losses import LossContext, LossOutput, LossSpec, get_loss
from .params import freeze_frozen_batchnorm, trained_state_dict
from .trainable import Trainable

__all__ = [
    "HISTORY_FILE",
    "OPTIMIZERS",
    "PRECISIONS",
    "SCHEDULES",
    "TRAINER_STATE_FILE",
    "Callback",
    "NoiseTrainer",
    "TrainerConfig",
]

TRAINER_STATE_FILE = "trainer_state.pt"
TENSORS_FILE = "trainable.pt"  # same name PEFTModel.save uses; for plain modules
HISTORY_FILE = "history.jsonl"
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")
NONFINITE = ("stop", "skip")
_STATE_FORMAT = "peftsmoothing-trainer-state"
_STATE_VERSION = 1
_RANGE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class TrainerConfig:
    """The hyper-parameters of a :class:`NoiseTrainer` (validated, JSON-serialisable).

    Attributes:
        sigma: Noise level(s) in pixel space; with several, one is drawn per batch.
        epochs: Number of passes over the training data.
        lr: Peak learning rate.
        weight_decay: Decoupled (AdamW) or L2 (Adam, SGD) weight decay.
        optimizer: ``"adamw"``, ``"adam"`` or ``"sgd"`` (momentum 0.9).
        schedule: ``"cosine"``, ``"linear"`` (decay to 0) or ``"constant"``, after warmup.
        warmup_steps: Optimizer steps of linear warmup.
        grad_accum: Batches accumulated per optimizer step.
        max_grad_norm: Clip the gradient norm to this value (``None``: no clipping).
        precision: ``"fp32"``, ``"bf16"`` (autocast) or ``"fp16"`` (autocast + GradScaler).
        loss: A registered loss name (see :func:`peftsmoothing.available_losses`).
        loss_options: The loss's options (e.g. ``{"entropy_weight": 0.5}``).
        num_noise: Noisy copies per image (``None``: the loss's default, 2 for
            ``consistency``, else 1).
        seed: Seeds torch/numpy/random (plus the rank) at the start of training, and the noise.
        log_every: Update the progress bar every this many optimizer steps.
        monitor: History key that selects the ``best`` checkpoint (default ``val_noisy_acc``
            with a validation loader, else ``train_acc``); keys with ``loss`` are minimised.
        nonfinite: What a non-finite (nan/inf) loss does: ``"stop"`` (default) raises
            ``FloatingPointError`` before the optimizer step, so the weights and the
            checkpoints stay those of the last finite step; ``"skip"`` drops that optimizer
            step (its gradients and metrics), counts it in the epoch's ``nonfinite_steps`` and
            trains on.

    Examples:
        >>> TrainerConfig(sigma=(0.25, 0.5), loss="consistency").sigmas
        (0.25, 0.5)
    """

    sigma: float | tuple[float, ...] = 0.5
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    schedule: str = "cosine"
    warmup_steps: int = 0
    grad_accum: int = 1
    max_grad_norm: float | None = None
    precision: str = "fp32"
    loss: str = "ce"
    loss_options: Mapping[str, Any] = field(default_factory=dict)
    num_noise: int | None = None
    seed: int = 0
    log_every: int = 50
    monitor: str | None = None
    nonfinite: str = "stop"

    def __post_init__(self) -> None:
        sigmas = self.sigma if isinstance(self.sigma, tuple) else (self.sigma,)
        if not sigmas:
            raise ValueError("sigma: give at least one noise level")
        for s in sigmas:
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
                raise ValueError(f"sigma must be a finite number, got {s!r}")
            if s < 0:
                raise ValueError(f"sigma must be >= 0, got {s}")
        _positive_int("epochs", self.epochs, minimum=0)
        _positive_int("grad_accum", self.grad_accum)
        _positive_int("warmup_steps", self.warmup_steps, minimum=0)
        _positive_int("log_every", self.log_every)
        if self.num_noise is not None:
            _positive_int("num_noise", self.num_noise)
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}")
        for name, value, valid in (
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("schedule", self.schedule, SCHEDULES),
            ("precision", self.precision, PRECISIONS),
            ("nonfinite", self.nonfinite, NONFINITE),
        ):
            if value not in valid:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(valid)}")
        get_loss(self.loss)  # raises UnknownLossError (a ValueError) for unknown names

    @property
    def sigmas(self) -> tuple[float, ...]:
        """The noise levels as a tuple."""
        values = self.sigma if isinstance(self.sigma, tuple) else (self.sigma,)
        return tuple(float(s) for s in values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of the options.

        Examples:
            >>> TrainerConfig(sigma=0.25).to_dict()["sigma"]
            0.25
        """
        out = dataclasses.asdict(self)
        out["sigma"] = list(self.sigmas) if isinstance(self.sigma, tuple) else float(self.sigma)
        out["loss_options"] = dict(self.loss_options)
        return out


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


class Callback:
    """Base class for training callbacks; override the hooks you need.

    A callback may set ``trainer.should_stop = True``: training then stops after the current
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

    def on_fit_start(self, trainer: NoiseTrainer) -> None:
        """Called once when ``fit`` starts (after resuming)."""

    def on_step_end(self, trainer: NoiseTrainer) -> None:
        """Called after every optimizer step (``trainer.step`` counts them)."""

    def on_epoch_end(self, trainer: NoiseTrainer, record: dict[str, Any]) -> None:
        """Called with the epoch's history record."""

    def on_fit_end(self, trainer: NoiseTrainer, history: list[dict[str, Any]]) -> None:
        """Called once when ``fit`` returns normally."""


class _ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...``: an evaluation shard without padding."""

    def __init__(self, size: int, rank: int, world: int) -> None:
        self.size, self.rank, self.world = size, rank, world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world))


class _EpochState:
    """Running sums of one epoch, folded in at optimizer-step boundaries."""

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "loss": float(self.loss),
            "correct": float(self.correct),
            "predicted": self.predicted,
            "seen": self.seen,
            "losses": self.losses,
            "terms": {k: float(v) for k, v in self.terms.items()},
            "elapsed": self.elapsed,
            "nonfinite_steps": self.nonfinite_steps,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], device: torch.device) -> _EpochState:
        st = cls(device)
        st.loss += float(d["loss"])
        st.correct += float(d["correct"])
        st.predicted, st.seen, st.losses = int(d["predicted"]), int(d["seen"]), int(d["losses"])
        st.terms = {
            k: torch.tensor(float(v), device=device, dtype=torch.float64)
            for k, v in d["terms"].items()
        }
        st.elapsed = float(d["elapsed"])
        st.nonfinite_steps = int(d.get("nonfinite_steps", 0))
        return st


class _Window:
    """Sums of the batches since the last optimizer step."""

    def __init__(self) -> None:
        self.items: list[tuple[torch.Tensor, torch.Tensor | None, int, int, dict[str, Any]]] = []

    def add(self, loss: torch.Tensor, correct: torch.Tensor | None, predicted: int, seen: int,
            terms: dict[str, torch.Tensor]) -> None:
        self.items.append((loss, correct, predicted, seen, terms))

    def fold_into(self, st: _EpochState) -> None:
        for loss, correct, predicted, seen, terms in self.items:
            st.loss += loss
            if correct is not None:
                st.correct += correct
            st.predicted += predicted
            st.seen += seen
            st.losses += 1
            for k, v in terms.items():
                if k in st.terms:
                    st.terms[k] += v
                else:
                    st.terms[k] = v.to(torch.float64).clone()
        self.items.clear()


def _derive_seed(*parts: Any) -> int:
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _swap_dir(tmp: Path, final: Path) -> None:
    """Replace directory ``final`` by ``tmp``; a crash in between leaves ``.<name>.old``."""
    old = final.parent / f".{final.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def _lr_factor(schedule: str, step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _autocast_dtype(precision: str) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


class NoiseTrainer:
    """Fine-tune a model's trainable parameters on Gaussian-noised images.

    Every batch ``x`` (float images in [0, 1]) is moved to the device and
    ``x + sigma * randn`` is fed to the model; only parameters with ``requires_grad`` are
    optimised. Works with any ``nn.Module`` that takes [0, 1] images and returns logits, and
    with :class:`peftsmoothing.PEFTModel` (whose checkpoints are then loadable with
    :func:`peftsmoothing.load`). Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` set) it initialises
    ``torch.distributed`` (gloo on CPU, nccl on CUDA), wraps the model in
    ``DistributedDataParallel`` and shards the loaders; only rank 0 logs and writes files.

    Args:
        model: The model; images in [0, 1] in, logits out. Moved to ``device``.
        sigma: Noise level(s) in pixel space; with a list, one is drawn per batch.
        epochs: Number of epochs.
        lr: Peak learning rate.
        weight_decay: Weight decay.
        optimizer: ``"adamw"`` (default), ``"adam"``, ``"sgd"``, or a callable
            ``params -> torch.optim.Optimizer``.
        schedule: ``"cosine"`` (default), ``"linear"`` or ``"constant"``, after warmup.
        warmup_steps: Optimizer steps of linear warmup.
        grad_accum: Batches per optimizer step.
        max_grad_norm: Gradient clipping norm (``None``: off).
        precision: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"`` (with a GradScaler).
        loss: A registered loss: ``"ce"`` (default), ``"consistency"``, ``"stability"``, ...
        consistency_weight: The consistency loss's lambda (default 10, as in the paper).
        loss_options: Further options of the loss (e.g. ``{"entropy_weight": 0.5}``).
        num_noise: Noisy copies per image (default: the loss's, 2 for ``consistency``).
        device: Default: ``cuda:<LOCAL_RANK>`` if CUDA is available, else the CPU.
        seed: Seed of the noise; ``fit`` also seeds torch/numpy/random with ``seed + rank``.
        checkpoint_dir: Where ``last/``, ``best/`` and ``history.jsonl`` go (``None``: nowhere).
        log_every: Progress-bar refresh interval in optimizer steps.
        callbacks: :class:`Callback` objects (any object with some of its methods).
        progress: ``True``: tqdm bar; ``False``: silent; ``None`` (default): a bar when stderr is
            a terminal, else one log line per epoch.
        metadata: JSON-serialisable information stored in the checkpoints' model config.
        reference_model: Frozen classifier for losses that need one (``stability``). Default:
            for a model with a pixel-space module (a denoiser), the model without it; otherwise
            a frozen copy of the model as it is now.
        monitor: History key that selects the ``best`` checkpoint.
        nonfinite: On a non-finite loss, ``"stop"`` (default: raise ``FloatingPointError``
            before the optimizer step; nothing is saved over the last good checkpoint) or
            ``"skip"`` (drop that optimizer step and train on).

    Raises:
        ValueError: For a model with nothing trainable, sigma < 0, or an unknown loss,
            optimizer, schedule or precision.

    Examples:
        >>> import torch, peftsmoothing as ps
        >>> from torch import nn
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> _ = torch.manual_seed(0)
        >>> data = TensorDataset(torch.rand(32, 3, 4, 4), torch.randint(0, 2, (32,)))
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
        >>> trainer = ps.NoiseTrainer(model, sigma=0.25, epochs=2, lr=1e-2, progress=False)
        >>> history = trainer.fit(DataLoader(data, batch_size=8))
        >>> len(history), sorted(trainer.evaluate(DataLoader(data, batch_size=8)))[:2]
        (2, ['clean_acc', 'clean_loss'])
    """

    def __init__(
        self,
        model: nn.Module,
        sigma: float | Sequence[float] = 0.5,
        *,
        epochs: int = 10,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: str | Callable[[list[nn.Parameter]], torch.optim.Optimizer] = "adamw",
        schedule: str = "cosine",
        warmup_steps: int = 0,
        grad_accum: int = 1,
        max_grad_norm: float | None = None,
        precision: str = "fp32",
        loss: str = "ce",
        consistency_weight: float | None = None,
        loss_options: Mapping[str, Any] | None = None,
        num_noise: int | None = None,
        device: str | torch.device | None = None,
        seed: int = 0,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        log_every: int = 50,
        callbacks: Sequence[Any] = (),
        progress: bool | None = None,
        metadata: Mapping[str, Any] | None = None,
        reference_model: nn.Module | None = None,
        monitor: str | None = None,
        nonfinite: str = "stop",
    ) -> None:
        self._owns_process_group = False
        if not isinstance(model, nn.Module):
            raise TypeError(f"NoiseTrainer expects an nn.Module, got {type(model).__name__}")
        options = dict(loss_options or {})
        if consistency_weight is not None:
            options["consistency_weight"] = float(consistency_weight)
        sig: float | tuple[float, ...]
        if isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
            sig = float(sigma)
        elif isinstance(sigma, Sequence) and not isinstance(sigma, str):
            sig = tuple(sigma)
        else:
            raise ValueError(f"sigma must be a number or a list of numbers, got {sigma!r}")
        self.config = TrainerConfig(
            sigma=sig,
            epochs=epochs,
            lr=lr,
            weight_decay=weight_decay,
            optimizer=optimizer if isinstance(optimizer, str) else "adamw",
            schedule=schedule,
            warmup_steps=warmup_steps,
            grad_accum=grad_accum,
            max_grad_norm=max_grad_norm,
            precision=precision,
            loss=loss,
            loss_options=options,
            num_noise=num_noise,
            seed=seed,
            log_every=log_every,
            monitor=monitor,
            nonfinite=nonfinite,
        )
        if not isinstance(optimizer, str):
            object.__setattr__(self.config, "optimizer", "custom")
        self.loss_spec: LossSpec = get_loss(loss)
        if consistency_weight is not None and "consistency_weight" not in self.loss_spec.options:
            raise ValueError(f"consistency_weight does not apply to the {loss!r} loss")
        self.loss_options = self.loss_spec.resolve_options(options)
        self.num_noise = num_noise if num_noise is not None else self.loss_spec.num_noise
        self.sigmas = self.config.sigmas

        # ----------------------------------------------------------- distributed + device
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0")) if self.world_size > 1 else 0
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0")) if self.world_size > 1 else 0
        if device is None:
            device = f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)
        if self.world_size > 1 and not (dist.is_available() and dist.is_initialized()):
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
            self._owns_process_group = True
        bf16_cuda = self.config.precision == "bf16" and self.device.type == "cuda"
        if bf16_cuda and not torch.cuda.is_bf16_supported():
            raise ValueError("precision='bf16' is not supported on this GPU; use 'fp16'")

        self.module = model.to(self.device)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError(
                "the model has nothing trainable (every parameter has requires_grad=False); "
                "wrap it with peftsmoothing.wrap(model, method=...) or unfreeze some parameters"
            )
        self.reference = self._make_reference(reference_model) if (
            self.loss_spec.needs_reference
        ) else None
        self.model: nn.Module = self.module
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(self.module, device_ids=ids)

        self.optimizer = self._make_optimizer(optimizer)
        self.scaler: torch.amp.GradScaler | None = (
            torch.amp.GradScaler(self.device.type) if self.config.precision == "fp16" else None
        )
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.callbacks = list(callbacks)
        self.progress = progress
        self.metadata = dict(metadata or {})

        self.epoch = 0  # completed epochs
        self.step = 0  # optimizer steps
        self.history: list[dict[str, Any]] = []
        self.should_stop = False
        self.best: dict[str, Any] | None = None
        self._num_outputs: int | None = None
        self._warned_range = False
        self._sigint = False
        self._updating = False
        self._batches_done = 0
        self._boundary_rng: dict[str, Any] | None = None
        self._epoch_start_rng: dict[str, Any] | None = None
        self._epoch_state: _EpochState | None = None
        self._noise_gen = torch.Generator(device=self.device)

    # ------------------------------------------------------------------ construction helpers
    def _make_reference(
        self, reference: nn.Module | None
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        if reference is not None:
            ref = reference.to(self.device).eval()
            for p in ref.parameters():
                p.requires_grad_(False)
            return ref
        m = self.module
        if isinstance(m, Trainable):
            # A denoiser in front of a frozen classifier: the classifier alone (with the
            # wrapper's resize and normalization) is the reference.
            frozen = m.frozen_reference()
            if frozen is not None:
                return frozen
        ref = copy.deepcopy(m).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref

    def _make_optimizer(
        self, optimizer: str | Callable[[list[nn.Parameter]], torch.optim.Optimizer]
    ) -> torch.optim.Optimizer:
        c = self.config
        if callable(optimizer) and not isinstance(optimizer, str):
            opt = optimizer(self.params)
            if not isinstance(opt, torch.optim.Optimizer):
                raise TypeError("the optimizer factory must return a torch.optim.Optimizer")
            return opt
        if optimizer == "adamw":
            return torch.optim.AdamW(self.params, lr=c.lr, weight_decay=c.weight_decay)
        if optimizer == "adam":
            return torch.optim.Adam(self.params, lr=c.lr, weight_decay=c.weight_decay)
        return torch.optim.SGD(self.params, lr=c.lr, momentum=0.9, weight_decay=c.weight_decay)

    # ------------------------------------------------------------------ small helpers
    @property
    def is_main(self) -> bool:
        """Whether this process logs and writes files (rank 0)."""
        return self.rank == 0

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = _autocast_dtype(self.config.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _set_train_mode(self) -> None:
        self.model.train()
        freeze_frozen_batchnorm(self.module)

    def _input_dtype(self) -> torch.dtype:
        return self.params[0].dtype if self.params[0].is_floating_point() else torch.float32

    def _check_images(self, x: torch.Tensor) -> None:
        if not torch.is_floating_point(x):
            raise ValueError(
                f"the loader yields {x.dtype} images; NoiseTrainer expects float images in "
                "[0, 1] (e.g. torchvision's ToTensor(), or divide uint8 images by 255)"
            )
        if self._warned_range or x.numel() == 0:
            return
        lo, hi = torch.aminmax(x.detach())
        if float(lo) < -_RANGE_TOLERANCE or float(hi) > 1 + _RANGE_TOLERANCE:
            self._warned_range = True
            warnings.warn(
                f"the loader yields images outside [0, 1] (min {float(lo):.3g}, max "
                f"{float(hi):.3g}). Noise must be added in pixel space: remove the "
                "normalization from the data pipeline and put it inside the model "
                "(peftsmoothing.wrap does that); otherwise sigma does not mean what it says",
                stacklevel=3,
            )

    def _check_labels(self, y: torch.Tensor, always: bool) -> None:
        if self._num_outputs is None or y.numel() == 0 or (y.is_cuda and not always):
            return
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= self._num_outputs:
            raise ValueError(
                f"label {hi if hi >= self._num_outputs else lo} is outside the model's "
                f"{self._num_outputs} outputs (labels must be 0..{self._num_outputs - 1}); "
                "does num_classes match the dataset?"
            )

    def _probe_outputs(self, x: torch.Tensor) -> None:
        """Learn the model's output width from one image, in eval mode, without gradients."""
        if self._num_outputs is not None:
            return
        modes = [(m, m.training) for m in self.module.modules()]
        self.module.eval()
        try:
            with torch.no_grad(), self._autocast():
                out = self.module(x[:1].to(self.device, self._input_dtype()))
        finally:
            for m, mode in modes:
                m.training = mode
        if isinstance(out, torch.Tensor) and out.ndim == 2:
            self._num_outputs = int(out.shape[1])

    def _split_batch(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(batch, Mapping):
            x, y = batch.get("image", batch.get("x")), batch.get("label", batch.get("y"))
        elif isinstance(batch, (list, tuple)) and len(batch) >= 2:
            x, y = batch[0], batch[1]
        else:
            raise TypeError("the loader must yield (images, labels) batches")
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError("the loader must yield (images, labels) as tensors")
        return x, y

    def _noisy(
        self, x: torch.Tensor, sigma: float, copies: int, seed: int
    ) -> list[torch.Tensor]:
        """``copies`` noisy versions ``x + sigma * randn`` drawn on x's device, in x's dtype."""
        self._noise_gen.manual_seed(seed)
        noise = torch.randn(
            (copies, *x.shape), generator=self._noise_gen, device=x.device, dtype=x.dtype
        )
        noise.mul_(sigma).add_(x)
        return list(noise.unbind(0))

    def _pick_sigma(self, *key: Any) -> float:
        if len(self.sigmas) == 1:
            return self.sigmas[0]
        return random.Random(_derive_seed(self.config.seed, "sigma", *key)).choice(self.sigmas)

    # ------------------------------------------------------------------ RNG state
    @staticmethod
    def _loader_generators(loader: Any) -> list[torch.Generator]:
        found: list[torch.Generator] = []
        for obj in (
            loader,
            getattr(loader, "sampler", None),
            getattr(getattr(loader, "batch_sampler", None), "sampler", None),
        ):
            g = getattr(obj, "generator", None)
            if isinstance(g, torch.Generator) and all(g is not h for h in found):
                found.append(g)
        return found

    def _rng_state(self, loader: Any) -> dict[str, Any]:
        np_state: Any = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all()
            if torch.cuda.is_available() and torch.cuda.is_initialized()
            else None,
            "numpy": {
                "name": str(np_state[0]),
                "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                "pos": int(np_state[2]),
                "has_gauss": int(np_state[3]),
                "cached_gaussian": float(np_state[4]),
            },
            "python": random.getstate(),
            "loader": [g.get_state() for g in self._loader_generators(loader)],
        }

    def _set_rng_state(self, state: Mapping[str, Any], loader: Any) -> None:
        torch.set_rng_state(state["torch"])
        if state.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        n = state["numpy"]
        np.random.set_state(
            (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
             n["cached_gaussian"])
        )
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        gens = self._loader_generators(loader)
        for g, s in zip(gens, state.get("loader", []), strict=False):
            g.set_state(s)

    def _seed_everything(self, offset: Any = 0) -> None:
        seed = self.config.seed + self.rank if offset == 0 else _derive_seed(
            self.config.seed, self.rank, offset
        ) % (2**32)
        torch.manual_seed(seed)
        np.random.seed(seed % (2**32))
        random.seed(seed)

    # ------------------------------------------------------------------ loaders
    def _prepare_loader(self, loader: Iterable[Any], *, train: bool) -> Iterable[Any]:
        """Under torch.distributed, give each rank its shard of a plain DataLoader."""
        if self.world_size == 1 or not isinstance(loader, DataLoader):
            return loader
        if isinstance(loader.sampler, (DistributedSampler, _ShardSampler)):
            return loader
        if isinstance(loader.dataset, IterableDataset) or loader.batch_size is None:
            if self.is_main:
                warnings.warn(
                    "cannot shard this DataLoader (iterable dataset or custom batch_sampler): "
                    "every rank sees all of it; shard it yourself",
                    stacklevel=3,
                )
            return loader
        dataset: Any = loader.dataset
        sampler: Sampler[int]
        if train:
            sampler = DistributedSampler(
                dataset,
                num_replicas=self.world_size,
                rank=self.rank,
                shuffle=isinstance(loader.sampler, RandomSampler),
                seed=self.config.seed,
                drop_last=loader.drop_last,
            )
        else:
            sampler = _ShardSampler(len(dataset), self.rank, self.world_size)
        return DataLoader(
            dataset,
            batch_size=loader.batch_size,
            sampler=sampler,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
            drop_last=loader.drop_last,
            timeout=loader.timeout,
            worker_init_fn=loader.worker_init_fn,
            multiprocessing_context=loader.multiprocessing_context,
            generator=loader.generator,
            prefetch_factor=loader.prefetch_factor if loader.num_workers > 0 else None,
            persistent_workers=loader.persistent_workers,
            pin_memory_device=loader.pin_memory_device,
        )

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        train_loader: Iterable[Any],
        val_loader: Iterable[Any] | None = None,
        *,
        resume: bool | str | os.PathLike[str] = False,
    ) -> list[dict[str, Any]]:
        """Train for the configured number of epochs.

        Args:
            train_loader: Yields ``(images, labels)``: float images in [0, 1], integer labels.
                Must have a length (for the schedule). Under torchrun a plain DataLoader is
                re-built with a ``DistributedSampler`` (its ``batch_size`` is per process).
            val_loader: Optional; evaluated after every epoch (clean and noisy accuracy).
            resume: ``True``: continue from ``checkpoint_dir/last`` if it exists (else start
                fresh); a path: continue from that checkpoint directory.

        Returns:
            The history: one dict per epoch (``epoch``, ``step``, ``lr``, ``train_loss``,
            ``train_acc`` (on noisy images), ``images_per_s``, ``time_s``, and with a
            validation loader ``val_clean_acc``, ``val_noisy_acc``, ``val_clean_loss``,
            ``val_noisy_loss``). Also written to ``checkpoint_dir/history.jsonl``.

        Raises:
            ValueError: For labels outside the model's outputs, non-float images, or
                ``resume`` without a checkpoint directory.
            KeyboardInterrupt: On Ctrl-C, after writing a checkpoint at the last completed
                optimizer step.
        """
        loader = self._prepare_loader(train_loader, train=True)
        val = self._prepare_loader(val_loader, train=False) if val_loader is not None else None
        try:
            n_batches = len(loader)  # type: ignore[arg-type]
        except TypeError:
            raise ValueError("train_loader must have a length (len(loader))") from None
        c = self.config
        steps_per_epoch = max(1, math.ceil(n_batches / c.grad_accum))
        total_steps = steps_per_epoch * c.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: _lr_factor(c.schedule, s, c.warmup_steps, total_steps),
        )
        resume_state: dict[str, Any] | None = None
        if resume:
            path = self._find_checkpoint(resume)
            if path is not None:
                resume_state = self._load_checkpoint(path)
                if not self._batches_done:  # at an epoch boundary: continue the RNG streams
                    self._restore_rng(resume_state, loader)
        if resume_state is None:
            self._seed_everything()
            self.epoch, self.step, self.history, self.best = 0, 0, [], None
            self._batches_done = 0
            self._epoch_state = None
        self.should_stop = False
        self._sigint = False
        for cb in self.callbacks:
            _call(cb, "on_fit_start", self)

        with self._sigint_guard():
            try:
                while self.epoch < c.epochs and not self.should_stop:
                    record = self._run_epoch(loader, n_batches, resume_state)
                    resume_state = None
                    if record is None:  # stopped mid-epoch
                        self._save_interrupt(loader)
                        break
                    if val is not None:
                        metrics = self.evaluate(val)
                        record.update({f"val_{k}": v for k, v in metrics.items() if k != "n"})
                    self.history.append(record)
                    self.epoch += 1
                    self._batches_done = 0
                    self._epoch_state = None
                    self._log_epoch(record)
                    for cb in self.callbacks:
                        _call(cb, "on_epoch_end", self, record)
                    self._save_epoch(loader, record)
            except KeyboardInterrupt:
                self._save_interrupt(loader)
                raise
        for cb in self.callbacks:
            _call(cb, "on_fit_end", self, self.history)
        return self.history

    @contextlib.contextmanager
    def _sigint_guard(self) -> Iterator[None]:
        """First Ctrl-C: finish the current optimizer step, checkpoint, raise KeyboardInterrupt.
        Second Ctrl-C: raise at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum: int, frame: Any) -> None:
            if self._sigint:
                signal.signal(signal.SIGINT, previous)
                raise KeyboardInterrupt
            self._sigint = True

        signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _run_epoch(
        self, loader: Iterable[Any], n_batches: int, resume_state: Mapping[str, Any] | None
    ) -> dict[str, Any] | None:
        """One epoch; returns its history record, or ``None`` when stopped mid-epoch."""
        c = self.config
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)  # type: ignore[union-attr]
        skip = self._batches_done
        if skip and resume_state is not None and resume_state.get("epoch_start_rng") is not None:
            self._set_rng_state(resume_state["epoch_start_rng"], loader)
        self._epoch_start_rng = self._rng_state(loader)
        it = iter(loader)
        for _ in range(skip):  # resume mid-epoch: replay the loader order up to the stop
            next(it)
        if skip and resume_state is not None:
            self._restore_rng(resume_state, loader)
        st = self._epoch_state if self._epoch_state is not None else _EpochState(self.device)
        self._epoch_state = st
        window = _Window()
        self._boundary_rng = self._rng_state(loader)
        self._set_train_mode()
        bar = self._bar(n_batches, skip)
        t0 = time.perf_counter()
        elapsed0 = st.elapsed
        in_dtype = self._input_dtype()
        step_bad = torch.zeros((), dtype=torch.bool, device=self.device)
        ctx = LossContext(sigma=0.0, options=self.loss_options, module=self.module,
                          reference=self.reference)
        try:
            for b, batch in enumerate(it, start=skip):
                x, y = self._split_batch(batch)
                if b == skip:
                    self._check_images(x)
                    self._probe_outputs(x)
                self._check_labels(y, always=b == skip)
                x = x.to(self.device, in_dtype, non_blocking=True)
                y = y.to(self.device, torch.long, non_blocking=True)
                sigma = self._pick_sigma(self.rank, self.epoch, b)
                noisy = self._noisy(x, sigma, self.num_noise,
                                    _derive_seed(c.seed, self.rank, self.epoch, b))
                start = (b // c.grad_accum) * c.grad_accum
                size = min(c.grad_accum, n_batches - start)
                boundary = b + 1 - start >= size
                ctx.sigma = sigma
                sync = contextlib.nullcontext()
                if not boundary and self.model is not self.module:
                    sync = self.model.no_sync()  # type: ignore[operator]
                with sync:
                    with self._autocast():
                        out: LossOutput = self.loss_spec.fn(self.model, x, noisy, y, ctx)
                    step_bad |= ~torch.isfinite(out.loss.detach()).all()
                    loss = out.loss / size
                    if self.scaler is not None:
                        self.scaler.scale(loss).backward()
                    else:
                        loss.backward()
                window.add(*self._batch_metrics(out, y, x.shape[0]))
                if not boundary:
                    continue
                if self._nonfinite_step(step_bad, b):
                    self.optimizer.zero_grad(set_to_none=True)
                    window.items.clear()
                    st.nonfinite_steps += 1
                else:
                    self._optimizer_step()
                    window.fold_into(st)
                step_bad.zero_()
                self._batches_done = b + 1
                self._boundary_rng = self._rng_state(loader)
                if bar is not None:
                    bar.update(size)
                    if self.step % c.log_every == 0:
                        self._bar_postfix(bar, st, elapsed0 + time.perf_counter() - t0)
                for cb in self.callbacks:
                    _call(cb, "on_step_end", self)
                if self._sigint:
                    raise KeyboardInterrupt
                if self.should_stop and self._batches_done < n_batches:
                    st.elapsed = elapsed0 + time.perf_counter() - t0
                    return None
        finally:
            st.elapsed = elapsed0 + time.perf_counter() - t0
            if bar is not None:
                bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        st.elapsed = elapsed0 + time.perf_counter() - t0
        return self._epoch_record(st)

    def _nonfinite_step(self, bad: torch.Tensor, batch: int) -> bool:
        """Whether the optimizer step ending at ``batch`` had a non-finite loss (on any rank).

        Raises:
            FloatingPointError: With ``nonfinite="stop"``, before the step is taken.
        """
        if self.world_size > 1:
            flag = bad.to(self._comm_device(), torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            bad = flag
        if not bool(bad):  # one host synchronisation per optimizer step
            return False
        if self.config.nonfinite == "skip":
            return True
        raise FloatingPointError(
            f"non-finite loss (nan or inf) at epoch {self.epoch + 1}, batch {batch + 1}: "
            "training stopped before this optimizer step; the weights and the last checkpoint "
            "are those of the last finite step. Lower the learning rate, clip gradients "
            "(max_grad_norm), use bf16 instead of fp16, or pass nonfinite='skip'."
        )

    def _check_finite_weights(self) -> None:
        """Refuse to checkpoint weights that are not finite.

        Raises:
            FloatingPointError: Naming the first non-finite trained tensor.
        """
        for name, p in self.module.named_parameters():
            if p.requires_grad and not bool(torch.isfinite(p).all()):
                raise FloatingPointError(
                    f"the trained parameter {name} holds nan or inf after epoch {self.epoch}: "
                    "not saved, so the last checkpoint stays the last finite one"
                )

    def _optimizer_step(self) -> None:
        c = self.config
        assert self.scheduler is not None
        self._updating = True
        if self.scaler is not None:
            if c.max_grad_norm is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.params, c.max_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if c.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.params, c.max_grad_norm)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        self._updating = False

    @staticmethod
    def _batch_metrics(
        out: LossOutput, y: torch.Tensor, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor | None, int, int, dict[str, torch.Tensor]]:
        loss = out.loss.detach().to(torch.float64)
        correct: torch.Tensor | None = None
        predicted = 0
        logits = out.logits
        if logits is not None and logits.ndim == 2 and logits.shape[0] % batch == 0:
            copies = logits.shape[0] // batch
            labels = y if copies == 1 else y.repeat(copies)
            correct = (logits.detach().argmax(dim=1) == labels).sum().to(torch.float64)
            predicted = logits.shape[0]
        terms = {k: v.detach().to(torch.float64) for k, v in out.terms.items()}
        return loss, correct, predicted, batch, terms

    def _epoch_record(self, st: _EpochState) -> dict[str, Any]:
        st_sync = self._reduce_epoch(st)
        record: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "step": self.step,
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "train_loss": st_sync["loss"] / max(1, st_sync["losses"]),
            "train_acc": (
                st_sync["correct"] / st_sync["predicted"] if st_sync["predicted"] else None
            ),
        }
        for k, v in st_sync["terms"].items():
            record[f"train_{k}"] = v / max(1, st_sync["losses"])
        if st.nonfinite_steps:
            record["nonfinite_steps"] = st.nonfinite_steps
            warnings.warn(
                f"epoch {self.epoch + 1}: skipped {st.nonfinite_steps} optimizer step(s) with a "
                "non-finite loss (nonfinite='skip')",
                RuntimeWarning,
                stacklevel=2,
            )
        record["images"] = int(st_sync["seen"])
        record["images_per_s"] = st_sync["seen"] / st.elapsed if st.elapsed > 0 else None
        record["time_s"] = st.elapsed
        return record

    def _reduce_epoch(self, st: _EpochState) -> dict[str, Any]:
        d = st.to_dict()
        if self.world_size > 1:
            keys = ["loss", "correct", "predicted", "seen", "losses", *sorted(d["terms"])]
            vals = [d[k] if k in d and k != "terms" else d["terms"][k] for k in keys]
            t = torch.tensor(vals, dtype=torch.float64, device=self._comm_device())
            dist.all_reduce(t)
            out = dict(zip(keys, t.tolist(), strict=True))
            d.update({k: out[k] for k in ("loss", "correct", "predicted", "seen", "losses")})
            d["terms"] = {k: out[k] for k in d["terms"]}
        return d

    def _comm_device(self) -> torch.device:
        backend = dist.get_backend() if dist.is_initialized() else "gloo"
        return self.device if backend == "nccl" else torch.device("cpu")

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, loader: Iterable[Any], *, sigma: float | None = None) -> dict[str, float]:
        """Clean and noisy accuracy and loss of the model on ``loader``.

        The noise is seeded (``seed``), so repeated evaluations see the same noise and the
        training random state is untouched. Under torch.distributed the loader is sharded and
        the results are summed over the ranks.

        Args:
            loader: Yields ``(images, labels)`` with images in [0, 1].
            sigma: Noise level; default: the largest training sigma.

        Returns:
            ``clean_acc``, ``noisy_acc``, ``clean_loss``, ``noisy_loss``, ``sigma``, ``n``.

        Examples:
            >>> import torch, peftsmoothing as ps
            >>> from torch import nn
            >>> data = [(torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 0, 1]))]
            >>> model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
            >>> ps.NoiseTrainer(model, sigma=0.5, progress=False).evaluate(data)["n"]
            4.0
        """
        s = float(max(self.sigmas)) if sigma is None else float(sigma)
        if s < 0:
            raise ValueError(f"sigma must be >= 0, got {s}")
        sharded = self.world_size > 1 and isinstance(loader, DataLoader)
        loader = self._prepare_loader(loader, train=False)
        modes = [(m, m.training) for m in self.module.modules()]
        self.module.eval()
        gen = torch.Generator(device=self.device)
        in_dtype = self._input_dtype()
        sums = torch.zeros(5, dtype=torch.float64, device=self.device)
        try:
            for b, batch in enumerate(loader):
                x, y = self._split_batch(batch)
                if b == 0:
                    self._check_images(x)
                    self._probe_outputs(x)
                self._check_labels(y, always=b == 0)
                x = x.to(self.device, in_dtype, non_blocking=True)
                y = y.to(self.device, torch.long, non_blocking=True)
                gen.manual_seed(_derive_seed(self.config.seed, "eval", self.rank, b))
                noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
                with self._autocast():
                    logits = self.module(torch.cat([x, noise.mul_(s).add_(x)])).float()
                clean, noisy = logits.chunk(2)
                f = torch.nn.functional
                sums += torch.stack([
                    f.cross_entropy(clean, y, reduction="sum").double(),
                    f.cross_entropy(noisy, y, reduction="sum").double(),
                    (clean.argmax(1) == y).sum().double(),
                    (noisy.argmax(1) == y).sum().double(),
                    torch.tensor(float(y.shape[0]), dtype=torch.float64, device=self.device),
                ])
        finally:
            for m, mode in modes:
                m.training = mode
        if sharded:
            t = sums.to(self._comm_device())
            dist.all_reduce(t)
            sums = t
        cl, nl, cc, nc, n = sums.tolist()
        n_ = max(n, 1.0)
        return {
            "clean_acc": cc / n_,
            "noisy_acc": nc / n_,
            "clean_loss": cl / n_,
            "noisy_loss": nl / n_,
            "sigma": s,
            "n": n,
        }

    def close(self) -> None:
        """Release ``DistributedDataParallel`` and, if the trainer created it, the process group.

        Call it at the end of a ``torchrun`` script: a DDP wrapper that outlives its process
        group can abort the process at exit. On a single process it does nothing.

        Examples:
            >>> import peftsmoothing as ps
            >>> from torch import nn
            >>> ps.NoiseTrainer(nn.Linear(2, 2), sigma=0.5).close()
        """
        if self.model is not self.module:
            self.model = self.module
            import gc

            gc.collect()
        if self._owns_process_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
            self._owns_process_group = False

    # ------------------------------------------------------------------ logging
    def _show_bar(self) -> bool:
        if not self.is_main or self.progress is False:
            return False
        return bool(self.progress) or sys.stderr.isatty()

    def _bar(self, total: int, initial: int) -> Any:
        if not self._show_bar():
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=total,
            initial=initial,
            desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
            unit="batch",
            leave=True,
            dynamic_ncols=True,
        )

    def _bar_postfix(self, bar: Any, st: _EpochState, elapsed: float) -> None:
        acc = float(st.correct) / st.predicted if st.predicted else float("nan")
        bar.set_postfix(
            loss=f"{float(st.loss) / max(1, st.losses):.4f}",
            acc=f"{acc:.3f}",
            img_s=f"{st.seen / max(elapsed, 1e-9):.0f}",
        )

    def _log_epoch(self, record: Mapping[str, Any]) -> None:
        if not self.is_main or self.progress is False:
            return
        parts = [f"epoch {record['epoch']}/{self.config.epochs}", f"step {record['step']}"]
        for key, value in record.items():
            if key in ("epoch", "step") or value is None:
                continue
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
        print("  ".join(parts), file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ checkpoints
    def _find_checkpoint(self, resume: bool | str | os.PathLike[str]) -> Path | None:
        if resume is True:
            if self.checkpoint_dir is None:
                raise ValueError("resume=True needs checkpoint_dir")
            for name in ("last", ".last.old"):
                p = self.checkpoint_dir / name
                if (p / TRAINER_STATE_FILE).is_file():
                    return p
            if self.is_main and self.progress is not False:
                # the normal first run of a resumable script: a note, not a warning
                print(f"no checkpoint in {self.checkpoint_dir / 'last'} yet: starting from "
                      "scratch", file=sys.stderr)
            return None
        p = Path(resume)  # type: ignore[arg-type]
        if not (p / TRAINER_STATE_FILE).is_file():
            raise FileNotFoundError(f"{p} is not a NoiseTrainer checkpoint ({TRAINER_STATE_FILE})")
        return p

    def _trainer_state(
        self, loader: Any, *, rng: list[Any], epoch_start_rng: Any, partial: Any
    ) -> dict[str, Any]:
        assert self.scheduler is not None
        return {
            "format": _STATE_FORMAT,
            "format_version": _STATE_VERSION,
            "epochs_done": self.epoch,
            "batches_done": self._batches_done,
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng,
            "epoch_start_rng": epoch_start_rng,
            "partial_epoch": partial,
            "history": self.history,
            "best": self.best,
            "config": self.config.to_dict(),
            "world_size": self.world_size,
        }

    def _write_checkpoint(self, name: str, state: Mapping[str, Any]) -> Path:
        assert self.checkpoint_dir is not None
        root = self.checkpoint_dir
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.", suffix=".tmp"))
        try:
            meta = dict(self.metadata)
            meta["training"] = {
                "epochs_done": self.epoch,
                "step": self.step,
                "sigma": self.config.to_dict()["sigma"],
                "loss": self.config.loss,
                "last": self.history[-1] if self.history else None,
            }
            if isinstance(self.module, Trainable):
                self.module.save(tmp, metadata=meta)
            else:
                atomic_save(trained_state_dict(self.module), tmp / TENSORS_FILE)
            atomic_save(dict(state), tmp / TRAINER_STATE_FILE)
            fsync_dir(tmp)
            _swap_dir(tmp, root / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return root / name

    def _gather_rng(self, loader: Any) -> list[Any]:
        mine = self._rng_state(loader)
        if self.world_size == 1:
            return [mine]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, mine)
        return out

    def _save_epoch(self, loader: Any, record: Mapping[str, Any]) -> None:
        self._check_finite_weights()
        rng = self._gather_rng(loader) if self.checkpoint_dir is not None else []
        improved = self._update_best(record)
        if self.checkpoint_dir is None or not self.is_main:
            self._barrier()
            return
        state = self._trainer_state(loader, rng=rng, epoch_start_rng=None, partial=None)
        last = self._write_checkpoint("last", state)
        if improved:
            tmp = Path(tempfile.mkdtemp(dir=self.checkpoint_dir, prefix=".best.", suffix=".tmp"))
            shutil.rmtree(tmp)
            shutil.copytree(last, tmp)
            _swap_dir(tmp, self.checkpoint_dir / "best")
        self._write_history()
        self._barrier()

    def _save_interrupt(self, loader: Any) -> None:
        """Checkpoint at the last completed optimizer step (rank 0 only, no collectives)."""
        if self.checkpoint_dir is None or not self.is_main or self.scheduler is None:
            return
        if self._updating:
            warnings.warn("interrupted during an optimizer step: no checkpoint written",
                          stacklevel=2)
            return
        try:
            self._check_finite_weights()
        except FloatingPointError as err:
            warnings.warn(f"{err}; no checkpoint written", stacklevel=2)
            return
        partial = self._epoch_state.to_dict() if self._epoch_state is not None else None
        rng = [self._boundary_rng if self._boundary_rng is not None else self._rng_state(loader)]
        state = self._trainer_state(
            loader, rng=rng, epoch_start_rng=self._epoch_start_rng, partial=partial
        )
        path = self._write_checkpoint("last", state)
        self._write_history()
        print(f"checkpoint written to {path} (epoch {self.epoch + 1}, "
              f"{self._batches_done} batches done); resume with fit(..., resume=True)",
              file=sys.stderr, flush=True)

    def _barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def _write_history(self) -> None:
        if self.checkpoint_dir is None or not self.is_main:
            return
        text = "".join(json.dumps(r) + "\n" for r in self.history)
        atomic_save(text.encode(), self.checkpoint_dir / HISTORY_FILE)

    def _update_best(self, record: Mapping[str, Any]) -> bool:
        key = self.config.monitor or ("val_noisy_acc" if "val_noisy_acc" in record else "train_acc")
        value = record.get(key)
        if value is None:
            return False
        minimise = "loss" in key
        if self.best is None or (
            value < self.best["value"] if minimise else value > self.best["value"]
        ):
            self.best = {"metric": key, "value": float(value), "epoch": record["epoch"]}
            return True
        return False

    def _load_checkpoint(self, path: Path) -> dict[str, Any]:
        state = torch.load(path / TRAINER_STATE_FILE, map_location="cpu", weights_only=True)
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(f"{path / TRAINER_STATE_FILE} is not a NoiseTrainer state")
        tensors = torch.load(path / TENSORS_FILE, map_location=self.device, weights_only=True)
        current = self.module.state_dict()
        bad = [k for k in tensors if k not in current or current[k].shape != tensors[k].shape]
        missing = [n for n, p in self.module.named_parameters() if p.requires_grad
                   and n not in tensors]
        if bad or missing:
            raise ValueError(
                f"the checkpoint {path} does not fit this model: "
                + ", ".join((bad + missing)[:10])
            )
        self.module.load_state_dict(tensors, strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        assert self.scheduler is not None
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        saved = dict(state.get("config", {}))
        now = self.config.to_dict()
        changed = [k for k in now if k not in ("epochs",) and saved.get(k, now[k]) != now[k]]
        if changed and self.is_main:
            warnings.warn(
                f"resuming with changed options: {', '.join(changed)} (checkpoint: "
                + ", ".join(f"{k}={saved.get(k)!r}" for k in changed) + ")",
                stacklevel=3,
            )
        self.epoch = int(state["epochs_done"])
        self.step = int(state["step"])
        self._batches_done = int(state["batches_done"])
        self.history = list(state.get("history", []))
        self.best = state.get("best")
        partial = state.get("partial_epoch")
        self._epoch_state = (
            _EpochState.from_dict(partial, self.device) if partial is not None else None
        )
        return state

    def _restore_rng(self, state: Mapping[str, Any], loader: Any) -> None:
        rngs = state.get("rng") or []
        mine = rngs[self.rank] if self.rank < len(rngs) and rngs[self.rank] is not None else None
        if mine is None:
            # This rank's state was not saved (interrupt under torchrun): reseed reproducibly.
            self._seed_everything(offset=("resume", self.step))
            return
        self._set_rng_state(mine, loader)


def _call(obj: Any, hook: str, *args: Any) -> None:
    fn = getattr(obj, hook, None)
    if callable(fn):
        fn(*args)
