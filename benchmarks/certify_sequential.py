"""Sequential CERTIFY against fixed-n CERTIFY: samples, wall time, certified accuracy.

One run, side by side, on the shipped demo ViT (``ps.zoo.demo_vit()``, LoRA r=8 wrapped;
``--finetune-epochs E`` first fine-tunes the LoRA on Gaussian noise on the shipped training
sample at each sigma, as ``peftsmoothing demo`` does; 0 = the clean-trained ViT) and the
shipped CIFAR-10 test sample, at sigma 0.25 and 0.5:

- fixed-n CERTIFY (``n0 + n_max`` samples per image), twice with different seeds (for scale);
- target mode at r = 0.5, 1, 2, 3 sigma (``TargetRadiusPolicy``), packed across images;
- early-stopping mode (``MaxRadiusPolicy``, ``max_radius`` 3 sigma: the largest radius
  reported; default tolerance 0.05 sigma), packed.

Prints certified accuracy at each radius, mean and median samples per image (n0 + n), wall
time and the ratios against fixed n; ``--json`` and ``--plot`` save the numbers and a plot of
samples used against certified radius.

Usage: ``python benchmarks/certify_sequential.py [--quick] [--images N] [--plot out.png]``.
Full: n_max 100,000, 100 images (hours on a CPU). ``--quick``: n_max 1,000, first look 64.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import numpy as np
import torch

import peftsmoothing as ps
from peftsmoothing.certify.sequential import (
    MaxRadiusPolicy,
    Schedule,
    SequentialPolicy,
    TargetRadiusPolicy,
)
from peftsmoothing.core.seeds import derive_seed


def finetune(model: Any, sigma: float, epochs: int) -> None:
    from torch.utils.data import DataLoader

    g = torch.Generator().manual_seed(0)  # as `peftsmoothing demo` does
    loader = DataLoader(ps.datasets.cifar10_sample(train=True), batch_size=64, shuffle=True,
                        generator=g)  # fmt: skip
    trainer = ps.NoiseTrainer(model, sigma=sigma, epochs=epochs, lr=3e-3, warmup_steps=10,
                              seed=0, progress=False)  # fmt: skip
    start = time.perf_counter()
    trainer.fit(loader)
    print(f"  trained on noise: {epochs} epochs, {time.perf_counter() - start:.0f} s")


def build_model(args: Any, sigma: float) -> Any:
    """The model to certify: the demo ViT + LoRA r=8, or timm's ``test_convnext`` on noise."""
    torch.manual_seed(0)
    if args.model == "demo_vit":
        model = ps.wrap(ps.zoo.demo_vit(), method="lora", r=8)
        if args.finetune_epochs:
            finetune(model, sigma, args.finetune_epochs)
        return model
    import timm

    # 208k parameters, ~20x the demo ViT's CPU throughput: what makes n_max = 100,000 on a
    # CPU a matter of an hour. Trained from scratch with Gaussian noise (Cohen et al.'s
    # augmentation), all parameters (method "full").
    model = ps.wrap(timm.create_model("test_convnext", pretrained=False, num_classes=10),
                    method="full")  # fmt: skip
    finetune(model, sigma, args.train_epochs)
    return model


def run_fixed(
    smoothed: ps.SmoothedClassifier, data: list[Any], args: Any, seed: int
) -> dict[str, Any]:
    certs = []
    start = time.perf_counter()
    with smoothed.sampler.inference():
        for i, (x, _) in enumerate(data):
            certs.append(smoothed.certify(x, args.n0, args.n_max, args.alpha, args.batch,
                                          seed=derive_seed(seed, i)))  # fmt: skip
    return {"certs": certs, "wall": time.perf_counter() - start}


def run_packed(
    smoothed: ps.SmoothedClassifier, data: list[Any], args: Any, policy: SequentialPolicy
) -> dict[str, Any]:
    items = [(i, x, derive_seed(0, i)) for i, (x, _) in enumerate(data)]
    start = time.perf_counter()
    done = dict(smoothed.certify_many(items, args.n0, policy, args.batch))
    return {"certs": [done[i] for i in range(len(data))], "wall": time.perf_counter() - start}


def summarize(result: dict[str, Any], labels: list[int], radii: list[float]) -> dict[str, Any]:
    certs = result["certs"]
    samples = np.array([c.n0 + c.n for c in certs])
    ok = np.array([c.prediction == y for c, y in zip(certs, labels, strict=True)])
    rad = np.array([c.radius for c in certs])
    return {
        "acc": [float(np.mean(ok & (rad >= r))) for r in radii],
        "mean": float(samples.mean()),
        "median": float(np.median(samples)),
        "wall": result["wall"],
        "samples": samples.tolist(),
        "radius": rad.tolist(),
        "correct": ok.tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n_max 1000, first look 64")
    parser.add_argument("--images", type=int, default=None, help="test images (of 500)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument(
        "--model",
        choices=["demo_vit", "convnext"],
        default="demo_vit",
        help="demo_vit: the shipped ViT + LoRA r=8; convnext: timm "
        "test_convnext trained on noise from scratch (~20x faster)",
    )
    parser.add_argument("--finetune-epochs", type=int, default=0, help="demo_vit: LoRA epochs")
    parser.add_argument("--train-epochs", type=int, default=30, help="convnext: epochs")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--max-radius",
        type=float,
        default=3.0,
        help="early stopping's cap, in sigmas (the largest radius reported)",
    )
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()
    args.n_max = 1000 if args.quick else 100_000
    args.first = 64 if args.quick else 256
    images = args.images or (6 if args.quick else 100)
    if args.threads:
        torch.set_num_threads(args.threads)
    test = ps.datasets.cifar10_sample(train=False)
    data = [test[i] for i in range(images)]
    labels = [int(y) for _, y in data]
    what = (f"demo ViT + LoRA r=8, fine-tuned {args.finetune_epochs} epochs on noise"
            if args.model == "demo_vit"
            else f"timm test_convnext trained {args.train_epochs} epochs on noise")  # fmt: skip
    print(f"device: cpu ({platform.processor() or platform.machine()}), threads "
          f"{torch.get_num_threads()}, torch {torch.__version__}; {what}; "
          f"{images} CIFAR-10 test images; "
          f"alpha {args.alpha}, n0 {args.n0}, n_max {args.n_max}, first look {args.first}, "
          f"batch {args.batch}")  # fmt: skip
    out: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items()}, "runs": {}}
    out["settings"]["images"] = images
    for sigma in args.sigmas:
        model = build_model(args, sigma)
        smoothed = ps.SmoothedClassifier(model, 10, sigma)
        schedule = Schedule.create(args.n_max, args.alpha, first=args.first)
        multiples = [0.5, 1.0, 2.0, 3.0]
        radii = [m * sigma for m in multiples]
        plan: list[tuple[str, SequentialPolicy | int]] = [
            ("fixed n (seed 0)", 0),
            ("fixed n (seed 1)", 1),
            *((f"target r={m:g} sigma", TargetRadiusPolicy(sigma, r, schedule))
              for m, r in zip(multiples, radii, strict=True)),
            ("early stop", MaxRadiusPolicy(sigma, schedule, max_radius=args.max_radius * sigma)),
        ]  # fmt: skip
        table: dict[str, dict[str, Any]] = {}
        out["runs"][str(sigma)] = table
        for name, how in plan:
            result = (
                run_fixed(smoothed, data, args, how)
                if isinstance(how, int)
                else run_packed(smoothed, data, args, how)
            )
            table[name] = summarize(result, labels, radii)
            print(f"  {name}: {table[name]['wall']:.1f} s", flush=True)
            if args.json:  # after every run: an interrupted benchmark keeps what it measured
                with open(args.json, "w") as f:
                    json.dump(out, f, indent=1)
        base = table["fixed n (seed 0)"]
        print(f"\nsigma = {sigma}: certified accuracy at r = "
              + ", ".join(f"{r:g}" for r in radii))  # fmt: skip
        print("| run | " + " | ".join(f"r={m:g}s" for m in multiples)
              + " | mean samples | median | wall s | samples ratio | wall ratio |")  # fmt: skip
        print("|---" * (len(multiples) + 6) + "|")
        for name, row in table.items():
            # a target run decides one radius; its other columns are not meaningful
            acc = " | ".join(
                f"{a:.3f}"
                if not name.startswith("target") or name == f"target r={m:g} sigma"
                else "-"
                for a, m in zip(row["acc"], multiples, strict=True)
            )
            print(f"| {name} | {acc} | {row['mean']:.0f} | {row['median']:.0f} | "
                  f"{row['wall']:.1f} | {base['mean'] / row['mean']:.1f}x | "
                  f"{base['wall'] / row['wall']:.1f}x |")  # fmt: skip
        diff = np.abs(np.array(table["fixed n (seed 0)"]["acc"])
                      - np.array(table["fixed n (seed 1)"]["acc"]))  # fmt: skip
        print(f"fixed n, seed 0 vs seed 1: largest accuracy difference {diff.max():.3f}")
        for name, row in table.items():
            cert = np.array(row["correct"])[:, None] & (np.array(row["radius"])[:, None] >= radii)
            ref = np.array(base["correct"])[:, None] & (np.array(base["radius"])[:, None] >= radii)
            moved: list[Any] = (cert != ref).sum(axis=0).tolist()
            if name.startswith("target"):  # a target run decides its own radius only
                moved = [m if name == f"target r={k:g} sigma" else "-"
                         for m, k in zip(moved, multiples, strict=True)]  # fmt: skip
            print(
                f"  {name}: images certified differently from fixed n (seed 0) at each "
                f"radius: {moved}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    if args.plot:
        plot(out, args.plot)


def plot(out: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sigmas = list(out["runs"])
    fig, axes = plt.subplots(1, len(sigmas), figsize=(6 * len(sigmas), 4.5), squeeze=False)
    for ax, sigma in zip(axes[0], sigmas, strict=True):
        for i, (name, row) in enumerate(out["runs"][sigma].items()):
            if name == "fixed n (seed 1)":
                continue
            ax.scatter(row["radius"], row["samples"], s=18, label=name, alpha=0.7,
                       marker="os^vD*"[i % 6])  # fmt: skip
        ax.set_yscale("log")
        ax.set_xlabel("certified radius (L2, pixels in [0, 1])")
        ax.set_ylabel("samples used per image (n0 + n)")
        ax.set_title(f"sigma = {sigma}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
