"""Certify a model you already have: no wrapping, no training, just randomized smoothing.

What it shows: any classifier becomes certifiable once it takes images in [0, 1]. Put its input
normalization in front of it (``ps.Normalize`` in an ``nn.Sequential``), hand it to
``ps.SmoothedClassifier``, and certify a dataset with ``certify_dataset``: one log row per image,
written as it goes, so an interrupted run resumes where it stopped. The log then becomes a
certified-accuracy table with ``ps.CertificationReport``.

By default it certifies the small ViT shipped with the package (``ps.zoo.demo_vit()``, trained
on *clean* CIFAR-10 and never on noise) on the shipped CIFAR-10 test sample
(``ps.datasets.cifar10_sample(train=False)``), offline. A model that never saw noise abstains
often, and its certified radii are small: that is the honest answer, and the reason to
fine-tune on noise (see examples/quickstart.py).

How long it takes:
    default         about 1.5 minutes on 2 CPU cores (40 images, n=1,000)
    --smoke         a few seconds (4 images, n=100)
    full size       an ImageNet model on every 50th of the 50,000 val images at n=100,000:
                    hours, on a GPU

How to run it:
    python examples/certify_existing_model.py
    python examples/certify_existing_model.py --smoke --out /tmp/certify
    # a pretrained timm ImageNet model on ImageNet val (--root holds val/<class>/*.JPEG)
    python examples/certify_existing_model.py --model resnet50.a1_in1k --root /data/imagenet \\
        --sigma 0.5 --num-images 50000 --skip 50 --n 100000 --batch-size 400
Run the same command again (or after Ctrl-C) and it continues the log instead of starting over.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

import peftsmoothing as ps


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="certify an existing classifier, no training")
    parser.add_argument("--model", help="timm model name, pretrained weights are downloaded "
                        "(default: the shipped demo ViT, CIFAR-10)")
    parser.add_argument("--root", type=Path, help="ImageNet-style folder with val/ (for --model)")
    parser.add_argument("--sigma", type=float, default=0.25, help="noise level (pixel units)")
    parser.add_argument("--num-images", type=int, default=40, help="first images of the test set")
    parser.add_argument("--skip", type=int, default=1, help="certify every skip-th of them")
    parser.add_argument("--n0", type=int, default=100, help="selection samples per image")
    parser.add_argument("--n", type=int, default=1_000, help="estimation samples per image")
    parser.add_argument("--alpha", type=float, default=0.001, help="failure probability")
    parser.add_argument("--batch-size", type=int, default=500, help="noisy images per forward")
    parser.add_argument("--out", type=Path, default=Path("runs/certify_existing_model"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    args = parser.parse_args()
    if args.model and not args.root:
        parser.error("--model needs --root, the folder with the model's test images in val/")
    if args.smoke:
        args.num_images, args.n0, args.n, args.batch_size = 4, 10, 100, 100
    return args


def main() -> None:
    args = parse_args()
    started = time.time()

    # 1. The model you have. It expects *normalized* inputs, as most pretrained models do.
    net: Any  # a timm model: it has .pretrained_cfg and .num_classes
    test: Any
    if args.model:
        net = timm.create_model(args.model, pretrained=True)
        size = net.pretrained_cfg["input_size"][-1]
        test = ps.datasets.load_dataset("imagefolder", args.root, train=False, image_size=size)
    else:
        net = ps.zoo.demo_vit()
        test = ps.datasets.cifar10_sample(train=False)  # 500 images, floats in [0, 1]
    num_classes = net.num_classes
    # A torchvision model works the same way: torchvision.models.resnet50(weights=...) with
    # mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225).
    mean, std = net.pretrained_cfg["mean"], net.pretrained_cfg["std"]

    # 2. Put the normalization INSIDE the model, so that it takes images in [0, 1]. The
    #    smoothing noise is then added in pixel space, where the certified radius is measured.
    #    (Adding noise to normalized inputs would silently change sigma by a factor 1/std.)
    model = nn.Sequential(ps.Normalize(mean, std), net)
    if torch.cuda.is_available():
        model = model.cuda()

    # 3. The smoothed classifier: the class the model outputs most often under N(0, sigma^2 I).
    smoothed = ps.SmoothedClassifier(model, num_classes=num_classes, sigma=args.sigma)

    # 4. Certify the dataset. Every row goes to the log as soon as the image is done (and is
    #    fsynced); with resume=True (the default) images already in the log are not redone.
    #    Each image's noise seed depends only on (seed, image index), so a resumed run gives
    #    exactly the certificates an uninterrupted one would. The log checks that sigma, n0, n,
    #    alpha and seed are unchanged, but not the model: one log per model.
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / f"certify_{args.model or 'demo_vit'}.tsv"
    if log.exists():
        print(f"resuming: {len(ps.CertificationReport.from_log(log))} image(s) already in {log}")
    report = smoothed.certify_dataset(
        test,
        n0=args.n0,
        n=args.n,
        alpha=args.alpha,
        batch_size=args.batch_size,
        indices=range(min(args.num_images, len(test))),
        skip=args.skip,
        log=log,
        resume=True,
        seed=0,
    )

    # 5. Read the result: certified accuracy at radius r = fraction of images certified
    #    correct with a radius of at least r. The same report can be rebuilt from the log at
    #    any time (also while a run is going) with ps.CertificationReport.from_log(log).
    radii = [round(args.sigma * k / 2, 4) for k in range(5)]
    report.name = "existing model" if args.model else "demo ViT (clean-trained)"
    print(f"\nsigma={args.sigma}, n0={args.n0}, n={args.n}, alpha={args.alpha}; "
          f"log: {log}\n")
    print(report.summary(radii))
    print(f"\ndone in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
