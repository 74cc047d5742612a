"""LoRA and certification on a model that is not a timm ViT: a torchvision ResNet-18.

What it shows: how to wrap an arbitrary ``nn.Module``. A torchvision model has no timm
``pretrained_cfg`` (so you pass ``normalize=(mean, std)``) and no ``reset_classifier`` (so you
name the head, ``head="fc"``), and LoRA needs to be told which layers to adapt
(``target_modules``: names, dotted suffixes or regular expressions, for ``nn.Conv2d`` and
``nn.Linear`` layers alike). It also shows that BatchNorm layers stay frozen during training,
running statistics included. Then: a little noise training on the shipped CIFAR-10 sample, and
certificates for a few test images.

The ResNet is built WITHOUT pretrained weights so that this runs offline; its certificates
are therefore poor (a random backbone mostly abstains). For real work build it with
``weights="IMAGENET1K_V1"``, pass ``num_classes=10`` to ``ps.wrap`` to replace its 1000-class
head by a new, fully trained one (and drop ``"fc"`` from ``target_modules``); the rest stays
the same.

How long it takes:
    default         under a minute on 2 CPU cores (2 epochs on 2,000 images, 20 images
                    certified with n=1,000)
    --smoke         a few seconds (64 training images, 1 epoch, 2 images with n=100)

How to run it:
    python examples/custom_model.py
    python examples/custom_model.py --smoke --out /tmp/custom_model
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch.utils.data import DataLoader, Subset

import peftsmoothing as ps

# The statistics torchvision's ImageNet weights expect (use your model's own).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="LoRA + certification on a torchvision ResNet")
    parser.add_argument("--sigma", type=float, default=0.25, help="noise level (pixel units)")
    parser.add_argument("--r", type=int, default=4, help="LoRA rank")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--num-images", type=int, default=20, help="test images to certify")
    parser.add_argument("--n0", type=int, default=100, help="selection samples per image")
    parser.add_argument("--n", type=int, default=1_000, help="estimation samples per image")
    parser.add_argument("--out", type=Path, default=Path("runs/custom_model"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    args = parser.parse_args()
    if args.smoke:
        args.epochs, args.num_images, args.n0, args.n = 1, 2, 10, 100
    return args


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    started = time.time()

    # 1. Any nn.Module. Here a ResNet-18 with a 10-class head, random weights.
    resnet = torchvision.models.resnet18(weights=None, num_classes=10)

    # 2. Wrap it. The patterns below are regular expressions that must match a module's whole
    #    name: the 3x3 convolutions of the last stage (layer4.0.conv1, ..., layer4.1.conv2)
    #    and the classifier "fc" (a plain name works too). LoRA adds a rank-r update to each.
    model = ps.wrap(
        resnet,
        method="lora",
        r=args.r,
        target_modules=[r"layer4\.\d+\.conv\d", "fc"],
        head="fc",  # torchvision's classifier; kept (it already has 10 classes), LoRA on it
        normalize=(IMAGENET_MEAN, IMAGENET_STD),  # the model then takes images in [0, 1]
    )
    print(ps.parameter_report(model))

    # 3. BatchNorm stays frozen: its affine parameters are frozen with the backbone, and the
    #    wrapped model keeps frozen BatchNorm layers in eval mode even in model.train(), so
    #    noisy batches never overwrite their running statistics.
    blocks: Any = resnet.layer1  # the same ResNet, now inside the wrapper (model.model)
    bn = blocks[0].bn1
    blocks4: Any = resnet.layer4
    running_mean = bn.running_mean.clone()
    model.train()
    print(f"\nafter model.train(): layer1[0].bn1.training = {bn.training}, "
          f"layer4[0].conv1.training = {blocks4[0].conv1.training}")

    # 4. Noise training, as for any model (images in [0, 1], noise added in pixel space).
    train = ps.datasets.cifar10_sample(train=True)
    test = ps.datasets.cifar10_sample(train=False)
    if args.smoke:
        train = Subset(train, range(64))  # type: ignore[assignment]
    trainer = ps.NoiseTrainer(model, sigma=args.sigma, epochs=args.epochs, lr=1e-3,
                              checkpoint_dir=args.out / "checkpoint")
    history = trainer.fit(DataLoader(train, batch_size=64, shuffle=True))
    print(f"noisy training accuracy {history[-1]['train_acc']:.3f}; BatchNorm running mean "
          f"unchanged by training: {torch.equal(bn.running_mean, running_mean)}")
    # The checkpoint holds only the LoRA matrices. To rebuild: build the same ResNet (same
    # weights), then ps.load(resnet, args.out / "checkpoint" / "last").

    # 5. Certify a few test images. While sampling, SmoothedClassifier merges LoRA into the
    #    convolution kernels, so the ResNet costs exactly what a plain ResNet-18 costs.
    smoothed = ps.SmoothedClassifier(model, num_classes=10, sigma=args.sigma)
    report = smoothed.certify_dataset(
        test, n0=args.n0, n=args.n, alpha=0.001, batch_size=500,
        indices=range(args.num_images),
    )
    report.name = "ResNet-18 + LoRA"
    print(f"\ncertified {len(report)} images (sigma={args.sigma}, n={args.n}):")
    print(report.summary([0.0, 0.125, 0.25]))
    print(f"\ndone in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
