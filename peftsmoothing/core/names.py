"""The names of the closed sets the command line offers, declared without importing torch.

``peftsmoothing --help`` must not pay for importing torch, scipy or any plug-in, yet its flags
list their choices (``--method``, ``--loss``, ``--dataset``, ``--precision``). This leaf module
holds the built-in names, and reads the names of third-party plug-ins from the entry-point
metadata of installed packages, without importing them. The registries
([`available_methods`][peftsmoothing.available_methods],
[`available_losses`][peftsmoothing.available_losses]) remain the authority; a test checks that
the built-in names here are exactly those they register.

Examples:
    >>> "lora" in method_names() and "ce" in loss_names()
    True
"""

from __future__ import annotations

import importlib.util
from importlib import metadata
from typing import Final

__all__ = [
    "BUILTIN_LOSSES",
    "BUILTIN_METHODS",
    "DATASET_NAMES",
    "LOSS_ENTRY_POINT_GROUP",
    "METHOD_ENTRY_POINT_GROUP",
    "PRECISIONS",
    "entry_point_names",
    "loss_names",
    "method_names",
]

#: The entry-point group third-party methods are declared in.
METHOD_ENTRY_POINT_GROUP: Final[str] = "peftsmoothing.methods"
#: The entry-point group third-party training losses are declared in.
LOSS_ENTRY_POINT_GROUP: Final[str] = "peftsmoothing.losses"

#: The methods ``peftsmoothing.methods`` registers (one module each).
BUILTIN_METHODS: Final[tuple[str, ...]] = (
    "adapter", "denoiser", "full", "linear", "lora", "prompt",
)  # fmt: skip
#: The losses ``peftsmoothing.training.losses`` registers.
BUILTIN_LOSSES: Final[tuple[str, ...]] = ("ce", "consistency", "mse", "stability")
#: The dataset names ``peftsmoothing.data.datasets.load_dataset`` understands.
DATASET_NAMES: Final[tuple[str, ...]] = ("cifar10", "cifar100", "imagenet", "imagefolder")
#: The precisions every forward pass accepts (``peftsmoothing.core.precision``).
PRECISIONS: Final[tuple[str, ...]] = ("fp32", "bf16", "fp16")


def entry_point_names(group: str) -> list[str]:
    """The names declared in an entry-point group, read from package metadata (nothing is
    imported).

    Args:
        group: The entry-point group, e.g. [`METHOD_ENTRY_POINT_GROUP`][peftsmoothing.core.names.METHOD_ENTRY_POINT_GROUP].

    Returns:
        The declared names, sorted and without duplicates.

    Examples:
        >>> entry_point_names("peftsmoothing.no-such-group")
        []
    """  # noqa: E501
    return sorted({ep.name for ep in metadata.entry_points(group=group)})


def method_names() -> list[str]:
    """The built-in method names (``peft`` when HF peft is installed) and those of installed
    plug-ins, sorted (nothing imported).

    Examples:
        >>> method_names()[:2]
        ['adapter', 'denoiser']
    """
    optional = ("peft",) if importlib.util.find_spec("peft") is not None else ()
    return sorted({*BUILTIN_METHODS, *optional, *entry_point_names(METHOD_ENTRY_POINT_GROUP)})


def loss_names() -> list[str]:
    """The built-in loss names and those of installed plug-ins, sorted (nothing imported).

    Examples:
        >>> loss_names()[:2]
        ['ce', 'consistency']
    """
    return sorted({*BUILTIN_LOSSES, *entry_point_names(LOSS_ENTRY_POINT_GROUP)})
