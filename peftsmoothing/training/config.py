"""The trainer's options, declared once: [`TrainerConfig`][peftsmoothing.TrainerConfig].

Each field carries its help text and command-line spelling in ``field.metadata`` (``option``);
``peftsmoothing train`` builds its flags from the fields and ``NoiseTrainer``'s signature is
built from them too, so an option is added in exactly one place. Importing this module needs
no torch (the losses are imported only to check a config), so ``peftsmoothing train --help``
stays fast. A loss's own options (``loss_options``) belong to the loss
([`peftsmoothing.training.losses`][peftsmoothing.training.losses]); the trainer never names
one, except the alias table ``LOSS_OPTION_ALIASES`` (``consistency_weight=`` kept for
compatibility).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ..core.names import PRECISIONS, loss_names
from ..core.validation import check_choice, check_int, check_real

__all__ = [
    "LOSS_OPTION_ALIASES", "NONFINITE", "OPTION_NAMES", "OPTIMIZERS", "PRECISIONS", "SCHEDULES",
    "TrainerConfig", "config_from_keywords", "flag", "option", "trainer_signature",
]

OPTIMIZERS: Final[tuple[str, ...]] = ("adamw", "adam", "sgd")
SCHEDULES: Final[tuple[str, ...]] = ("cosine", "linear", "constant")
NONFINITE: Final[tuple[str, ...]] = ("stop", "skip")
CUSTOM_OPTIMIZER: Final[str] = "custom"  # the config of a trainer given an optimizer factory

#: Trainer keywords that are really a loss option: keyword -> (option name, conversion).
#: ``NoiseTrainer(consistency_weight=w)`` means ``loss_options={"consistency_weight": w}`` and
#: is an error for a loss without that option.
LOSS_OPTION_ALIASES: Final[Mapping[str, tuple[str, Callable[[Any], Any]]]] = {
    "consistency_weight": ("consistency_weight", float),
}


def _float_or_none(text: str) -> float | None:
    return None if text.lower() in ("none", "null") else float(text)


def _int_or_none(text: str) -> int | None:
    return None if text.lower() in ("none", "null") else int(text)


def option(default: Any, help: str, **cli: Any) -> Any:
    """A [`TrainerConfig`][peftsmoothing.TrainerConfig] field: its default, its ``--help`` line,
    how the command line parses it (``type``, ``choices``, ``nargs``, ``metavar``,
    ``mapping`` for ``KEY=VALUE`` items, ``cli_choices`` for names registered at run time) and
    the bounds the config checks (``minimum`` of an integer, ``low``/``low_open`` of a real
    number, as for ``core.validation``; a ``None`` default also allows ``None``).

    Examples:
        >>> f = option(10, "number of passes", type=int)
        >>> f.default, f.metadata["help"]
        (10, 'number of passes')
    """
    metadata = {"help": help, **cli}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=metadata)
    return field(default=default, metadata=metadata)


def flag(name: str) -> str:
    """The command-line flag of an option: ``--grad-accum`` for ``grad_accum``.

    Examples:
        >>> flag("grad_accum")
        '--grad-accum'
    """
    return "--" + name.replace("_", "-")


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

    sigma: float | tuple[float, ...] = option(
        0.5, "noise level(s) in pixel units; several: one drawn per batch", type=float, nargs="+")
    epochs: int = option(10, "number of passes over the training data", type=int, minimum=0)
    lr: float = option(1e-3, "peak learning rate", type=float, low=0, low_open=True)
    weight_decay: float = option(
        0.0, "weight decay (decoupled for adamw, L2 for adam and sgd)", type=float, low=0)
    optimizer: str = option(
        "adamw", "optimizer of the trained parameters (sgd: momentum 0.9)", choices=OPTIMIZERS)
    schedule: str = option("cosine", "learning-rate schedule after the warmup", choices=SCHEDULES)
    warmup_steps: int = option(0, "optimizer steps of linear warmup", type=int, minimum=0)
    grad_accum: int = option(1, "batches accumulated per optimizer step", type=int, minimum=1)
    max_grad_norm: float | None = option(
        None, "clip the gradient norm to this value (None: no clipping)", type=_float_or_none,
        low=0, low_open=True)
    precision: str = option(
        "fp32", "fp32, or bf16 / fp16 autocast (fp16 with a gradient scaler)", choices=PRECISIONS)
    loss: str = option(
        "ce", "a registered training loss (see peftsmoothing.available_losses())",
        cli_choices=loss_names)
    loss_options: Mapping[str, Any] = option(
        {}, "options of the loss, e.g. `--loss consistency --loss-options entropy_weight=1`",
        nargs="*", metavar="KEY=VALUE", mapping=True)
    num_noise: int | None = option(
        None, "noisy copies per image (None: the loss's default)", type=_int_or_none, minimum=1)
    seed: int = option(
        0, "seed of the noise, the shuffling and torch/numpy/random", type=int, minimum=0)
    log_every: int = option(
        50, "progress-bar refresh interval, optimizer steps", type=int, minimum=1)
    monitor: str | None = option(
        None, "history key that selects best/ (None: val_noisy_acc with validation data, else "
        "train_acc; keys with 'loss' are minimised)")
    nonfinite: str = option(
        "stop", "on a nan/inf loss, gradient or trained buffer: stop (error, nothing saved over "
        "the last good checkpoint) or skip that optimizer step", choices=NONFINITE)  # fmt: skip

    def __post_init__(self) -> None:
        sigma: Any = self.sigma  # stored as checked floats: one, or a tuple of several
        several = isinstance(sigma, Sequence) and not isinstance(sigma, (str, bytes))
        if several and not sigma:
            raise ValueError("sigma: give at least one noise level")
        values = tuple(check_real(s, "sigma", low=0) for s in (sigma if several else [sigma]))
        object.__setattr__(self, "sigma", values if several else values[0])
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None and f.default is None:
                continue  # None: the loss's default, no clipping, the default metric
            if "minimum" in meta:
                check_int(value, f.name, minimum=meta["minimum"])
            if "low" in meta:
                check_real(value, f.name, low=meta["low"], low_open=meta.get("low_open", False))
            if "choices" in meta:
                # "custom": what NoiseTrainer records when given an optimizer factory
                extra = (CUSTOM_OPTIMIZER,) if f.name == "optimizer" else ()
                check_choice(value, f.name, (*meta["choices"], *extra))
        # an unknown name raises UnknownLossError (a ValueError); unknown options a TypeError
        from .losses import get_loss  # here: importing this module needs no torch

        get_loss(self.loss).resolve_options(self.loss_options)

    @property
    def sigmas(self) -> tuple[float, ...]:
        """The noise levels as a tuple of floats.

        Examples:
            >>> TrainerConfig(sigma=0.25).sigmas
            (0.25,)
        """
        return self.sigma if isinstance(self.sigma, tuple) else (self.sigma,)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of the options.

        Examples:
            >>> TrainerConfig(sigma=0.25).to_dict()["sigma"]
            0.25
        """
        out = dataclasses.asdict(self)
        out["sigma"] = list(self.sigma) if isinstance(self.sigma, tuple) else self.sigma
        out["loss_options"] = dict(self.loss_options)
        return out




def _differs(value: Any, default: Any) -> bool:
    try:
        return value is not default and bool(value != default)
    except (TypeError, ValueError, RuntimeError):  # e.g. an array compared element-wise
        return True


def config_from_keywords(
    keywords: Mapping[str, Any], defaults: Mapping[str, Any], config: TrainerConfig | None = None
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
            raise TypeError(f"NoiseTrainer(config=...) also got {given}: set "
                            f"{'it' if len(changed) == 1 else 'them'} in the config instead")
        return config
    from .losses import get_loss

    fields = {f.name: f.default for f in dataclasses.fields(TrainerConfig)}
    values = {  # a field's None: its default, unless that is None
        k: v for k, v in keywords.items() if k in fields and (v is not None or fields[k] is None)
    }
    loss = values.get("loss", fields["loss"])
    options = dict(values.get("loss_options", {}))
    for alias, (option, convert) in LOSS_OPTION_ALIASES.items():
        if keywords.get(alias) is not None:
            if option not in get_loss(loss).options:
                raise ValueError(f"{alias} does not apply to the {loss!r} loss")
            options[option] = convert(keywords[alias])
    return TrainerConfig(**{**values, "loss_options": options})


OPTION_NAMES: Final[frozenset[str]] = frozenset(f.name for f in dataclasses.fields(TrainerConfig))
"""The names of the options (TrainerConfig's fields)."""

#: NoiseTrainer's own keywords (not options), each shown after the option it follows.
_KEYWORDS_AFTER: Final[dict[str, tuple[str, ...]]] = {
    "loss": ("consistency_weight",), "num_noise": ("device",), "seed": ("checkpoint_dir",),
    "log_every": ("callbacks", "progress", "metadata", "reference_model"),
}


def trainer_signature(init: Callable[..., Any]) -> inspect.Signature:
    """``NoiseTrainer.__init__``'s full signature, built from the fields: every option a
    keyword with its default, in the fields' order, so ``help(NoiseTrainer)`` and
    ``inspect.signature`` show them all while they are declared only here.

    Examples:
        >>> def init(self, model, sigma=0.5, *, optimizer="adamw", consistency_weight=None,
        ...          device=None, checkpoint_dir=None, callbacks=(), progress=None,
        ...          metadata=None, reference_model=None, config=None, **options): ...
        >>> list(trainer_signature(init).parameters)[:4]
        ['self', 'model', 'sigma', 'epochs']
    """
    own = inspect.signature(init).parameters
    params = [own["self"], own["model"]]
    for f in dataclasses.fields(TrainerConfig):  # the option itself, if __init__ names it
        default = None if f.default is dataclasses.MISSING else f.default  # loss_options
        params.append(own.get(f.name) or inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=f.type))
        params += [own[name] for name in _KEYWORDS_AFTER.get(f.name, ())]
    return inspect.Signature([*params, own["config"]], return_annotation=None)
