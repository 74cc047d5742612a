"""Datasets: [0, 1] pixels, CIFAR python format, ImageFolder."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from peftsmoothing import datasets


def _write_fake_cifar(root: Path, n: int = 6) -> None:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("data_batch_1", "data_batch_2", "test_batch"):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": list(range(n)), b"batch_label": name.encode()}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f)


def test_fake_cifar_layout_and_scaling(tmp_path: Path) -> None:
    _write_fake_cifar(tmp_path)
    train = datasets.load_dataset("cifar10", tmp_path, train=True, augment=False)
    test = datasets.load_dataset("cifar10", tmp_path / "cifar-10-batches-py", train=False)
    assert len(train) == 12 and len(test) == 6
    x, y = test[2]
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f)[b"data"][2]
    expected = torch.from_numpy(raw.reshape(3, 32, 32).astype(np.float32) / 255.0)
    assert y == 2 and torch.equal(x, expected)  # CHW order, scaled to [0, 1], not normalized


def test_resize_and_augment(tmp_path: Path) -> None:
    _write_fake_cifar(tmp_path)
    ds = datasets.load_dataset("cifar10", tmp_path, train=True, image_size=48)
    torch.manual_seed(0)
    x, _ = ds[0]
    assert x.shape == (3, 48, 48) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog", "eel"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            Image.new("RGB", (40, 30), color=(255, 0, 0)).save(folder / "a.png")
    assert datasets.num_classes("imagefolder", tmp_path) == 3
    ds = datasets.load_dataset("imagefolder", tmp_path, train=False, image_size=16)
    x, y = ds[0]
    assert x.shape == (3, 16, 16) and y == 0
    torch.testing.assert_close(x[0], torch.ones(16, 16))


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        datasets.load_dataset("mnist", tmp_path, train=True)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        datasets.load_dataset("cifar10", tmp_path, train=True)
    with pytest.raises(ValueError, match="uint8"):
        datasets.ArrayDataset(np.zeros((2, 4, 4, 3), np.float32), np.zeros(2))


@pytest.mark.data
def test_real_cifar_subset(cifar_root: Path) -> None:
    test = datasets.load_dataset("cifar10", cifar_root, train=False)
    assert len(test) == 1017
    assert [test[i][1] for i in range(10)] == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert len(datasets.load_dataset("cifar10", cifar_root, train=True)) == 5085
