"""The one declaration of every :class:`NoiseTrainer` option: :class:`TrainerConfig`.

Each field carries its help text and command-line spelling in ``field.metadata``;
``peftsmoothing train`` generates its trainer flags from them, and ``NoiseTrainer``'s keywords
are checked against the same fields. A loss's own options (``loss_options``) belong to the loss
(:mod:`peftsmoothing.losses`); the trainer never names one. The only exception is the alias
table :data:`LOSS_OPTION_ALIASES` (``consistency_weight=`` kept for compatibility).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ..losses import get_loss
from ..precision import PRECISIONS
from ..validation import check_choice, check_int, check_positive_int, check_real

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

OPTIMIZERS: Final[tuple[str, ...]] = ("adamw", "adam", "sgd")
CUSTOM_OPTIMIZER: Final[str] = "custom"  # the config of a trainer given an optimizer factory
SCHEDULES: Final[tuple[str, ...]] = ("cosine", "linear", "constant")
NONFINITE: Final[tuple[str, ...]] = ("stop", "skip")

#: Trainer keywords that are really a loss option: keyword -> (option name, conversion).
#: ``NoiseTrainer(consistency_weight=w)`` means ``loss_options={"consistency_weight": w}`` and
#: is an error for a loss without that option.
LOSS_OPTION_ALIASES: Final[Mapping[str, tuple[str, Callable[[Any], Any]]]] = {
    "consistency_weight": ("consistency_weight", float),
}


def _option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    default_factory: Callable[[], Any] | None = None,
    type: Callable[[str], Any] | None = None,
    choices: Sequence[str] | None = None,
    nargs: str | None = None,
    metavar: str | None = None,
    mapping: bool = False,
) -> Any:
    """A dataclass field whose metadata describes its command-line flag."""
    meta = {"help": help, "type": type, "choices": choices, "nargs": nargs, "metavar": metavar,
            "mapping": mapping}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def _float_or_none(text: str) -> float | None:
    return None if text.lower() in ("none", "null") else float(text)


def _int_or_none(text: str) -> int | None:
    return None if text.lower() in ("none", "null") else int(text)


@dataclass(frozen=True)
class TrainerConfig:
    """The hyper-parameters of a :class:`NoiseTrainer` (validated, JSON-serialisable).

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
        loss: A registered loss name (see :func:`peftsmoothing.available_losses`).
        loss_options: The loss's options (e.g. ``{"entropy_weight": 0.5}``); checked against
            the options the loss registered.
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
        >>> dataclasses.fields(TrainerConfig)[1].metadata["help"]
        'number of passes over the training data'
    """

    sigma: float | tuple[float, ...] = _option(
        0.5, type=float, nargs="+",
        help="noise level(s) in pixel units; several: one drawn per batch")
    epochs: int = _option(10, type=int, help="number of passes over the training data")
    lr: float = _option(1e-3, type=float, help="peak learning rate")
    weight_decay: float = _option(
        0.0, type=float, help="weight decay (decoupled for adamw, L2 for adam and sgd)")
    optimizer: str = _option(
        "adamw", choices=OPTIMIZERS, help="optimizer of the trained parameters (sgd: momentum 0.9)")
    schedule: str = _option(
        "cosine", choices=SCHEDULES, help="learning-rate schedule after the warmup")
    warmup_steps: int = _option(0, type=int, help="optimizer steps of linear warmup")
    grad_accum: int = _option(1, type=int, help="batches accumulated per optimizer step")
    max_grad_norm: float | None = _option(
        None, type=_float_or_none, help="clip the gradient norm to this value (None: no clipping)")
    precision: str = _option(
        "fp32", choices=PRECISIONS,
        help="fp32, or bf16 / fp16 autocast (fp16 with a gradient scaler)")
    loss: str = _option(
        "ce", help="a registered loss: ce, consistency, stability, mse, ... "
        "(see peftsmoothing.available_losses())")
    loss_options: Mapping[str, Any] = _option(
        default_factory=dict, nargs="*", metavar="KEY=VALUE", mapping=True,
        help="options of the loss, e.g. entropy_weight=0.5")
    num_noise: int | None = _option(
        None, type=_int_or_none, help="noisy copies per image (None: the loss's default)")
    seed: int = _option(
        0, type=int, help="seed of the noise, the shuffling and torch/numpy/random")
    log_every: int = _option(50, type=int, help="progress-bar refresh interval, optimizer steps")
    monitor: str | None = _option(
        None, help="history key that selects best/ (None: val_noisy_acc with validation "
        "data, else train_acc; keys with 'loss' are minimised)")
    nonfinite: str = _option(
        "stop", choices=NONFINITE,
        help="on a nan/inf loss: stop (error, nothing saved over the last good checkpoint) "
        "or skip that optimizer step")

    def __post_init__(self) -> None:
        sigma: Any = self.sigma
        if isinstance(sigma, Sequence) and not isinstance(sigma, (str, bytes)):
            object.__setattr__(self, "sigma", tuple(sigma))
        elif not isinstance(sigma, (int, float)) or isinstance(sigma, bool):
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
    """The :class:`TrainerConfig` that ``NoiseTrainer``'s option keywords describe.

    Args:
        keywords: The option keywords as passed: :class:`TrainerConfig` field names and the
            aliases of :data:`LOSS_OPTION_ALIASES`. ``None`` for a field whose default is not
            ``None`` means that default (``loss_options=None``: no options).
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
        TypeError: When a :class:`TrainerConfig` field is not a keyword of ``init`` (a new
            option must also be added to ``NoiseTrainer``'s signature).

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
