"""`peftsmoothing train` on tiny synthetic data with a tiny ViT."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import TensorDataset

import peftsmoothing as ps
from peftsmoothing.cli import main
from peftsmoothing.commands import train as train_cmd

TINY = ["--model", "vit_tiny_patch16_224", "--model-kwargs", "img_size=32", "patch_size=4",
        "depth=2", "--workers", "0"]


@pytest.fixture
def fake_data(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool, Any]]:
    calls: list[tuple[str, bool, Any]] = []

    def load(name: str, root: str, train: bool, image_size: int | None) -> TensorDataset:
        calls.append((name, train, image_size))
        g = torch.Generator().manual_seed(0)
        return TensorDataset(torch.rand(24, 3, 32, 32, generator=g),
                             torch.randint(0, 4, (24,), generator=g))

    monkeypatch.setattr(ps.datasets, "load_dataset", load)
    monkeypatch.setattr(ps.datasets, "num_classes", lambda name, root: 4)
    return calls


def test_train_command_writes_a_loadable_model(
    tmp_path: Path, fake_data: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["train", *TINY, "--method", "lora", "--r", "2", "--opt", "alpha=4",
            "--dataset", "cifar10", "--root", str(tmp_path), "--sigma", "0.25", "--epochs", "2",
            "--batch", "8", "--lr", "1e-3", "--val-fraction", "0.25", "--out", str(out)]
    assert main(args) == 0
    assert fake_data == [("cifar10", True, None)]
    cfg = json.loads((out / "peftsmoothing.json").read_text())
    assert cfg["spec"]["method"] == "lora" and cfg["spec"]["num_classes"] == 4
    assert cfg["spec"]["method_config"]["r"] == 2 and cfg["spec"]["method_config"]["alpha"] == 4
    base = cfg["metadata"]["base_model"]
    assert base["name"] == "vit_tiny_patch16_224" and base["pretrained"] is False
    assert base["kwargs"] == {"img_size": 32, "patch_size": 4, "depth": 2}
    assert len(cfg["metadata"]["training"]["history"]) == 2
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"last", "best", "history.jsonl"}
    # the output directory rebuilds itself (base model from the recorded recipe)
    model = ps.load(out).eval()
    last = ps.load(out / "checkpoints" / "last").eval()
    x = torch.rand(2, 3, 32, 32)
    assert model(x).shape == (2, 4)
    torch.testing.assert_close(model(x), last(x))
    assert "saved lora model" in capsys.readouterr().out


def test_train_command_resume_and_sigma_list(tmp_path: Path, fake_data: list[Any]) -> None:
    out = tmp_path / "run"
    common = ["train", *TINY, "--method", "lora", "--root", str(tmp_path), "--batch", "12",
              "--sigma", "0.25", "0.5", "--loss", "consistency", "--out", str(out)]
    assert main([*common, "--epochs", "1"]) == 0
    assert main([*common, "--epochs", "2", "--resume"]) == 0
    lines = (out / "checkpoints" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    cfg = json.loads((out / "peftsmoothing.json").read_text())
    assert cfg["metadata"]["training"]["config"]["sigma"] == [0.25, 0.5]


def test_train_command_reports_errors(
    tmp_path: Path, fake_data: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", *TINY, "--method", "lora", "--opt", "rank=2", "--root", str(tmp_path),
            "--out", str(tmp_path / "x")]
    assert main(args) == 1
    assert "unknown option" in capsys.readouterr().err
    assert main(["train", *TINY, "--root", str(tmp_path), "--sigma", "-1",
                 "--out", str(tmp_path / "y")]) == 1
    assert "sigma" in capsys.readouterr().err


def test_parse_options() -> None:
    assert train_cmd.parse_options(["a=1", "b=x", "c=true", "d=None"]) == {
        "a": 1, "b": "x", "c": True, "d": None}
    with pytest.raises(ValueError, match="key=value"):
        train_cmd.parse_options(["novalue"])


@pytest.mark.data
def test_train_command_on_the_real_cifar_subset(tmp_path: Path, cifar_root: Path) -> None:
    out = tmp_path / "run"
    assert main(["train", *TINY, "--method", "lora", "--r", "2", "--dataset", "cifar10",
                 "--root", str(cifar_root), "--limit", "48", "--epochs", "1", "--batch", "16",
                 "--out", str(out)]) == 0
    assert ps.load(out)(torch.rand(1, 3, 32, 32)).shape == (1, 10)
