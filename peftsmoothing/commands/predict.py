"""``peftsmoothing predict``: Cohen et al.'s PREDICT over a dataset, one row per image.

The output is a tab-separated file with the columns ``idx label predict correct count n
seconds``: the image index, its label, the smoothed classifier's class (``-1``: abstain), 1 if
they agree, the votes of the top class among the ``n`` noisy samples, ``n``, and the seconds
the image took. The noise of image ``idx`` is seeded by ``derive_seed(seed, idx)``, so a row
does not depend on the other images.

The file is written atomically when the run completes (a kill leaves the previous file whole),
and replaces only an earlier predict output (recognised by its header) unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

from ..core.names import DATASET_NAMES, PRECISIONS
from ._args import (
    add_model_arguments,
    default_device,
    int_at_least,
    load_model,
    probability,
    sigma,
)

__all__ = ["COLUMNS", "EXAMPLE", "HEADER", "USER_ERRORS", "register", "run"]

#: The columns of the output file, in order.
COLUMNS = ("idx", "label", "predict", "correct", "count", "n", "seconds")

#: The first line of the output file: how an earlier output is recognised (and replaced).
HEADER = ("\t".join(COLUMNS) + "\n").encode()

#: A complete ``peftsmoothing predict`` command (shown in ``--help``; a test parses it).
EXAMPLE = (
    "peftsmoothing predict --model runs/lora --dataset cifar10 --root data --sigma 0.25 "
    "--n 1000 --alpha 0.001 --skip 20 --out runs/lora/predict.tsv"
)

#: Exceptions ``peftsmoothing predict`` reports as a one-line error (exit status 1), not a
#: traceback: bad options, missing files, a missing optional package.
USER_ERRORS: tuple[type[Exception], ...] = (
    ValueError, TypeError, FileNotFoundError, ImportError, RuntimeError, FloatingPointError,
)  # fmt: skip


def _indices(size: int, skip: int, maximum: int | None) -> Iterator[int]:
    """The images to predict: every ``skip``-th of the first ``maximum``.

    Examples:
        >>> list(_indices(10, 3, None)), list(_indices(10, 3, 5))
        ([0, 3, 6, 9], [0, 3])
    """
    stop = size if maximum is None else min(size, maximum)
    return iter(range(0, stop, skip))


def run(args: argparse.Namespace) -> int:
    """Predict every ``--skip``-th image of ``args.dataset``; write ``args.out``; returns 0."""
    from ..certify.smoothing import SmoothedClassifier
    from ..core.files import atomic_write
    from ..core.seeds import derive_seed
    from ..core.stats import ABSTAIN, predict_from_counts
    from ..core.validation import check_positive_int
    from ._output import check_output, starts_with

    skip = check_positive_int(args.skip, "skip")
    # before any work: never over a file that is not an earlier predict output
    out = check_output(args.out, own=starts_with(HEADER), overwrite=args.overwrite,
                       flag="--out", what="a predict output")  # fmt: skip
    datasets: Any = importlib.import_module("peftsmoothing.data.datasets")
    device = args.device or default_device()
    model = load_model(args)
    dataset = datasets.load_dataset(
        args.dataset, args.root, train=args.split == "train", image_size=args.image_size,
        augment=False,
    )  # fmt: skip
    classes = int(datasets.num_classes(args.dataset, args.root))
    smoothed = SmoothedClassifier(
        model, classes, args.sigma, device=device, precision=args.precision
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"predicting {args.dataset} ({args.split}) with sigma={args.sigma} -> {out}",
          file=sys.stderr)
    rows = correct_total = abstained = 0

    def write(f: IO[bytes]) -> None:
        nonlocal rows, correct_total, abstained
        f.write(HEADER)
        for idx in _indices(len(dataset), skip, args.max):
            image, label = dataset[idx]
            start = time.perf_counter()
            # the counts behind SmoothedClassifier.predict, decided as it decides
            counts = smoothed.vote_counts(
                image, args.n, args.batch, seed=derive_seed(args.seed, idx)
            ).tolist()
            prediction = predict_from_counts(counts, args.alpha)
            seconds = time.perf_counter() - start
            count = max(counts)
            correct = int(prediction == int(label))
            f.write(f"{idx}\t{int(label)}\t{prediction}\t{correct}\t{count}\t{args.n}\t"
                    f"{seconds:.3f}\n".encode())  # fmt: skip
            rows += 1
            correct_total += correct
            abstained += prediction == ABSTAIN

    atomic_write(out, write)  # a kill leaves the previous file whole
    if rows:
        print(f"{rows} images: accuracy {correct_total / rows:.3f}, "
              f"abstain rate {abstained / rows:.3f}")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``predict`` sub-command."""
    p = subparsers.add_parser(
        "predict",
        help="predict with the smoothed classifier on a dataset (PREDICT)",
        description="Run PREDICT (Cohen et al. 2019) on every --skip-th image: the class "
        "returned differs from the smoothed classifier's with probability at most --alpha "
        "(-1: abstain). Writes one tab-separated row per image: "
        f"{' '.join(COLUMNS)}. Example: `{EXAMPLE}`",
    )
    add_model_arguments(p)
    p.add_argument("--dataset", default="cifar10", choices=DATASET_NAMES, help="dataset")
    p.add_argument("--root", required=True, help="data directory")
    p.add_argument("--split", choices=("test", "train"), default="test", help="dataset split")
    p.add_argument("--image-size", type=int_at_least("image_size", 1), default=None,
                   help="resize images (e.g. `--image-size 224`); None: native size")
    p.add_argument("--sigma", type=sigma(), required=True, help="noise level (pixel units)")
    p.add_argument("--n", type=int_at_least("n", 1), default=100_000,
                   help="noise samples per image")
    p.add_argument("--alpha", type=probability(), default=0.001,
                   help="probability of returning a class other than the smoothed "
                   "classifier's")
    p.add_argument("--batch", type=int_at_least("batch", 1), default=1000,
                   help="noisy images per forward pass")
    p.add_argument("--skip", type=int_at_least("skip", 1), default=1,
                   help="predict every SKIP-th image")
    p.add_argument("--max", type=int_at_least("max", 0), default=None,
                   help="only the first MAX images (None: all)")
    p.add_argument("--seed", type=int_at_least("seed", 0), default=0,
                   help="master seed of the per-image noise")
    p.add_argument("--device", default=None, help="torch device (None: cuda if available, "
                   "else cpu)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32, or bf16 / fp16 autocast")
    p.add_argument(
        "--out", required=True,
        help="output file (TSV), written when the run completes; an earlier predict output "
        "there is replaced, any other file only with --overwrite",
    )  # fmt: skip
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out even if it is not an earlier predict output")
    p.set_defaults(func=run, user_errors=USER_ERRORS)
