"""Denoiser baseline: pixel-space placement, identity at init, save/load, mse training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import peftsmoothing as ps
from peftsmoothing.methods.denoiser import DnCNN
from peftsmoothing.training.losses import LossContext, mse_loss
from tests.conftest import tiny_vit


def test_identity_at_init_and_backbone_frozen(images: torch.Tensor) -> None:
    base = tiny_vit().eval()
    ref = base(ps.Normalize((0.5,) * 3, (0.5,) * 3)(images))
    m = ps.wrap(base, method="denoiser", depth=4, width=8).eval()
    torch.testing.assert_close(m(images), ref, atol=1e-6, rtol=0)
    assert all(n.startswith("pixel.") for n, _ in m.named_trainable_parameters())
    assert ps.parameter_report(m).trainable == (3 * 8 * 9 + 8) + 2 * (8 * 8 * 9 + 16) + 219


def test_denoiser_sees_pixels_before_normalization(images: torch.Tensor) -> None:
    seen: list[torch.Tensor] = []
    spy = nn.Identity()
    spy.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    m = ps.wrap(tiny_vit(), method="denoiser", denoiser=nn.Sequential(spy, DnCNN(depth=2)))
    m(images)
    assert torch.equal(seen[0], images)  # raw [0, 1] input, not (x - 0.5) / 0.5


def test_custom_denoiser_save_load(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    make = lambda: nn.Conv2d(3, 3, 1)  # noqa: E731
    base_state = tiny_vit(seed=2).state_dict()
    m = ps.wrap(tiny_vit(seed=2), method="denoiser", denoiser=make()).eval()
    m.save(tmp_path)
    with pytest.raises(ValueError, match="custom denoiser module; pass it again"):
        ps.load(tiny_vit(seed=2), tmp_path)
    fresh = tiny_vit(seed=3)
    fresh.load_state_dict(base_state)
    m2 = ps.load(fresh, tmp_path, denoiser=make()).eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(m(x), m2(x))


def test_dncnn_save_load_includes_batchnorm_stats(tmp_path, images: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
    base_state = tiny_vit(seed=2).state_dict()
    m = ps.wrap(tiny_vit(seed=2), method="denoiser", depth=3, width=4)
    m.train()
    m(images)  # the denoiser's BatchNorm is trained: its statistics move
    m.eval().save(tmp_path)
    fresh = tiny_vit(seed=9)
    fresh.load_state_dict(base_state)
    assert torch.equal(ps.load(fresh, tmp_path).eval()(images), m(images))


def test_mse_loss_trains_the_denoiser() -> None:
    torch.manual_seed(0)
    m = ps.wrap(nn.Flatten(), method="denoiser", depth=3, width=16, normalize=None)
    opt = torch.optim.Adam(m.trainable_parameters(), lr=3e-3)
    x = torch.rand(8, 3, 8, 8) * 0.2 + 0.4  # smooth images: easy to denoise
    ctx = LossContext(sigma=0.25, module=m)
    losses = []
    for _ in range(30):
        noisy = [x + 0.25 * torch.randn_like(x)]
        loss = mse_loss(m, x, noisy, torch.zeros(8, dtype=torch.long), ctx).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(0.0625, rel=0.15)  # identity at init: E[noise^2]
    assert losses[-1] < 0.5 * losses[0]


def test_errors() -> None:
    with pytest.raises(ValueError, match="arch must be 'dncnn'"):
        ps.wrap(tiny_vit(), method="denoiser", arch="unet")
    with pytest.raises(ValueError, match="depth must be an integer >= 2"):
        ps.wrap(tiny_vit(), method="denoiser", depth=1)
    m = ps.wrap(tiny_vit(), method="lora")
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="pixel-space module"):
        mse_loss(m, x, [x], torch.zeros(1, dtype=torch.long), LossContext(sigma=0.1, module=m))


def test_mse_refuses_ddp_wrapped_models() -> None:
    m = ps.wrap(nn.Flatten(), method="denoiser", depth=2, width=4, normalize=None)
    wrapper = nn.Sequential(m)  # stands in for DistributedDataParallel(m)
    x = torch.rand(1, 3, 4, 4)
    with pytest.raises(RuntimeError, match="does not support multi-process"):
        mse_loss(wrapper, x, [x], torch.zeros(1, dtype=torch.long), LossContext(0.1, module=m))


def test_stability_reference_is_the_classifier_behind_the_denoiser_with_resize() -> None:
    # input_size: the classifier takes 32 px, the data (and the denoiser) 16 px. The stability
    # loss's reference must resize too (it once skipped the resize and failed on such models).
    torch.manual_seed(0)
    m = ps.wrap(tiny_vit(), method="denoiser", depth=2, width=4, input_size=32)
    x = torch.rand(4, 3, 16, 16)
    t = ps.NoiseTrainer(m, sigma=0.25, epochs=1, loss="stability", lr=1e-3, seed=0)
    assert torch.equal(t.reference(x), m.forward_without_pixel(x))
    data = torch.utils.data.TensorDataset(x, torch.zeros(4, dtype=torch.long))
    history = t.fit(torch.utils.data.DataLoader(data, batch_size=2))
    assert len(history) == 1 and history[0]["train_loss"] >= 0
