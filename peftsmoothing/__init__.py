"""peftsmoothing: certified L2 robustness for pretrained image classifiers.

Parameter-efficient fine-tuning (LoRA, visual prompts, adapters) on Gaussian-noised images,
certified with randomized smoothing. The public API is exactly what this module exports.

Examples:
    >>> import timm, peftsmoothing as ps
    >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False,
    ...                         img_size=32, patch_size=4)
    >>> model = ps.wrap(vit, method="lora", r=8, num_classes=10)
"""

from . import datasets, zoo
from . import methods as _methods  # noqa: F401  (registers the built-in methods)
from ._version import __version__
from .losses import (
    LossContext,
    LossOutput,
    UnknownLossError,
    available_losses,
    register_loss,
)
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
from .normalize import Normalize
from .params import ModuleCount, ParameterReport, parameter_report
from .report import CertificationReport, PairedDifference, plot_certified_accuracy
from .smoothing import ABSTAIN, Certificate, SmoothedClassifier
from .stats import binomial_pvalue, certified_radius, clopper_pearson_lower
from .training import Callback, NoiseTrainer, TrainerConfig
from .wrap import PEFTModel, WrapSpec, load, wrap
from .zoo import create_model

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
