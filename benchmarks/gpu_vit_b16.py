"""GPU benchmark on ViT-B/16 at 224 px: certification and training throughput, fp32 and bf16.

One run on one CUDA device, random weights (nothing is downloaded; speed does not depend on the
weights), LoRA r=8. Every figure is a ratio measured in this run, plus the absolute rates:

1. **Certification throughput**, per precision: (a) a bare ``model(x_batch)`` loop, (b) a Cohen
   et al.-style loop (``repeat`` + ``randn`` + ``argmax`` + counts copied to the host every
   batch), (c) ``SmoothedClassifier.certify``; interleaved in random order over ``--rounds``,
   medians of per-round ratios. Also the model FLOP/s of (c) (forward FLOPs counted by
   ``torch.utils.flop_counter``) as a fraction of ``--peak-tflops``.
2. **Packed sequential certification**: the early-stopping mode over ``--images`` images,
   packed across images (``certify_many``) against one image at a time
   (``certify(..., early_stop=True)``); wall times, their ratio, and whether both give the
   same certificates.
3. **Training**: a plain PyTorch loop (noise, forward, cross-entropy, backward, AdamW) against
   ``NoiseTrainer.fit``, same model and data, bf16 autocast; then the peak CUDA memory of one
   epoch with LoRA and with full fine-tuning.

Usage: ``python benchmarks/gpu_vit_b16.py [--json out.json]``; ``--smoke`` runs a tiny ViT at
32 px with few samples (on the CPU if there is no GPU) to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from functools import partial
from typing import Any

import numpy as np
import timm
import torch
from certify_throughput import interleaved, loops, sync, timed
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

import peftsmoothing as ps


def build(args: argparse.Namespace, method: str = "lora", seed: int = 0) -> ps.PEFTModel:
    torch.manual_seed(seed)
    vit = timm.create_model(args.arch, pretrained=False, num_classes=10, **args.arch_kwargs)
    options: dict[str, Any] = {"r": 8} if method == "lora" else {}
    return ps.wrap(vit, method=method, **options)


def certify_throughput(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    model = build(args).to(device).eval()
    x = torch.rand(3, args.img, args.img, device=device)
    batch, num = args.batch, args.batch * args.batches
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x.unsqueeze(0))
    flops_per_image = counter.get_total_flops()
    results: dict[str, Any] = {"flops_per_image": flops_per_image}
    for precision in args.precisions:
        t = interleaved(loops(model, x, batch, args.batches, precision), args.rounds, device)
        rate = {k: num / float(np.median(v)) for k, v in t.items()}
        tflops = rate["certify"] * flops_per_image / 1e12
        results[precision] = {
            "samples_per_s": rate,
            "certify_over_bare": float(np.median(t["bare"] / t["certify"])),
            "certify_over_cohen": float(np.median(t["cohen"] / t["certify"])),
            "model_tflops": tflops,
            "fraction_of_peak": tflops / args.peak_tflops[precision],
        }
        print(
            f"[certify {precision}] bare {rate['bare']:.0f}  cohen {rate['cohen']:.0f}  "
            f"certify {rate['certify']:.0f} samples/s;  (c)/(a) "
            f"{results[precision]['certify_over_bare']:.3f}  (c)/(b) "
            f"{results[precision]['certify_over_cohen']:.3f};  {tflops:.1f} TFLOP/s = "
            f"{results[precision]['fraction_of_peak']:.1%} of {args.peak_tflops[precision]:g}",
            flush=True,
        )
    return results


def packed_sequential(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    model = build(args).to(device).eval()
    smoothed = ps.SmoothedClassifier(model, 10, 0.25, precision="bf16")
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, args.img, args.img, generator=g).to(device) for _ in range(args.images)]
    policy = ps.certify.sequential.MaxRadiusPolicy(
        0.25, ps.certify.sequential.Schedule.create(args.n_max, 0.001)
    )
    smoothed.certify(images[0], 100, args.n_max, 0.001, args.seq_batch, seed=0, early_stop=True)

    def alone() -> list[ps.Certificate]:
        return [
            smoothed.certify(x, 100, args.n_max, 0.001, args.seq_batch, seed=i, early_stop=True)
            for i, x in enumerate(images)
        ]

    def packed() -> list[ps.Certificate]:
        items = [(i, x, i) for i, x in enumerate(images)]
        done = dict(smoothed.certify_many(items, 100, policy, args.seq_batch))
        return [done[i] for i in range(len(images))]

    out: dict[str, Any] = {}
    for name, fn in (("alone", alone), ("packed", packed)):
        sync(device)
        start = time.perf_counter()
        out[name + "_certs"] = fn()
        sync(device)
        out[name + "_s"] = time.perf_counter() - start
    a, p = out.pop("alone_certs"), out.pop("packed_certs")
    out["samples_per_image"] = float(np.mean([c.n0 + c.n for c in p]))
    out["same_predictions"] = all(x.prediction == y.prediction for x, y in zip(a, p, strict=True))
    out["max_radius_difference"] = max(abs(x.radius - y.radius) for x, y in zip(a, p, strict=True))
    out["alone_over_packed"] = out["alone_s"] / out["packed_s"]
    print(
        f"[sequential bf16] {args.images} images, early stop, n_max {args.n_max}, batch "
        f"{args.seq_batch}: one at a time {out['alone_s']:.2f} s, packed {out['packed_s']:.2f} s"
        f" -> {out['alone_over_packed']:.2f}x; mean samples/image "
        f"{out['samples_per_image']:.0f}; same predictions {out['same_predictions']}, max radius "
        f"difference {out['max_radius_difference']:.2e}",
        flush=True,
    )
    return out


def training(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    n = args.train_batch * args.train_batches
    data = TensorDataset(
        torch.rand(n, 3, args.img, args.img, generator=g), torch.randint(0, 10, (n,), generator=g)
    )
    loader = DataLoader(data, batch_size=args.train_batch)

    def plain(model: nn.Module) -> None:
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        model.train()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(model(x + 0.5 * torch.randn_like(x)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def trainer(model: nn.Module) -> ps.NoiseTrainer:
        t = ps.NoiseTrainer(
            model,
            0.5,
            epochs=1,
            lr=1e-3,
            schedule="constant",
            device=device,
            precision="bf16",
            progress=False,
        )
        t.fit(loader)
        return t

    plain_model, trainer_model = build(args).to(device), build(args).to(device)
    plain(plain_model)  # warm-up
    trainer(trainer_model)
    plain_t, trainer_t = [], []
    for _ in range(args.rounds):
        plain_t.append(timed(partial(plain, plain_model), device))
        trainer_t.append(timed(partial(trainer, trainer_model), device))
    out: dict[str, Any] = {
        "plain_images_per_s": n / min(plain_t),
        "trainer_images_per_s": n / min(trainer_t),
    }
    out["trainer_over_plain"] = out["trainer_images_per_s"] / out["plain_images_per_s"]
    del plain_model, trainer_model
    for method in ("lora", "full"):
        model = build(args, method).to(device)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        t = trainer(model)
        peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else 0
        state = sum(
            v.numel() * v.element_size()
            for s in t.optimizer.state.values()
            for v in s.values()
            if isinstance(v, torch.Tensor)
        )
        out[method] = {"trainable": trainable, "peak_bytes": peak, "adamw_state_bytes": state}
        del model, t
    print(
        f"[train bf16] batch {args.train_batch}: plain {out['plain_images_per_s']:.0f}, "
        f"NoiseTrainer {out['trainer_images_per_s']:.0f} images/s -> "
        f"{out['trainer_over_plain']:.3f}",
        flush=True,
    )
    for method in ("lora", "full"):
        r = out[method]
        print(
            f"[train bf16] {method}: trainable {r['trainable']:,}, AdamW state "
            f"{r['adamw_state_bytes'] / 2**20:.1f} MiB, peak memory "
            f"{r['peak_bytes'] / 2**20:.0f} MiB",
            flush=True,
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny ViT at 32 px, few samples")
    p.add_argument("--batch", type=int, default=500, help="certify: noisy images per batch")
    p.add_argument("--batches", type=int, default=4, help="certify: batches per measurement")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--images", type=int, default=24, help="sequential: images")
    p.add_argument("--n-max", type=int, default=10_000, help="sequential: most samples")
    p.add_argument("--seq-batch", type=int, default=1000)
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--train-batches", type=int, default=8)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.arch, args.img, args.arch_kwargs = "vit_base_patch16_224", 224, {}
    args.precisions = ("bf16", "fp32")
    # dense peak of one H200 (SXM): 989 TFLOP/s bf16, 67 TFLOP/s fp32 (no TF32)
    args.peak_tflops = {"bf16": 989.0, "fp32": 67.0}
    if args.smoke:
        args.arch, args.img = "vit_tiny_patch16_224", 32
        args.arch_kwargs = {"img_size": 32, "patch_size": 4, "depth": 2}
        args.batch, args.batches, args.rounds, args.images, args.n_max = 50, 2, 1, 3, 500
        args.seq_batch, args.train_batch, args.train_batches = 200, 8, 2
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"device {device} ({where}), torch {torch.__version__}, timm {timm.__version__}, "
        f"peftsmoothing {ps.__version__}; {args.arch} at {args.img} px + LoRA r=8",
        flush=True,
    )
    results: dict[str, Any] = {
        "device": where,
        "torch": torch.__version__,
        "arch": args.arch,
        "img": args.img,
    }
    for name, fn in (
        ("certify", certify_throughput),
        ("sequential", packed_sequential),
        ("training", training),
    ):
        results[name] = fn(args, device)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2, default=str)


if __name__ == "__main__":
    main()
