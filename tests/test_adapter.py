"""Adapters: identity at init, counts, where the branch is attached, non-timm targets."""

from __future__ import annotations

import pytest
import torch

import peftsmoothing as ps
from tests.conftest import tiny_cnn, tiny_vit


@pytest.mark.parametrize("style", ["parallel", "sequential"])
def test_identity_at_init_vit(style: str, images: torch.Tensor) -> None:
    base = tiny_vit().eval()
    ref = base(ps.Normalize((0.5,) * 3, (0.5,) * 3)(images))
    m = ps.wrap(base, method="adapter", style=style, bottleneck=8).eval()
    torch.testing.assert_close(m(images), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("style", ["parallel", "sequential"])
def test_identity_at_init_cnn(style: str, images: torch.Tensor) -> None:
    base = tiny_cnn().eval()
    ref = base(images)
    m = ps.wrap(base, method="adapter", style=style, bottleneck=4, target_modules="mlp",
                normalize=None).eval()
    torch.testing.assert_close(m(images), ref, atol=1e-6, rtol=0)
    assert ps.parameter_report(m).trainable == 16 * 4 + 4 + 4 * 16 + 16


@pytest.mark.parametrize(("style", "sites"), [("parallel", 12), ("sequential", 24)])
def test_counts(style: str, sites: int) -> None:
    b = 8
    m = ps.wrap(tiny_vit(), method="adapter", style=style, bottleneck=b)
    assert ps.parameter_report(m).trainable == sites * (192 * b + b + b * 192 + 192)


def test_parallel_reads_input_sequential_reads_output() -> None:
    torch.manual_seed(0)
    for style in ("parallel", "sequential"):
        base = tiny_cnn()
        m = ps.wrap(base, method="adapter", style=style, scale=0.5, target_modules="mlp",
                    normalize=None)
        adapter = m.peft["adapter_mlp"]
        torch.nn.init.normal_(adapter.up.weight)
        h = torch.randn(3, 16)
        plain = torch.nn.functional.linear(
            torch.nn.functional.gelu(torch.nn.functional.linear(h, base.mlp[0].weight,
                                                                base.mlp[0].bias)),
            base.mlp[2].weight, base.mlp[2].bias)
        branch_input = h if style == "parallel" else plain
        torch.testing.assert_close(m.model.mlp(h), plain + 0.5 * adapter(branch_input))


def test_default_scale() -> None:
    m = ps.wrap(tiny_vit(), method="adapter")
    assert m.peft["adapter_blocks_0_mlp"].scale == pytest.approx(0.1)
    m = ps.wrap(tiny_vit(), method="adapter", style="sequential")
    assert m.peft["adapter_blocks_0_attn"].scale == pytest.approx(1.0)
    assert m.model.blocks[0].attn.proj.weight.shape == (192, 192)  # base model untouched


def test_adapter_errors() -> None:
    with pytest.raises(ValueError, match="style must be"):
        ps.wrap(tiny_vit(), method="adapter", style="serial")
    with pytest.raises(ValueError, match="bottleneck must be >= 1"):
        ps.wrap(tiny_vit(), method="adapter", bottleneck=0)
    with pytest.raises(ValueError, match="default targets.*target_modules"):
        ps.wrap(tiny_cnn(), method="adapter", normalize=None)
    with pytest.raises(ValueError, match="matches no Module"):
        ps.wrap(tiny_cnn(), method="adapter", target_modules="nothing", normalize=None)


def test_adapter_on_a_bare_sequential(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 8),
                              torch.nn.Linear(8, 8), torch.nn.Linear(8, 3)).eval()
    ref = net(images)
    m = ps.wrap(net, method="adapter", target_modules="2", bottleneck=2, normalize=None).eval()
    assert len(net) == 4  # nothing was inserted into the container
    torch.testing.assert_close(m(images), ref, atol=1e-6, rtol=0)
