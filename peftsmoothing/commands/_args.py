"""What several commands share: their common flags, declared once, and argparse ``type=``
functions built on ``peftsmoothing.core.validation`` (an impossible number is a one-line error
when the command line is parsed, before any model or data is loaded)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from ..core.names import DATASET_NAMES, PRECISIONS
from ..core.validation import check_alpha, check_int, check_real, check_sigma

#: Exceptions ``train``, ``certify`` and ``predict`` report as a one-line error (exit status 1),
#: not a traceback: bad options, a log started with other settings or held by another process,
#: a checkpoint that does not fit, a missing optional package (and, as for every command, a
#: missing or unwritable file: ``OSError``).
USER_ERRORS: tuple[type[Exception], ...] = (
    ValueError, TypeError, ImportError, RuntimeError, FloatingPointError,
)


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
    parser.add_argument("--base-weights", metavar="FILE",
                        help="state_dict of the base model the directory was trained on (a "
                        "backbone you pre-trained, or timm's weights saved on another "
                        "machine); checked against the saved frozen-weights fingerprint")
    parser.add_argument("--pretrained", action="store_true",
                        help="rebuild the base model with timm's registry weights for its "
                        "recorded name (downloaded on first use; never without this flag)")


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

    return peftsmoothing.load(args.model, base_weights=args.base_weights,
                              pretrained=args.pretrained or None)


def load_smoothed(
    args: argparse.Namespace, shard_spec: str | None = None, model_preprocessing: bool = False
) -> tuple[Any, Any, dict[str, Any] | None]:
    """The flags of ``add_smoothing_arguments`` made objects: the saved model as a
    ``SmoothedClassifier`` at ``--sigma`` on ``--device`` (else ``default_device(shard_spec)``),
    the dataset (no augmentation) and its preprocessing. With ``model_preprocessing``, image
    folders follow the model's timm data config (size, crop, interpolation), which is returned;
    else ``None``.

    Examples:
        >>> load_smoothed(argparse.Namespace(model="no/such/dir", base_weights=None,
        ...                                  pretrained=False, device="cpu"))
        Traceback (most recent call last):
        ...
        FileNotFoundError: ...
    """
    from ..certify.smoothing import SmoothedClassifier
    from ..data import datasets

    model = load_model(args)
    preprocessing = None
    if model_preprocessing and args.dataset in ("imagenet", "imagefolder"):
        preprocessing = datasets.preprocessing_config(model, image_size=args.image_size)
    dataset = datasets.load_dataset(
        args.dataset, args.root, train=args.split == "train", image_size=args.image_size,
        augment=False, preprocessing=preprocessing,
    )
    classes = datasets.num_classes(args.dataset, args.root)
    device = args.device or default_device(shard_spec)
    smoothed = SmoothedClassifier(
        model, classes, args.sigma, device=device, precision=args.precision
    )
    return smoothed, dataset, preprocessing


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


def real(name: str, **bounds: Any) -> Any:
    """A finite number within the bounds of
    [`check_real`][peftsmoothing.core.validation.check_real] (``low=``, ``high_open=``, ...).

    Examples:
        >>> real("val_fraction", low=0, high=1, high_open=True)("0.1")
        0.1
    """
    return checked(float, name, lambda v: check_real(v, name, **bounds))


def add_smoothing_arguments(parser: argparse.ArgumentParser, verb: str, **help: str) -> None:
    """The flags ``certify`` and ``predict`` share: the saved model, its data, the noise, the
    device; ``help`` words ``image_size``, ``n`` and ``alpha`` for the command, ``verb`` its
    ``--skip``.

    Examples:
        >>> parser = argparse.ArgumentParser()
        >>> add_smoothing_arguments(parser, "certify", image_size="", n="", alpha="")
        >>> args = parser.parse_args(["--model", "m", "--root", "r", "--sigma", "0.25"])
        >>> args.sigma, args.n, args.alpha, args.split
        (0.25, 100000, 0.001, 'test')
    """
    add_model_arguments(parser)
    add = parser.add_argument
    add("--dataset", default="cifar10", choices=DATASET_NAMES, help="dataset")
    add("--root", required=True, help="data directory")
    add("--split", choices=("test", "train"), default="test", help="dataset split")
    add("--image-size", type=int_at_least("image_size", 1), help=help["image_size"])
    add("--sigma", type=checked(float, "sigma", check_sigma), required=True,
        help="noise level (pixel units)")
    add("--n", type=int_at_least("n", 1), default=100_000, help=help["n"])
    add("--alpha", type=checked(float, "alpha", check_alpha), default=0.001, help=help["alpha"])
    add("--batch", type=int_at_least("batch", 1), default=1000,
        help="noisy images per forward pass")
    add("--skip", type=int_at_least("skip", 1), default=1, help=f"{verb} every SKIP-th image")
    add("--max", type=int_at_least("max", 0), help="only the first MAX images (None: all)")
    add("--seed", type=int_at_least("seed", 0), default=0,
        help="master seed of the per-image noise")
    add("--device", help="torch device (None: cuda if available, else cpu)")
    add("--precision", choices=PRECISIONS, default="fp32",
        help="fp32, or bf16 / fp16 autocast of the base model")


def add_confidence_argument(parser: argparse.ArgumentParser) -> None:
    """``--confidence`` of the lower bound on certified accuracy (``report``, ``card``).

    Examples:
        >>> parser = argparse.ArgumentParser()
        >>> add_confidence_argument(parser)
        >>> parser.parse_args([]).confidence
        0.95
    """
    parser.add_argument(
        "--confidence", default=0.95,
        type=real("confidence", low=0.0, high=1.0, low_open=True, high_open=True),
        help="probability with which the lower bound on certified accuracy holds",
    )
