"""``peftsmoothing certify``: certify a saved model on a dataset, one log row per image."""

from __future__ import annotations

import argparse
import importlib
import os
from pathlib import Path
from typing import Any


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


def _default_device(shard_spec: str | None) -> str:
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    if shard_spec == "torchrun" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return "cuda"


#: Exceptions ``peftsmoothing certify`` reports as a one-line error (exit status 1), not a
#: traceback: bad options, missing files, a log started with other settings or held by another
#: process, a missing optional package.
USER_ERRORS: tuple[type[Exception], ...] = (
    ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError, RuntimeError,
    FloatingPointError,
)


def run(args: argparse.Namespace) -> int:
    """Certify ``args.model`` on ``args.dataset``; print the summary; return the exit status."""
    import peftsmoothing

    from ..smoothing import SmoothedClassifier

    datasets: Any = importlib.import_module("peftsmoothing.datasets")
    shard = parse_shard(args.shard) if args.shard else None
    log = shard_log_path(args.out, shard)
    device = args.device or _default_device(args.shard)
    model = peftsmoothing.load(args.model)
    dataset = datasets.load_dataset(
        args.dataset, args.root, train=args.split == "train", image_size=args.image_size,
        augment=False,
    )  # fmt: skip
    classes = int(datasets.num_classes(args.dataset, args.root))
    smoothed = SmoothedClassifier(
        model, classes, args.sigma, device=device, precision=args.precision
    )
    indices = range(min(len(dataset), args.max)) if args.max is not None else None
    print(f"certifying {args.dataset} ({args.split}) with sigma={args.sigma} -> {log}")
    report = smoothed.certify_dataset(
        dataset, args.n0, args.n, args.alpha, args.batch, log=log, resume=args.resume,
        indices=indices, skip=args.skip, shard=shard, seed=args.seed,
    )  # fmt: skip
    if len(report):
        print(report.summary(args.radii))
    return 0


def register(subparsers: Any) -> None:
    """Add the ``certify`` sub-command."""
    from ..precision import PRECISIONS
    from ..report import DEFAULT_RADII

    p = subparsers.add_parser(
        "certify",
        help="certify a saved model on a dataset (randomized smoothing)",
        description="Certify every --skip-th test image with CERTIFY (Cohen et al. 2019), "
        "writing one log row per image; rerunning with the same --out resumes.",
    )
    p.add_argument("--model", required=True, help="directory written by PEFTModel.save")
    p.add_argument("--dataset", default="cifar10", help="dataset name (default: cifar10)")
    p.add_argument("--root", required=True, help="data directory")
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--image-size", type=int, default=None, help="resize images (e.g. 224)")
    p.add_argument("--sigma", type=float, required=True, help="noise level (pixel units)")
    p.add_argument("--n0", type=int, default=100, help="selection samples (default 100)")
    p.add_argument("--n", type=int, default=100_000, help="estimation samples (default 100000)")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability")
    p.add_argument("--batch", type=int, default=1000, help="noisy images per forward pass")
    p.add_argument("--skip", type=int, default=1, help="certify every SKIP-th image")
    p.add_argument("--max", type=int, default=None, help="only the first MAX images")
    p.add_argument("--out", required=True, help="log file (TSV); {shard} is replaced by i")
    p.add_argument(
        "--shard", default=None, metavar="i/k", type=_shard_text,
        help="certify the i-th of k disjoint slices (or 'torchrun': RANK/WORLD_SIZE)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="master seed of the per-image noise")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument(
        "--resume", action=argparse.BooleanOptionalAction, default=True,
        help="continue an existing log (default); --no-resume refuses to touch one",
    )  # fmt: skip
    p.add_argument(
        "--radii", type=float, nargs="+", default=list(DEFAULT_RADII),
        help="radii of the summary table",
    )  # fmt: skip
    p.set_defaults(func=run, user_errors=USER_ERRORS)
