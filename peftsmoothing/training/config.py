"""The trainer's options as one validated value: [`TrainerConfig`][peftsmoothing.TrainerConfig].

Every option is declared once, without torch, in
[`peftsmoothing.core.trainer_options`][peftsmoothing.core.trainer_options] (name, default, help
text,
command-line spelling); [`TrainerConfig`][peftsmoothing.TrainerConfig]'s fields are built from
those declarations and carry them in ``field.metadata``. ``peftsmoothing train`` generates its
trainer flags from the same declarations, and ``NoiseTrainer``'s keywords are checked against
the fields. A loss's own options (``loss_options``) belong to the loss
([`peftsmoothing.training.losses`][peftsmoothing.training.losses]); the trainer never names one.
The only
exception is the alias table ``LOSS_OPTION_ALIASES`` (``consistency_weight=`` kept for
compatibility).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ..core.names import PRECISIONS
from ..core.trainer_options import (
    LOSS_OPTION_ALIASES,
    NONFINITE,
    OPTIMIZERS,
    SCHEDULES,
    TRAINER_OPTIONS,
    trainer_option,
)
from ..core.validation import check_choice, check_int, check_positive_int, check_real
from .losses import get_loss

__all__ = [
    "LOSS_OPTION_ALIASES",
    "NONFINITE",
    "OPTIMIZERS",
    "PRECISIONS",
    "SCHEDULES",
    "TrainerConfig",
    "config_from_keywords",
    "option_defaults",
]

CUSTOM_OPTIMIZER: Final[str] = "custom"  # the config of a trainer given an optimizer factory


def _option(name: str) -> Any:
    """The dataclass field of the trainer option ``name``, from its declaration in
    [`peftsmoothing.core.trainer_options`][peftsmoothing.core.trainer_options]."""
    spec = trainer_option(name)
    if spec.default_factory is not None:
        return field(default_factory=spec.default_factory, metadata=spec.metadata())
    return field(default=spec.default, metadata=spec.metadata())


@dataclass(frozen=True)
class TrainerConfig:
    """The hyper-parameters of a [`NoiseTrainer`][peftsmoothing.NoiseTrainer] (validated,
    JSON-serialisable).

    Every field's metadata holds its ``help`` text and, for closed sets, its ``choices``;
    ``peftsmoothing train`` builds one flag per field from them (``--grad-accum`` for
    ``grad_accum``).

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
        loss: A registered loss name (see
            [`peftsmoothing.available_losses`][peftsmoothing.available_losses]).
        loss_options: The loss's options (e.g. ``{"entropy_weight": 0.5}``); checked against
            the options the loss registered.
        num_noise: Noisy copies per image (``None``: the loss's default, 2 for
            ``consistency``, else 1).
        seed: Seeds torch/numpy/random (plus the rank) at the start of training, and the noise.
        log_every: Update the progress bar every this many optimizer steps.
        monitor: History key that selects the ``best`` checkpoint (default ``val_noisy_acc``
            with a validation loader, else ``train_acc``); keys with ``loss`` are minimised.
        nonfinite: What a non-finite (nan/inf) loss, gradient or trained buffer (a trained
            BatchNorm's running statistics) does: ``"stop"`` (default) raises
            ``FloatingPointError`` before the optimizer step, so the weights and the
            checkpoints stay those of the last finite step; ``"skip"`` drops that optimizer
            step (its gradients and metrics), counts it in the epoch's ``nonfinite_steps`` and
            trains on. Either way the trained buffers are put back as they were before the
            step.

    Examples:
        >>> TrainerConfig(sigma=(0.25, 0.5), loss="consistency").sigmas
        (0.25, 0.5)
        >>> dataclasses.fields(TrainerConfig)[1].metadata["help"]
        'number of passes over the training data'
    """

    sigma: float | tuple[float, ...] = _option("sigma")
    epochs: int = _option("epochs")
    lr: float = _option("lr")
    weight_decay: float = _option("weight_decay")
    optimizer: str = _option("optimizer")
    schedule: str = _option("schedule")
    warmup_steps: int = _option("warmup_steps")
    grad_accum: int = _option("grad_accum")
    max_grad_norm: float | None = _option("max_grad_norm")
    precision: str = _option("precision")
    loss: str = _option("loss")
    loss_options: Mapping[str, Any] = _option("loss_options")
    num_noise: int | None = _option("num_noise")
    seed: int = _option("seed")
    log_every: int = _option("log_every")
    monitor: str | None = _option("monitor")
    nonfinite: str = _option("nonfinite")

    def __post_init__(self) -> None:
        sigma: Any = self.sigma
        if isinstance(sigma, Sequence) and not isinstance(sigma, (str, bytes)):
            object.__setattr__(self, "sigma", tuple(sigma))
        elif isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
            raise ValueError(f"sigma must be a number or a list of numbers, got {sigma!r}")
        if not self._sigma_values():
            raise ValueError("sigma: give at least one noise level")
        for s in self._sigma_values():
            check_real(s, "sigma", low=0)
        check_int(self.epochs, "epochs", minimum=0)
        check_positive_int(self.grad_accum, "grad_accum")
        check_int(self.warmup_steps, "warmup_steps", minimum=0)
        check_positive_int(self.log_every, "log_every")
        if self.num_noise is not None:
            check_positive_int(self.num_noise, "num_noise")
        check_int(self.seed, "seed", minimum=0)
        check_real(self.lr, "lr", low=0, low_open=True)
        check_real(self.weight_decay, "weight_decay", low=0)
        if self.max_grad_norm is not None:
            check_real(self.max_grad_norm, "max_grad_norm", low=0, low_open=True)
        for f in dataclasses.fields(self):
            if f.metadata.get("choices"):
                # "custom": what NoiseTrainer records when given an optimizer factory
                extra = (CUSTOM_OPTIMIZER,) if f.name == "optimizer" else ()
                check_choice(getattr(self, f.name), f.name, (*f.metadata["choices"], *extra))
        # an unknown name raises UnknownLossError (a ValueError); unknown options a TypeError
        get_loss(self.loss).resolve_options(self.loss_options)

    def _sigma_values(self) -> tuple[Any, ...]:
        """The noise levels as given, as a tuple (not converted)."""
        return self.sigma if isinstance(self.sigma, tuple) else (self.sigma,)

    @property
    def sigmas(self) -> tuple[float, ...]:
        """The noise levels as a tuple of floats.

        Examples:
            >>> TrainerConfig(sigma=0.25).sigmas
            (0.25,)
        """
        return tuple(float(s) for s in self._sigma_values())

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


if [f.name for f in dataclasses.fields(TrainerConfig)] != [o.name for o in TRAINER_OPTIONS]:
    raise RuntimeError("TrainerConfig's fields must be those of trainer_options.TRAINER_OPTIONS")


def _differs(value: Any, default: Any) -> bool:
    if value is default:
        return False
    try:
        return bool(value != default)
    except (TypeError, ValueError, RuntimeError):  # e.g. an array compared element-wise
        return True


def config_from_keywords(
    keywords: Mapping[str, Any],
    defaults: Mapping[str, Any],
    config: TrainerConfig | None = None,
) -> TrainerConfig:
    """The [`TrainerConfig`][peftsmoothing.TrainerConfig] that ``NoiseTrainer``'s option keywords
    describe.

    Args:
        keywords: The option keywords as passed: [`TrainerConfig`][peftsmoothing.TrainerConfig]
            field names and the aliases of ``LOSS_OPTION_ALIASES``. ``None`` for a field whose
            default is not ``None`` means that default (``loss_options=None``: no options).
        defaults: The keywords' defaults (those of ``NoiseTrainer``'s signature).
        config: A ready config; then every keyword must keep its default.

    Returns:
        ``config``, or a new validated config.

    Raises:
        TypeError: With ``config``, for each keyword that differs from its default (named).
        ValueError: For an alias the chosen loss has no option for, or an invalid option.

    Examples:
        >>> defaults = {"lr": 1e-3, "loss": "ce", "consistency_weight": None}
        >>> given = {"lr": 0.1, "loss": "consistency", "consistency_weight": 20}
        >>> config_from_keywords(given, defaults).loss_options
        {'consistency_weight': 20.0}
        >>> config_from_keywords({"lr": 0.1}, {"lr": 1e-3}, TrainerConfig())
        Traceback (most recent call last):
        ...
        TypeError: NoiseTrainer(config=...) also got lr=0.1: set it in the config instead
    """
    if config is not None:
        if not isinstance(config, TrainerConfig):
            raise TypeError(f"config must be a TrainerConfig, got {type(config).__name__}")
        changed = [k for k, v in keywords.items() if _differs(v, defaults.get(k))]
        if changed:
            given = ", ".join(f"{k}={keywords[k]!r}" for k in changed)
            raise TypeError(
                f"NoiseTrainer(config=...) also got {given}: set "
                f"{'it' if len(changed) == 1 else 'them'} in the config instead"
            )
        return config
    fields = {f.name: f for f in dataclasses.fields(TrainerConfig)}
    values: dict[str, Any] = {}
    for name, value in keywords.items():
        f = fields.get(name)
        if f is None:
            continue
        if value is None and f.default is not None:
            continue  # None: the field's default
        values[name] = value
    loss = values.get("loss", fields["loss"].default)
    options = dict(values.get("loss_options", {}))
    for alias, (option, convert) in LOSS_OPTION_ALIASES.items():
        value = keywords.get(alias)
        if value is None:
            continue
        if option not in get_loss(loss).options:
            raise ValueError(f"{alias} does not apply to the {loss!r} loss")
        options[option] = convert(value)
    if options or "loss_options" in values:
        values["loss_options"] = options
    return TrainerConfig(**values)



def option_defaults(init: Callable[..., Any]) -> dict[str, Any]:
    """The defaults of the option keywords (config fields and aliases) of ``init``.

    Raises:
        TypeError: When a [`TrainerConfig`][peftsmoothing.TrainerConfig] field is not a keyword of
            ``init`` (a new option must also be added to ``NoiseTrainer``'s signature).

    Examples:
        >>> def f(sigma=0.5, epochs=10, **rest): ...
        >>> option_defaults(f)
        Traceback (most recent call last):
        ...
        TypeError: f has no keyword for consistency_weight, grad_accum, ...
    """
    names = {f.name for f in dataclasses.fields(TrainerConfig)} | set(LOSS_OPTION_ALIASES)
    params = inspect.signature(init).parameters
    missing = sorted(names - set(params))
    if missing:
        shown = ", ".join(missing[:2]) + (", ..." if len(missing) > 2 else "")
        raise TypeError(f"{init.__qualname__} has no keyword for {shown}")
    return {n: params[n].default for n in names}
