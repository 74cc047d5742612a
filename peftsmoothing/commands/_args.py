"""argparse ``type=`` functions built on ``peftsmoothing.core.validation``: an impossible number is
a one-line error when the command line is parsed, before any model or data is loaded."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from ..core.validation import check_alpha, check_int, check_real, check_sigma

__all__ = [
    "add_model_arguments",
    "checked",
    "default_device",
    "fraction",
    "int_at_least",
    "load_model",
    "probability",
    "sigma",
]


def default_device(shard_spec: str | None = None) -> str:
    """The ``--device`` default: ``cuda`` if available (under ``--shard torchrun``, this
    process's ``cuda:LOCAL_RANK``), else ``cpu``. Imports torch, so call it only at run time.

    Examples:
        >>> default_device() in ("cpu", "cuda")
        True
    """
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    if shard_spec == "torchrun" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return "cuda"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model DIR`` and the flags that choose its base model's weights, for every command
    that loads a saved model (``certify``, ``predict``).

    Examples:
        >>> parser = argparse.ArgumentParser()
        >>> add_model_arguments(parser)
        >>> args = parser.parse_args(["--model", "run", "--pretrained"])
        >>> args.model, args.base_weights, args.pretrained
        ('run', None, True)
    """
    parser.add_argument("--model", required=True, help="directory written by PEFTModel.save")
    parser.add_argument(
        "--base-weights", default=None, metavar="FILE",
        help="state_dict of the base model the directory was trained on (a backbone you "
        "pre-trained, or timm's weights saved on another machine); checked against the "
        "saved frozen-weights fingerprint",
    )  # fmt: skip
    parser.add_argument(
        "--pretrained", action="store_true",
        help="rebuild the base model with timm's registry weights for its recorded name "
        "(downloaded on first use; never without this flag)",
    )  # fmt: skip


def load_model(args: argparse.Namespace) -> Any:
    """``peftsmoothing.load`` of ``args.model`` with the weights ``add_model_arguments`` chose.

    Examples:
        >>> load_model(argparse.Namespace(model="no/such/dir", base_weights=None,
        ...                               pretrained=False))
        Traceback (most recent call last):
        ...
        FileNotFoundError: ...
    """
    import peftsmoothing

    pretrained = True if args.pretrained else None
    return peftsmoothing.load(args.model, base_weights=args.base_weights, pretrained=pretrained)


def checked(kind: Callable[[str], Any], name: str, check: Callable[[Any], Any]) -> Any:
    """An argparse ``type=`` that converts with ``kind`` and checks with ``check``.

    Examples:
        >>> checked(float, "alpha", check_alpha)("1.5")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: alpha must be a number in the open interval (0, 1), got 1.5
    """

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        try:
            return check(value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def int_at_least(name: str, minimum: int) -> Any:
    """An integer flag ``>= minimum``.

    Examples:
        >>> int_at_least("batch", 1)("0")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: batch must be an integer >= 1, got 0
    """
    return checked(int, name, lambda v: check_int(v, name, minimum=minimum))


def fraction(name: str) -> Any:
    """A number in [0, 1).

    Examples:
        >>> fraction("val_fraction")("0.1")
        0.1
    """
    return checked(float, name, lambda v: check_real(v, name, low=0, high=1, high_open=True))


def probability(name: str = "alpha") -> Any:
    """A number in the open interval (0, 1).

    Examples:
        >>> probability()("0.001")
        0.001
    """
    return checked(float, name, check_alpha)


def sigma(name: str = "sigma") -> Any:
    """A finite number > 0.

    Examples:
        >>> sigma()("0.25")
        0.25
    """
    return checked(float, name, check_sigma)
