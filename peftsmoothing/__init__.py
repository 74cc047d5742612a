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
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

if TYPE_CHECKING:  # what type checkers see; ``_EXPORTS`` is what runs (``X as X``: re-exported)
    from .backbones import zoo as zoo
    from .backbones.zoo import create_model as create_model
    from .certify.smoothing import ABSTAIN as ABSTAIN
    from .certify.smoothing import Certificate as Certificate
    from .certify.smoothing import SmoothedClassifier as SmoothedClassifier
    from .core.params import ModuleCount as ModuleCount
    from .core.params import ParameterReport as ParameterReport
    from .core.params import parameter_report as parameter_report
    from .core.stats import binomial_pvalue as binomial_pvalue
    from .core.stats import certified_radius as certified_radius
    from .core.stats import clopper_pearson_lower as clopper_pearson_lower
    from .core.stats import predict_from_counts as predict_from_counts
    from .data import datasets as datasets
    from .methods.base import ENTRY_POINT_GROUP as ENTRY_POINT_GROUP
    from .methods.base import Method as Method
    from .methods.base import MethodConfig as MethodConfig
    from .methods.base import MethodContext as MethodContext
    from .methods.base import UnknownMethodError as UnknownMethodError
    from .methods.base import available_methods as available_methods
    from .methods.base import get_method as get_method
    from .methods.base import method_descriptions as method_descriptions
    from .methods.base import register_method as register_method
    from .model.normalize import Normalize as Normalize
    from .model.wrapping import PEFTModel as PEFTModel
    from .model.wrapping import WrapSpec as WrapSpec
    from .model.wrapping import load as load
    from .model.wrapping import wrap as wrap
    from .report.accuracy import CertificationReport as CertificationReport
    from .report.accuracy import PairedDifference as PairedDifference
    from .report.accuracy import plot_certified_accuracy as plot_certified_accuracy
    from .training import Callback as Callback
    from .training import NoiseTrainer as NoiseTrainer
    from .training import TrainerConfig as TrainerConfig
    from .training.losses import LossContext as LossContext
    from .training.losses import LossOutput as LossOutput
    from .training.losses import UnknownLossError as UnknownLossError
    from .training.losses import available_losses as available_losses
    from .training.losses import register_loss as register_loss

#: The public names that are submodules themselves (``ps.datasets``).
_MODULES = {"datasets": ".data.datasets", "zoo": ".backbones.zoo"}

#: Where the other public names live: module (relative to this package) -> names.
_EXPORTS: dict[str, tuple[str, ...]] = {
    ".backbones.zoo": ("create_model",),
    ".certify.smoothing": ("ABSTAIN", "Certificate", "SmoothedClassifier"),
    ".core.params": ("ModuleCount", "ParameterReport", "parameter_report"),
    ".core.stats": (
        "binomial_pvalue", "certified_radius", "clopper_pearson_lower", "predict_from_counts"
    ),
    ".methods.base": (
        "ENTRY_POINT_GROUP", "Method", "MethodConfig", "MethodContext", "UnknownMethodError",
        "available_methods", "get_method", "method_descriptions", "register_method",
    ),
    ".model.normalize": ("Normalize",),
    ".model.wrapping": ("PEFTModel", "WrapSpec", "load", "wrap"),
    ".report.accuracy": ("CertificationReport", "PairedDifference", "plot_certified_accuracy"),
    ".training": ("Callback", "NoiseTrainer", "TrainerConfig"),
    ".training.losses": (
        "LossContext", "LossOutput", "UnknownLossError", "available_losses", "register_loss"
    ),
}

#: Where each public name lives: name -> module (relative to this package).
_LAZY = {**_MODULES, **{name: mod for mod, names in _EXPORTS.items() for name in names}}

__all__ = ["__version__", *_LAZY]


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
    globals()[name] = value  # later accesses skip this hook
    return value


def __dir__() -> list[str]:
    """The module's attributes, the not-yet-imported public names included."""
    return sorted(set(globals()) | set(__all__))
