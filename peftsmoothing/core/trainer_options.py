"""The declaration of every [`NoiseTrainer`][peftsmoothing.NoiseTrainer] option, without torch.

Each option's name, default, help text and command-line spelling is declared once here, as an
[`OptionSpec`][peftsmoothing.core.trainer_options.OptionSpec].
[`TrainerConfig`][peftsmoothing.TrainerConfig] (``training/config.py``) builds its dataclass
fields from these declarations, and ``peftsmoothing train`` its trainer flags, so that
``peftsmoothing train --help`` needs neither torch nor the training package.

Examples:
    >>> trainer_option("grad_accum").flag, trainer_option("grad_accum").default
    ('--grad-accum', 1)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .names import PRECISIONS, loss_names

__all__ = [
    "LOSS_OPTION_ALIASES",
    "NONFINITE",
    "OPTIMIZERS",
    "SCHEDULES",
    "TRAINER_OPTIONS",
    "OptionSpec",
    "trainer_option",
]

OPTIMIZERS: Final[tuple[str, ...]] = ("adamw", "adam", "sgd")
SCHEDULES: Final[tuple[str, ...]] = ("cosine", "linear", "constant")
NONFINITE: Final[tuple[str, ...]] = ("stop", "skip")

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


@dataclass(frozen=True)
class OptionSpec:
    """One trainer option: its name, default and how the command line spells it.

    Attributes:
        name: The [`TrainerConfig`][peftsmoothing.TrainerConfig] field and keyword.
        help: One line for ``--help`` (without the default, which the formatter adds).
        default: The default value (unless ``default_factory`` is given).
        default_factory: Builds a fresh default (for mutable ones such as ``{}``).
        type: Converts the command-line text.
        choices: The closed set of valid values, checked by the config itself.
        nargs: argparse ``nargs`` (``"+"``: one or more values).
        metavar: The placeholder shown in ``--help``.
        mapping: The flag takes ``KEY=VALUE`` items that make a dict.
        cli_choices: The values the command line offers, when the config accepts more (names
            registered at run time): called when the parser is built.

    Examples:
        >>> spec = OptionSpec("epochs", "number of passes", default=10, type=int)
        >>> spec.flag, spec.default_value(), spec.metadata()["help"]
        ('--epochs', 10, 'number of passes')
    """

    name: str
    help: str
    default: Any = None
    default_factory: Callable[[], Any] | None = None
    type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    nargs: str | None = None
    metavar: str | None = None
    mapping: bool = False
    cli_choices: Callable[[], Sequence[str]] | None = None

    @property
    def flag(self) -> str:
        """The command-line flag: ``--grad-accum`` for ``grad_accum``."""
        return "--" + self.name.replace("_", "-")

    def default_value(self) -> Any:
        """The default (a fresh one from ``default_factory`` if there is one)."""
        return self.default_factory() if self.default_factory is not None else self.default

    def metadata(self) -> dict[str, Any]:
        """The dataclass field metadata of the option (``help``, ``type``, ``choices``, ...)."""
        return {
            "help": self.help, "type": self.type, "choices": self.choices, "nargs": self.nargs,
            "metavar": self.metavar, "mapping": self.mapping,
        }  # fmt: skip


#: Every trainer option, in the order of [`TrainerConfig`][peftsmoothing.TrainerConfig]'s fields.
TRAINER_OPTIONS: Final[tuple[OptionSpec, ...]] = (
    OptionSpec("sigma", "noise level(s) in pixel units; several: one drawn per batch",
               default=0.5, type=float, nargs="+"),
    OptionSpec("epochs", "number of passes over the training data", default=10, type=int),
    OptionSpec("lr", "peak learning rate", default=1e-3, type=float),
    OptionSpec("weight_decay", "weight decay (decoupled for adamw, L2 for adam and sgd)",
               default=0.0, type=float),
    OptionSpec("optimizer", "optimizer of the trained parameters (sgd: momentum 0.9)",
               default="adamw", choices=OPTIMIZERS),
    OptionSpec("schedule", "learning-rate schedule after the warmup", default="cosine",
               choices=SCHEDULES),
    OptionSpec("warmup_steps", "optimizer steps of linear warmup", default=0, type=int),
    OptionSpec("grad_accum", "batches accumulated per optimizer step", default=1, type=int),
    OptionSpec("max_grad_norm", "clip the gradient norm to this value (None: no clipping)",
               default=None, type=_float_or_none),
    OptionSpec("precision", "fp32, or bf16 / fp16 autocast (fp16 with a gradient scaler)",
               default="fp32", choices=PRECISIONS),
    OptionSpec("loss", "a registered training loss (see peftsmoothing.available_losses())",
               default="ce", cli_choices=loss_names),
    OptionSpec("loss_options", "options of the loss, e.g. "
               "`--loss consistency --loss-options entropy_weight=1`",
               default_factory=dict, nargs="*", metavar="KEY=VALUE", mapping=True),
    OptionSpec("num_noise", "noisy copies per image (None: the loss's default)",
               default=None, type=_int_or_none),
    OptionSpec("seed", "seed of the noise, the shuffling and torch/numpy/random", default=0,
               type=int),
    OptionSpec("log_every", "progress-bar refresh interval, optimizer steps", default=50,
               type=int),
    OptionSpec("monitor", "history key that selects best/ (None: val_noisy_acc with "
               "validation data, else train_acc; keys with 'loss' are minimised)", default=None),
    OptionSpec("nonfinite", "on a nan/inf loss: stop (error, nothing saved over the last good "
               "checkpoint) or skip that optimizer step", default="stop", choices=NONFINITE),
)  # fmt: skip

_BY_NAME: Final[dict[str, OptionSpec]] = {spec.name: spec for spec in TRAINER_OPTIONS}


def trainer_option(name: str) -> OptionSpec:
    """The declaration of the trainer option ``name``.

    Raises:
        KeyError: For a name that is not a trainer option.

    Examples:
        >>> trainer_option("optimizer").choices
        ('adamw', 'adam', 'sgd')
    """
    return _BY_NAME[name]
