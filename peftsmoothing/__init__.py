"""peftsmoothing: certified L2 robustness for pretrained image classifiers.

Parameter-efficient fine-tuning (LoRA, visual prompts, adapters) on Gaussian-noised images,
certified with randomized smoothing. The public API is exactly what this module exports.

The names are imported lazily (PEP 562): ``import peftsmoothing`` is cheap, and torch, scipy
and timm are imported the first time a name that needs them is used (``ps.wrap``,
``from peftsmoothing import NoiseTrainer``). So ``peftsmoothing --help`` starts in a fraction
of a second.

Examples:
    >>> import timm, peftsmoothing as ps
    >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False,
    ...                         img_size=32, patch_size=4)
    >>> model = ps.wrap(vit, method="lora", r=8, num_classes=10)
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .backbones import zoo
    from .backbones.zoo import create_model
    from .certify.smoothing import ABSTAIN, Certificate, SmoothedClassifier
    from .core.params import ModuleCount, ParameterReport, parameter_report
    from .core.stats import (
        binomial_pvalue,
        certified_radius,
        clopper_pearson_lower,
        predict_from_counts,
    )
    from .data import datasets
    from .methods.base import (
        ENTRY_POINT_GROUP,
        Method,
        MethodConfig,
        MethodContext,
        UnknownMethodError,
        available_methods,
        get_method,
        method_descriptions,
        register_method,
    )
    from .model.normalize import Normalize
    from .model.wrapping import PEFTModel, WrapSpec, load, wrap
    from .report.accuracy import CertificationReport, PairedDifference, plot_certified_accuracy
    from .training import Callback, NoiseTrainer, TrainerConfig
    from .training.losses import (
        LossContext,
        LossOutput,
        UnknownLossError,
        available_losses,
        register_loss,
    )

#: The public names that are submodules themselves (``ps.datasets``).
_MODULES = frozenset({"datasets", "zoo"})

#: Where each public name lives: name -> module (relative to this package).
_LAZY: dict[str, str] = {
    "datasets": ".data.datasets",
    "zoo": ".backbones.zoo",
    **dict.fromkeys(
        ["LossContext", "LossOutput", "UnknownLossError", "available_losses", "register_loss"],
        ".training.losses",
    ),
    **dict.fromkeys(
        ["ENTRY_POINT_GROUP", "Method", "MethodConfig", "MethodContext", "UnknownMethodError",
         "available_methods", "get_method", "method_descriptions", "register_method"],
        ".methods.base",
    ),
    "Normalize": ".model.normalize",
    **dict.fromkeys(["ModuleCount", "ParameterReport", "parameter_report"], ".core.params"),
    **dict.fromkeys(
        ["CertificationReport", "PairedDifference", "plot_certified_accuracy"],
        ".report.accuracy",
    ),
    **dict.fromkeys(["ABSTAIN", "Certificate", "SmoothedClassifier"], ".certify.smoothing"),
    **dict.fromkeys(
        ["binomial_pvalue", "certified_radius", "clopper_pearson_lower", "predict_from_counts"],
        ".core.stats",
    ),
    **dict.fromkeys(["Callback", "NoiseTrainer", "TrainerConfig"], ".training"),
    **dict.fromkeys(["PEFTModel", "WrapSpec", "load", "wrap"], ".model.wrapping"),
    "create_model": ".backbones.zoo",
}

__all__ = [
    "ABSTAIN",
    "Certificate",
    "CertificationReport",
    "PairedDifference",
    "SmoothedClassifier",
    "binomial_pvalue",
    "certified_radius",
    "clopper_pearson_lower",
    "plot_certified_accuracy",
    "predict_from_counts",
    "ENTRY_POINT_GROUP",
    "Method",
    "MethodConfig",
    "MethodContext",
    "ModuleCount",
    "Normalize",
    "PEFTModel",
    "ParameterReport",
    "UnknownMethodError",
    "WrapSpec",
    "__version__",
    "available_methods",
    "create_model",
    "datasets",
    "zoo",
    "get_method",
    "load",
    "method_descriptions",
    "parameter_report",
    "register_method",
    "wrap",
    "Callback",
    "LossContext",
    "LossOutput",
    "NoiseTrainer",
    "TrainerConfig",
    "UnknownLossError",
    "available_losses",
    "register_loss",
]


def __getattr__(name: str) -> Any:
    """Import the module of a public name on first access (PEP 562) and cache the value.

    Raises:
        AttributeError: For a name that is not public.

    Examples:
        >>> import peftsmoothing as ps
        >>> ps.ABSTAIN
        -1
    """
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(target, __name__)
    value = module if name in _MODULES else getattr(module, name)
    object.__setattr__(sys.modules[__name__], name, value)  # later accesses skip this hook
    return value


def __dir__() -> list[str]:
    """The module's attributes, the not-yet-imported public names included."""
    return sorted(set(globals()) | set(__all__))
