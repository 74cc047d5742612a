"""parameter_report: counts, shared parameters, table rendering."""

from __future__ import annotations

from torch import nn

import peftsmoothing as ps
from tests.conftest import tiny_vit


def test_counts_and_rows() -> None:
    m = ps.wrap(tiny_vit(), method="lora", r=2, num_classes=10)
    report = ps.parameter_report(m)
    assert report.total == sum(p.numel() for p in m.parameters())
    assert report.trainable == 12 * 2 * 2 * 384 + 1930
    names = [row.name for row in report.modules]
    assert names[0] == "model.blocks.0.attn.qkv" and names[-1] == "model.head"
    qkv = report.modules[0]
    assert qkv.trainable == 2 * 2 * 384 and qkv.total == 192 * 576 + 576 + qkv.trainable
    assert 0 < report.fraction < 0.02


def test_shared_parameters_counted_once() -> None:
    lin = nn.Linear(3, 3)
    tied = nn.Sequential(lin, nn.ReLU(), lin)
    assert ps.parameter_report(tied).total == 12


def test_table_and_markdown() -> None:
    m = ps.wrap(tiny_vit(), method="prompt", num_tokens=2)
    text = str(ps.parameter_report(m))
    assert text.splitlines()[0].split() == ["module", "trainable", "total"]
    assert "peft.vpt" in text and "384" in text
    assert text.splitlines()[-1].startswith("trainable 384 / ")
    md = ps.parameter_report(m).to_markdown()
    assert md.startswith("| module | trainable | total |") and "| `peft.vpt` | 384 | 384 |" in md
