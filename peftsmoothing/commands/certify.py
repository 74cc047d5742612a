"""``peftsmoothing certify``: certify a saved model on a dataset, one log row per image."""

from __future__ import annotations

import argparse
import importlib
import os
from pathlib import Path
from typing import Any

from ._args import (
    add_model_arguments,
    checked,
    default_device,
    int_at_least,
    load_model,
    probability,
    sigma,
)


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"i/k"`` (0-based shard ``i`` of ``k``) or ``"torchrun"`` (``RANK/WORLD_SIZE``).

    Examples:
        >>> parse_shard("1/4")
        (1, 4)
    """
    if text == "torchrun":
        try:
            text = f"{int(os.environ['RANK'])}/{int(os.environ['WORLD_SIZE'])}"
        except (KeyError, ValueError):
            raise argparse.ArgumentTypeError(
                "--shard torchrun needs the RANK and WORLD_SIZE environment variables"
            ) from None
    try:
        i_text, k_text = text.split("/")
        part, parts = int(i_text), int(k_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/k (e.g. 0/4), got {text!r}") from None
    if parts < 1 or not 0 <= part < parts:
        raise argparse.ArgumentTypeError(f"expected i/k with 0 <= i < k, got {text!r}")
    return part, parts


def _shard_text(text: str) -> str:
    parse_shard(text)  # reject it at parse time
    return text


def shard_log_path(out: str, shard: tuple[int, int] | None) -> Path:
    """The log of one shard: ``{shard}`` in ``out`` is replaced by ``i``; without it, ``k > 1``
    inserts ``.shard{i}of{k}`` before the extension, so that no two processes share a log.

    Examples:
        >>> str(shard_log_path("runs/certify.tsv", (1, 4)))
        'runs/certify.shard1of4.tsv'
        >>> str(shard_log_path("certify-{shard}.tsv", (1, 4)))
        'certify-1.tsv'
    """
    if shard is None:
        return Path(out.replace("{shard}", "0"))
    part, parts = shard
    if "{shard}" in out:
        return Path(out.replace("{shard}", str(part)))
    path = Path(out)
    if parts == 1:
        return path
    return path.with_name(f"{path.stem}.shard{part}of{parts}{path.suffix}")


#: Exceptions ``peftsmoothing certify`` reports as a one-line error (exit status 1), not a
#: traceback: bad options, missing files, a log started with other settings or held by another
#: process, a missing optional package.
USER_ERRORS: tuple[type[Exception], ...] = (
    ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError, RuntimeError,
    FloatingPointError,
)


def run(args: argparse.Namespace) -> int:
    """Certify ``args.model`` on ``args.dataset``; print the summary; return the exit status."""
    from ..certify.smoothing import SmoothedClassifier

    datasets: Any = importlib.import_module("peftsmoothing.data.datasets")
    shard = parse_shard(args.shard) if args.shard else None
    log = shard_log_path(args.out, shard)
    device = args.device or default_device(args.shard)
    model = load_model(args)
    # Image folders follow the model's timm data config (size, crop, interpolation); the
    # settings record it, so a resume with other preprocessing is refused.
    folders = args.dataset in ("imagenet", "imagefolder")
    preprocessing = (
        datasets.preprocessing_config(model, image_size=args.image_size) if folders else None
    )
    dataset = datasets.load_dataset(
        args.dataset, args.root, train=args.split == "train", image_size=args.image_size,
        augment=False, preprocessing=preprocessing,
    )  # fmt: skip
    if (args.max_radius is not None or args.tolerance is not None) and not args.early_stop:
        raise ValueError("--max-radius and --tolerance go with --early-stop")
    classes = int(datasets.num_classes(args.dataset, args.root))
    smoothed = SmoothedClassifier(
        model, classes, args.sigma, device=device, precision=args.precision
    )
    indices = range(min(len(dataset), args.max)) if args.max is not None else None
    print(f"certifying {args.dataset} ({args.split}) with sigma={args.sigma} -> {log}")
    # What identifies the data (not --root: a path is not an identity).
    info = {"name": args.dataset, "split": args.split, "image_size": args.image_size,
            "preprocessing": preprocessing}  # fmt: skip
    report = smoothed.certify_dataset(
        dataset, args.n0, args.n, args.alpha, args.batch, log=log, resume=args.resume,
        indices=indices, skip=args.skip, shard=shard, seed=args.seed,
        log_format=args.log_format, dataset_info=info, radius=args.radius,
        early_stop=args.early_stop, max_radius=args.max_radius, tolerance=args.tolerance,
    )  # fmt: skip
    if len(report):
        radii = args.radii
        if args.radius is not None and args.radius not in radii:
            radii = sorted([*radii, args.radius])
        print(report.summary(radii))
    return 0


def register(subparsers: Any) -> None:
    """Add the ``certify`` sub-command."""
    from ..core.names import DATASET_NAMES, PRECISIONS
    from ..core.validation import check_real, check_sigma
    from ..report.accuracy import DEFAULT_RADII
    from ..report.certlog import LOG_FORMATS

    def nonnegative(name: str) -> Any:
        return checked(float, name, lambda v: check_real(v, name, low=0.0))

    p = subparsers.add_parser(
        "certify",
        help="certify a saved model on a dataset (randomized smoothing)",
        description="Certify every --skip-th test image with CERTIFY (Cohen et al. 2019), "
        "writing one log row per image; rerunning with the same --out resumes.",
    )
    add_model_arguments(p)
    p.add_argument("--dataset", default="cifar10", choices=DATASET_NAMES, help="dataset")
    p.add_argument("--root", required=True, help="data directory")
    p.add_argument("--split", choices=("test", "train"), default="test", help="dataset split")
    p.add_argument(
        "--image-size", type=int_at_least("image_size", 1), default=None,
        help="resize images, e.g. `--image-size 224` (None: native size, or the model's "
        "timm data config for image folders)",
    )  # fmt: skip
    p.add_argument("--sigma", type=sigma(), required=True, help="noise level (pixel units)")
    p.add_argument("--n0", type=int_at_least("n0", 1), default=100, help="selection samples")
    p.add_argument("--n", type=int_at_least("n", 1), default=100_000,
                   help="estimation samples (the most, in the sequential modes)")  # fmt: skip
    p.add_argument("--alpha", type=probability(), default=0.001,
                   help="failure probability of each certificate, in (0, 1)")  # fmt: skip
    p.add_argument("--batch", type=int_at_least("batch", 1), default=1000,
                   help="noisy images per forward pass")  # fmt: skip
    mode = p.add_argument_group(
        "sequential modes",
        "draw the estimation samples in looks (256, 512, ... doubling, then --n) and stop "
        "early; alpha is spread over the looks, so certificates stay valid at level alpha; "
        "several images share each forward batch",
    )
    exclusive = mode.add_mutually_exclusive_group()
    exclusive.add_argument(
        "--radius", type=nonnegative("radius"),
        default=None, metavar="R",
        help="target mode: decide for each image whether it is certified at radius R "
        "(only certified accuracy at R is meaningful in the log)",
    )  # fmt: skip
    exclusive.add_argument(
        "--early-stop", action="store_true",
        help="certify the largest radius, stopping when more samples would add little",
    )  # fmt: skip
    mode.add_argument(
        "--max-radius", type=checked(float, "max_radius", check_sigma), default=None,
        help="with --early-stop: stop once this radius is certified",
    )  # fmt: skip
    mode.add_argument(
        "--tolerance", type=nonnegative("tolerance"),
        default=None,
        help="with --early-stop: stop when n samples would add less than this radius "
        "(default 0.05 * sigma)",
    )  # fmt: skip
    p.add_argument("--skip", type=int_at_least("skip", 1), default=1,
                   help="certify every SKIP-th image")  # fmt: skip
    p.add_argument("--max", type=int_at_least("max", 0), default=None,
                   help="only the first MAX images (None: all)")  # fmt: skip
    p.add_argument("--out", required=True, help="log file (TSV); {shard} is replaced by i")
    p.add_argument(
        "--shard", default=None, metavar="i/k", type=_shard_text,
        help="certify the i-th of k disjoint slices (or 'torchrun': RANK/WORLD_SIZE)",
    )  # fmt: skip
    p.add_argument("--seed", type=int_at_least("seed", 0), default=0,
                   help="master seed of the per-image noise")  # fmt: skip
    p.add_argument("--device", default=None,
                   help="torch device (None: cuda if available, else cpu)")  # fmt: skip
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32, or bf16 / fp16 autocast of the base model")  # fmt: skip
    p.add_argument(
        "--log-format", choices=LOG_FORMATS, default="peftsmoothing",
        help="log columns: ours (default) or Cohen et al.'s six (idx label predict radius "
        "correct time), with our settings file beside it either way",
    )  # fmt: skip
    p.add_argument(
        "--resume", action=argparse.BooleanOptionalAction, default=True,
        help="continue an existing log (default); --no-resume refuses to touch one",
    )  # fmt: skip
    p.add_argument(
        "--radii", type=nonnegative("radii"), nargs="+", default=list(DEFAULT_RADII),
        help="radii of the summary table",
    )  # fmt: skip
    p.set_defaults(func=run, user_errors=USER_ERRORS)
