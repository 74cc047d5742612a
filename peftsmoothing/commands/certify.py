"""``peftsmoothing certify``: certify a saved model on a dataset, one log row per image."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ._args import USER_ERRORS, add_smoothing_arguments, int_at_least, load_smoothed, real


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
        part, parts = map(int, text.split("/"))
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
    part, parts = shard or (0, 1)
    if "{shard}" in out or parts == 1:
        return Path(out.replace("{shard}", str(part)))
    path = Path(out)
    return path.with_name(f"{path.stem}.shard{part}of{parts}{path.suffix}")


def run(args: argparse.Namespace) -> int:
    """Certify ``args.model`` on ``args.dataset``; print the summary; return the exit status."""
    if (args.max_radius is not None or args.tolerance is not None) and not args.early_stop:
        raise ValueError("--max-radius and --tolerance go with --early-stop")
    shard = parse_shard(args.shard) if args.shard else None
    log = shard_log_path(args.out, shard)
    # Image folders follow the model's timm data config (size, crop, interpolation); the
    # settings record it, so a resume with other preprocessing is refused.
    smoothed, dataset, preprocessing = load_smoothed(args, args.shard, model_preprocessing=True)
    print(f"certifying {args.dataset} ({args.split}) with sigma={args.sigma} -> {log}")
    # What identifies the data (not --root: a path is not an identity).
    info = {"name": args.dataset, "split": args.split, "image_size": args.image_size,
            "preprocessing": preprocessing}
    report = smoothed.certify_dataset(
        dataset, args.n0, args.n, args.alpha, args.batch, log=log, resume=args.resume,
        indices=range(len(dataset))[: args.max], skip=args.skip, shard=shard, seed=args.seed,
        log_format=args.log_format, dataset_info=info, radius=args.radius,
        early_stop=args.early_stop, max_radius=args.max_radius, tolerance=args.tolerance,
    )
    if len(report):
        radii = args.radii
        if args.radius is not None and args.radius not in radii:
            radii = sorted([*radii, args.radius])
        print(report.summary(radii))
    return 0


def register(subparsers: Any) -> None:
    """Add the ``certify`` sub-command."""
    from ..report.accuracy import DEFAULT_RADII
    from ..report.certlog import LOG_FORMATS

    p = subparsers.add_parser(
        "certify",
        help="certify a saved model on a dataset (randomized smoothing)",
        description="Certify every --skip-th test image with CERTIFY (Cohen et al. 2019), "
        "writing one log row per image; rerunning with the same --out resumes.",
    )
    add_smoothing_arguments(
        p, "certify",
        image_size="resize images, e.g. `--image-size 224` (None: native size, or the model's "
        "timm data config for image folders)",
        n="estimation samples (the most, in the sequential modes)",
        alpha="failure probability of each certificate, in (0, 1)",
    )
    p.add_argument("--n0", type=int_at_least("n0", 1), default=100, help="selection samples")
    mode = p.add_argument_group(
        "sequential modes",
        "draw the estimation samples in looks (256, 512, ... doubling, then --n) and stop "
        "early; alpha is spread over the looks, so certificates stay valid at level alpha; "
        "several images share each forward batch",
    )
    exclusive = mode.add_mutually_exclusive_group()
    exclusive.add_argument("--radius", type=real("radius", low=0.0), metavar="R",
                           help="target mode: decide for each image whether it is certified at "
                           "radius R (only certified accuracy at R is meaningful in the log)")
    exclusive.add_argument("--early-stop", action="store_true", help="certify the largest "
                           "radius, stopping when more samples would add little")
    mode.add_argument("--max-radius", type=real("max_radius", low=0.0, low_open=True),
                      help="with --early-stop: stop once this radius is certified")
    mode.add_argument("--tolerance", type=real("tolerance", low=0.0),
                      help="with --early-stop: stop when n samples would add less than this "
                      "radius (default 0.05 * sigma)")
    p.add_argument("--out", required=True, help="log file (TSV); {shard} is replaced by i")
    p.add_argument("--shard", metavar="i/k", type=_shard_text, help="certify the i-th of k "
                   "disjoint slices (or 'torchrun': RANK/WORLD_SIZE)")
    p.add_argument("--log-format", choices=LOG_FORMATS, default="peftsmoothing",
                   help="log columns: ours (default) or Cohen et al.'s six (idx label predict "
                   "radius correct time), with our settings file beside it either way")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue an existing log (default); --no-resume refuses to touch one")
    p.add_argument("--radii", type=real("radii", low=0.0), nargs="+",
                   default=list(DEFAULT_RADII), help="radii of the summary table")
    p.set_defaults(func=run, user_errors=USER_ERRORS)
