"""Datasets: [0, 1] pixels, CIFAR python format, ImageFolder."""

from __future__ import annotations

import json
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


def _write_folder(root: Path, size: tuple[int, int] = (500, 410)) -> None:
    """A synthetic ImageFolder: smooth gradients with detail, so interpolation modes differ."""
    from PIL import Image

    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    for k, cls in enumerate(("a", "b")):
        folder = root / "val" / cls
        folder.mkdir(parents=True)
        pixels = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx * yy + 97 * k) % 256)], -1)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / "img.png")


def test_image_folder_follows_the_models_timm_data_config(tmp_path: Path) -> None:
    import timm
    from PIL import Image
    from timm.data import create_transform, resolve_model_data_config

    _write_folder(tmp_path)
    with torch.device("meta"):  # only its pretrained_cfg is read
        vit = timm.create_model("vit_base_patch16_384", pretrained=False)
    config = datasets.preprocessing_config(vit)
    assert config == {"image_size": [384, 384], "crop_pct": 1.0, "crop_mode": "center",
                      "interpolation": "bicubic"}  # fmt: skip
    assert json.loads(json.dumps(config)) == config  # certification logs record it
    x, _ = datasets.load_dataset("imagefolder", tmp_path, train=False, preprocessing=config)[0]
    assert x.shape == (3, 384, 384) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    data_cfg = resolve_model_data_config(vit)  # timm's own eval transform, then undo its mean/std
    timm_tf = create_transform(**data_cfg, is_training=False)
    image = Image.open(tmp_path / "val" / "a" / "img.png").convert("RGB")
    mean, std = (torch.tensor(data_cfg[k]).view(3, 1, 1) for k in ("mean", "std"))
    torch.testing.assert_close(x, timm_tf(image) * std + mean, atol=1e-5, rtol=0)
    bilinear = datasets.preprocessing_config(vit, interpolation="bilinear", image_size=100)
    y, _ = datasets.load_dataset("imagefolder", tmp_path, train=False, preprocessing=bilinear)[0]
    bicubic = {**bilinear, "interpolation": "bicubic"}
    z, _ = datasets.load_dataset("imagefolder", tmp_path, train=False, preprocessing=bicubic)[0]
    assert y.shape == z.shape == (3, 100, 100) and not torch.equal(y, z)
    xt, _ = datasets.load_dataset("imagefolder", tmp_path, train=True, preprocessing=bicubic,
                                  augment=True)[0]  # fmt: skip
    assert xt.shape == (3, 100, 100)


def test_preprocessing_follows_the_size_a_timm_model_was_built_for() -> None:
    import timm

    with torch.device("meta"):
        vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4)
    assert datasets.preprocessing_config(vit)["image_size"] == [32, 32]  # not its cfg's 224
    with pytest.raises(ValueError, match="crop_mode must be"):
        datasets.preprocessing_config(crop_mode="border")
    with pytest.raises(ValueError, match="interpolation must be one of"):
        datasets.preprocessing_config(interpolation="cubic")
