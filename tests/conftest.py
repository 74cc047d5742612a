"""Shared fixtures: tiny seeded models that build in milliseconds on a CPU."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from torch import nn

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


def tiny_vit(seed: int = 0, **kwargs: object) -> nn.Module:
    """A randomly initialised ViT-Tiny on 32x32 inputs (64 patch tokens)."""
    torch.manual_seed(seed)
    args: dict[str, object] = {"img_size": 32, "patch_size": 4, "num_classes": 10}
    args.update(kwargs)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **args)


class TinyCNN(nn.Module):
    """conv-bn-relu x2 -> pool -> MLP head; no timm helpers."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.bn2 = nn.BatchNorm2d(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.mlp = nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 16))
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = self.pool(x).flatten(1)
        return self.fc(x + self.mlp(x))


def tiny_cnn(seed: int = 0) -> TinyCNN:
    torch.manual_seed(seed)
    model = TinyCNN()
    # non-trivial BatchNorm statistics, so that frozen-BN handling is visible
    model.bn1.running_mean.uniform_(-0.1, 0.1)
    model.bn1.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture
def make_vit() -> Callable[..., nn.Module]:
    return tiny_vit


@pytest.fixture
def make_cnn() -> Callable[..., TinyCNN]:
    return tiny_cnn


@pytest.fixture
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    return torch.rand(4, 3, 32, 32, generator=g)


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    if not (DATA_DIR / "cifar-10-batches-py").is_dir():
        pytest.skip(f"real CIFAR-10 subset not found under {DATA_DIR}")
    return DATA_DIR


# ------------------------------------------------------------------ command-line end to end
@pytest.fixture
def saved_model(tmp_path: Path) -> Path:
    """A tiny LoRA ViT (16 px, 10 classes) saved as the commands read it."""
    import peftsmoothing as ps

    base = ps.create_model("vit_tiny_patch16_224", seed=0, img_size=16, patch_size=4, depth=1,
                           embed_dim=32, num_heads=2)  # fmt: skip
    return ps.wrap(base, method="lora", r=2, num_classes=10).save(tmp_path / "model")


@pytest.fixture
def fake_cifar(monkeypatch: pytest.MonkeyPatch) -> list[tuple[torch.Tensor, int]]:
    """Ten seeded 16 px images standing in for ``datasets.load_dataset`` (any name or root)."""
    import peftsmoothing as ps

    g = torch.Generator().manual_seed(0)
    data = [(torch.rand(3, 16, 16, generator=g), i % 10) for i in range(10)]

    def load_dataset(name: str, root: str, train: bool, **kwargs: Any) -> Any:
        return data

    monkeypatch.setattr(ps.datasets, "load_dataset", load_dataset)
    return data
