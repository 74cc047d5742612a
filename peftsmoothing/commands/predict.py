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
import sys
import time
from typing import IO, Any

from ._args import USER_ERRORS, add_smoothing_arguments, load_smoothed

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


def run(args: argparse.Namespace) -> int:
    """Predict every ``--skip``-th image of ``args.dataset``; write ``args.out``; returns 0."""
    from ..core.files import atomic_write
    from ..core.seeds import derive_seed
    from ..core.stats import ABSTAIN, predict_from_counts
    from ._output import check_output, starts_with

    # before any work: never over a file that is not an earlier predict output
    out = check_output(args.out, own=starts_with(HEADER), overwrite=args.overwrite,
                       flag="--out", what="a predict output")
    smoothed, dataset, _ = load_smoothed(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"predicting {args.dataset} ({args.split}) with sigma={args.sigma} -> {out}",
          file=sys.stderr)
    predictions: list[int] = []
    correct: list[int] = []

    def write(f: IO[bytes]) -> None:
        f.write(HEADER)
        for idx in range(len(dataset))[: args.max : args.skip]:
            image, label = dataset[idx]
            start = time.perf_counter()
            # the counts behind SmoothedClassifier.predict, decided as it decides
            counts = smoothed.vote_counts(
                image, args.n, args.batch, seed=derive_seed(args.seed, idx)
            ).tolist()
            prediction = predict_from_counts(counts, args.alpha)
            seconds = time.perf_counter() - start
            predictions.append(prediction)
            correct.append(int(prediction == int(label)))
            f.write(f"{idx}\t{int(label)}\t{prediction}\t{correct[-1]}\t{max(counts)}\t"
                    f"{args.n}\t{seconds:.3f}\n".encode())

    atomic_write(out, write)  # a kill leaves the previous file whole
    if predictions:
        print(f"{len(predictions)} images: accuracy {sum(correct) / len(predictions):.3f}, "
              f"abstain rate {predictions.count(ABSTAIN) / len(predictions):.3f}")
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
    add_smoothing_arguments(
        p, "predict",
        image_size="resize images (e.g. `--image-size 224`); None: native size",
        n="noise samples per image",
        alpha="probability of returning a class other than the smoothed classifier's",
    )
    p.add_argument(
        "--out", required=True,
        help="output file (TSV), written when the run completes; an earlier predict output "
        "there is replaced, any other file only with --overwrite",
    )
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out even if it is not an earlier predict output")
    p.set_defaults(func=run, user_errors=USER_ERRORS)
