"""`peftsmoothing certify` and `peftsmoothing report` end to end on a tiny saved model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import peftsmoothing as ps
from peftsmoothing.cli import main
from peftsmoothing.commands.certify import parse_shard, shard_log_path

COMMON = ["--dataset", "cifar10", "--sigma", "0.25", "--n0", "4", "--n", "16", "--batch", "16",
          "--alpha", "0.01", "--seed", "3", "--device", "cpu"]  # fmt: skip


def read_rows(path: Path) -> list[list[str]]:
    lines = path.read_text().splitlines()[1:]
    return [line.split("\t")[:8] + line.split("\t")[9:] for line in lines]  # without seconds


def test_certify_resume_shards_and_report(
    saved_model: Path, fake_cifar: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = ["--model", str(saved_model), "--root", str(tmp_path)]
    full = tmp_path / "full.tsv"
    assert main(["certify", *root, *COMMON, "--skip", "2", "--out", str(full)]) == 0
    assert "clean accuracy" in capsys.readouterr().out
    rows = read_rows(full)
    assert [r[0] for r in rows] == ["0", "2", "4", "6", "8"]
    # a second run resumes: nothing is added
    assert main(["certify", *root, *COMMON, "--skip", "2", "--out", str(full)]) == 0
    assert read_rows(full) == rows
    assert main(["certify", *root, *COMMON, "--skip", "2", "--out", str(full), "--no-resume"]) == 1
    assert "exists" in capsys.readouterr().err

    out = str(tmp_path / "part.tsv")
    for i in range(2):
        args = ["certify", *root, *COMMON, "--skip", "2", "--out", out, "--shard", f"{i}/2"]
        assert main(args) == 0
    shards = [tmp_path / "part.shard0of2.tsv", tmp_path / "part.shard1of2.tsv"]
    assert sorted(read_rows(shards[0]) + read_rows(shards[1])) == sorted(rows)
    capsys.readouterr()

    assert main(["report", *map(str, shards), "--radii", "0", "0.5", "--format", "csv"]) == 0
    merged_csv = capsys.readouterr().out
    assert main(["report", str(full), "--radii", "0", "0.5", "--format", "csv"]) == 0
    full_csv = capsys.readouterr().out
    assert merged_csv.splitlines()[1].split(",")[1:] == full_csv.splitlines()[1].split(",")[1:]

    png = tmp_path / "curve.png"
    assert main(["report", str(full), *map(str, shards), "--compare", "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    assert "| full |" in text and "| part.shard1of2 |" in text
    # each shard holds half of full's images, certified identically: no difference
    assert "Paired differences against full" in text
    shard_row = next(line for line in text.splitlines() if line.startswith("| part.shard0of2 | +"))
    assert "+0.000 ± 0.000 (p = 1)" in shard_row

    # Logs that share a file name (one folder per run) keep one row each.
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "certify.tsv").write_bytes(full.read_bytes())
    logs = [str(tmp_path / run / "certify.tsv") for run in ("a", "b")]
    assert main(["report", *logs, "--compare"]) == 0
    text = capsys.readouterr().out
    assert "| a/certify |" in text and "| b/certify | +0.000" in text
    assert png.stat().st_size > 0


def test_certify_errors(
    saved_model: Path, fake_cifar: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = ["--model", str(saved_model), "--root", str(tmp_path), "--out", str(tmp_path / "x")]
    with pytest.raises(SystemExit):
        main(["certify", *root, *COMMON, "--shard", "2/2"])
    with pytest.raises(SystemExit):
        main(["certify", *root, *COMMON[:-4], "--alpha", "2", "--device", "cpu"])
    assert "alpha must be" in capsys.readouterr().err
    bad = ["certify", "--model", str(tmp_path / "missing"), "--root", ".", "--out", "x", *COMMON]
    assert main(bad) == 1
    assert "peftsmoothing certify: error" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing.tsv")]) == 1


def test_shard_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_shard("0/1") == (0, 1)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert parse_shard("torchrun") == (2, 4)
    assert str(shard_log_path("c.tsv", None)) == "c.tsv"
    assert str(shard_log_path("c.tsv", (0, 1))) == "c.tsv"
    assert str(shard_log_path("logs/{shard}/c.tsv", (3, 4))) == "logs/3/c.tsv"


def test_certify_into_a_log_in_use_is_a_clear_error(
    saved_model: Path, fake_cifar: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from peftsmoothing.report.certlog import lock_log

    out = tmp_path / "busy.tsv"
    held = lock_log(out)  # another process certifying into the same log
    if held is None:
        pytest.skip("no fcntl on this platform")
    try:
        args = ["certify", "--model", str(saved_model), "--root", str(tmp_path), *COMMON]
        assert main([*args, "--out", str(out)]) == 1
        assert "another process is certifying into" in capsys.readouterr().err
    finally:
        held.close()


def test_certify_into_a_model_directory_keeps_the_model(
    saved_model: Path, fake_cifar: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--out D/peftsmoothing`` would have its settings replace D's ``peftsmoothing.json``."""
    config = (saved_model / "peftsmoothing.json").read_bytes()
    args = ["certify", "--model", str(saved_model), "--root", str(tmp_path), *COMMON]
    assert main([*args, "--out", str(saved_model / "peftsmoothing")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not the settings file of a certification log" in err
    assert (saved_model / "peftsmoothing.json").read_bytes() == config
    assert not (saved_model / "peftsmoothing").exists()
    ps.load(saved_model)  # still loads


def test_certify_sequential_modes(
    saved_model: Path, fake_cifar: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    root = ["--model", str(saved_model), "--root", str(tmp_path)]
    base = ["--dataset", "cifar10", "--sigma", "0.25", "--n0", "4", "--n", "600", "--batch", "64",
            "--max", "6", "--device", "cpu"]  # fmt: skip
    out = tmp_path / "target.tsv"
    assert main(["certify", *root, *base, "--radius", "0.1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "target mode (r = 0.1)" in text and "r = 0.1 |" in text
    settings = json.loads((tmp_path / "target.tsv.json").read_text())
    assert settings["mode"] == "target" and settings["sequential"]["looks"] == [256, 600]
    assert len(read_rows(out)) == 6
    early = tmp_path / "early.tsv"
    args = ["certify", *root, *base, "--early-stop", "--max-radius", "0.5", "--out", str(early)]
    assert main(args) == 0
    settings = json.loads((tmp_path / "early.tsv.json").read_text())
    assert settings["mode"] == "max_radius" and settings["sequential"]["max_radius"] == 0.5
    capsys.readouterr()
    assert main(["certify", *root, *base, "--tolerance", "0.1", "--out", str(early)]) == 1
    assert "--early-stop" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["certify", *root, *base, "--radius", "0.1", "--early-stop", "--out", str(early)])


def test_readme_flow_through_the_cli(
    fake_cifar: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """timm.create_model -> ps.wrap -> save, then `certify --model dir --base-weights FILE`."""
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4,
                            depth=1, embed_dim=32, num_heads=2)  # fmt: skip
    weights = tmp_path / "backbone.pt"
    torch.save(vit.state_dict(), weights)
    directory = ps.wrap(vit, method="lora", r=2, num_classes=10).save(tmp_path / "m")
    common = ["--model", str(directory), "--root", str(tmp_path), *COMMON, "--max", "2"]
    assert main(["certify", *common, "--out", str(tmp_path / "a.tsv")]) == 1
    assert "base_weights" in capsys.readouterr().err  # which weights? the user must say
    assert main(["certify", *common, "--base-weights", str(weights),
                 "--out", str(tmp_path / "b.tsv")]) == 0  # fmt: skip
    assert len(read_rows(tmp_path / "b.tsv")) == 2
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16,
                                 patch_size=4, depth=1, embed_dim=32, num_heads=2).state_dict(),
               other)  # fmt: skip
    assert main(["certify", *common, "--base-weights", str(other),
                 "--out", str(tmp_path / "c.tsv")]) == 1  # fmt: skip
    assert "other frozen weights" in capsys.readouterr().err
    # predict chooses the weights the same way (README-flow models, #21.6)
    guess = ["predict", "--model", str(directory), "--root", str(tmp_path), "--sigma", "0.25",
             "--n", "16", "--batch", "16", "--max", "2", "--device", "cpu"]  # fmt: skip
    assert main([*guess, "--out", str(tmp_path / "p.tsv")]) == 1
    assert "base_weights" in capsys.readouterr().err
    assert main([*guess, "--base-weights", str(weights), "--out", str(tmp_path / "p.tsv")]) == 0
    assert len((tmp_path / "p.tsv").read_text().splitlines()) == 3  # header and two rows
    assert main([*guess, "--base-weights", str(other), "--out", str(tmp_path / "q.tsv")]) == 1
    assert "other frozen weights" in capsys.readouterr().err
