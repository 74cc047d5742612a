"""`peftsmoothing predict` end to end on a tiny saved model and a monkeypatched dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import peftsmoothing as ps
from peftsmoothing.cli import main
from peftsmoothing.commands.predict import COLUMNS
from peftsmoothing.core.seeds import derive_seed
from peftsmoothing.report.certlog import LOG_COLUMNS


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


def predict_args(saved_model: Path, root: Path, out: Path) -> list[str]:
    return ["predict", "--model", str(saved_model), "--root", str(root), "--sigma", "0.25",
            "--n", "16", "--batch", "16", "--max", "4", "--device", "cpu",
            "--out", str(out)]  # fmt: skip


def test_predict_never_replaces_a_file_that_is_not_its_output(
    saved_model: Path, fake_cifar: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--out`` pointed at a certification log (issue 21.2): refused unless --overwrite."""
    log = tmp_path / "certify.tsv"
    text = "\t".join(LOG_COLUMNS) + "\n0\t1\t1\t0.5\t1\t0.9\t90\t100\t1.0\t0.001\t" + "0" * 16
    log.write_text(text + "\n")
    argv = predict_args(saved_model, tmp_path, log)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists and is not a predict output" in err
    assert "--overwrite" in err and log.read_text() == text + "\n"
    assert main([*argv, "--overwrite"]) == 0
    assert log.read_text().splitlines()[0].split("\t") == list(COLUMNS)
    assert main(argv) == 0  # now its own output: replaced without asking
    assert len(log.read_text().splitlines()) == 5
    folder = tmp_path / "folder"
    folder.mkdir()
    assert main([*predict_args(saved_model, tmp_path, folder), "--overwrite"]) == 1
    assert "is a folder" in capsys.readouterr().err


SLOW_PREDICT = r"""
import pathlib, sys, time, torch
import peftsmoothing as ps
from peftsmoothing.report.certlog import LOG_COLUMNS
from peftsmoothing.cli import main

ready = pathlib.Path(sys.argv[1])

class Slow:  # two images, then the process waits to be killed in the middle of the run
    def __len__(self):
        return 10
    def __getitem__(self, idx):
        if idx >= 2:
            ready.write_text("predicting")
            time.sleep(600)
        return torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(idx)), idx

ps.datasets.load_dataset = lambda *args, **kwargs: Slow()
sys.exit(main(sys.argv[2:]))
"""


def test_a_killed_predict_leaves_the_previous_output_whole(
    saved_model: Path, fake_cifar: list[Any], tmp_path: Path
) -> None:
    """kill -9 in the middle of a run: the file at --out is the previous one, whole."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "predict.tsv"
    assert main(predict_args(saved_model, tmp_path, out)) == 0
    before = out.read_bytes()
    script, ready = tmp_path / "slow.py", tmp_path / "ready"
    script.write_text(SLOW_PREDICT)
    argv = [sys.executable, str(script), str(ready), *predict_args(saved_model, tmp_path, out)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the run never started predicting"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert out.read_bytes() == before  # not truncated, not half-written
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(".predict.tsv.")]
    assert len(stale) == 1  # the killed run's temporary ...
    assert main(predict_args(saved_model, tmp_path, out)) == 0
    assert not stale[0].exists()  # ... is removed by the next run, which completes
    assert out.read_bytes().split(b"\n")[1].rsplit(b"\t", 1)[0] == (
        before.split(b"\n")[1].rsplit(b"\t", 1)[0]
    )
