"""Noisy copies of images through the base model, counted by class on the device.

``NoiseSampler`` is the one place where smoothing's noise meets the model (docs/design.md,
"Performance model"): noise is drawn on the model's device, in the model's dtype (at least
fp32), straight into the batch; class counts accumulate on the device (``index_add_``), with a
slot for samples whose logits are not finite; the model runs in eval mode, with merged LoRA
weights and (on CUDA convolutional networks) channels-last, while ``NoiseSampler.inference``
is entered. The certification engine (``peftsmoothing.certify.engine``) and PREDICT's vote counts
are built on ``NoiseSampler.count``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Final, NamedTuple

import torch
from torch import nn

from ..core.noise import add_noise
from ..core.precision import PRECISIONS, autocast, eval_mode
from ..core.seeds import derive_seed
from ..core.validation import check_choice, check_int, check_sigma

__all__ = [
    "STREAM_ESTIMATION",
    "STREAM_PREDICTION",
    "STREAM_SELECTION",
    "Chunk",
    "NoiseSampler",
    "resolve_seed",
]

#: Keys of the generators derived from one call's seed (``derive_seed(seed, key)``): PREDICT,
#: CERTIFY's selection (``n0``) and estimation (``n``) samples each draw from their own stream.
STREAM_SELECTION: Final[int] = 0
STREAM_ESTIMATION: Final[int] = 1
STREAM_PREDICTION: Final[int] = 2

# Inputs further than this outside [0, 1] are "clearly" not pixel-space images.
_RANGE_TOLERANCE: Final[float] = 1e-3


def resolve_seed(seed: object) -> int:
    """A checked seed, or (for ``None``) one drawn from torch's global generator.

    Examples:
        >>> resolve_seed(7)
        7
        >>> isinstance(resolve_seed(None), int)
        True
    """
    if seed is None:  # drawn from torch's global generator, as it would seed
        return int(torch.randint(0, 2**62, ()).item())
    return check_int(seed, "seed", minimum=0)


class Chunk(NamedTuple):
    """``size`` noisy copies of one prepared image ``x``, drawn from ``generator``."""

    x: torch.Tensor
    size: int
    generator: torch.Generator


class NoiseSampler:
    """Draws Gaussian-noised copies of images through ``base`` and counts its classes.

    Args:
        base: The base classifier: images in [0, 1], shape (B, C, H, W), to logits
            (B, num_classes), normalization inside it.
        num_classes: Number of classes; must equal the width of the model's output.
        sigma: Noise standard deviation, in pixel units of [0, 1] images.
        device: Move the model to this device; default: where its parameters are.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast (noise stays in >= fp32).
        merge: Fold LoRA weights in while sampling (``merged_for_inference()``, if any).
        channels_last: Channels-last while sampling; ``None``: on CUDA for conv nets.

    Raises:
        TypeError: If ``base`` is not an ``nn.Module``.
        ValueError: For ``sigma <= 0``, ``num_classes < 2`` or an unknown ``precision``.

    Examples:
        >>> sampler = NoiseSampler(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), 2, 0.5)
        >>> x = sampler.prepare(torch.rand(3, 2, 2))
        >>> with sampler.inference():
        ...     counts = sampler.count([Chunk(x, 10, sampler.generator(0, 0))])
        >>> counts.shape, int(counts.sum())
        (torch.Size([1, 3]), 10)
    """

    def __init__(
        self,
        base: nn.Module,
        num_classes: int,
        sigma: float,
        *,
        device: torch.device | str | None = None,
        precision: str = "fp32",
        merge: bool = True,
        channels_last: bool | None = None,
    ) -> None:
        if not isinstance(base, nn.Module):
            raise TypeError(f"base must be an nn.Module, got {type(base).__name__}")
        self.base: Final[nn.Module] = base
        self.num_classes: Final[int] = check_int(num_classes, "num_classes", minimum=2)
        self.sigma: Final[float] = check_sigma(sigma)
        self.precision: Final[str] = check_choice(precision, "precision", PRECISIONS)
        self.merge: Final[bool] = bool(merge)
        self.channels_last: Final[bool | None] = channels_last
        self._device = torch.device(device) if device is not None else None
        if self._device is not None:
            base.to(self._device)
        self._depth = 0
        self._buffer: tuple[tuple[Any, ...], torch.Tensor] | None = None  # see ``_batch``

    # ----------------------------------------------------------------------- device, dtype
    @property
    def device(self) -> torch.device:
        """The device the model runs on (where noise is drawn and counts accumulate)."""
        tensor = self._float_tensor()
        return (self._device or torch.device("cpu")) if tensor is None else tensor.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's floating-point parameters (``float32`` if it has none)."""
        tensor = self._float_tensor()
        return torch.float32 if tensor is None else tensor.dtype

    def _float_tensor(self) -> torch.Tensor | None:
        tensors = itertools.chain(self.base.parameters(), self.base.buffers())
        return next((t for t in tensors if t.is_floating_point()), None)

    def _use_channels_last(self) -> bool:
        if self.channels_last is not None:
            return self.channels_last
        convs = sum(isinstance(m, nn.Conv2d) for m in self.base.modules())
        return self.device.type == "cuda" and convs > 1

    # ------------------------------------------------------------------------ inference
    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        """Eval mode, merged weights, channels-last and inference mode; restored on exit.

        Re-entering it while entered does nothing (the outermost entry restores).

        Examples:
            >>> sampler = NoiseSampler(nn.Linear(2, 2).train(), 2, 0.5)
            >>> with sampler.inference():
            ...     sampler.base.training
            False
            >>> sampler.base.training
            True
        """
        if self._depth:
            yield
            return
        restore_format: list[nn.Parameter] = []
        try:
            with contextlib.ExitStack() as stack:  # closed (weights unmerged) before the rest
                stack.enter_context(eval_mode(self.base))  # modes back after the unmerge
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
            self._buffer = None  # a large batch is not held after sampling
            for p in restore_format:
                p.data = p.data.contiguous()

    def generator(self, seed: int, stream: int) -> torch.Generator:
        """A generator on the model's device seeded with ``derive_seed(seed, stream)``.

        Examples:
            >>> sampler = NoiseSampler(nn.Linear(2, 2), 2, 0.5)
            >>> a, b = sampler.generator(3, STREAM_SELECTION), sampler.generator(3, 0)
            >>> torch.equal(torch.rand(2, generator=a), torch.rand(2, generator=b))
            True
        """
        return torch.Generator(device=self.device).manual_seed(derive_seed(seed, stream))

    def prepare(self, x: object) -> torch.Tensor:
        """Check one image (C, H, W) in [0, 1] and move it to the device, in the noise dtype.

        Raises:
            TypeError: If ``x`` is not a tensor.
            ValueError: If it is not one (C, H, W) floating-point image with finite values.

        Examples:
            >>> NoiseSampler(nn.Linear(2, 2), 2, 0.5).prepare(torch.zeros(1, 2, 2)).shape
            torch.Size([1, 2, 2])
        """
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
        lo, hi = torch.stack(torch.aminmax(x.detach())).tolist()
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("x contains non-finite values (nan or inf)")
        if lo < -_RANGE_TOLERANCE or hi > 1.0 + _RANGE_TOLERANCE:
            warnings.warn(
                f"image values span [{lo:.3g}, {hi:.3g}], outside [0, 1]: the input is probably "
                "already normalized. SmoothedClassifier adds noise in pixel space and expects "
                "[0, 1] images with normalization inside the model; otherwise sigma and the "
                "certified radius are in the wrong units.",
                stacklevel=4,
            )
        # Noise is added in at least fp32: a reduced-precision model then sees round(x + d),
        # a deterministic function of x + d, so smoothing theory still applies to it.
        dtype = torch.promote_types(self.dtype, torch.float32)
        return x.detach().to(device=self.device, dtype=dtype)

    # ------------------------------------------------------------------------- counting
    def count(self, chunks: Sequence[Chunk]) -> torch.Tensor:
        """Class counts of several noise chunks, all in one forward pass, on the device.

        Chunk ``i`` is ``size_i`` noisy copies of its image drawn from its own generator into
        its slice of the batch, so its noise does not depend on the other chunks (the same
        values as drawing ``size_i`` samples alone). The model's outputs may still differ in
        the last bits with the batch's composition. No host synchronisation.

        Args:
            chunks: ``Chunk(x, size, generator)`` per chunk, ``x`` from ``prepare``; all of
                one shape, dtype and device. Call inside ``inference()``.

        Returns:
            Counts of shape ``(len(chunks), num_classes + 1)`` on the device; the last column
            counts samples whose logits were not finite (they vote for no class; see
            ``class_counts``).

        Raises:
            ValueError: If the images differ in shape, dtype or device (broadcasting would
                smooth one image at another's shape), or the model's output is not
                ``(batch, num_classes)``.

        Examples:
            >>> sampler = NoiseSampler(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), 2, 0.5)
            >>> x = sampler.prepare(torch.rand(1, 2, 2))
            >>> with sampler.inference():
            ...     c = sampler.count([Chunk(x, 5, sampler.generator(0, 0)),
            ...                        Chunk(x, 7, sampler.generator(1, 0))])
            >>> c.sum(dim=1).tolist()
            [5, 7]
        """
        first = chunks[0].x
        if len({(c.x.shape, c.x.dtype, c.x.device) for c in chunks}) > 1:
            raise ValueError(
                "the chunks of one batch must be images of one shape, dtype and device; got "
                f"{sorted({(tuple(c.x.shape), str(c.x.dtype)) for c in chunks})}"
            )
        device = self.device
        sizes = [c.size for c in chunks]
        batch = self._batch((sum(sizes), *first.shape), first.dtype)
        for chunk, part in zip(chunks, batch.split(sizes), strict=True):
            add_noise(part, chunk.x, self.sigma, chunk.generator)
        with autocast(device, self.precision):
            logits = self.base(batch.to(self.dtype))  # no copy when the dtypes agree
        self._check_logits(logits, len(batch))
        finite = torch.isfinite(logits).all(dim=1)
        predictions = torch.where(finite, logits.argmax(dim=1), self.num_classes)
        counts = torch.zeros(len(chunks), self.num_classes + 1, dtype=torch.long, device=device)
        # index_add_, not bincount: CUDA's bincount reads min/max on the host (a sync).
        for row, votes in zip(counts, predictions.split(sizes), strict=True):
            row.index_add_(0, votes, torch.ones_like(votes))
        return counts

    def _batch(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A batch to draw noise into: a prefix of the buffer kept while ``inference()`` is
        entered (allocated again only when a batch is larger or of another kind), so the hot
        loop does not allocate a batch per forward pass."""
        layout = torch.channels_last if self._use_channels_last() else torch.contiguous_format
        kind = (shape[1:], dtype, self.device, layout, torch.is_inference_mode_enabled())
        if self._buffer is None or self._buffer[0] != kind or len(self._buffer[1]) < shape[0]:
            buffer = torch.empty(shape, dtype=dtype, device=self.device, memory_format=layout)
            if not self._depth:
                return buffer
            self._buffer = (kind, buffer)
        return self._buffer[1][: shape[0]]

    def class_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """The per-class part of one row of ``count``'s result, on the host.

        Raises:
            FloatingPointError: If the model returned a non-finite logit on any sample: no
                vote, certificate or prediction may come from such a model.

        Examples:
            >>> NoiseSampler(nn.Linear(2, 2), 2, 0.5).class_counts(torch.tensor([3, 4, 0]))
            tensor([3, 4])
        """
        if bad := int(counts[self.num_classes]):
            raise FloatingPointError(
                f"the base model ({type(self.base).__name__}) returned non-finite logits "
                f"(nan or inf) on {bad} of {int(counts.sum())} noise samples; no prediction or "
                "certificate can be drawn from it (a diverged fine-tune? check the model's "
                "outputs on noisy inputs, or its precision)"
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
