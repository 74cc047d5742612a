"""Certification throughput: ``certify`` against a bare forward loop and Cohen's reference loop.

Prints samples/s of, on the same model and input, in one run:

(a) a bare ``model(x_batch)`` loop (no noise, no counting): the ceiling;
(b) a Cohen et al.-style loop: ``x.repeat`` + ``randn`` + ``argmax`` + counts copied to numpy
    every batch (``certify.py`` of the reference implementation);
(c) ``SmoothedClassifier.certify`` (n0 + n samples, per-sample cost);

and the ratios (c)/(a) and (c)/(b) (medians of per-round ratios). Targets on CPU:
(c)/(a) >= 0.95, (c)/(b) >= 1.0.

Usage: ``python benchmarks/certify_throughput.py [--batches 3] [--batch 200] [--device cpu]
[--precision bf16]``. The three measurements are interleaved, in random order, over
``--rounds`` rounds, so that machine noise (e.g. other processes) affects them alike.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import numpy as np
import timm
import torch

import peftsmoothing as ps


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def loops(
    model: ps.PEFTModel,
    x: torch.Tensor,
    batch: int,
    batches: int,
    precision: str,
    sigma: float = 0.25,
    num_classes: int = 10,
) -> dict[str, Callable[[], None]]:
    """(a) bare, (b) Cohen-style and (c) ``certify``, each over ``batch * batches`` samples."""
    device = x.device
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    def autocast() -> torch.autocast:
        return torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None)

    def bare() -> None:
        xb = x.unsqueeze(0).repeat(batch, 1, 1, 1)
        with torch.inference_mode(), model.merged_for_inference(), autocast():
            for _ in range(batches):
                model(xb)

    def cohen() -> None:
        # Cohen et al., core.py `_sample_noise`: repeat + randn + argmax + counts on the host
        counts = np.zeros(num_classes, dtype=int)
        with torch.inference_mode(), model.merged_for_inference(), autocast():
            for _ in range(batches):
                xb = x.unsqueeze(0).repeat((batch, 1, 1, 1))
                noise = torch.randn_like(xb, device=device) * sigma
                predictions = model(xb + noise).argmax(1)
                counts += np.bincount(predictions.cpu().numpy(), minlength=num_classes)

    smoothed = ps.SmoothedClassifier(model, num_classes, sigma, precision=precision)
    n0 = batch  # selection samples: one batch, the rest estimation

    def certify() -> None:
        smoothed.certify(x, n0=n0, n=batch * batches - n0, alpha=0.001, batch_size=batch, seed=0)

    return {"bare": bare, "cohen": cohen, "certify": certify}


def interleaved(
    variants: dict[str, Callable[[], None]], rounds: int, device: torch.device
) -> dict[str, np.ndarray]:
    """Seconds per round of each variant after one warm-up call each, in random order per
    round, so that machine noise (e.g. other processes) hits them all alike."""
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    order = list(variants)
    rng = np.random.default_rng(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            times[name].append(timed(variants[name], device))
    return {k: np.array(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--batches", type=int, default=3, help="batches per measurement")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4,
                            num_classes=10)  # fmt: skip
    model = ps.wrap(vit, method="lora", r=8).to(device).eval()
    x = torch.rand(3, 32, 32, device=device)
    batch, num = args.batch, args.batch * args.batches
    t = interleaved(loops(model, x, batch, args.batches, args.precision), args.rounds, device)
    rate = {k: num / float(np.median(v)) for k, v in t.items()}
    ratio_a = float(np.median(t["bare"] / t["certify"]))
    ratio_b = float(np.median(t["cohen"] / t["certify"]))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"device: {device} ({where or platform.machine()}), threads {torch.get_num_threads()}, "
          f"torch {torch.__version__}, precision {args.precision}")  # fmt: skip
    print(f"model: vit_tiny_patch16_224 img 32 patch 4 + LoRA r=8 (merged), batch {batch}, "
          f"{num} samples per measurement, {args.rounds} interleaved rounds (medians)")  # fmt: skip
    print(f"(a) bare model(x_batch) loop : {rate['bare']:10.1f} samples/s")
    print(f"(b) Cohen-style reference    : {rate['cohen']:10.1f} samples/s")
    print(f"(c) SmoothedClassifier.certify: {rate['certify']:9.1f} samples/s")
    print(f"(c)/(a) = {ratio_a:.3f}   (target >= 0.95; median of per-round ratios)")
    print(f"(c)/(b) = {ratio_b:.3f}   (target >= 1.0; median of per-round ratios)")


if __name__ == "__main__":
    main()
