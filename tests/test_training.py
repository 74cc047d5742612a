"""NoiseTrainer: noise, optimisation of the trainable parameters only, resume, precision, errors."""

from __future__ import annotations

import json
import os
import signal
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import peftsmoothing as ps
from peftsmoothing.training import TRAINER_STATE_FILE
from peftsmoothing.training.build import lr_factor as _lr_factor

from .conftest import tiny_cnn, tiny_vit


def toy_data(n: int = 64, seed: int = 0) -> TensorDataset:
    """Two classes separated by mean brightness; images in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = (0.25 + 0.5 * y.view(-1, 1, 1, 1) + 0.15 * torch.randn(n, 3, 4, 4, generator=g)).clamp(0, 1)
    return TensorDataset(x, y)


def toy_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(16, 2))


def loader(ds: TensorDataset, batch: int = 8, seed: int = 0) -> DataLoader:
    return DataLoader(ds, batch_size=batch, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def trainer(model: nn.Module, **kw: Any) -> ps.NoiseTrainer:
    kw.setdefault("progress", False)
    kw.setdefault("lr", 1e-2)
    return ps.NoiseTrainer(model, **kw)


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)


# ----------------------------------------------------------------------------------- learning
def test_loss_decreases_and_accuracy_rises_on_a_learnable_task() -> None:
    ds = toy_data(128)
    t = trainer(toy_model(), sigma=0.1, epochs=6, lr=3e-2)
    history = t.fit(loader(ds, 16), DataLoader(ds, batch_size=64))
    assert len(history) == 6
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history[-1]["val_noisy_acc"] > 0.9 and history[-1]["val_clean_acc"] > 0.9
    assert history[-1]["images"] == 128
    assert {"epoch", "step", "lr", "train_acc", "images_per_s", "time_s"} <= set(history[0])
    assert history[-1]["step"] == 6 * 8


def test_noise_is_gaussian_with_std_sigma_in_pixel_space() -> None:
    seen: list[tuple[float, float, float, int]] = []

    @ps.register_loss("test_record_noise", num_noise=3, override=True)
    def record(model, clean, noisy, labels, ctx):  # type: ignore[no-untyped-def]
        d = torch.stack([n - clean for n in noisy])
        seen.append((ctx.sigma, d.std().item(), d.mean().item(), len(noisy)))
        assert not torch.equal(noisy[0], noisy[1])  # independent copies
        logits = model(noisy[0])
        return ps.LossOutput(nn.functional.cross_entropy(logits, labels), logits)

    x = torch.rand(64, 3, 16, 16)
    ds = TensorDataset(x, torch.zeros(64, dtype=torch.long))
    model = nn.Sequential(nn.Flatten(), nn.Linear(768, 2))
    trainer(model, sigma=0.5, epochs=1, loss="test_record_noise").fit(DataLoader(ds, 32))
    assert [s for s, *_ in seen] == [0.5, 0.5]
    for _, std, mean, copies in seen:
        assert std == pytest.approx(0.5, rel=0.02) and abs(mean) < 0.01 and copies == 3

    seen.clear()
    trainer(model, sigma=[0.25, 1.0], epochs=3, loss="test_record_noise").fit(DataLoader(ds, 4))
    sigmas = {s for s, *_ in seen}
    assert sigmas == {0.25, 1.0}  # one level drawn per batch
    for s, std, *_ in seen:
        assert std == pytest.approx(s, rel=0.1)


def test_only_trainable_parameters_get_optimizer_state_lora() -> None:
    model = ps.wrap(tiny_vit(depth=2), method="lora", r=2, num_classes=10)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {id(p) for p in model.trainable_parameters()}
    ds = TensorDataset(torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    t = trainer(model, sigma=0.25, epochs=1)
    t.fit(DataLoader(ds, batch_size=4))
    state_ids = {id(p) for p in t.optimizer.state}
    assert state_ids == trainable  # AdamW moments only for LoRA + head
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None
            assert torch.equal(p, frozen[n]), n


def test_frozen_batchnorm_statistics_do_not_change() -> None:
    model = tiny_cnn()
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith("fc."))
    before = {k: v.clone() for k, v in model.state_dict().items() if "bn" in k}
    ds = TensorDataset(torch.rand(16, 3, 8, 8), torch.randint(0, 5, (16,)))
    trainer(model, sigma=0.5, epochs=1).fit(DataLoader(ds, batch_size=8))
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k


def test_grad_accumulation_equals_a_larger_batch() -> None:
    ds = toy_data(32)
    a, b = toy_model(), toy_model()
    a[3].p = b[3].p = 0.0  # no dropout: same computation
    kw = {"sigma": 0.0, "epochs": 2, "optimizer": "sgd", "schedule": "linear"}
    trainer(a, grad_accum=2, **kw).fit(DataLoader(ds, batch_size=4))
    trainer(b, grad_accum=1, **kw).fit(DataLoader(ds, batch_size=8))
    assert_same(params(a), params(b))


def test_gradient_clipping_bounds_the_first_step() -> None:
    model = toy_model()
    model[3].p = 0.0
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    ds = toy_data(8)
    trainer(model, sigma=0.0, epochs=1, optimizer="sgd", lr=1.0, schedule="constant",
            max_grad_norm=1e-3).fit(DataLoader(ds, batch_size=8))
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm().item() == pytest.approx(1e-3, rel=1e-3)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_on_cpu(precision: str) -> None:
    t = trainer(toy_model(), sigma=0.1, epochs=2, precision=precision, loss="consistency")
    history = t.fit(loader(toy_data(32)), DataLoader(toy_data(16), batch_size=16))
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in history)
    assert (t.scaler is not None) == (precision == "fp16")
    assert {"train_ce", "train_kl", "train_entropy"} <= set(history[0])


def test_schedules_and_warmup() -> None:
    assert [_lr_factor("constant", s, 3, 10) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert _lr_factor("cosine", 0, 0, 10) == 1.0
    assert _lr_factor("cosine", 5, 0, 10) == pytest.approx(0.5)
    assert _lr_factor("linear", 10, 0, 10) == 0.0
    t = trainer(toy_model(), sigma=0.1, epochs=1, lr=0.1, schedule="linear", warmup_steps=2)
    t.fit(DataLoader(toy_data(32), batch_size=8))  # 4 steps
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(0.0)


def test_evaluate_is_deterministic_and_leaves_modes_alone() -> None:
    model = toy_model()
    t = trainer(model, sigma=0.5)
    dl = DataLoader(toy_data(32), batch_size=8)
    model.train()
    a, b = t.evaluate(dl), t.evaluate(dl)
    assert a == b and a["n"] == 32 and a["sigma"] == 0.5
    assert model.training
    assert t.evaluate(dl, sigma=0.0)["noisy_acc"] == a["clean_acc"]


def test_stability_loss_default_reference_is_a_frozen_copy() -> None:
    model = toy_model()
    t = trainer(model, sigma=0.25, epochs=1, loss="stability")
    ref = t.reference
    assert isinstance(ref, nn.Module) and ref is not model
    ref_state = params(ref)
    t.fit(loader(toy_data(16)))
    assert_same(params(ref), ref_state)
    assert not torch.equal(model[1].weight, ref[1].weight)


# ----------------------------------------------------------------------------- checkpoints
def run_to_completion(tmp: Path, **kw: Any) -> tuple[dict[str, torch.Tensor], list[Any]]:
    model = toy_model()
    t = trainer(model, sigma=0.3, epochs=2, checkpoint_dir=tmp, **kw)
    history = t.fit(loader(toy_data(40)), DataLoader(toy_data(16, 1), batch_size=8))
    return params(model), history


def resumed(tmp: Path, stopper: Any, *, expect_interrupt: bool = False,
            **kw: Any) -> tuple[dict[str, torch.Tensor], list[Any]]:
    t1 = trainer(toy_model(), sigma=0.3, epochs=2, checkpoint_dir=tmp, callbacks=[stopper], **kw)
    if expect_interrupt:
        with pytest.raises(KeyboardInterrupt):
            t1.fit(loader(toy_data(40)), DataLoader(toy_data(16, 1), batch_size=8))
    else:
        t1.fit(loader(toy_data(40)), DataLoader(toy_data(16, 1), batch_size=8))
    assert (tmp / "last" / TRAINER_STATE_FILE).is_file()
    torch.manual_seed(1234)  # a different process state; the checkpoint must restore it
    model = toy_model(seed=99)  # different initial weights: all must come from the checkpoint
    t2 = trainer(model, sigma=0.3, epochs=2, checkpoint_dir=tmp, **kw)
    history = t2.fit(loader(toy_data(40)), DataLoader(toy_data(16, 1), batch_size=8), resume=True)
    return params(model), history


class StopAt(ps.Callback):
    def __init__(self, step: int | None = None, epoch: int | None = None,
                 action: str = "stop") -> None:
        self.at_step, self.at_epoch, self.action = step, epoch, action

    def _act(self, trainer: ps.NoiseTrainer) -> None:
        if self.action == "stop":
            trainer.should_stop = True
        elif self.action == "raise":
            raise KeyboardInterrupt
        else:
            os.kill(os.getpid(), signal.SIGINT)

    def on_step_end(self, trainer: ps.NoiseTrainer) -> None:
        if trainer.step == self.at_step:
            self._act(trainer)

    def on_epoch_end(self, trainer: ps.NoiseTrainer, record: dict[str, Any]) -> None:
        if record["epoch"] == self.at_epoch:
            self._act(trainer)


def test_resume_after_one_epoch_equals_two_epochs(tmp_path: Path) -> None:
    ref, ref_hist = run_to_completion(tmp_path / "a")
    got, hist = resumed(tmp_path / "b", StopAt(epoch=1))
    assert_same(ref, got)
    for h1, h2 in zip(ref_hist, hist, strict=True):
        for k in ("train_loss", "train_acc", "val_noisy_acc", "step", "lr"):
            assert h1[k] == pytest.approx(h2[k], abs=1e-6), k
    lines = (tmp_path / "b" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


@pytest.mark.parametrize("action", ["stop", "raise", "sigint"])
def test_resume_mid_epoch_equals_uninterrupted(tmp_path: Path, action: str) -> None:
    ref, ref_hist = run_to_completion(tmp_path / "a", grad_accum=2)
    # 5 batches per epoch, grad_accum 2 -> 3 steps per epoch; stop inside epoch 2
    got, hist = resumed(tmp_path / "b", StopAt(step=4, action=action),
                        expect_interrupt=action != "stop", grad_accum=2)
    assert_same(ref, got)
    assert hist[-1]["train_loss"] == pytest.approx(ref_hist[-1]["train_loss"], abs=1e-6)
    assert hist[-1]["images"] == ref_hist[-1]["images"] == 40


def test_fp16_scaler_state_is_resumed(tmp_path: Path) -> None:
    ref, _ = run_to_completion(tmp_path / "a", precision="fp16")
    got, _ = resumed(tmp_path / "b", StopAt(epoch=1), precision="fp16")
    assert_same(ref, got)


def test_peft_checkpoints_load_with_ps_load(tmp_path: Path) -> None:
    model = ps.wrap(tiny_vit(depth=2), method="lora", r=2, num_classes=10)
    base_state = tiny_vit(depth=2).state_dict()
    ds = TensorDataset(torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    t = trainer(model, sigma=0.25, epochs=2, checkpoint_dir=tmp_path, metadata={"note": "x"})
    t.fit(DataLoader(ds, batch_size=4), DataLoader(ds, batch_size=8))
    for name in ("last", "best"):
        d = tmp_path / name
        assert {p.name for p in d.iterdir()} == {"peftsmoothing.json", "trainable.safetensors",
                                                 TRAINER_STATE_FILE}
        base = tiny_vit(depth=2)
        base.load_state_dict(base_state)
        loaded = ps.load(base, d).eval()
        cfg = json.loads((d / "peftsmoothing.json").read_text())
        assert cfg["metadata"]["note"] == "x" and cfg["metadata"]["training"]["loss"] == "ce"
        if name == "last":
            x = torch.rand(2, 3, 32, 32)
            torch.testing.assert_close(loaded(x), model.eval()(x))
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_plain_module_checkpoint_holds_only_trainable_tensors(tmp_path: Path) -> None:
    model = tiny_cnn()
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith(("fc.", "bn2.")))
    ds = TensorDataset(torch.rand(8, 3, 8, 8), torch.randint(0, 5, (8,)))
    trainer(model, sigma=0.25, epochs=1, checkpoint_dir=tmp_path).fit(DataLoader(ds, 4))
    saved = load_file(tmp_path / "last" / "trainable.safetensors")
    assert set(saved) == {"fc.weight", "fc.bias", "bn2.weight", "bn2.bias", "bn2.running_mean",
                          "bn2.running_var", "bn2.num_batches_tracked"}
    state = torch.load(tmp_path / "last" / TRAINER_STATE_FILE, weights_only=True)
    assert state["epochs_done"] == 1 and state["step"] == 2
    assert len(state["optimizer"]["state"]) == 4


def test_resume_when_finished_or_without_checkpoint(tmp_path: Path) -> None:
    ds = toy_data(16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a first run of a resumable script is normal: no warning
        first = trainer(toy_model(), sigma=0.1, epochs=1, checkpoint_dir=tmp_path)
        assert len(first.fit(loader(ds), resume=True)) == 1 and first.step == 2
    t = trainer(toy_model(), sigma=0.1, epochs=1, checkpoint_dir=tmp_path)
    assert len(t.fit(loader(ds), resume=True)) == 1 and t.step == 2  # nothing left to do
    with pytest.raises(ValueError, match="checkpoint_dir"):
        trainer(toy_model(), sigma=0.1).fit(loader(ds), resume=True)


# ----------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sigma": -0.1}, ValueError, "sigma"),
        ({"sigma": []}, ValueError, "sigma"),
        ({"loss": "nope"}, ValueError, "unknown loss"),
        ({"optimizer": "lion"}, ValueError, "optimizer"),
        ({"schedule": "step"}, ValueError, "schedule"),
        ({"precision": "fp8"}, ValueError, "precision"),
        ({"grad_accum": 0}, ValueError, "grad_accum"),
        ({"consistency_weight": 1.0}, ValueError, "consistency_weight"),
        ({"loss": "consistency", "loss_options": {"eta": 1}}, TypeError, "entropy_weight"),
    ],
)
def test_invalid_options(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    kwargs.setdefault("sigma", 0.5)
    with pytest.raises(error, match=match):
        ps.NoiseTrainer(toy_model(), **kwargs)


def test_nothing_trainable_is_an_error() -> None:
    model = toy_model().requires_grad_(False)
    with pytest.raises(ValueError, match="nothing trainable"):
        ps.NoiseTrainer(model, sigma=0.5)


def test_labels_beyond_the_model_outputs() -> None:
    ds = TensorDataset(torch.rand(8, 3, 4, 4), torch.tensor([0, 1, 2, 0, 1, 0, 1, 0]))
    with pytest.raises(ValueError, match="label 2 is outside the model's 2 outputs"):
        trainer(toy_model(), sigma=0.5, epochs=1).fit(DataLoader(ds, batch_size=4))


def test_images_outside_unit_range_warn_once() -> None:
    ds = TensorDataset(torch.randn(16, 3, 4, 4), torch.zeros(16, dtype=torch.long))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(toy_model(), sigma=0.5, epochs=2).fit(DataLoader(ds, batch_size=4))
    messages = [w for w in caught if "outside [0, 1]" in str(w.message)]
    assert len(messages) == 1


def test_uint8_images_are_rejected() -> None:
    ds = TensorDataset(torch.zeros(4, 3, 4, 4, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="float images"):
        trainer(toy_model(), sigma=0.5, epochs=1).fit(DataLoader(ds, batch_size=4))


def test_progress_line_when_not_a_tty(capsys: pytest.CaptureFixture[str]) -> None:
    ds = toy_data(16)
    ps.NoiseTrainer(toy_model(), sigma=0.1, epochs=2).fit(loader(ds))
    err = capsys.readouterr().err
    assert err.count("epoch ") == 2 and "train_loss" in err and "images_per_s" in err


def test_custom_optimizer_factory() -> None:
    def make(params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=0.1)

    t = trainer(toy_model(), sigma=0.1, epochs=1, optimizer=make)
    assert isinstance(t.optimizer, torch.optim.SGD) and t.config.optimizer == "custom"
    t.fit(loader(toy_data(16)))


# --------------------------------------------------------------------------- non-finite batches
def batches_with_nan(bad: set[int], n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches of 8x8 images; those in ``bad`` hold one nan pixel (a corrupt image)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        x = torch.rand(4, 3, 8, 8, generator=g)
        if i in bad:
            x[0, 0, 0, 0] = float("nan")
        out.append((x, torch.randint(0, 5, (4,), generator=g)))
    return out


class BufferLog:
    """Callback: the model's buffers at the start and after every optimizer step (or skip)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.states: list[dict[str, torch.Tensor]] = []

    def record(self) -> None:
        self.states.append({k: v.detach().clone() for k, v in self.model.named_buffers()})

    def on_fit_start(self, trainer: ps.NoiseTrainer) -> None:
        self.record()

    def on_step_end(self, trainer: ps.NoiseTrainer) -> None:
        self.record()


def all_finite(tensors: Any) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_skipped_nonfinite_step_leaves_batchnorm_statistics_untouched(
    tmp_path: Path, grad_accum: int
) -> None:
    model = ps.wrap(tiny_cnn(), method="full", normalize=None)  # trains both BatchNorms
    log = BufferLog(model)
    t = trainer(model, sigma=0.25, epochs=1, nonfinite="skip", grad_accum=grad_accum,
                checkpoint_dir=tmp_path, callbacks=[log])
    with pytest.warns(RuntimeWarning, match="skipped 1 optimizer step"):
        t.fit(batches_with_nan({1}))
    skipped = 1 if grad_accum == 1 else 0  # the optimizer step that holds batch 2
    assert len(log.states) == 4 // grad_accum + 1
    for k, before in enumerate(log.states[:-1]):
        after = log.states[k + 1]
        same = [torch.equal(before[n], after[n]) for n in before]
        assert all(same) if k == skipped else not any(same), k  # buffers moved on good steps
    assert all_finite(model.buffers()) and all_finite(model.parameters())
    saved = load_file(tmp_path / "last" / "trainable.safetensors")
    assert "model.bn1.running_var" in saved and all_finite(saved.values())
    loaded = ps.load(tiny_cnn(), tmp_path / "last").eval()
    assert all_finite([loaded(torch.rand(2, 3, 8, 8))])


def test_nonfinite_stop_leaves_batchnorm_statistics_of_the_last_finite_step() -> None:
    model = ps.wrap(tiny_cnn(), method="full", normalize=None)
    log = BufferLog(model)
    t = trainer(model, sigma=0.25, epochs=1, callbacks=[log])
    with pytest.raises(FloatingPointError, match="epoch 1, batch 3"):
        t.fit(batches_with_nan({2}))
    now = dict(model.named_buffers())
    assert len(log.states) == 3 and all(torch.equal(v, now[k]) for k, v in log.states[-1].items())


class PoisonRunningVar:
    """Forward hook: writes inf into a BatchNorm's running_var on its ``bad``-th training call;
    the output (and so the loss) stays finite."""

    def __init__(self, bad: int) -> None:
        self.bad, self.calls = bad, 0

    def __call__(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        if module.training:
            self.calls += 1
            if self.calls == self.bad:
                module.get_buffer("running_var").data[0] = float("inf")  # autograd unaware


@pytest.mark.parametrize("nonfinite", ["stop", "skip"])
def test_nonfinite_buffer_with_a_finite_loss_is_caught(nonfinite: str) -> None:
    model = tiny_cnn()
    model.bn2.register_forward_hook(PoisonRunningVar(bad=2))
    t = trainer(model, sigma=0.25, epochs=1, nonfinite=nonfinite)
    if nonfinite == "stop":
        with pytest.raises(FloatingPointError, match=r"bn2\.running_var.*epoch 1, batch 2"):
            t.fit(batches_with_nan(set()))
    else:
        with pytest.warns(RuntimeWarning, match="skipped 1 optimizer step"):
            t.fit(batches_with_nan(set()))
    assert all_finite(model.buffers())


def test_checkpoint_refuses_nonfinite_batchnorm_statistics() -> None:
    from peftsmoothing.training.checkpoint import check_finite_weights

    model = tiny_cnn()
    model.bn1.requires_grad_(False)
    model.get_buffer("bn1.running_mean")[0] = float("nan")  # frozen: not saved, not checked
    check_finite_weights(model, epoch=1)
    model.get_buffer("bn2.running_var")[0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"buffer bn2\.running_var holds nan or inf"):
        check_finite_weights(model, epoch=1)
