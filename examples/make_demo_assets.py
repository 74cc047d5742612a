"""Build the assets shipped inside the package for ``make demo`` and ``ps.zoo.demo_vit()``.

What it shows: how the embedded demo backbone and data were made, reproducibly.
How long it takes: about 10-20 minutes on 2 CPU cores (40 epochs on 5,085 images).

1. ``peftsmoothing/assets/cifar10_sample.npz``: 2,000 training images (the first 200 of each
   class in the real CIFAR-10 subset under ``../shared/data``) and the first 500 test images
   (official order), as uint8 NHWC. CIFAR-10 is by Krizhevsky, Nair & Hinton (2009).
2. ``peftsmoothing/assets/demo_vit.pt``: a small ViT (timm ``vit_tiny_patch16_224`` layout with
   img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4; 1.2M parameters) trained
   from scratch on the 5,085 clean CIFAR-10 training images of the subset, stored as float16.

Usage:
    python examples/make_demo_assets.py --root ../shared/data [--epochs 40] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import peftsmoothing as ps
from peftsmoothing.backbones.zoo import DEMO_VIT_KWARGS
from peftsmoothing.data.datasets import ArrayDataset, load_cifar

ASSETS = Path(__file__).resolve().parents[1] / "peftsmoothing" / "assets"


def make_sample(root: Path) -> None:
    x_train, y_train = load_cifar(root, train=True)
    x_test, y_test = load_cifar(root, train=False)
    keep = np.concatenate([np.flatnonzero(y_train == c)[:200] for c in range(10)])
    keep.sort()
    np.savez_compressed(
        ASSETS / "cifar10_sample.npz",
        x_train=x_train[keep], y_train=y_train[keep],
        x_test=x_test[:500], y_test=y_test[:500],
    )


def evaluate(model: torch.nn.Module, ds: ArrayDataset) -> float:
    model.eval()
    correct = 0
    loader = torch.utils.data.DataLoader(ds, batch_size=500)
    with torch.inference_mode():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
    return correct / len(ds)


def pretrain(root: Path, epochs: int, seed: int) -> None:
    torch.manual_seed(seed)
    x_train, y_train = load_cifar(root, train=True)
    x_test, y_test = load_cifar(root, train=False)
    train = ArrayDataset(x_train, y_train, augment=True)
    test = ArrayDataset(x_test, y_test)
    vit = ps.create_model("vit_tiny_patch16_224", seed=seed, num_classes=10, **DEMO_VIT_KWARGS)
    model = torch.nn.Sequential(ps.Normalize((0.5,) * 3, (0.5,) * 3), vit)
    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True, generator=g,
                                         drop_last=True)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    total = epochs * len(loader)
    warmup = len(loader) * 2
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / total))
    )
    for epoch in range(epochs):
        model.train()
        start, seen, loss_sum = time.time(), 0, 0.0
        for x, y in loader:
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            seen += len(y)
            loss_sum += loss.item() * len(y)
        speed = seen / (time.time() - start)
        msg = f"epoch {epoch + 1}/{epochs} loss {loss_sum / seen:.3f} {speed:.0f} img/s"
        if (epoch + 1) % 5 == 0 or epoch + 1 == epochs:
            msg += f" test acc {evaluate(model, test):.3f}"
        print(msg, flush=True)
    acc = evaluate(model, test)
    state = {k: v.half() for k, v in vit.state_dict().items()}
    torch.save(state, ASSETS / "demo_vit.pt")
    info = {"test_accuracy_1017": acc, "epochs": epochs, "seed": seed, "kwargs": DEMO_VIT_KWARGS,
            "torch": torch.__version__}
    (ASSETS / "demo_vit.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"clean test accuracy on 1,017 CIFAR-10 test images: {acc:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ASSETS.mkdir(parents=True, exist_ok=True)
    make_sample(args.root)
    pretrain(args.root, args.epochs, args.seed)


if __name__ == "__main__":
    main()
