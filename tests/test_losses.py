"""Loss registry and the built-in losses, checked against hand-computed numbers."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import peftsmoothing as ps
from peftsmoothing.training.losses import (
    LossContext,
    consistency_loss,
    cross_entropy_loss,
    get_loss,
    stability_loss,
)


def test_builtin_losses_registered() -> None:
    assert {"ce", "consistency", "stability"} <= set(ps.available_losses())
    assert get_loss("ce").num_noise == 1
    assert get_loss("consistency").num_noise == 2
    assert get_loss("consistency").options == {"consistency_weight": 10.0, "entropy_weight": 0.5}
    assert get_loss("stability").needs_reference


def test_unknown_loss_names_the_close_match() -> None:
    with pytest.raises(ps.UnknownLossError, match="did you mean 'consistency'"):
        get_loss("consistancy")
    assert issubclass(ps.UnknownLossError, ValueError)


def test_register_custom_loss_and_duplicates() -> None:
    @ps.register_loss("test_custom_loss", options={"scale": 2.0}, override=True)
    def custom(model, clean, noisy, labels, ctx):  # type: ignore[no-untyped-def]
        """Scaled CE."""
        logits = model(noisy[0])
        return ps.LossOutput(ctx.options["scale"] * F.cross_entropy(logits, labels), logits)

    spec = get_loss("test_custom_loss")
    assert spec.description == "Scaled CE."
    assert spec.resolve_options({}) == {"scale": 2.0}
    with pytest.raises(TypeError, match="did you mean 'scale'"):
        spec.resolve_options({"scal": 1.0})
    with pytest.raises(ValueError, match="already registered"):
        ps.register_loss("test_custom_loss")(lambda *a: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError):
        ps.register_loss("", num_noise=1)
    with pytest.raises(ValueError):
        ps.register_loss("x", num_noise=0)


def test_ce_loss_is_cross_entropy_over_all_copies() -> None:
    torch.manual_seed(0)
    net = nn.Linear(5, 3)
    x = torch.rand(6, 5)
    noisy = [x + 0.1 * torch.randn_like(x) for _ in range(2)]
    y = torch.randint(0, 3, (6,))
    out = cross_entropy_loss(net, x, noisy, y, LossContext(sigma=0.1))
    expected = F.cross_entropy(net(torch.cat(noisy)), y.repeat(2))
    torch.testing.assert_close(out.loss, expected)
    assert out.logits is not None and out.logits.shape == (12, 3)


def test_consistency_loss_hand_computed() -> None:
    # The model is the identity: the "noisy images" are the logits. Two copies of one image
    # of class 0 with logits (2, 0) and (0, 2): p1 = (a, b), p2 = (b, a), mean = (1/2, 1/2).
    z1, z2 = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    a = math.exp(2) / (math.exp(2) + 1)
    b = 1 - a
    ce = (-math.log(a) - math.log(b)) / 2
    kl = 0.5 * math.log(0.5 / a) + 0.5 * math.log(0.5 / b)  # same for both copies
    entropy = math.log(2)
    ctx = LossContext(sigma=0.5, options={"consistency_weight": 10.0, "entropy_weight": 0.5})
    out = consistency_loss(nn.Identity(), z1, [z1, z2], torch.tensor([0]), ctx)
    assert out.terms["ce"].item() == pytest.approx(ce, abs=1e-6)
    assert out.terms["kl"].item() == pytest.approx(kl, abs=1e-6)
    assert out.terms["entropy"].item() == pytest.approx(entropy, abs=1e-6)
    assert out.loss.item() == pytest.approx(ce + 10 * kl + 0.5 * entropy, abs=1e-5)


def test_consistency_loss_matches_reference_implementation() -> None:
    # Jeong & Shin's code: CE over the stacked copies + lbd * mean_i KL(avg || p_i)
    # (F.kl_div(log_softmax(logit_i), avg, 'batchmean')) + eta * entropy(avg).
    torch.manual_seed(1)
    m, batch, k = 3, 5, 4
    logits = torch.randn(m * batch, k)
    y = torch.randint(0, k, (batch,))
    chunks = logits.chunk(m)
    avg = sum(F.softmax(c, dim=1) for c in chunks) / m
    kl = sum(F.kl_div(F.log_softmax(c, dim=1), avg, reduction="batchmean") for c in chunks) / m
    ent = (-avg * avg.clamp_min(1e-20).log()).sum(1).mean()
    expected = F.cross_entropy(logits, y.repeat(m)) + 20.0 * kl + 0.3 * ent
    ctx = LossContext(sigma=0.25, options={"consistency_weight": 20.0, "entropy_weight": 0.3})
    out = consistency_loss(nn.Identity(), chunks[0], list(chunks), y, ctx)
    torch.testing.assert_close(out.loss, expected)


def test_consistency_loss_has_gradient_through_every_copy() -> None:
    z = torch.randn(4, 3, requires_grad=True)
    ctx = LossContext(sigma=0.5, options={"consistency_weight": 10.0, "entropy_weight": 0.5})
    out = consistency_loss(nn.Identity(), z[:2], [z[:2], z[2:]], torch.tensor([0, 1]), ctx)
    out.loss.backward()
    assert z.grad is not None and bool((z.grad.abs().sum(1) > 0).all())


def test_stability_loss_hard_and_soft() -> None:
    torch.manual_seed(2)
    ref = nn.Linear(4, 3)
    student = nn.Linear(4, 3)
    x = torch.rand(8, 4)
    noisy = [x + 0.2 * torch.randn_like(x)]
    labels = torch.zeros(8, dtype=torch.long)  # ignored by the stability loss
    hard = stability_loss(student, x, noisy, labels,
                          LossContext(sigma=0.2, options={"target": "hard"}, reference=ref))
    expected = F.cross_entropy(student(noisy[0]), ref(x).argmax(1))
    torch.testing.assert_close(hard.loss, expected)
    soft = stability_loss(student, x, noisy, labels,
                          LossContext(sigma=0.2, options={"target": "soft"}, reference=ref))
    p_ref = F.softmax(ref(x), 1)
    expected_soft = (p_ref * (p_ref.log() - F.log_softmax(student(noisy[0]), 1))).sum(1).mean()
    torch.testing.assert_close(soft.loss, expected_soft)
    with pytest.raises(ValueError, match="reference"):
        stability_loss(student, x, noisy, labels, LossContext(sigma=0.2))
    with pytest.raises(ValueError, match="target"):
        stability_loss(student, x, noisy, labels,
                       LossContext(sigma=0.2, options={"target": "x"}, reference=ref))


@pytest.mark.parametrize("loss", [cross_entropy_loss, consistency_loss])
def test_one_noisy_copy_reaches_the_model_without_a_copy(loss: Any) -> None:
    """One noise copy per image (the default) is the model's input as it is: concatenating a
    single tensor would copy a whole batch of images on every training step."""
    seen: list[int] = []

    class Recording(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.data_ptr())
            return super().forward(x)

    x = torch.rand(4, 3)
    noisy = [x + 0.1]
    loss(Recording(3, 2), x, noisy, torch.tensor([0, 1, 0, 1]), LossContext(sigma=0.1))
    assert seen == [noisy[0].data_ptr()]
