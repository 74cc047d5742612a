"""`peftsmoothing predict` end to end on a tiny saved model and a monkeypatched dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import peftsmoothing as ps
from peftsmoothing.cli import main
from peftsmoothing.commands.predict import COLUMNS
from peftsmoothing.seeds import derive_seed


def test_predict_writes_one_row_per_image(
    saved_model: Path, fake_cifar: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "predict.tsv"
    argv = ["predict", "--model", str(saved_model), "--root", str(tmp_path), "--sigma", "0.25",
            "--n", "32", "--batch", "16", "--alpha", "0.1", "--skip", "2", "--max", "5",
            "--seed", "3", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "accuracy" in capsys.readouterr().out
    header, *lines = out.read_text().splitlines()
    assert header.split("\t") == list(COLUMNS)
    rows = [dict(zip(COLUMNS, line.split("\t"), strict=True)) for line in lines]
    assert [r["idx"] for r in rows] == ["0", "2", "4"]
    model = ps.load(saved_model)
    smoothed = ps.SmoothedClassifier(model, 10, 0.25, device="cpu")
    for row in rows:
        idx = int(row["idx"])
        image, label = fake_cifar[idx]
        expected = smoothed.predict(image, 32, 0.1, 16, seed=derive_seed(3, idx))
        assert int(row["predict"]) == expected  # the same noise as PREDICT itself
        counts = smoothed.vote_counts(image, 32, 16, seed=derive_seed(3, idx))
        assert int(row["count"]) == int(counts.max())  # counted once, not twice
        assert int(row["label"]) == label and int(row["n"]) == 32
        assert int(row["correct"]) == int(expected == label)
        assert 0 < int(row["count"]) <= 32
        assert float(row["seconds"]) >= 0
    # the same command gives the same rows (per-image seeds), the seconds aside
    first = [line.rsplit("\t", 1)[0] for line in lines]
    assert main(argv) == 0
    assert [line.rsplit("\t", 1)[0] for line in out.read_text().splitlines()[1:]] == first


def test_predict_reports_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["predict", "--model", str(tmp_path / "missing"), "--root", str(tmp_path),
            "--sigma", "0.25", "--device", "cpu", "--out", str(tmp_path / "p.tsv")]  # fmt: skip
    assert main(argv) == 1
    assert capsys.readouterr().err.startswith("peftsmoothing predict: error:")
