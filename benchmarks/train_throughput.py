"""Training throughput: ``NoiseTrainer.fit`` against a plain PyTorch loop, and LoRA vs full memory.

In one run, on the same model, data, optimizer (AdamW over the same trainable parameters) and
batch size, prints images/s of

(a) a plain loop: ``x + sigma * randn_like(x)``, forward, cross-entropy, backward, step;
(b) ``NoiseTrainer(...).fit`` (timed from the call to its return: set-up, noise, metrics and
    the per-epoch bookkeeping included; no checkpoint directory);

and the ratio (b)/(a) (target on CPU: >= 0.95). The two are interleaved over ``--rounds``
rounds and the best round of each is reported, so machine noise affects them alike.

It then measures the peak memory of one training epoch with LoRA and with full fine-tuning,
each in a fresh subprocess (CPU: peak resident set size, sampled every 2 ms, over the RSS
before training; CUDA: ``torch.cuda.max_memory_allocated``), plus the size of the AdamW state.

Usage: ``python benchmarks/train_throughput.py [--batches 8] [--batch 64] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import threading
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import peftsmoothing as ps

VIT = {"img_size": 32, "patch_size": 4, "embed_dim": 192, "depth": 6, "num_heads": 3}


def build(method: str, seed: int = 0) -> nn.Module:
    import timm

    torch.manual_seed(seed)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, **VIT)
    options: dict[str, Any] = {"r": 8} if method == "lora" else {}
    return ps.wrap(vit, method=method, num_classes=10, **options)


def data(n: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 32, 32, generator=g)
    return TensorDataset(x, torch.randint(0, 10, (n,), generator=g))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(model: nn.Module, loader: DataLoader, sigma: float, device: torch.device) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    model.train()
    sync(device)
    start = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        noisy = x + sigma * torch.randn_like(x)
        loss = nn.functional.cross_entropy(model(noisy), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return time.perf_counter() - start


def trainer_fit(model: nn.Module, loader: DataLoader, sigma: float, device: torch.device) -> float:
    trainer = ps.NoiseTrainer(model, sigma, epochs=1, lr=1e-3, schedule="constant",
                              device=device, progress=False)
    sync(device)
    start = time.perf_counter()
    trainer.fit(loader)
    sync(device)
    return time.perf_counter() - start


def _rss() -> int:
    """Resident set size of this process in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def memory_child(method: str, batches: int, batch: int, device: torch.device) -> dict[str, Any]:
    model = build(method).to(device)
    loader = DataLoader(data(batches * batch), batch_size=batch)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _rss()
        samples = [base]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.002):
                samples.append(_rss())

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
    trainer = ps.NoiseTrainer(model, 0.5, epochs=1, device=device, progress=False)
    trainer.fit(loader)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        done.set()
        thread.join()
        peak = max(samples) - base
    state = sum(t.numel() * t.element_size() for s in trainer.optimizer.state.values()
                for t in s.values() if isinstance(t, torch.Tensor))
    return {"method": method, "trainable": trainable, "peak_bytes": peak,
            "adamw_state_bytes": state}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    device = torch.device(args.device)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.batches, args.batch, device)))
        return

    ds = data(args.batches * args.batch)
    loader = DataLoader(ds, batch_size=args.batch)
    n = len(ds)
    plain_model = build("lora").to(device)
    trainer_model = build("lora").to(device)
    plain_loop(plain_model, DataLoader(ds, batch_size=args.batch), args.sigma, device)  # warm-up
    plain_t, trainer_t = [], []
    for _ in range(args.rounds):
        plain_t.append(plain_loop(plain_model, loader, args.sigma, device))
        trainer_t.append(trainer_fit(trainer_model, loader, args.sigma, device))
    plain_ips, trainer_ips = n / min(plain_t), n / min(trainer_t)
    print(f"device: {device} ({platform.processor() or platform.machine()}), torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}")
    print(f"model: LoRA r=8 on vit_tiny {VIT}, batch {args.batch}, {args.batches} batches, "
          f"best of {args.rounds}")
    print(f"plain loop      {plain_ips:9.1f} images/s")
    print(f"NoiseTrainer    {trainer_ips:9.1f} images/s")
    print(f"ratio           {trainer_ips / plain_ips:9.3f}  (target >= 0.95)")

    for method in ("lora", "full"):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", method, "--batches", "2",
             "--batch", str(args.batch), "--device", args.device],
            capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(f"memory {method:5s} trainable {r['trainable']:>9,d}  AdamW state "
              f"{r['adamw_state_bytes'] / 2**20:7.2f} MiB  peak training memory "
              f"{r['peak_bytes'] / 2**20:8.1f} MiB")


if __name__ == "__main__":
    main()
