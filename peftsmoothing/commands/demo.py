"""``peftsmoothing demo``: the whole pipeline on the shipped ViT and CIFAR-10 sample."""

from __future__ import annotations

import argparse
from typing import Any


def run(args: argparse.Namespace) -> int:
    """Run [`run_demo`][peftsmoothing.demo.run_demo] with the command-line settings."""
    from ..demo import DemoConfig, run_demo

    if args.smoke:
        run_demo(DemoConfig.smoke(out=args.out), train_limit=128)
    else:
        run_demo(DemoConfig(out=args.out, sigma=args.sigma, epochs=args.epochs,
                            num_images=args.num_images, n=args.n, n0=args.n0,
                            compare_base=not args.no_baseline))
    return 0


def register(subparsers: Any) -> None:
    """Add the ``demo`` sub-command."""
    from ..demo import DemoConfig

    defaults = DemoConfig()
    p = subparsers.add_parser(
        "demo", help="run the end-to-end demo offline (3-4 minutes on 2 CPU cores)"
    )
    p.add_argument("--out", default=defaults.out, help="output directory")
    p.add_argument("--sigma", type=float, default=defaults.sigma,
                   help="noise level of training and certification (pixel units)")
    p.add_argument("--epochs", type=int, default=defaults.epochs,
                   help="noise fine-tuning epochs on 2,000 training images")
    p.add_argument("--num-images", type=int, default=defaults.num_images,
                   help="test images to certify (of the 500 shipped)")
    p.add_argument("--n0", type=int, default=defaults.n0, help="selection samples per image")
    p.add_argument("--n", type=int, default=defaults.n, help="estimation samples per image")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip certifying the model before fine-tuning")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: runs in seconds")
    p.set_defaults(func=run)
