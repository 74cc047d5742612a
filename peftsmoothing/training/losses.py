"""Training losses for [`peftsmoothing.NoiseTrainer`][peftsmoothing.NoiseTrainer], and the registry
that holds them.

A loss is a function ``fn(model, clean, noisy, labels, ctx) -> LossOutput``:

* ``model``: the model being trained (possibly wrapped in ``DistributedDataParallel``; call it,
  and use ``ctx.module`` to reach the unwrapped module's attributes);
* ``clean``: the batch of [0, 1] images, shape ``(B, C, H, W)``;
* ``noisy``: a list of ``num_noise`` noisy copies ``clean + sigma * randn`` (pixel space);
* ``labels``: integer class labels, shape ``(B,)``;
* ``ctx``: a [`LossContext`][peftsmoothing.LossContext] (sigma of the batch, the loss options, the
frozen reference
  classifier for losses that need one).

It returns the scalar loss and, if it has them, the logits on the noisy copies (used for the
running accuracy). Losses register with [`register_loss`][peftsmoothing.register_loss], so a new
objective (e.g. the MSE loss for a denoiser) is added without touching the trainer; third-party
packages declare theirs in the entry-point group ``peftsmoothing.losses``
(``LOSS_ENTRY_POINT_GROUP``), imported lazily like plug-in methods.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.names import LOSS_ENTRY_POINT_GROUP
from ..core.registry import Registry, check_options
from ..core.validation import check_positive_int

__all__ = [
    "LOSSES", "LOSS_ENTRY_POINT_GROUP", "LossContext", "LossFn", "LossOutput", "LossSpec",
    "UnknownLossError", "available_losses", "consistency_loss", "cross_entropy_loss", "get_loss",
    "mse_loss", "register_loss", "stability_loss",
]


@dataclass
class LossContext:
    """What the trainer tells a loss besides the batch itself.

    Attributes:
        sigma: Noise level of this batch (pixel space).
        options: The loss's options: its registered defaults updated with the user's values.
        module: The unwrapped model (``model.module`` under ``DistributedDataParallel``).
        reference: The frozen reference classifier (a callable returning logits), for losses
            registered with ``needs_reference=True``; ``None`` otherwise.
    """

    sigma: float
    options: Mapping[str, Any] = field(default_factory=dict)
    module: nn.Module | None = None
    reference: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass
class LossOutput:
    """What a loss returns.

    Attributes:
        loss: The scalar to minimise.
        logits: Predictions on the noisy copies, shape ``(num_noise * B, K)`` in the order of
            ``torch.cat(noisy)`` (or ``(B, K)``), for the running accuracy; ``None`` if the loss
            makes no class prediction.
        terms: Optional named parts of the loss (detached scalars), averaged per epoch and
            reported in the history as ``train_<name>``.
    """

    loss: torch.Tensor
    logits: torch.Tensor | None = None
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


#: Signature of a registered loss function: ``fn(model, clean, noisy, labels, ctx)``.
LossFn = Callable[[nn.Module, torch.Tensor, list[torch.Tensor], torch.Tensor, LossContext],
                  LossOutput]


@dataclass(frozen=True)
class LossSpec:
    """A registered loss.

    Attributes:
        name: The name passed as ``NoiseTrainer(loss=name)``.
        fn: The loss function.
        num_noise: Default number of noisy copies per image.
        options: Default option values (the only option names the loss accepts).
        needs_reference: Whether the loss uses ``ctx.reference`` (a frozen classifier).
        description: One line for listings.
    """

    name: str
    fn: LossFn
    num_noise: int = 1
    options: Mapping[str, Any] = field(default_factory=dict)
    needs_reference: bool = False
    description: str = ""

    def resolve_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults updated with ``given``; unknown option names raise ``TypeError``.

        Examples:
            >>> get_loss("consistency").resolve_options({"consistency_weight": 20.0})
            {'consistency_weight': 20.0, 'entropy_weight': 0.5}
        """
        check_options(given, list(self.options), f"loss {self.name!r}")
        return {**self.options, **given}


class UnknownLossError(ValueError):
    """Raised when a loss name is not registered (lists the available ones)."""


def _adopt(name: str, obj: Any) -> None:
    register_loss(name)(obj)  # which refuses an object that is not callable


#: Every registered loss by name (built-in and third-party).
LOSSES: Registry[LossSpec] = Registry(
    "loss", LOSS_ENTRY_POINT_GROUP, UnknownLossError, describe=lambda spec: spec.description,
    identity=lambda spec: spec.fn, adopt=_adopt,
)


def register_loss(
    name: str, *, num_noise: int = 1, options: Mapping[str, Any] | None = None,
    needs_reference: bool = False, description: str = "", override: bool = False,
) -> Callable[[LossFn], LossFn]:
    """Decorator that registers a loss function under ``name``.

    Args:
        name: The name users pass as ``NoiseTrainer(loss=name)``.
        num_noise: Default number of noisy copies per image the loss receives.
        options: The loss's options with their defaults; the trainer rejects other names.
        needs_reference: The loss uses ``ctx.reference``, a frozen copy of the classifier
            (see [`peftsmoothing.NoiseTrainer`][peftsmoothing.NoiseTrainer]'s ``reference_model``).
        description: One line for listings (default: the first docstring line).
        override: Replace an existing loss of the same name instead of raising.

    Returns:
        The decorator, which returns the function unchanged.

    Raises:
        ValueError: If ``name`` is empty, ``num_noise < 1``, or the name is taken.

    Examples:
        >>> import torch.nn.functional as F
        >>> import peftsmoothing as ps
        >>> @ps.register_loss("ce_smooth_doc", options={"smoothing": 0.1}, override=True)
        ... def ce_smooth(model, clean, noisy, labels, ctx):
        ...     logits = model(noisy[0])
        ...     loss = F.cross_entropy(logits, labels, label_smoothing=ctx.options["smoothing"])
        ...     return ps.LossOutput(loss, logits)
        >>> "ce_smooth_doc" in ps.available_losses()
        True
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError("loss name must be a non-empty string")
    copies = check_positive_int(num_noise, "num_noise")

    def decorator(fn: LossFn) -> LossFn:
        if not callable(fn):
            raise TypeError(f"register_loss({name!r}) expects a callable")
        doc = (getattr(fn, "__doc__", None) or "").strip().splitlines()
        spec = LossSpec(name=name, fn=fn, num_noise=copies, options=dict(options or {}),
                        needs_reference=needs_reference,
                        description=description or (doc[0] if doc else ""))
        LOSSES.register(name, spec, override=override)
        return fn

    return decorator


def get_loss(name: str) -> LossSpec:
    """The registered loss called ``name``.

    Raises:
        UnknownLossError: If no loss has that name.

    Examples:
        >>> get_loss("consistency").num_noise
        2
    """
    return LOSSES.get(name)


def available_losses() -> list[str]:
    """Names of the registered losses, sorted.

    Examples:
        >>> import peftsmoothing as ps
        >>> {"ce", "consistency", "stability"} <= set(ps.available_losses())
        True
    """
    return LOSSES.names()


def _all_noisy(noisy: list[torch.Tensor]) -> torch.Tensor:
    # one copy as it is: torch.cat would copy a whole batch of images on every step
    return noisy[0] if len(noisy) == 1 else torch.cat(noisy)


@register_loss("ce", description="cross-entropy on noisy images (Gaussian augmentation)")
def cross_entropy_loss(model: nn.Module, clean: torch.Tensor, noisy: list[torch.Tensor],
                       labels: torch.Tensor, ctx: LossContext) -> LossOutput:
    """Cross-entropy on the noisy copies (Gaussian data augmentation, Cohen et al. 2019).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> x = torch.rand(4, 3)
        >>> out = cross_entropy_loss(nn.Linear(3, 2), x, [x + 0.1], torch.tensor([0, 1, 0, 1]),
        ...                          LossContext(sigma=0.1))
        >>> out.logits.shape
        torch.Size([4, 2])
    """
    logits = model(_all_noisy(noisy))
    loss = F.cross_entropy(logits.float(), labels.repeat(len(noisy)))
    return LossOutput(loss, logits)


def consistency_terms(
    logits: torch.Tensor, labels: torch.Tensor, num_noise: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three terms of the consistency loss from logits of ``num_noise`` stacked copies.

    Returns ``(ce, kl, entropy)``: the cross-entropy averaged over all copies; the mean over
    copies of ``KL(p_mean || p_i)`` (summed over classes, averaged over the batch); the entropy
    of ``p_mean`` averaged over the batch, where ``p_mean`` is the mean of the copies' softmax.

    Examples:
        >>> import torch
        >>> z = torch.tensor([[2.0, 0.0], [0.0, 2.0]])  # two copies of one image
        >>> ce, kl, ent = consistency_terms(z, torch.tensor([0]), 2)
        >>> round(ent.item(), 4)  # p_mean = (0.5, 0.5)
        0.6931
    """
    logits = logits.float()
    batch = logits.shape[0] // num_noise
    ce = F.cross_entropy(logits, labels.repeat(num_noise))
    log_p = F.log_softmax(logits, dim=1).view(num_noise, batch, -1)
    p_mean = log_p.exp().mean(dim=0)
    log_p_mean = p_mean.clamp_min(1e-20).log()
    # KL(p_mean || p_i) = sum_k p_mean (log p_mean - log p_i), averaged over i and the batch.
    kl = (p_mean.unsqueeze(0) * (log_p_mean.unsqueeze(0) - log_p)).sum(dim=2).mean()
    entropy = -(p_mean * log_p_mean).sum(dim=1).mean()
    return ce, kl, entropy


@register_loss(
    "consistency", num_noise=2, options={"consistency_weight": 10.0, "entropy_weight": 0.5},
    description="CE + consistency regularisation over noisy copies (Jeong & Shin 2020)")
def consistency_loss(model: nn.Module, clean: torch.Tensor, noisy: list[torch.Tensor],
                     labels: torch.Tensor, ctx: LossContext) -> LossOutput:
    """Consistency regularisation (Jeong & Shin, NeurIPS 2020).

    ``CE + lambda * mean_i KL(p_mean || p_i) + eta * H(p_mean)`` over ``num_noise`` noisy copies
    (defaults as in the paper: ``num_noise=2``, ``lambda = consistency_weight = 10``,
    ``eta = entropy_weight = 0.5``; the paper uses lambda 20 at sigma 1.0 on CIFAR-10 and 5 on
    ImageNet).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> _ = torch.manual_seed(0)
        >>> x = torch.rand(4, 3)
        >>> noisy = [x + 0.1 * torch.randn_like(x) for _ in range(2)]
        >>> out = consistency_loss(nn.Linear(3, 2), x, noisy, torch.tensor([0, 1, 0, 1]),
        ...                        LossContext(sigma=0.1, options={"consistency_weight": 10.0,
        ...                                                        "entropy_weight": 0.5}))
        >>> sorted(out.terms)
        ['ce', 'entropy', 'kl']
    """
    logits = model(_all_noisy(noisy))
    ce, kl, entropy = consistency_terms(logits, labels, len(noisy))
    lam = float(ctx.options.get("consistency_weight", 10.0))
    eta = float(ctx.options.get("entropy_weight", 0.5))
    loss = ce + lam * kl + eta * entropy
    terms = {"ce": ce.detach(), "kl": kl.detach(), "entropy": entropy.detach()}
    return LossOutput(loss, logits, terms)


@register_loss(
    "stability", options={"target": "hard"}, needs_reference=True,
    description="match the frozen classifier's clean prediction on noisy images (Salman+ 2020)")
def stability_loss(model: nn.Module, clean: torch.Tensor, noisy: list[torch.Tensor],
                   labels: torch.Tensor, ctx: LossContext) -> LossOutput:
    """Stability objective (Salman et al. 2020, denoised smoothing): the model on noisy images
    is trained to predict what the frozen reference classifier predicts on the clean image.

    Option ``target``: ``"hard"`` (cross-entropy to the reference's arg-max class, as in the
    paper; the default) or ``"soft"`` (``KL(p_ref(clean) || p_model(noisy))``). The dataset
    labels are not used.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Linear(3, 2)
        >>> x = torch.rand(4, 3)
        >>> ctx = LossContext(sigma=0.0, options={"target": "soft"}, reference=net)
        >>> round(stability_loss(net, x, [x], torch.zeros(4, dtype=torch.long), ctx).loss.item(), 6)
        0.0
    """
    if ctx.reference is None:
        raise ValueError("the stability loss needs a reference classifier (ctx.reference)")
    target_kind = ctx.options.get("target", "hard")
    if target_kind not in ("hard", "soft"):
        raise ValueError(f"stability loss: target must be 'hard' or 'soft', got {target_kind!r}")
    with torch.no_grad():
        ref_logits = ctx.reference(clean).float()
    logits = model(_all_noisy(noisy))
    copies = len(noisy)
    if target_kind == "hard":
        loss = F.cross_entropy(logits.float(), ref_logits.argmax(dim=1).repeat(copies))
    else:
        ref_p = F.softmax(ref_logits, dim=1).repeat(copies, 1)
        loss = F.kl_div(F.log_softmax(logits.float(), dim=1), ref_p, reduction="batchmean")
    return LossOutput(loss, logits)


@register_loss(
    "mse", description="Denoiser reconstruction: mean squared error between pixel(noisy) and clean")
def mse_loss(model: nn.Module, clean: torch.Tensor, noisy: list[torch.Tensor],
             labels: torch.Tensor, ctx: LossContext) -> LossOutput:
    """MSE between the wrapped model's pixel-space module (the denoiser) output and the clean
    image, as in Salman et al.'s "MSE objective". Needs a model wrapped with a pixel module.

    Examples:
        >>> import torch, peftsmoothing as ps
        >>> from torch import nn
        >>> from peftsmoothing.training.losses import LossContext
        >>> m = ps.wrap(nn.Flatten(), method="denoiser", depth=2, width=4, normalize=None)
        >>> x = torch.rand(2, 3, 4, 4)
        >>> out = mse_loss(m, x, [x + 0.1], torch.zeros(2, dtype=torch.long),
        ...                LossContext(sigma=0.1, module=m))
        >>> round(out.loss.item(), 4)  # the fresh denoiser is the identity
        0.01
    """
    if ctx.module is not None and ctx.module is not model:
        # Under DistributedDataParallel, calling the denoiser directly would bypass DDP's
        # gradient synchronisation and let the ranks drift apart silently.
        raise RuntimeError(
            "loss='mse' does not support multi-process (DDP) training; use loss='stability' "
            "under torchrun, or train the denoiser in one process")
    pixel = getattr(model, "pixel", None)
    if not isinstance(pixel, nn.Module) or isinstance(pixel, nn.Identity):
        raise ValueError("loss='mse' trains a pixel-space module (wrap(..., method='denoiser'))")
    target = torch.cat([clean] * len(noisy))  # the clean image of every copy
    return LossOutput(F.mse_loss(pixel(_all_noisy(noisy)), target))
