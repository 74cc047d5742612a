"""Forward cost of the paper table's small-preset models, as ratios measured in one run.

The small preset of ``examples/cifar10_paper_table.py`` must certify 21 (method, sigma) runs x
500 images x 1,100 forward passes on 2 CPU cores. Its backbone and DnCNN were chosen by their
cost per image; this script measures that cost (inference mode, batch ``--batch``, the way
``SmoothedClassifier`` certifies: eval mode, LoRA merged) and prints, for each model, images/s
and the ratio to the small preset's bare backbone:

- the small preset's backbone (``SMALL_VIT_KWARGS``: patch 8, width 64, depth 4) wrapped with
  each method, and with the DnCNN of the small preset (5 x 16) and of the paper (17 x 64);
- the demo ViT's layout (patch 4, width 128, depth 6), the preset's earlier backbone.

Each model is timed ``--rounds`` times, interleaved, and the best round is kept.

Usage: ``python benchmarks/paper_table_cost.py [--batch 1000] [--rounds 3] [--threads 0]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import peftsmoothing as ps
from peftsmoothing.backbones.zoo import DEMO_VIT_KWARGS

ROOT = Path(__file__).resolve().parents[1]


def small_vit_kwargs() -> dict[str, Any]:
    """``SMALL_VIT_KWARGS`` from the example script (the single source of the preset)."""
    spec = importlib.util.spec_from_file_location(
        "cifar10_paper_table", ROOT / "examples" / "cifar10_paper_table.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return dict(module.SMALL_VIT_KWARGS)


def models() -> dict[str, nn.Module]:
    small = small_vit_kwargs()

    def vit(kwargs: dict[str, Any]) -> nn.Module:
        return ps.create_model("vit_tiny_patch16_224", seed=0, num_classes=10, **kwargs)

    out: dict[str, nn.Module] = {"small backbone (bare)": vit(small)}
    variants: list[tuple[str, str, dict[str, Any]]] = [
        ("linear", "linear", {}),
        ("lora r=8, merged", "lora", {"r": 8}),
        ("prompt, 10 tokens", "prompt", {"num_tokens": 10}),
        ("prompt-deep, 10 tokens", "prompt", {"num_tokens": 10, "deep": True}),
        ("adapter, bottleneck 64", "adapter", {"bottleneck": 64}),
        ("denoiser 5 x 16 (small preset)", "denoiser", {"depth": 5, "width": 16}),
        ("denoiser 17 x 64 (paper)", "denoiser", {"depth": 17, "width": 64}),
    ]
    for label, method, options in variants:
        num_classes = None if method == "denoiser" else 10
        model = ps.wrap(vit(small), method=method, num_classes=num_classes, **options)
        if model.supports_merge:
            model.merge()
        out[label] = model
    out["demo ViT layout (patch 4, width 128, depth 6)"] = vit(dict(DEMO_VIT_KWARGS))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32)
    nets = {name: m.eval() for name, m in models().items()}
    best = {name: float("inf") for name in nets}
    with torch.inference_mode():
        for m in nets.values():
            m(x[:8])  # warm-up
        for _ in range(args.rounds):
            for name, m in nets.items():
                start = time.perf_counter()
                m(x)
                best[name] = min(best[name], time.perf_counter() - start)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, batch {args.batch}, best of {args.rounds}")
    base = best["small backbone (bare)"]
    print(f"{'model':48s} {'images/s':>10s} {'cost vs small backbone':>24s}")
    for name, seconds in best.items():
        print(f"{name:48s} {args.batch / seconds:10.0f} {seconds / base:24.2f}")


if __name__ == "__main__":
    main()
