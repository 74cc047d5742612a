"""The certification card (``model/card.py``, ``peftsmoothing card``): written from files only,
the same bytes every time, its table that of ``peftsmoothing report``, refusing logs of another
model and READMEs a person wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import peftsmoothing as ps
from peftsmoothing.cli import main
from peftsmoothing.model.card import CARD_FILE, CARD_MARKER, card_text, is_card
from peftsmoothing.model.serialization import read_config

RADII = ["0", "0.25", "0.5"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline demo in its smoke settings: a trained checkpoint and two logs."""
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--smoke", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_a_demo_model_gets_a_card_whose_table_is_the_reports(
    demo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, log = demo / "checkpoint" / "last", demo / "certify_after.tsv"
    assert main(["card", "--model", str(model), str(log), "--radii", *RADII]) == 0
    card = (model / CARD_FILE).read_text()
    capsys.readouterr()
    assert main(["report", str(log), "--radii", *RADII]) == 0
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith("| certify_after |")]
    assert len(table) == 2 and all(line in card for line in table)  # both tables, same text
    settings = json.loads((demo / "certify_after.tsv.json").read_text())
    config = read_config(model)
    for fact in (f"| sigma | `{settings['sigma']}` |", f"| n0 | `{settings['n0']}` |",
                 f"| alpha | `{settings['alpha']}` |", f"--seed {settings['seed']}",
                 config["base"]["fingerprint"], settings["model_sha256"], "pixel space of [0, 1]",
                 "library_name: peftsmoothing", '"epochs": 1'):  # fmt: skip
        assert fact in card, fact
    # written again from the same files: the same bytes; and the directory still loads
    first = (model / CARD_FILE).read_bytes()
    assert main(["card", "--model", str(model), str(log), "--radii", *RADII]) == 0
    assert (model / CARD_FILE).read_bytes() == first
    loaded = ps.load(model)
    assert ps.core.fingerprint.model_fingerprint(loaded) == settings["model_sha256"]


@pytest.mark.slow
def test_the_card_refuses_logs_of_another_model_and_a_persons_readme(
    demo: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import shutil

    model = tmp_path / "m"
    shutil.copytree(demo / "checkpoint" / "last", model)
    before = demo / "certify_before.tsv"  # certified before fine-tuning: another model
    assert main(["card", "--model", str(model), str(before)]) == 1
    assert "certified with another model" in capsys.readouterr().err
    (model / CARD_FILE).write_text("# my notes\n")
    assert main(["card", "--model", str(model), str(demo / "certify_after.tsv")]) == 1
    assert "is not a card peftsmoothing wrote" in capsys.readouterr().err
    assert (model / CARD_FILE).read_text() == "# my notes\n"
    assert main(["card", "--model", str(model), str(demo / "certify_after.tsv"),
                 "--overwrite"]) == 0  # fmt: skip
    assert is_card(model / CARD_FILE)


def test_save_with_a_report_writes_the_card(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ps.wrap(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), method="full", normalize=None)
    data = [(torch.rand(3, 2, 2), i % 2) for i in range(6)]
    smoothed = ps.SmoothedClassifier(model, 2, sigma=0.25)
    smoothed.certify_dataset(data, n0=10, n=100, batch_size=100, log=tmp_path / "run.tsv",
                             radius=0.1)  # fmt: skip
    report = ps.CertificationReport.from_log(tmp_path / "run.tsv")
    out = model.save(tmp_path / "saved", report=report)
    card = (out / CARD_FILE).read_text()
    assert CARD_MARKER in card and "| mode | `target` |" in card and "--radius 0.1" in card
    assert card == card_text(read_config(out), {"run": report})
    with torch.no_grad():
        model.model[1].weight.add_(1.0)  # now another model than the one certified
    with pytest.raises(ValueError, match="certified another model"):
        model.save(tmp_path / "other", report=report)
    no_settings = ps.CertificationReport(report.rows)
    with pytest.raises(ValueError, match=r"certified another model \(.*\), or has no settings"):
        model.save(tmp_path / "other", report=no_settings)
