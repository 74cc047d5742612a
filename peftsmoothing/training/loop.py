"""``NoiseTrainer``: fine-tune the trainable parameters of a model on Gaussian-noised images.

The model takes images in [0, 1] (docs/design.md, invariant 1); the trainer adds
``sigma * randn`` to them on the model's device and optimises only the parameters with
``requires_grad`` (docs/design.md, invariant 3: the frozen backbone gets no gradient and no
optimizer state). Losses come from ``training/losses.py``, the options from
[`TrainerConfig`][peftsmoothing.TrainerConfig]; checkpoints (``checkpoint``) are atomic and
resumable; ``torchrun`` support is in ``distributed``.

It depends neither on the methods nor on smoothing: a [`PEFTModel`][peftsmoothing.PEFTModel]
is recognised by the ``peftsmoothing.core.trainable.Trainable`` protocol.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..core.params import freeze_frozen_batchnorm
from ..core.precision import autocast
from ..core.registry import did_you_mean
from . import checkpoint as ckpt
from .batches import BatchGuard
from .build import OptimizerFactory, make_optimizer, make_reference, make_scheduler
from .callbacks import call_hook
from .config import (
    CUSTOM_OPTIMIZER,
    OPTION_NAMES,
    TrainerConfig,
    config_from_keywords,
    trainer_signature,
)
from .distributed import Topology, init_process_group, release_process_group, shard_loader, wrap_ddp
from .evaluate import evaluate as _evaluate
from .losses import LossContext, LossOutput, LossSpec, get_loss
from .metrics import EpochState, epoch_record
from .noise import TrainingNoise
from .nonfinite import NonfiniteGuard
from .progress import epoch_line, make_bar, set_postfix
from .rng import rng_state, seed_everything, set_rng_state
from .state import TrainState

__all__ = ["NoiseTrainer"]


class NoiseTrainer:
    """Fine-tune a model's trainable parameters on Gaussian-noised images.

    Every batch ``x`` (float images in [0, 1]) is moved to the device and ``x + sigma * randn``
    is fed to the model; only parameters with ``requires_grad`` are optimised. Works with any
    ``nn.Module`` that takes [0, 1] images and returns logits, and with a
    [`PEFTModel`][peftsmoothing.PEFTModel] (checkpoints load with ``ps.load``). Under torchrun
    (``RANK`` / ``WORLD_SIZE`` set) it initialises ``torch.distributed`` (gloo on CPU, nccl on
    CUDA), wraps the model in DDP and shards the loaders; only rank 0 logs and writes files.

    The options (``sigma``, ``epochs``, ``lr``, ``weight_decay``, ``optimizer``, ``schedule``,
    ``warmup_steps``, ``grad_accum``, ``max_grad_norm``, ``precision``, ``loss``,
    ``loss_options``, ``num_noise``, ``seed``, ``log_every``, ``monitor``, ``nonfinite``) are
    the fields of [`TrainerConfig`][peftsmoothing.TrainerConfig], documented there; pass them as
    keywords or all at once as ``config=``.

    Args:
        model: The model; images in [0, 1] in, logits out. Moved to ``device``.
        sigma: Noise level(s) in pixel space; with a list, one is drawn per batch.
        optimizer: ``"adamw"`` (default), ``"adam"``, ``"sgd"``, or a callable
            ``params -> torch.optim.Optimizer`` (then ``config.optimizer`` is ``"custom"``).
        consistency_weight: The consistency loss's lambda (an alias of
            ``loss_options={"consistency_weight": ...}``; default 10, as in the paper).
        device: Default: ``cuda:<LOCAL_RANK>`` if CUDA is available, else the CPU.
        checkpoint_dir: Where ``last/``, ``best/`` and ``history.jsonl`` go (``None``: nowhere).
        callbacks: [`Callback`][peftsmoothing.Callback] objects (any object with some of its
            methods).
        progress: ``True``: tqdm bar; ``False``: silent; ``None`` (default): a bar when stderr is
            a terminal, else one log line per epoch.
        metadata: JSON-serialisable information stored in the checkpoints' model config.
        reference_model: Frozen classifier for losses that need one (``stability``). Default:
            for a model with a pixel-space module (a denoiser), the model without it; otherwise
            a frozen copy of the model as it is now.
        config: All the options as a [`TrainerConfig`][peftsmoothing.TrainerConfig]; the option
            keywords must then keep their defaults.
        **options: The options of [`TrainerConfig`][peftsmoothing.TrainerConfig] as keywords
            (``epochs=``, ``lr=``, ``loss_options=``, ...; ``None``: the option's default).

    Raises:
        ValueError: For a model with nothing trainable, sigma < 0, or an unknown loss,
            optimizer, schedule or precision.
        TypeError: For an option keyword given together with ``config`` (naming it), or an
            option the loss does not have.

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
        >>> config = ps.TrainerConfig(sigma=0.25, epochs=1)
        >>> ps.NoiseTrainer(model, config=config, progress=False).config.epochs
        1
    """

    def __init__(
        self, model: nn.Module, sigma: float | Sequence[float] = 0.5, *,
        optimizer: str | OptimizerFactory = "adamw", consistency_weight: float | None = None,
        device: str | torch.device | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None, callbacks: Sequence[Any] = (),
        progress: bool | None = None, metadata: Mapping[str, Any] | None = None,
        reference_model: nn.Module | None = None, config: TrainerConfig | None = None,
        **options: Any,
    ) -> None:
        unknown = sorted(set(options) - OPTION_NAMES)
        if unknown:
            hint = did_you_mean(unknown[0], OPTION_NAMES)
            raise TypeError(f"NoiseTrainer got unexpected keyword(s): {', '.join(unknown)}{hint}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"NoiseTrainer expects an nn.Module, got {type(model).__name__}")
        factory = optimizer if callable(optimizer) else None  # recorded as "custom"
        name = _DEFAULTS["optimizer"] if factory is not None else optimizer
        keywords = {**options, "sigma": sigma, "optimizer": name,
                    "consistency_weight": consistency_weight}
        self.config = config_from_keywords(keywords, _DEFAULTS, config)
        if factory is not None:
            self.config = dataclasses.replace(self.config, optimizer=CUSTOM_OPTIMIZER)
        self.loss_spec: LossSpec = get_loss(self.config.loss)
        self.loss_options = self.loss_spec.resolve_options(self.config.loss_options)
        self.num_noise = self.config.num_noise or self.loss_spec.num_noise
        self.sigmas = self.config.sigmas

        # ----------------------------------------------------------- distributed + device
        self.topology = Topology.from_env()
        self.world_size, self.rank, self.local_rank = dataclasses.astuple(self.topology)
        self.device = torch.device(device) if device is not None else self.topology.default_device()
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)
        self._owns_process_group = init_process_group(self.topology, self.device)
        bf16_cuda = self.config.precision == "bf16" and self.device.type == "cuda"
        if bf16_cuda and not torch.cuda.is_bf16_supported():
            raise ValueError("precision='bf16' is not supported on this GPU; use 'fp16'")

        self.module = model.to(self.device)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError(
                "the model has nothing trainable (every parameter has requires_grad=False); "
                "wrap it with peftsmoothing.wrap(model, method=...) or unfreeze some parameters")
        self.reference = (make_reference(self.module, reference_model, self.device)
                          if self.loss_spec.needs_reference else None)
        self.model: nn.Module = wrap_ddp(self.module, self.topology, self.device)
        self.optimizer = make_optimizer(self.config, self.params, factory)
        fp16 = self.config.precision == "fp16"  # autocast with a gradient scaler
        self.scaler = torch.amp.GradScaler(self.device.type) if fp16 else None
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self._nonfinite = NonfiniteGuard(self.module, self.params, self.config.nonfinite,
                                         self.topology, check_gradients=self.scaler is None)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if self.checkpoint_dir is not None and self.is_main:
            ckpt.prepare_dir(self.checkpoint_dir)  # fail before training, not after an epoch
        self.callbacks = list(callbacks)
        self.progress = progress
        self.metadata = dict(metadata or {})

        self.state = TrainState()  # what checkpoints save and restore
        self.should_stop = False
        self._noise = TrainingNoise(self.sigmas, self.config.seed, self.device)
        dtype = self.params[0].dtype if self.params[0].is_floating_point() else torch.float32
        self._prepare_batch = BatchGuard(self.module, self.device, dtype, self.config.precision)

    # ------------------------------------------------------------------ small helpers
    @property
    def epoch(self) -> int:
        """Completed epochs (``state.epoch``)."""
        return self.state.epoch

    @property
    def step(self) -> int:
        """Optimizer steps taken (``state.step``)."""
        return self.state.step

    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per completed epoch (``state.history``)."""
        return self.state.history

    @property
    def best(self) -> dict[str, Any] | None:
        """The monitored metric's best value so far (``state.best``)."""
        return self.state.best

    @property
    def is_main(self) -> bool:
        """Whether this process logs and writes files (rank 0)."""
        return self.rank == 0

    def _prepare_loader(self, loader: Iterable[Any], *, train: bool) -> Iterable[Any]:
        """Under torch.distributed, give each rank its shard of a plain DataLoader."""
        return shard_loader(loader, self.topology, train=train, seed=self.config.seed)

    # ------------------------------------------------------------------ fit
    def fit(self, train_loader: Iterable[Any], val_loader: Iterable[Any] | None = None, *,
            resume: bool | str | os.PathLike[str] = False) -> list[dict[str, Any]]:
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

        Examples:
            >>> import torch, peftsmoothing as ps
            >>> from torch import nn
            >>> data = [(torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 0, 1]))] * 2
            >>> t = ps.NoiseTrainer(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), epochs=1,
            ...                     progress=False)
            >>> [record["step"] for record in t.fit(data)]
            [2]
        """
        loader = self._prepare_loader(train_loader, train=True)
        val = self._prepare_loader(val_loader, train=False) if val_loader is not None else None
        try:
            n_batches = len(loader)  # type: ignore[arg-type]
        except TypeError:
            raise ValueError("train_loader must have a length (len(loader))") from None
        c = self.config
        total_steps = max(1, math.ceil(n_batches / c.grad_accum)) * c.epochs
        self.scheduler = make_scheduler(self.optimizer, c, total_steps)
        quiet = not self.is_main or self.progress is False
        if not (resume and ckpt.resume(self, resume, quiet=quiet)):  # else: its TrainState
            seed_everything(c.seed, self.rank)
            self.state = TrainState()
        elif self.state.batches_done == 0:  # (mid-epoch: once the epoch's batches are replayed)
            ckpt.restore_rng(self, loader)
        self.should_stop = False
        call_hook(self.callbacks, "on_fit_start", self)

        with ckpt.sigint_guard(self):
            try:
                while self.epoch < c.epochs and not self.should_stop:
                    record = self._run_epoch(loader, n_batches)
                    if record is None:  # stopped mid-epoch
                        ckpt.save_interrupt(self, loader)
                        break
                    if val is not None:
                        metrics = self.evaluate(val)
                        record.update({f"val_{k}": v for k, v in metrics.items() if k != "n"})
                    self.state.end_epoch(record)
                    if not quiet:
                        print(epoch_line(record, c.epochs), file=sys.stderr, flush=True)
                    call_hook(self.callbacks, "on_epoch_end", self, record)
                    ckpt.save_epoch(self, loader, record)
            except KeyboardInterrupt:
                ckpt.save_interrupt(self, loader)
                raise
        call_hook(self.callbacks, "on_fit_end", self, self.history)
        return self.history

    def _run_epoch(self, loader: Iterable[Any], n_batches: int) -> dict[str, Any] | None:
        """One epoch; returns its history record, or ``None`` when stopped mid-epoch."""
        c = self.config
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)  # type: ignore[union-attr]
        state, skip = self.state, self.state.batches_done  # skip: resumed mid-epoch
        if skip and state.epoch_start_rng is not None:
            set_rng_state(state.epoch_start_rng, loader)
        state.epoch_start_rng = rng_state(loader)
        it = iter(loader)
        for _ in range(skip):  # replay the loader order up to the stop
            next(it)
        if skip:
            ckpt.restore_rng(self, loader)
        if state.epoch_sums is None:
            state.epoch_sums = EpochState(self.device)
        st = state.epoch_sums
        state.boundary_rng = rng_state(loader)
        self.model.train()
        freeze_frozen_batchnorm(self.module)
        self._nonfinite.start()
        bar = make_bar(self.progress, self.is_main, n_batches, skip,
                       f"epoch {self.epoch + 1}/{c.epochs}")
        t0 = time.perf_counter() - st.elapsed  # a resumed epoch's time goes on
        ctx = LossContext(sigma=0.0, options=self.loss_options, module=self.module,
                          reference=self.reference)
        try:
            for b, batch in enumerate(it, start=skip):
                x, y = self._prepare_batch(batch, first=b == skip)
                ctx.sigma = self._noise.sigma(self.rank, self.epoch, b)
                noisy = self._noise.noisy(x, ctx.sigma, self.num_noise, self.rank, self.epoch, b)
                start = b - b % c.grad_accum
                size = min(c.grad_accum, n_batches - start)
                boundary = b + 1 - start >= size
                no_sync = not boundary and self.model is not self.module  # DDP: sync at the step
                with self.model.no_sync() if no_sync else nullcontext():  # type: ignore[operator]
                    with autocast(self.device, c.precision):
                        out: LossOutput = self.loss_spec.fn(self.model, x, noisy, y, ctx)
                    loss = out.loss / size
                    (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
                st.add(out, y, x.shape[0])
                if not boundary:
                    continue
                dropped = self._nonfinite.dropped(st.bad, epoch=self.epoch + 1, batch=b + 1)
                if not dropped:
                    self._optimizer_step()
                self.optimizer.zero_grad(set_to_none=True)  # a dropped step's gradients too
                st.end_step(dropped=dropped)
                state.batches_done = b + 1
                state.boundary_rng = rng_state(loader)
                if bar is not None:
                    bar.update(size)
                    if self.step % c.log_every == 0:
                        set_postfix(bar, st, time.perf_counter() - t0)
                call_hook(self.callbacks, "on_step_end", self)
                if state.interrupted:
                    raise KeyboardInterrupt
                if self.should_stop and state.batches_done < n_batches:
                    return None  # the epoch's time is kept by ``finally``
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        finally:
            st.elapsed = time.perf_counter() - t0
            if bar is not None:
                bar.close()
        lr = float(self.optimizer.param_groups[0]["lr"])
        return epoch_record(st, epoch=self.epoch + 1, step=self.step, lr=lr, topology=self.topology)

    def _optimizer_step(self) -> None:
        """Unscale (fp16), clip, step, advance the schedule and ``step``."""
        assert self.scheduler is not None
        self.state.updating = True
        if self.config.max_grad_norm is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.state.step += 1
        self.state.updating = False

    # ------------------------------------------------------------------ evaluation, close
    def evaluate(self, loader: Iterable[Any], *, sigma: float | None = None) -> dict[str, float]:
        """Clean and noisy accuracy and loss of the model on ``loader``.

        The noise is seeded (``seed``), so repeated evaluations see the same noise and the
        training random state is untouched. Under torch.distributed the loader is sharded and
        the results are summed over the ranks (see ``evaluate.evaluate``).

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
        return _evaluate(  # a DataLoader is sharded (under torchrun): sum over the ranks
            self.module, self._prepare_loader(loader, train=False),
            sigma=max(self.sigmas) if sigma is None else sigma,
            prepare_batch=self._prepare_batch, precision=self.config.precision,
            seed=self.config.seed, rank=self.rank,
            topology=self.topology if isinstance(loader, DataLoader) else None)

    def close(self) -> None:
        """Release ``DistributedDataParallel`` and, if the trainer created it, the process group.

        Call it at the end of a ``torchrun`` script: a DDP wrapper that outlives its process
        group can abort the process at exit. On a single process it does nothing.

        Examples:
            >>> import peftsmoothing as ps
            >>> from torch import nn
            >>> ps.NoiseTrainer(nn.Linear(2, 2), sigma=0.5).close()
        """
        self.model = self.module
        self._owns_process_group = release_process_group(self._owns_process_group)


_SIGNATURE = trainer_signature(NoiseTrainer.__init__)
NoiseTrainer.__init__.__signature__ = _SIGNATURE  # type: ignore[attr-defined]
#: The default of every keyword: what the option keywords must keep when ``config`` is given.
_DEFAULTS = {name: p.default for name, p in _SIGNATURE.parameters.items()}
