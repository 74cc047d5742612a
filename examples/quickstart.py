"""Quickstart: the README example, end to end, on real CIFAR-10 images.

What it shows: wrap a pretrained Vision Transformer with LoRA, look at what is trainable,
fine-tune LoRA on Gaussian-noised images with ``ps.NoiseTrainer``, certify a few test images
with ``ps.SmoothedClassifier``, print the certificates, then save the trained LoRA weights and
load them back with ``ps.load``.

By default everything is offline: the small ViT pre-trained on clean CIFAR-10 that ships with
the package (``ps.zoo.demo_vit()``) and the shipped CIFAR-10 sample
(``ps.datasets.cifar10_sample()``, 2,000 training and 500 test images).

How long it takes:
    default         about 1 minute on 2 CPU cores (3 epochs, 5 images certified with n=5,000)
    --smoke         a few seconds (64 training images, 1 epoch, 2 images with n=100)
    full size       ViT-B/16 on all of CIFAR-10 at 224x224 with n=100,000: hours, on a GPU

How to run it:
    python examples/quickstart.py
    python examples/quickstart.py --smoke --out /tmp/quickstart
    # the README / paper setting (downloads the ViT-B weights; --root holds cifar-10-batches-py/)
    python examples/quickstart.py --model vit_base_patch16_224.augreg_in21k --pretrained \\
        --root ../shared/data --sigma 0.5 --epochs 10 --batch-size 64 \\
        --num-images 100 --n 100000 --cert-batch 1000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

import peftsmoothing as ps


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="wrap -> train on noise -> certify -> save/load")
    parser.add_argument("--model", help="timm model name (default: the shipped demo ViT)")
    parser.add_argument("--pretrained", action="store_true", help="download timm's weights")
    parser.add_argument("--root", type=Path, help="folder with cifar-10-batches-py/ "
                        "(default: the CIFAR-10 sample shipped with the package)")
    parser.add_argument("--sigma", type=float, default=0.25, help="noise level (pixel units)")
    parser.add_argument("--r", type=int, default=8, help="LoRA rank")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=100, help="training batch size")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--num-images", type=int, default=5, help="test images to certify")
    parser.add_argument("--n0", type=int, default=100, help="selection samples per image")
    parser.add_argument("--n", type=int, default=5_000, help="estimation samples per image")
    parser.add_argument("--alpha", type=float, default=0.001, help="failure probability")
    parser.add_argument("--cert-batch", type=int, default=500, help="noisy images per forward")
    parser.add_argument("--out", type=Path, default=Path("runs/quickstart"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    args = parser.parse_args()
    if args.model and not args.root:
        parser.error("--model needs --root: the shipped CIFAR-10 sample is 32x32, while timm "
                     "models expect their own input size (e.g. 224)")
    if args.smoke:
        args.epochs, args.num_images, args.n0, args.n, args.cert_batch = 1, 2, 10, 100, 100
    return args


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    started = time.time()

    # 1. A pretrained model and data. Images are float tensors in [0, 1]: the noise is added in
    #    pixel space, and the model normalizes them itself (ps.wrap puts the layer in).
    base: Any  # a timm model: it has .pretrained_cfg
    if args.model:
        # ps.create_model is timm.create_model that remembers the recipe, so that
        # ps.load(path) can rebuild the base model later without being handed one (seed=0
        # makes that work for random weights too, without --pretrained).
        base = ps.create_model(args.model, pretrained=args.pretrained, seed=0)
        size = base.pretrained_cfg["input_size"][-1]
        train = ps.datasets.load_dataset("cifar10", args.root, train=True, image_size=size)
        test = ps.datasets.load_dataset("cifar10", args.root, train=False, image_size=size)
        num_classes: int | None = 10  # replace the ImageNet head by a new 10-class one
    else:
        base = ps.zoo.demo_vit()  # already a CIFAR-10 classifier: keep (and train) its head
        train = ps.datasets.cifar10_sample(train=True)  # with random crop + flip
        test = ps.datasets.cifar10_sample(train=False)
        num_classes = None
    if args.smoke:
        train = Subset(train, range(64))

    # 2. Wrap: freeze the backbone, add LoRA to the query/value projections of every attention
    #    block, put the normalization inside. Only LoRA and the head are trainable.
    model = ps.wrap(base, method="lora", r=args.r, num_classes=num_classes, train_head=True)
    report = ps.parameter_report(model)
    print(report)  # one row per module that has trainable parameters, then the summary line

    # 3. Fine-tune on Gaussian-noised images: every batch x becomes x + sigma * randn.
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True)
    trainer = ps.NoiseTrainer(model, sigma=args.sigma, epochs=args.epochs, lr=args.lr,
                              warmup_steps=10)
    history = trainer.fit(loader)
    print(f"trained {args.epochs} epoch(s): noisy training accuracy "
          f"{history[-1]['train_acc']:.3f}")

    # 4. Certify. The smoothed classifier predicts the class the model outputs most often under
    #    noise of the SAME sigma; CERTIFY also gives an L2 radius within which that prediction
    #    provably cannot change (the statement holds with probability >= 1 - alpha).
    smoothed = ps.SmoothedClassifier(model, num_classes=10, sigma=args.sigma)
    print(f"\ncertifying {args.num_images} test images (sigma={args.sigma}, n0={args.n0}, "
          f"n={args.n}, alpha={args.alpha})")
    print(" image  label  prediction   radius  pa_lower  seconds")
    for i in range(args.num_images):
        x, label = test[i]
        cert = smoothed.certify(x, n0=args.n0, n=args.n, alpha=args.alpha,
                                batch_size=args.cert_batch, seed=i)
        shown = "abstain" if cert.prediction == ps.ABSTAIN else str(cert.prediction)
        print(f"{i:6d}  {label:5d}  {shown:>10}  {cert.radius:7.3f}  {cert.pa_lower:8.4f}  "
              f"{cert.seconds:7.1f}")

    # 5. Save only what was trained (LoRA + head, plus a JSON config), and load it back.
    #    ps.load(path) rebuilds the base model from its recorded recipe; ps.load(base, path)
    #    takes a base model you built yourself (same architecture and weights).
    saved = model.save(args.out / "lora")
    size_kb = sum(f.stat().st_size for f in saved.iterdir()) / 1024
    loaded = ps.load(saved)
    x = torch.stack([test[i][0] for i in range(4)]).to(next(model.parameters()).device)
    with torch.no_grad():
        diff = (model.eval()(x) - loaded.to(x.device).eval()(x)).abs().max().item()
    print(f"\nsaved to {saved} ({size_kb:.0f} KB); ps.load round trip: max logit difference "
          f"{diff:.1e}")  # float rounding only: certify() merged LoRA in and out again
    print(f"done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
