"""Noisy copies of one image through the base model, counted by class on the device.

``NoiseSampler`` is the engine under [`SmoothedClassifier`][peftsmoothing.SmoothedClassifier]'s
PREDICT and CERTIFY (docs/design.md, "Performance model"): noise is drawn on the model's device, in
the model's dtype (at least fp32), into a reused buffer; class counts accumulate on the device
(``bincount`` / ``index_add_``), with a slot for samples whose logits are not finite; the model
runs once in eval mode, with merged LoRA weights and (on CUDA convolutional networks)
channels-last, for as long as ``NoiseSampler._inference`` is entered.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Final

import torch
from torch import nn

from .precision import autocast
from .seeds import derive_seed
from .validation import check_positive_int, check_seed

__all__ = ["STREAM_ESTIMATION", "STREAM_PREDICTION", "STREAM_SELECTION", "NoiseSampler"]

#: Keys of the generators derived from one call's seed (``derive_seed(seed, key)``): PREDICT,
#: CERTIFY's selection (``n0``) and estimation (``n``) samples each draw from their own stream.
STREAM_SELECTION: Final[int] = 0
STREAM_ESTIMATION: Final[int] = 1
STREAM_PREDICTION: Final[int] = 2

# Inputs further than this outside [0, 1] are "clearly" not pixel-space images.
_RANGE_TOLERANCE: Final[float] = 1e-3


class NoiseSampler:
    """Samples Gaussian-noised copies of an image through ``base`` and counts its classes.

    The attributes are set by [`SmoothedClassifier`][peftsmoothing.SmoothedClassifier], which is
    one.
    """

    base: nn.Module
    num_classes: int
    sigma: float
    precision: str
    merge: bool
    channels_last: bool | None
    _device_override: torch.device | None
    _depth: int

    # ----------------------------------------------------------------------- device, dtype
    @property
    def device(self) -> torch.device:
        """The device the model runs on (where noise is drawn and counts accumulate)."""
        for t in self._tensors():
            return t.device
        return self._device_override or torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's floating-point parameters (``float32`` if it has none)."""
        for t in self._tensors():
            return t.dtype
        return torch.float32

    def _tensors(self) -> Iterator[torch.Tensor]:
        for t in (*self.base.parameters(), *self.base.buffers()):
            if t.is_floating_point():
                yield t

    def _noise_dtype(self) -> torch.dtype:
        # Noise is added in at least fp32: a reduced-precision model then sees round(x + d),
        # a deterministic function of x + d, so smoothing theory still applies to it.
        dtype = self.dtype
        return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype

    def _use_channels_last(self) -> bool:
        if self.channels_last is not None:
            return self.channels_last
        convs = sum(isinstance(m, nn.Conv2d) for m in self.base.modules())
        return self.device.type == "cuda" and convs > 1

    # ------------------------------------------------------------------------ inference
    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        """Eval mode, merged weights, channels-last and inference mode; restored on exit."""
        if self._depth:
            yield
            return
        modes = [(m, m.training) for m in self.base.modules()]
        restore_format: list[nn.Parameter] = []
        with contextlib.ExitStack() as stack:
            try:
                self.base.eval()
                merged = getattr(self.base, "merged_for_inference", None)
                if self.merge and callable(merged):
                    stack.enter_context(merged())
                if self._use_channels_last():
                    for p in self.base.parameters():
                        if p.ndim == 4 and not p.is_contiguous(memory_format=torch.channels_last):
                            p.data = p.data.contiguous(memory_format=torch.channels_last)
                            restore_format.append(p)
                stack.enter_context(torch.inference_mode())
                self._depth += 1
                yield
            finally:
                self._depth = 0
                stack.close()
                for p in restore_format:
                    p.data = p.data.contiguous()
                for module, mode in modes:
                    module.training = mode

    def _prepare_input(self, x: object) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor image (C, H, W), got {type(x).__name__}")
        if x.ndim != 3:
            hint = "; for a batch of one image pass x[0]" if x.ndim == 4 and len(x) == 1 else ""
            raise ValueError(
                f"x must be one image of shape (C, H, W), got shape {tuple(x.shape)}{hint}"
            )
        if not x.is_floating_point():
            raise ValueError(
                f"x must be a floating-point image in [0, 1], got dtype {x.dtype} "
                "(convert with x.float() / 255)"
            )
        if x.numel() == 0:
            raise ValueError(f"x is empty (shape {tuple(x.shape)})")
        lo, hi = (float(v) for v in torch.stack(torch.aminmax(x.detach())).tolist())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("x contains non-finite values (nan or inf)")
        if lo < -_RANGE_TOLERANCE or hi > 1.0 + _RANGE_TOLERANCE:
            warnings.warn(
                f"image values span [{lo:.3g}, {hi:.3g}], outside [0, 1]: the input is probably "
                "already normalized. SmoothedClassifier adds noise in pixel space and expects "
                "[0, 1] images with normalization inside the model; otherwise sigma and the "
                "certified radius are in the wrong units.",
                UserWarning,
                stacklevel=3,
            )
        return x.detach().to(device=self.device, dtype=self._noise_dtype())

    # ------------------------------------------------------------------------- counting
    def vote_counts(
        self,
        x: torch.Tensor,
        n: int = 1000,
        batch_size: int = 1000,
        seed: int | None = None,
    ) -> torch.Tensor:
        """How often the base model predicts each class on ``n`` noisy copies of ``x``.

        These are the counts behind
        [`SmoothedClassifier.predict`][peftsmoothing.SmoothedClassifier.predict]: the same
        noise stream, so ``predict_from_counts(vote_counts(x, n, b, seed), alpha)`` is
        ``predict(x, n, alpha, b, seed)``.

        Args:
            x: One image (C, H, W) in [0, 1].
            n: Number of noise samples.
            batch_size: Noisy images per forward pass.
            seed: Seed of the noise; ``None`` draws one from torch's global generator.

        Returns:
            An int64 CPU tensor of shape ``(num_classes,)`` summing to ``n``.

        Raises:
            ValueError: For invalid arguments or inputs (see ``predict``).
            FloatingPointError: If the model returns a non-finite logit on any sample.

        Examples:
            >>> import torch, peftsmoothing as ps
            >>> from torch import nn
            >>> class Constant(nn.Module):
            ...     def forward(self, x):
            ...         return torch.tensor([0.0, 1.0]).repeat(len(x), 1)
            >>> smoothed = ps.SmoothedClassifier(Constant(), 2, sigma=0.5)
            >>> smoothed.vote_counts(torch.rand(1, 4, 4), n=50, seed=0).tolist()
            [0, 50]
        """
        n_ = check_positive_int(n, "n")
        b = check_positive_int(batch_size, "batch_size")
        s = self._resolve_seed(seed)
        x_dev = self._prepare_input(x)
        with self._inference():
            counts = self._sample_counts(x_dev, n_, b, self._generator(s, STREAM_PREDICTION))
        return self._class_counts(counts.cpu(), n_)

    @staticmethod
    def _resolve_seed(seed: object) -> int:
        checked = check_seed(seed)
        if checked is None:  # follows torch.manual_seed
            return int(torch.randint(0, 2**62, (), dtype=torch.long).item())
        return checked

    def _generator(self, seed: int, key: int) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(derive_seed(seed, key))
        return gen

    def _sample_counts(
        self, x: torch.Tensor, num: int, batch_size: int, gen: torch.Generator
    ) -> torch.Tensor:
        """Class counts of the base model on ``num`` noisy copies of ``x`` (on the device).

        The result has ``num_classes + 1`` entries: the last counts the samples on which the
        model returned a non-finite logit. Those samples vote for no class (``argmax`` would
        pick a NaN as the maximum); ``_class_counts`` refuses to use counts that hold any.
        Counting them on the device costs no host synchronisation.
        """
        device = self.device
        nonfinite_slot = self.num_classes
        counts = torch.zeros(self.num_classes + 1, dtype=torch.long, device=device)
        channels_last = self._use_channels_last()
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        buffer = torch.empty(
            (min(batch_size, num), *x.shape), dtype=x.dtype, device=device,
            memory_format=memory_format,
        )  # fmt: skip
        model_dtype = self.dtype
        amp = autocast(device, self.precision)
        ones: torch.Tensor | None = None
        remaining = num
        while remaining > 0:
            size = min(batch_size, remaining)
            batch = buffer[:size]
            batch.normal_(0.0, self.sigma, generator=gen).add_(x)
            inputs = batch if batch.dtype == model_dtype else batch.to(model_dtype)
            with amp:
                logits = self.base(inputs)
            if remaining == num:
                self._check_logits(logits, size)
            finite = torch.isfinite(logits).all(dim=1)
            predictions = torch.where(finite, logits.argmax(dim=1), nonfinite_slot)
            if device.type == "cpu":
                counts += torch.bincount(predictions, minlength=self.num_classes + 1)
            else:
                # CUDA's bincount reads the input's min/max on the host (a sync per batch);
                # index_add_ computes the same counts without leaving the device.
                if ones is None or ones.numel() < size:
                    ones = torch.ones(size, dtype=torch.long, device=device)
                counts.index_add_(0, predictions, ones[:size])
            remaining -= size
        return counts

    def _sample_chunks(
        self, chunks: Sequence[tuple[torch.Tensor, int, torch.Generator]]
    ) -> torch.Tensor:
        """Class counts of several noise chunks, all in one forward pass (packing).

        Chunk ``i`` is ``size_i`` noisy copies of its image ``x_i`` drawn from its own
        generator, so its noise does not depend on the other chunks of the batch (the same
        values as drawing ``size_i`` samples alone: a dense slice of the same shape). The
        model's outputs may still differ in the last bits with the batch's composition.

        Args:
            chunks: ``(x, size, generator)`` per chunk; ``x`` already on the device in the
                noise dtype (``_prepare_input``), all of one shape.

        Raises:
            ValueError: If the images differ in shape, dtype or device (broadcasting would
                smooth one image at another's shape).

        Returns:
            Counts of shape ``(len(chunks), num_classes + 1)`` on the device (the last column
            counts non-finite logits, as in ``_sample_counts``).
        """
        device = self.device
        width = self.num_classes + 1
        sizes = [size for _, size, _ in chunks]
        total = sum(sizes)
        first = chunks[0][0]
        shape = first.shape
        if any(x.shape != shape or x.dtype != first.dtype or x.device != first.device
               for x, _, _ in chunks):  # fmt: skip
            raise ValueError(
                "the chunks of one batch must be images of one shape, dtype and device; got "
                f"{sorted({(tuple(x.shape), str(x.dtype)) for x, _, _ in chunks})}"
            )
        memory_format = (
            torch.channels_last if self._use_channels_last() else torch.contiguous_format
        )
        batch = torch.empty(
            (total, *shape), dtype=chunks[0][0].dtype, device=device, memory_format=memory_format
        )
        offset = 0
        for x, size, gen in chunks:
            batch[offset : offset + size].normal_(0.0, self.sigma, generator=gen).add_(x)
            offset += size
        model_dtype = self.dtype
        inputs = batch if batch.dtype == model_dtype else batch.to(model_dtype)
        with autocast(device, self.precision):
            logits = self.base(inputs)
        self._check_logits(logits, total)
        finite = torch.isfinite(logits).all(dim=1)
        predictions = torch.where(finite, logits.argmax(dim=1), self.num_classes)
        segment = torch.repeat_interleave(
            torch.arange(len(chunks), device=device), torch.tensor(sizes, device=device)
        )
        flat = segment * width + predictions
        counts = torch.zeros(len(chunks) * width, dtype=torch.long, device=device)
        counts.index_add_(0, flat, torch.ones_like(flat))
        return counts.view(len(chunks), width)

    def _class_counts(self, counts: torch.Tensor, num: int) -> torch.Tensor:
        """The per-class part of host-side counts from ``_sample_counts``.

        Raises:
            FloatingPointError: If the model returned a non-finite logit on any sample: no
                vote, certificate or prediction may come from such a model.
        """
        bad = int(counts[self.num_classes])
        if bad:
            raise FloatingPointError(
                f"the base model ({type(self.base).__name__}) returned non-finite logits "
                f"(nan or inf) on {bad} of {num} noise samples; no prediction or certificate "
                "can be drawn from it (a diverged fine-tune? check the model's outputs on "
                "noisy inputs, or its precision)"
            )
        return counts[: self.num_classes]

    def _check_logits(self, logits: object, size: int) -> None:
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != size:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
            raise ValueError(
                f"the base model must return logits of shape (batch, num_classes); for a batch "
                f"of {size} it returned {shape}"
            )
        if logits.shape[1] != self.num_classes:
            raise ValueError(
                f"num_classes={self.num_classes} disagrees with the model, which returns "
                f"{logits.shape[1]} outputs per image"
            )
