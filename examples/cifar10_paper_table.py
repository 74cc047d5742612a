"""CIFAR-10: the paper's comparison table, PEFT methods vs. full fine-tuning vs. denoised smoothing.

What it shows: the comparison of Certified PEFTSmoothing (Fu & Wang, arXiv 2404.05350), rerun
with this library on one backbone and one data set. Every method in ``--methods`` (``linear``,
``full``, ``lora``, ``prompt`` (shallow VPT), ``prompt-deep``, ``adapter``, ``denoiser``) is
trained with ``ps.NoiseTrainer`` at every noise level in ``--sigmas`` (0.25, 0.5, 1.0), certified
with ``SmoothedClassifier.certify_dataset`` (Cohen et al. 2019), and summarised in ONE table,
``OUT/table.md`` (and ``OUT/table.csv``): method, sigma, trained parameters, train time,
certification time, clean accuracy of the smoothed classifier (= certified accuracy at radius 0),
certified accuracy at radii 0, 0.25, 0.5, 0.75, 1.0, and the average certified radius (ACR);
``OUT/differences.md`` compares every method with ``full`` and ``denoiser`` image by image
(paired difference, standard error, exact McNemar p-value; ``CertificationReport.compare_to``).
One figure per sigma, ``OUT/certified_accuracy_sigma<s>.png``, draws certified accuracy against
the radius with one curve per method (needs matplotlib: ``pip install 'peftsmoothing[plot]'``;
without it the tables are still written).

The methods: every method except ``denoiser`` gets a fresh 10-class head that is trained with it
(``linear`` trains the head only, ``full`` every weight). ``denoiser`` is denoised smoothing
(Salman et al. 2020): a DnCNN in pixel space in front of a frozen *clean* classifier, trained with
the ``stability`` loss by default (the frozen classifier's prediction on the clean image is the
target; ``--denoiser-loss mse`` trains it to reconstruct the clean image instead). All methods see
the same training images for the same number of epochs.

Nothing is lost when the script stops (Ctrl-C, a crash, a closed laptop): each (method, sigma) run
lives in ``OUT/<method>-s<sigma>/`` with the NoiseTrainer checkpoints (``checkpoints/``, resumed
with ``resume=True``), the certification log (``certify.tsv``, resumed image by image) and, when
finished, ``done.json`` (parameter count, train and certification time; written atomically).
Rerunning the same command skips finished runs and continues the others where they stopped. The
tables and figures are rebuilt from the logs of every finished run under ``OUT`` at the end, so
runs made by separate invocations (e.g. one sigma at a time) end up in the same table.

Presets:
    --preset small  Runs on a laptop CPU without internet, on the real CIFAR-10 under ``--root``
                    (any folder holding ``cifar-10-batches-py/``; the project's
                    ``../shared/data`` holds a 5,085 / 1,017-image subset). A small ViT (timm
                    ``vit_tiny_patch16_224`` layout with ``SMALL_VIT_KWARGS``: 32 px, patch 8,
                    width 64, depth 4, 214k parameters, ``pretrained=False``) is first
                    pre-trained on the clean training images by this script (60 epochs) and
                    cached in ``OUT/backbone/``; that clean classifier is also the denoiser's
                    frozen classifier. Then 10 noisy epochs per method (batch 128), a DnCNN of
                    depth 5 and width 16 (7,891 parameters; DnCNN + ViT cost about 3.6 times the
                    bare ViT per image, with the paper's 17 x 64 DnCNN about 140 times), and
                    certification with n=1,000, n0=100, alpha=0.001 on the first 500 test images.
    --preset paper  The paper's setting, for a GPU with internet: timm's
                    ``vit_base_patch16_224.augreg_in21k`` (ViT-B/16, ImageNet-21k;
                    ``ps.create_model(..., pretrained=True)``), CIFAR-10 images resized
                    to 224 px *inside* the model (``ps.wrap(..., input_size=224)``, so noise and
                    radii stay in CIFAR's 32x32 pixel space), n=100,000, n0=100, alpha=0.001 on
                    every 20th test image (500 of 10,000), DnCNN 17 x 64 as in Salman et al.
                    The denoiser's frozen classifier is ViT-B/16 fine-tuned on *clean* CIFAR-10
                    (sigma=0; ``--clean-method full`` by default, or ``linear``), cached in
                    ``OUT/clean_classifier/``. On a machine without internet, pass timm's
                    weights as a local ``state_dict`` file with ``--weights FILE``.
    --smoke         Tiny everything (a 2-block ViT, 64 training and 8 test images, 1 epoch,
                    n=20, sigma 0.5, all methods) to check the pipeline end to end in well
                    under a minute; without CIFAR-10 under ``--root`` it makes up random images.
                    ``--smoke --preset paper`` checks the paper preset's code path the same way:
                    a tiny "pretrained" ViT (random weights saved to a file and loaded as
                    ``--weights``, unless you pass your own), images resized to 64 px inside
                    the model, every 2nd test image.

How long it takes (measured on 2 CPU cores, torch 2.14, CIFAR-10 subset of 5,085 images):
    --smoke          ~10 s.
    --preset small   32 minutes end to end (2-core AMD EPYC, idle): pre-training 1.2 min; noisy
                     training 4 s (linear) to 27 s (denoiser) per run; certification of 500
                     images 35 s (lora, merged) to 1.4 min (prompt-deep) per run, 3.6 min for
                     the denoiser. A backbone with patch 4 and width 128 (the demo ViT) is a
                     little more accurate but about 26 times slower per image: ~7 hours
                     (``benchmarks/paper_table_cost.py`` measures these ratios).
    --preset paper   not measured: 21 runs x 500 images x 100,100 ViT-B/16 passes at 224 px
                     = 1.05e9 passes, i.e. ~3 days at an assumed 4,000 images/s on one H100
                     (``--precision bf16`` roughly halves it), plus 10 epochs per run of
                     training. Split it with ``--sigmas`` / ``--methods`` over machines sharing
                     ``OUT``, one invocation per machine and folder (a lock file prevents two
                     invocations on one ``OUT``).

How to run it (from the repository root):
    python examples/cifar10_paper_table.py --smoke --out /tmp/paper_table_smoke
    python examples/cifar10_paper_table.py --preset small --root ../shared/data \
        --out runs/paper_table_small
    python examples/cifar10_paper_table.py --preset small --sigmas 0.5 --methods lora,denoiser
    python examples/cifar10_paper_table.py --preset paper --root data --download --out runs/paper
    python examples/cifar10_paper_table.py --preset paper --root data --weights vit_b16_in21k.pt
    python examples/cifar10_paper_table.py --smoke --preset paper --out /tmp/paper_preset_smoke
Rerun the same command to continue after an interruption.

What differs from the paper (and why):
    - Hyper-parameters. We could not find the paper's training epochs, learning rates, LoRA rank,
      number of prompt tokens or adapter bottleneck in the text available to us, so the defaults
      are our choice and are options: 10 epochs for every method, AdamW with cosine decay,
      LoRA r=8 on q and v, 10 prompt tokens, AdaptFormer-style parallel adapters with bottleneck
      64, and the per-method learning rates in ``LEARNING_RATES`` below (``--lr lora=2e-3``).
      All methods but the denoiser are trained with cross-entropy on noisy images (Gaussian
      augmentation, Cohen et al.; ``loss="ce"``).
    - Denoiser. Salman et al. (2020) use a 17-layer, 64-channel DnCNN trained with the MSE
      objective, the stability objective, or MSE followed by stability; we train one objective
      from scratch for the same budget as the other methods, to keep the comparison at equal
      training cost. The small preset uses a smaller DnCNN (5 x 32) so that it is not far
      costlier than its backbone.
    - Small preset. A 214k-parameter ViT pre-trained by us on ~5,000 clean images (about 49 %
      clean accuracy) instead of ViT-B/16 pre-trained on ImageNet-21k, n=1,000 instead of
      100,000 (the largest radius n samples can certify at alpha=0.001 is
      sigma * Phi^-1(0.001^(1/n)): 2.46 sigma for n=1,000, 3.81 sigma for n=100,000), and the
      first 500 test images of the subset instead of every 20th of the 10,000. Expect much
      lower numbers than the paper's; the point is the ordering of the methods at equal
      budget, not the absolute values.

References: Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized
Smoothing", ICML 2019. Salman, Sun, Yang, Kapoor & Kolter, "Denoised Smoothing: A Provable
Defense for Pretrained Classifiers", NeurIPS 2020. Fu & Wang, "Certified PEFTSmoothing:
Parameter-Efficient Fine-Tuning with Randomized Smoothing", arXiv 2404.05350, 2024. CIFAR-10:
Krizhevsky, Nair & Hinton, 2009.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

import peftsmoothing as ps
from peftsmoothing.data.datasets import ArrayDataset, load_cifar
from peftsmoothing.report.accuracy import CertificationReport

METHODS = ("linear", "full", "lora", "prompt", "prompt-deep", "adapter", "denoiser")
SIGMAS = (0.25, 0.5, 1.0)
RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
NUM_CLASSES = 10

#: timm ``vit_tiny_patch16_224`` options of the small preset's backbone: 32 px, patch 8 (16
#: tokens), width 64, depth 4 (214k parameters). Chosen so that the whole comparison (21 runs,
#: 11.5M certification forward passes) fits in 45 minutes on 2 CPU cores. On 5,085 training
#: images it is nearly as accurate (49 % clean test accuracy) as the 1.2M-parameter demo ViT
#: (patch 4, width 128, depth 6; 50-55 %), which is about 26 times slower per image.
SMALL_VIT_KWARGS: dict[str, Any] = {
    "img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 2,
}

#: Default learning rates (AdamW, cosine decay), per preset and method. Our choice: the paper's
#: values were not available to us. Override with ``--lr METHOD=VALUE``.
LEARNING_RATES: dict[str, dict[str, float]] = {
    "small": {"linear": 1e-2, "full": 5e-4, "lora": 2e-3, "prompt": 1e-2, "prompt-deep": 1e-2,
              "adapter": 2e-3, "denoiser": 1e-3},
    "paper": {"linear": 1e-3, "full": 1e-5, "lora": 1e-3, "prompt": 5e-3, "prompt-deep": 5e-3,
              "adapter": 1e-3, "denoiser": 1e-3},
}
LEARNING_RATES["smoke"] = LEARNING_RATES["small"]
LEARNING_RATES["smoke-paper"] = LEARNING_RATES["paper"]


# ---------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class Preset:
    """Everything a preset fixes; every field is also a command-line option."""

    name: str
    model: str  # timm model name
    model_kwargs: dict[str, Any]
    pretrained: bool  # timm weights (paper) or pre-train on clean CIFAR-10 here (small, smoke)
    input_size: int | None  # resize inside the model (noise and radii stay at 32 px)
    pretrain_epochs: int  # clean training of the backbone (small) / clean classifier (paper)
    pretrain_lr: float
    clean_method: str  # how the clean classifier is trained: "full" or "linear"
    epochs: int  # noisy training epochs, the same for every method
    batch_size: int
    train_images: int | None  # first N training images (None: all)
    test_images: int | None  # first N test images (None: all), then every ``skip``-th
    skip: int
    n0: int
    n: int
    alpha: float
    cert_batch: int
    lora_rank: int = 8
    prompt_tokens: int = 10
    adapter_bottleneck: int = 64
    dncnn_depth: int = 17
    dncnn_width: int = 64
    denoiser_loss: str = "stability"
    sigmas: tuple[float, ...] = SIGMAS
    methods: tuple[str, ...] = METHODS
    device: str = "cpu"
    precision: str = "fp32"
    workers: int = 0
    lr: dict[str, float] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "small": Preset(
        name="small", model="vit_tiny_patch16_224", model_kwargs=dict(SMALL_VIT_KWARGS),
        pretrained=False, input_size=None, pretrain_epochs=60, pretrain_lr=2e-3,
        clean_method="full", epochs=10, batch_size=128, train_images=None, test_images=500,
        skip=1, n0=100, n=1_000, alpha=0.001, cert_batch=1_000, dncnn_depth=5, dncnn_width=16,
    ),
    "paper": Preset(
        name="paper", model="vit_base_patch16_224.augreg_in21k", model_kwargs={},
        pretrained=True, input_size=224, pretrain_epochs=3, pretrain_lr=2e-5,
        clean_method="full", epochs=10, batch_size=128, train_images=None, test_images=None,
        skip=20, n0=100, n=100_000, alpha=0.001, cert_batch=1_000, device="cuda", workers=4,
    ),
    "smoke": Preset(
        name="smoke", model="vit_tiny_patch16_224",
        model_kwargs={"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2,
                      "num_heads": 2},
        pretrained=False, input_size=None, pretrain_epochs=1, pretrain_lr=2e-3,
        clean_method="full", epochs=1, batch_size=32, train_images=64, test_images=8, skip=1,
        n0=10, n=20, alpha=0.001, cert_batch=32, lora_rank=2, prompt_tokens=2,
        adapter_bottleneck=4, dncnn_depth=3, dncnn_width=8, sigmas=(0.5,),
    ),
    # The paper preset's code path (pretrained weights from a file, resize inside the model,
    # a clean classifier for the denoiser, every skip-th test image) at smoke size.
    "smoke-paper": Preset(
        name="smoke-paper", model="vit_tiny_patch16_224",
        model_kwargs={"img_size": 64, "patch_size": 16, "embed_dim": 32, "depth": 2,
                      "num_heads": 2},
        pretrained=True, input_size=64, pretrain_epochs=1, pretrain_lr=2e-3,
        clean_method="full", epochs=1, batch_size=32, train_images=64, test_images=16, skip=2,
        n0=10, n=20, alpha=0.001, cert_batch=32, lora_rank=2, prompt_tokens=2,
        adapter_bottleneck=4, dncnn_depth=3, dncnn_width=8, sigmas=(0.5,),
    ),
}


def parse_args(argv: Sequence[str] | None = None) -> tuple[Preset, argparse.Namespace]:
    """The preset, with every option given on the command line replacing the preset's value."""
    p = argparse.ArgumentParser(
        description="Rerun the PEFTSmoothing comparison table on CIFAR-10 (see the docstring).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--preset", choices=("small", "paper"), default="small")
    p.add_argument("--smoke", action="store_true", help="tiny end-to-end check (< 1 min, CPU)")
    p.add_argument("--root", type=Path, default=Path("../shared/data"),
                   help="folder holding cifar-10-batches-py/")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 (torchvision)")
    p.add_argument("--weights", type=Path, default=None, metavar="FILE",
                   help="paper preset: the backbone's pretrained weights as a local state_dict "
                   "file (default: timm downloads them)")
    p.add_argument("--out", type=Path, default=None, help="default: runs/paper_table_<preset>")
    p.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--sigmas", help="comma-separated noise levels, e.g. 0.25,0.5,1.0")
    p.add_argument("--lr", action="append", default=[], metavar="METHOD=LR",
                   help="learning rate of one method (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    none_default = {
        "epochs": int, "batch_size": int, "pretrain_epochs": int, "pretrain_lr": float,
        "train_images": int, "test_images": int, "skip": int, "n0": int, "n": int,
        "alpha": float, "cert_batch": int, "lora_rank": int, "prompt_tokens": int,
        "adapter_bottleneck": int, "dncnn_depth": int, "dncnn_width": int, "workers": int,
        "device": str, "model": str,
    }
    for name, kind in none_default.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                       help="default: the preset's value")
    p.add_argument("--denoiser-loss", choices=("stability", "mse"), default=None,
                   help="default: stability")
    p.add_argument("--clean-method", choices=("full", "linear"), default=None,
                   help="paper preset: how the denoiser's clean classifier is fine-tuned")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                   help="training and certification precision (default fp32)")
    args = p.parse_args(argv)

    if args.smoke:
        preset = PRESETS["smoke-paper" if args.preset == "paper" else "smoke"]
    else:
        preset = PRESETS[args.preset]
    if args.weights is not None and not preset.pretrained:
        p.error("--weights is for the paper preset (the small preset trains its own backbone)")
    if args.weights is not None and not args.weights.is_file():
        p.error(f"--weights: no such file: {args.weights}")
    changes: dict[str, Any] = {
        k: v for k, v in vars(args).items()
        if v is not None and k in {f.name for f in dataclasses.fields(Preset)}
        and k not in ("methods", "sigmas", "lr")
    }
    if args.methods:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        unknown = sorted(set(methods) - set(METHODS))
        if unknown:
            p.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
        changes["methods"] = methods
    if args.sigmas:
        changes["sigmas"] = tuple(float(s) for s in args.sigmas.split(","))
        if any(s <= 0 for s in changes["sigmas"]):
            p.error("--sigmas must be > 0")
    lr = dict(LEARNING_RATES[preset.name])
    for item in args.lr:
        method, _, value = item.partition("=")
        if method not in METHODS or not value:
            p.error(f"--lr expects METHOD=VALUE with METHOD in {', '.join(METHODS)}, got {item}")
        lr[method] = float(value)
    changes["lr"] = lr
    if args.out is None:
        args.out = Path("runs") / f"paper_table_{preset.name}"
    return dataclasses.replace(preset, **changes), args


# ---------------------------------------------------------------------------- small helpers
# A fresh run has no checkpoint to resume from; NoiseTrainer says so, which is expected here.


def log(message: str) -> None:
    print(message, flush=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that a reader sees either nothing or all of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sigma_tag(sigma: float) -> str:
    return f"{sigma:g}"


def run_name(method: str, sigma: float) -> str:
    return f"{method}-s{sigma_tag(sigma)}"


def weights_name(args: argparse.Namespace) -> str | None:
    """The ``--weights`` file as recorded in a run's settings (``None``: timm's download)."""
    return str(args.weights.resolve()) if args.weights is not None else None


def check_settings(path: Path, settings: dict[str, Any]) -> None:
    """Record a run's settings, or refuse to continue a run that was started with others."""
    settings = json.loads(json.dumps(settings))  # normalise tuples etc.
    if path.exists():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            raise SystemExit(
                f"{path.parent} was started with other settings ("
                + ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in diff)
                + "); use another --out, or delete that folder to redo it"
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(settings, indent=2) + "\n")


# ---------------------------------------------------------------------------- data
def load_data(cfg: Preset, args: argparse.Namespace) -> tuple[ArrayDataset, ArrayDataset, str]:
    """Training set (with crop + flip augmentation) and test set, as [0, 1] images."""
    root: Path = args.root
    if args.download:
        for split in (True, False):
            ps.datasets.load_dataset("cifar10", root, train=split, download=True)
    try:
        x_train, y_train = load_cifar(root, train=True)
        x_test, y_test = load_cifar(root, train=False)
        source = f"CIFAR-10 under {root}"
    except FileNotFoundError:
        if not cfg.name.startswith("smoke"):
            raise
        # Smoke mode only: random images, so the pipeline can be checked without the data.
        rng = np.random.default_rng(args.seed)
        x_train = rng.integers(0, 256, (cfg.train_images or 64, 32, 32, 3), dtype=np.uint8)
        y_train = rng.integers(0, NUM_CLASSES, len(x_train))
        x_test = rng.integers(0, 256, (cfg.test_images or 8, 32, 32, 3), dtype=np.uint8)
        y_test = rng.integers(0, NUM_CLASSES, len(x_test))
        source = f"random images (no CIFAR-10 under {root}; smoke mode)"
    if cfg.train_images is not None:
        x_train, y_train = x_train[: cfg.train_images], y_train[: cfg.train_images]
    if cfg.test_images is not None:
        x_test, y_test = x_test[: cfg.test_images], y_test[: cfg.test_images]
    train = ArrayDataset(x_train, y_train, augment=True)
    test = ArrayDataset(x_test, y_test, augment=False)
    return train, test, source


def train_loader(cfg: Preset, train: ArrayDataset, seed: int) -> DataLoader[Any]:
    # A seeded generator: NoiseTrainer saves its state, so a resumed epoch sees the same order.
    return DataLoader(
        train, batch_size=cfg.batch_size, shuffle=True, drop_last=len(train) > cfg.batch_size,
        generator=torch.Generator().manual_seed(seed), num_workers=cfg.workers,
        persistent_workers=cfg.workers > 0,
    )


# ---------------------------------------------------------------------------- models
def clean_classifier_file(cfg: Preset, args: argparse.Namespace, train: ArrayDataset,
                          test: ArrayDataset) -> Path:
    """A classifier trained on *clean* CIFAR-10 (sigma = 0), cached as a state_dict file.

    small / smoke: the backbone itself, a ViT trained from scratch (``OUT/backbone/``); the
    other methods start from it with a fresh head, the denoiser uses it (head included) as is.
    paper: ViT-B/16 (ImageNet-21k) fine-tuned on clean CIFAR-10 (``OUT/clean_classifier/``),
    used only as the denoiser's frozen classifier.
    """
    folder = args.out / ("clean_classifier" if cfg.pretrained else "backbone")
    weights = folder / "classifier.pt"
    settings = {"model": cfg.model, "model_kwargs": cfg.model_kwargs,
                "pretrained": cfg.pretrained, "weights": weights_name(args),
                "method": cfg.clean_method,
                "epochs": cfg.pretrain_epochs, "lr": cfg.pretrain_lr,
                "batch_size": cfg.batch_size, "train_images": len(train), "seed": args.seed}
    # Checked before reusing a finished classifier too: one made with other settings (e.g. by
    # an older version of this script) must not be loaded into this preset's model.
    check_settings(folder / "run.json", settings)
    if weights.exists():
        log(f"skipping the clean classifier: {weights} exists")
        return weights
    log(f"training the clean classifier ({cfg.clean_method}, {cfg.pretrain_epochs} epochs, "
        f"sigma 0) into {folder}")
    if cfg.pretrained:  # a new 10-class head, trained with the chosen method
        torch.manual_seed(args.seed)
        base = pretrained_base(cfg, args)
        model = ps.wrap(base, method=cfg.clean_method, num_classes=NUM_CLASSES,
                        input_size=cfg.input_size)
    else:  # from scratch: every weight, including the 10-class head made by create_model
        model = ps.wrap(ps.create_model(cfg.model, seed=args.seed, num_classes=NUM_CLASSES,
                                        **cfg.model_kwargs), method="full")
    loader = train_loader(cfg, train, args.seed)
    steps = len(loader) * cfg.pretrain_epochs
    trainer = ps.NoiseTrainer(
        model, sigma=0.0, epochs=cfg.pretrain_epochs, lr=cfg.pretrain_lr, weight_decay=0.05,
        warmup_steps=min(2 * len(loader), steps // 10), max_grad_norm=1.0,
        precision=cfg.precision, device=cfg.device, seed=args.seed,
        checkpoint_dir=folder / "checkpoints",
    )
    history = trainer.fit(loader, resume=True)
    test_loader = DataLoader(test, batch_size=cfg.cert_batch)
    accuracy = trainer.evaluate(test_loader, sigma=0.25)
    torch.save(model.model.state_dict(), weights.with_name(".classifier.pt.tmp"))
    os.replace(weights.with_name(".classifier.pt.tmp"), weights)
    info = {"clean_test_accuracy": accuracy["clean_acc"],
            "noisy_test_accuracy_sigma_0.25": accuracy["noisy_acc"],
            "test_images": len(test),
            "train_time_s": sum(r["time_s"] for r in history), **settings}
    atomic_write_text(folder / "classifier.json", json.dumps(info, indent=2) + "\n")
    log(f"clean classifier: test accuracy {accuracy['clean_acc']:.3f} "
        f"(noisy, sigma 0.25: {accuracy['noisy_acc']:.3f})")
    return weights


def method_options(cfg: Preset, method: str) -> dict[str, Any]:
    """``ps.wrap`` options of each method."""
    options: dict[str, dict[str, Any]] = {
        "linear": {},
        "full": {},
        "lora": {"r": cfg.lora_rank, "alpha": float(cfg.lora_rank)},
        "prompt": {"num_tokens": cfg.prompt_tokens},
        "prompt-deep": {"num_tokens": cfg.prompt_tokens, "deep": True},
        "adapter": {"bottleneck": cfg.adapter_bottleneck},
        "denoiser": {"depth": cfg.dncnn_depth, "width": cfg.dncnn_width},
    }
    return options[method]


def pretrained_base(cfg: Preset, args: argparse.Namespace) -> nn.Module:
    """The paper preset's backbone with its pretrained weights: timm's download, or the local
    ``--weights`` file (smoke mode without one: random weights saved to ``OUT``, a stand-in)."""
    weights: Path | None = args.weights
    if weights is None and cfg.name == "smoke-paper":
        weights = args.out / "smoke_pretrained.pt"
        if not weights.exists():
            stand_in = ps.create_model(cfg.model, seed=args.seed, **cfg.model_kwargs)
            torch.save(stand_in.state_dict(), weights)
    return ps.create_model(cfg.model, pretrained=True, file=weights, **cfg.model_kwargs)


def build_model(cfg: Preset, args: argparse.Namespace, method: str,
                clean: Path) -> ps.PEFTModel:
    """The backbone wrapped with one method (the denoiser: the clean classifier, head kept)."""
    registered = "prompt" if method == "prompt-deep" else method
    options = method_options(cfg, method)
    if method == "denoiser":
        classifier = ps.create_model(cfg.model, file=clean, num_classes=NUM_CLASSES,
                                     **cfg.model_kwargs)
        return ps.wrap(classifier, method="denoiser", input_size=cfg.input_size, **options)
    if cfg.pretrained:
        base = pretrained_base(cfg, args)
    else:
        base = ps.create_model(cfg.model, file=clean, num_classes=NUM_CLASSES,
                               **cfg.model_kwargs)
    torch.manual_seed(args.seed)  # the new head and the method's parameters start the same way
    return ps.wrap(base, method=registered, num_classes=NUM_CLASSES, input_size=cfg.input_size,
                   **options)


# ---------------------------------------------------------------------------- one run
def run_settings(cfg: Preset, args: argparse.Namespace, method: str, sigma: float, clean: Path,
                 train: ArrayDataset, test: ArrayDataset) -> dict[str, Any]:
    return {
        "method": method, "sigma": sigma, "model": cfg.model, "model_kwargs": cfg.model_kwargs,
        "pretrained": cfg.pretrained, "weights": weights_name(args),
        "input_size": cfg.input_size,
        "clean_classifier": f"{clean.parent.name}/{clean.name}",  # relative to OUT
        "options": method_options(cfg, method),
        "epochs": cfg.epochs, "lr": cfg.lr[method], "batch_size": cfg.batch_size,
        "loss": cfg.denoiser_loss if method == "denoiser" else "ce",
        "train_images": len(train), "test_images": len(test), "skip": cfg.skip,
        "n0": cfg.n0, "n": cfg.n, "alpha": cfg.alpha, "precision": cfg.precision,
        "seed": args.seed,
    }


def run_one(cfg: Preset, args: argparse.Namespace, method: str, sigma: float, clean: Path,
            train: ArrayDataset, test: ArrayDataset) -> None:
    """Train and certify one (method, sigma), resuming whatever an earlier invocation left."""
    folder: Path = args.out / run_name(method, sigma)
    settings = run_settings(cfg, args, method, sigma, clean, train, test)
    check_settings(folder / "run.json", settings)
    if (folder / "done.json").exists():
        log(f"skipping {folder.name}: finished earlier ({folder / 'done.json'})")
        return
    log(f"== {folder.name}: training ({cfg.epochs} epochs, lr {cfg.lr[method]:g}, "
        f"loss {settings['loss']})")
    model = build_model(cfg, args, method, clean)
    params = ps.parameter_report(model)
    trainer = ps.NoiseTrainer(
        model, sigma=sigma, epochs=cfg.epochs, lr=cfg.lr[method], loss=settings["loss"],
        precision=cfg.precision, device=cfg.device, seed=args.seed,
        checkpoint_dir=folder / "checkpoints", metadata={"run": folder.name},
    )
    history = trainer.fit(train_loader(cfg, train, args.seed), resume=True)
    train_time = sum(float(r["time_s"]) for r in history)  # summed over interrupted sessions

    log(f"== {folder.name}: certifying {math.ceil(len(test) / cfg.skip)} images "
        f"(n={cfg.n:,}, n0={cfg.n0}, alpha={cfg.alpha})")
    smoothed = ps.SmoothedClassifier(model, num_classes=NUM_CLASSES, sigma=sigma,
                                     device=cfg.device, precision=cfg.precision)
    report = smoothed.certify_dataset(
        test, n0=cfg.n0, n=cfg.n, alpha=cfg.alpha, batch_size=cfg.cert_batch,
        log=folder / "certify.tsv", resume=True, skip=cfg.skip, seed=args.seed,
    )
    done = {
        "method": method, "sigma": sigma, "trainable_parameters": params.trainable,
        "total_parameters": params.total, "train_time_s": train_time,
        "certify_time_s": float(report.seconds.sum()), "images": len(report),
        "final_train_acc": history[-1].get("train_acc") if history else None,
    }
    atomic_write_text(folder / "done.json", json.dumps(done, indent=2) + "\n")
    log(f"== {folder.name}: clean accuracy {report.clean_accuracy:.3f}, ACR {report.acr:.3f}, "
        f"{params.trainable:,} trained parameters, train {train_time:.0f} s, "
        f"certify {done['certify_time_s']:.0f} s")


# ---------------------------------------------------------------------------- the table
@dataclass
class Row:
    method: str
    sigma: float
    done: dict[str, Any]
    report: CertificationReport


def finished_runs(out: Path) -> list[Row]:
    """Every finished run under ``out``, read back from its ``done.json`` and certification log,
    in the order sigma, then ``METHODS``."""
    rows = []
    for done_file in out.glob("*/done.json"):
        done = json.loads(done_file.read_text())
        report = CertificationReport.from_log(done_file.parent / "certify.tsv",
                                              name=done["method"])
        rows.append(Row(done["method"], float(done["sigma"]), done, report))
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(rows, key=lambda r: (r.sigma, order.get(r.method, len(order)), r.method))


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def write_tables(rows: list[Row], out: Path, notes: str) -> None:
    header = ["method", "sigma", "trained params", "train time", "certify time", "clean acc",
              *(f"r={r:g}" for r in RADII), "ACR", "images"]
    md = ["| " + " | ".join(header) + " |", "|---|---:|" + "---:|" * (len(header) - 2)]
    csv = ["method,sigma,trained_params,train_time_s,certify_time_s,clean_acc,"
           + ",".join(f"cert_acc_r{r:g}" for r in RADII) + ",acr,images"]
    for row in rows:
        acc = row.report.certified_accuracy(RADII)
        d = row.done
        md.append("| " + " | ".join([
            row.method, f"{row.sigma:g}", f"{d['trainable_parameters']:,}",
            minutes(d["train_time_s"]), minutes(d["certify_time_s"]),
            f"{row.report.clean_accuracy:.3f}", *(f"{acc[r]:.3f}" for r in RADII),
            f"{row.report.acr:.3f}", str(len(row.report)),
        ]) + " |")
        csv.append(",".join([
            row.method, f"{row.sigma:g}", str(d["trainable_parameters"]),
            f"{d['train_time_s']:.1f}", f"{d['certify_time_s']:.1f}",
            repr(row.report.clean_accuracy), *(repr(acc[r]) for r in RADII),
            repr(row.report.acr), str(len(row.report)),
        ]))
    atomic_write_text(out / "table.md", "\n".join(md) + "\n\n" + notes)
    atomic_write_text(out / "table.csv", "\n".join(csv) + "\n")


#: Baselines every method is compared with, image by image, in ``differences.md``.
BASELINES = ("full", "denoiser")
#: Radii of those comparisons.
DIFFERENCE_RADII = (0.0, 0.5)


def write_differences(rows: list[Row], out: Path) -> None:
    """``OUT/differences.md``: each method minus each baseline, paired over the same images.

    Two accuracies measured on the same 500 images differ by chance much less than their
    separate standard errors suggest; ``CertificationReport.compare_to`` gives the paired
    difference, its standard error and an exact McNemar p-value.
    """
    header = ["method", "sigma"] + [
        f"vs {b}, r={r:g}" for b in BASELINES for r in DIFFERENCE_RADII
    ]
    md = ["| " + " | ".join(header) + " |", "|---|---:|" + "---:|" * (len(header) - 2)]
    by_key = {(r.method, r.sigma): r for r in rows}
    for row in rows:
        cells = [row.method, f"{row.sigma:g}"]
        for baseline in BASELINES:
            ref = by_key.get((baseline, row.sigma))
            if ref is None or ref is row:
                cells += ["" for _ in DIFFERENCE_RADII]
                continue
            try:
                diffs = row.report.compare_to(ref.report, DIFFERENCE_RADII)
            except ValueError as err:  # e.g. runs made on other data in the same OUT
                cells += [f"n/a: {err}" for _ in DIFFERENCE_RADII]
                continue
            shared = next(iter(diffs.values())).images
            note = "" if shared == len(row.report) == len(ref.report) else f" [{shared} images]"
            cells += [f"{diffs[r]}{note}" for r in DIFFERENCE_RADII]
        md.append("| " + " | ".join(cells) + " |")
    notes = (
        "Certified accuracy of the method minus the baseline's at radius r, on the same test "
        "images: difference ± standard error (p = two-sided exact McNemar test of equal "
        "accuracy, from the images only one of the two certifies). Made by "
        "`CertificationReport.compare_to`; [N images] marks a comparison on the N images both "
        "runs certified when the two runs' image sets differ.\n"
    )
    atomic_write_text(out / "differences.md", "\n".join(md) + "\n\n" + notes)


def write_figures(rows: list[Row], out: Path) -> list[Path]:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log("matplotlib is not installed, so no figures: pip install 'peftsmoothing[plot]' "
            "(or pip install matplotlib) and rerun the same command (finished runs are skipped)")
        return []
    paths = []
    for sigma in sorted({r.sigma for r in rows}):
        curves = {r.method: r.report for r in rows if r.sigma == sigma}
        path = out / f"certified_accuracy_sigma{sigma_tag(sigma)}.png"
        ps.plot_certified_accuracy(curves, path, max_radius=max(1.0, 4 * sigma),
                                   title=f"CIFAR-10, sigma = {sigma:g}")
        paths.append(path)
    return paths


def table_notes(cfg: Preset, args: argparse.Namespace, source: str, clean: Path,
                wall: float) -> str:
    info_file = clean.with_name("classifier.json")
    info = json.loads(info_file.read_text()) if info_file.exists() else {}
    dncnn = ps.parameter_report(ps.wrap(nn.Identity(), method="denoiser", normalize=None,
                                        depth=cfg.dncnn_depth, width=cfg.dncnn_width))
    clean_acc = info.get("clean_test_accuracy")
    if not cfg.pretrained:
        origin = "pre-trained here, clean CIFAR-10"
    elif args.weights is not None:
        origin = f"pretrained weights from {args.weights}"
    elif cfg.name == "smoke-paper":
        origin = "random weights standing in for pretrained ones (smoke)"
    else:
        origin = "timm's pretrained weights"
    if cfg.input_size:
        origin += f"; input resized to {cfg.input_size} px inside the model"
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(cfg.skip % 10 if cfg.skip % 100 not in (11, 12, 13)
                                             else 0, "th")
    every = "every image" if cfg.skip == 1 else f"every {cfg.skip}{suffix}"
    lines = [
        "Notes:",
        f"- Preset `{cfg.name}`; data: {source}; backbone: timm `{cfg.model}` "
        f"{cfg.model_kwargs or ''} ({origin}).",
        f"- Clean classifier (`{clean}`): test accuracy "
        + (f"{clean_acc:.3f}" if clean_acc is not None else "n/a")
        + f"; for the denoiser it is the frozen classifier, trained with `{cfg.clean_method}` "
        f"at sigma 0 for {cfg.pretrain_epochs} epoch(s).",
        f"- Noisy training: {cfg.epochs} epoch(s), batch {cfg.batch_size}, for every method, "
        "AdamW + cosine; learning rates "
        + ", ".join(f"{m} {cfg.lr[m]:g}" for m in cfg.methods) + ".",
        f"- Methods: LoRA r={cfg.lora_rank} (q, v), prompts {cfg.prompt_tokens} tokens, "
        f"adapter bottleneck {cfg.adapter_bottleneck}, DnCNN depth {cfg.dncnn_depth} x width "
        f"{cfg.dncnn_width} ({dncnn.trainable:,} parameters) trained with "
        f"`{cfg.denoiser_loss}`; its extra cost per forward pass shows in `certify time`.",
        f"- Certification: n={cfg.n:,}, n0={cfg.n0}, alpha={cfg.alpha}, test images "
        f"{'all' if cfg.test_images is None else f'first {cfg.test_images}'}, {every}; "
        "clean acc = certified accuracy at radius 0 (abstain = wrong); ACR = "
        "average certified radius.",
        f"- Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {cfg.device}; "
        f"last invocation took {minutes(wall)}.",
        f"- Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
    ]
    return "\n".join(lines) + "\n"


def lock_output(out: Path) -> Path:
    """Refuse to run twice at once on one ``OUT`` (both would append to the same logs)."""
    lock = out / ".lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            pid = int(lock.read_text() or 0)
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):  # stale: its process is gone
            lock.unlink(missing_ok=True)
            return lock_output(out)
        except PermissionError:
            pass
        raise SystemExit(f"{out} is in use by process {pid} (or delete {lock})") from None
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return lock


# ---------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no GPU is visible; use --device cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    lock = lock_output(args.out)
    try:
        return run_all(cfg, args, start)
    finally:
        lock.unlink(missing_ok=True)


def run_all(cfg: Preset, args: argparse.Namespace, start: float) -> int:
    """Every run (skipping finished ones), then the tables and figures from all logs."""
    train, test, source = load_data(cfg, args)
    log(f"preset {cfg.name}: {len(train)} training / {len(test)} test images from {source}; "
        f"methods {', '.join(cfg.methods)}; sigmas {', '.join(map(sigma_tag, cfg.sigmas))}; "
        f"output {args.out}")
    try:
        clean = clean_classifier_file(cfg, args, train, test)
        for sigma in cfg.sigmas:
            for method in cfg.methods:
                run_one(cfg, args, method, sigma, clean, train, test)
    except KeyboardInterrupt:
        log(f"\ninterrupted: everything finished so far is kept in {args.out}; rerun the same "
            "command to continue")
        return 130
    rows = finished_runs(args.out)
    write_tables(rows, args.out, table_notes(cfg, args, source, clean,
                                             time.perf_counter() - start))
    write_differences(rows, args.out)
    figures = write_figures(rows, args.out)
    log((args.out / "table.md").read_text())
    log((args.out / "differences.md").read_text())
    log("wrote " + ", ".join(str(p) for p in [args.out / "table.md", args.out / "table.csv",
                                               args.out / "differences.md", *figures]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
