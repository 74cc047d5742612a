"""The end-to-end demo: pretrained ViT -> LoRA -> noise training -> certificates, offline.

Uses only what ships inside the package: a small ViT pre-trained on clean CIFAR-10
([`demo_vit`][peftsmoothing.backbones.zoo.demo_vit]) and a real CIFAR-10 sample
(``peftsmoothing.data.datasets.cifar10_sample``). Run it with ``make demo`` or
``peftsmoothing demo``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report.accuracy import CertificationReport

__all__ = ["DemoConfig", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    """Settings of [`run_demo`][peftsmoothing.demo.run_demo] (defaults: 3-4 minutes on 2 idle CPU
    cores).

    Attributes:
        out: Output directory (checkpoint, certification logs, curve).
        sigma: Noise level for training and certification.
        epochs: Noise fine-tuning epochs on 2,000 training images.
        r: LoRA rank.
        num_images: Test images to certify (of the 500 shipped).
        n0: Selection samples per image.
        n: Estimation samples per image.
        alpha: Failure probability of each certificate.
        batch_size: Noisy images per forward pass.
        compare_base: Also certify the model before noise fine-tuning.
        seed: Seed of training and certification.
        progress: Progress bars (``None``: when attached to a terminal).
    """

    out: str = "demo-output"
    sigma: float = 0.25
    epochs: int = 4
    r: int = 8
    num_images: int = 200
    n0: int = 25
    n: int = 250
    alpha: float = 0.001
    batch_size: int = 275
    compare_base: bool = True
    seed: int = 0
    progress: bool | None = None

    @classmethod
    def smoke(cls, out: str = "demo-output") -> DemoConfig:
        """Tiny settings that run in seconds (for CI).

        Examples:
            >>> DemoConfig.smoke().num_images
            8
        """
        return cls(out=out, epochs=1, num_images=8, n0=10, n=50, batch_size=60)


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(
    config: DemoConfig | None = None, *, train_limit: int | None = None
) -> dict[str, CertificationReport]:
    """Run the whole pipeline and print what happens; returns the certification reports.

    Args:
        config: Settings; default [`DemoConfig`][peftsmoothing.demo.DemoConfig].
        train_limit: Use only the first ``train_limit`` training images (smoke runs).

    Returns:
        ``{"before": ..., "after": ...}`` reports (``"before"`` only with ``compare_base``).

    Examples:
        >>> import tempfile
        >>> cfg = DemoConfig.smoke(out=tempfile.mkdtemp())
        >>> reports = run_demo(cfg, train_limit=64)  # doctest: +ELLIPSIS
        [1/4] ...
        >>> sorted(reports), len(reports["after"])
        (['after', 'before'], 8)
    """
    # imported here, not at load time: ``peftsmoothing demo --help`` reads DemoConfig only
    import torch
    from torch.utils.data import DataLoader, Subset

    from .backbones.zoo import demo_vit
    from .certify.smoothing import SmoothedClassifier
    from .core.params import parameter_report
    from .data.datasets import cifar10_sample
    from .model.wrapping import wrap
    from .report.accuracy import certified_accuracy_table, plot_certified_accuracy
    from .training import NoiseTrainer

    cfg = config or DemoConfig()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    started = time.time()

    _say("[1/4] Pretrained model and data (shipped with the package, no download)")
    train = cifar10_sample(train=True)
    train = Subset(train, range(len(train))[:train_limit])  # type: ignore[assignment]
    test = cifar10_sample(train=False)
    model = wrap(demo_vit(), method="lora", r=cfg.r, train_head=True)
    _say(f"      demo ViT, 1.2M parameters, clean CIFAR-10; LoRA r={cfg.r} on q, v + head: "
         f"{parameter_report(model).summary()}")

    reports: dict[str, CertificationReport] = {}

    def certify(key: str, name: str) -> None:
        smoothed = SmoothedClassifier(model, num_classes=10, sigma=cfg.sigma)
        reports[key] = smoothed.certify_dataset(
            test, cfg.n0, cfg.n, cfg.alpha, cfg.batch_size, log=out / f"certify_{key}.tsv",
            indices=range(min(cfg.num_images, len(test))), seed=cfg.seed, progress=cfg.progress,
        )
        reports[key].name = name

    if cfg.compare_base:
        _say(f"[2/4] Certifying the model BEFORE noise fine-tuning ({cfg.num_images} images, "
             f"sigma={cfg.sigma}, n={cfg.n})")
        certify("before", "before noise fine-tuning")
    else:
        _say("[2/4] (skipping the baseline certification)")

    _say(f"[3/4] Fine-tuning LoRA on Gaussian-noised images (sigma={cfg.sigma}, "
         f"{cfg.epochs} epochs, {len(train)} images)")
    loader = DataLoader(train, batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    trainer = NoiseTrainer(model, sigma=cfg.sigma, epochs=cfg.epochs, lr=3e-3,
                           warmup_steps=10, seed=cfg.seed, checkpoint_dir=out / "checkpoint",
                           progress=cfg.progress)
    last = trainer.fit(loader)[-1]
    _say("      " + ", ".join(f"{k} {v:.3f}" for k, v in last.items()
                              if isinstance(v, float) and k.startswith("train_")))

    _say(f"[4/4] Certifying the model AFTER noise fine-tuning ({cfg.num_images} images)")
    certify("after", "after LoRA noise fine-tuning")

    # up to the largest radius n and alpha allow: sigma * Phi^-1(alpha ** (1 / n))
    radii = [round(cfg.sigma * k * 0.4, 4) for k in range(5)]
    named = {r.name or key: r for key, r in reports.items()}
    _say("\nCertified accuracy (fraction of test images classified correctly with an L2 "
         f"certificate of at least the radius; each holds with prob. >= {1 - cfg.alpha}):\n")
    _say(certified_accuracy_table(named, radii))
    try:
        path = plot_certified_accuracy(named, out / "certified_accuracy.png",
                                       title=f"demo ViT + LoRA, sigma={cfg.sigma}")
        _say(f"\nCurve written to {path}")
    except ImportError:
        _say("\nInstall matplotlib (pip install 'peftsmoothing[plot]') to get the curve as a PNG.")
    _say(f"Model checkpoint: {out / 'checkpoint' / 'last'} (load with ps.load(path)); "
         f"logs: {out}{os.sep}certify_*.tsv; total {time.time() - started:.0f} s")
    return reports
