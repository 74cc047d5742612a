"""The current code still reads what release 0.1 wrote (``tests/fixtures/release-0.1/``).

The fixtures were written by ``tests/fixtures/make_release_fixtures.py`` with the 0.1 code and
must never be regenerated with newer code; the settings below repeat the generator's.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import peftsmoothing as ps
from tests.fixtures.make_release_fixtures import certify_data, train_loader

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "release-0.1"
SIGMA = 0.25
CERTIFY: dict[str, Any] = {"n0": 10, "n": 50, "batch_size": 50, "seed": 0}
# (idx, label, predict, correct, count, n, radius, pa_lower) of the fixture log
CERTIFIED = [
    (0, 4, -1, 0, 19, 50, 0.0, 0.18551517505764648),
    (1, 1, 5, 0, 39, 50, 0.03758970536323524, 0.5597592362046702),
    (2, 7, 5, 0, 50, 50, 0.2827394699192908, 0.8709635899560806),
    (3, 5, 5, 1, 50, 50, 0.2827394699192908, 0.8709635899560806),
]


def load_quietly(path: Path) -> ps.PEFTModel:
    """``ps.load(path)`` in eval mode, ignoring warnings about fields old directories lack."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ps.load(path).eval()


def test_saved_model_loads_with_the_same_outputs() -> None:
    model = load_quietly(FIXTURES / "model")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = torch.load(FIXTURES / "model_expected.pt", weights_only=True)
    with torch.no_grad():
        got = model(x)
    assert got.shape == expected.shape == (2, 10)
    assert torch.allclose(got, expected, atol=1e-6), (got - expected).abs().max()


def test_saved_model_without_fingerprint_loads_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="without a fingerprint of its frozen weights"):
        ps.load(FIXTURES / "model")


@pytest.mark.parametrize(
    ("field", "value"),
    [("fingerprint", None), ("peftsmoothing_version", "0.2.0"), ("format_version", 2)],
)
def test_saved_model_claiming_a_newer_writer_needs_a_fingerprint(
    tmp_path: Path, field: str, value: Any
) -> None:
    directory = tmp_path / "model"
    shutil.copytree(FIXTURES / "model", directory)
    config = json.loads((directory / "peftsmoothing.json").read_text())
    (config["base"] if field == "fingerprint" else config)[field] = value
    (directory / "peftsmoothing.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="fingerprint"):
        ps.load(directory)


def test_certification_log_reads_back() -> None:
    report = ps.CertificationReport.from_log(FIXTURES / "certify.tsv")
    assert len(report) == 4 and report.name == "certify"
    for row, (idx, label, predict, correct, count, n, radius, pa_lower) in zip(
        report.rows, CERTIFIED, strict=True
    ):
        assert (row.idx, row.label, row.predict, row.correct, row.count, row.n) == (
            idx, label, predict, correct, count, n
        )
        assert row.radius == pytest.approx(radius, abs=1e-12)
        assert row.pa_lower == pytest.approx(pa_lower, abs=1e-12)
        assert row.seconds > 0
    assert report.abstain_rate == 0.25 and report.clean_accuracy == 0.25


def test_certify_dataset_resumes_the_release_log(tmp_path: Path) -> None:
    for name in ("certify.tsv", "certify.tsv.json"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    log = tmp_path / "certify.tsv"
    before = log.read_bytes()
    smoothed = ps.SmoothedClassifier(load_quietly(FIXTURES / "model"), 10, sigma=SIGMA)
    report = smoothed.certify_dataset(certify_data(), log=log, resume=True, progress=False,
                                      **CERTIFY)
    assert log.read_bytes() == before  # all 4 images found in the log: nothing appended
    expected = ps.CertificationReport.from_log(FIXTURES / "certify.tsv")
    assert report.rows == expected.rows


def test_trainer_resumes_the_release_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "trainer"
    shutil.copytree(FIXTURES / "trainer", ckpt)
    saved = torch.load(ckpt / "last" / "trainable.pt", weights_only=True)
    first = json.loads((ckpt / "history.jsonl").read_text().splitlines()[0])

    base = ps.create_model("vit_tiny_patch16_224", seed=0, img_size=32, patch_size=4,
                           embed_dim=32, depth=2, num_heads=2, num_classes=10)
    model = ps.wrap(base, method="lora", r=2)
    trainer = ps.NoiseTrainer(model, sigma=SIGMA, epochs=2, lr=1e-2, seed=0, progress=False,
                              checkpoint_dir=ckpt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = trainer.fit(train_loader(), resume=True)
    # the new checkpoint is written in the current format only
    assert sorted(p.name for p in (ckpt / "last").iterdir()) == [
        "peftsmoothing.json", "trainable.safetensors", "trainer_state.pt"]  # fmt: skip
    assert not [w for w in caught if "changed options" in str(w.message)]

    assert [h["epoch"] for h in history] == [1, 2] and history[0] == first
    assert trainer.step == 4 and history[1]["images"] == 8
    state = torch.load(ckpt / "last" / "trainer_state.pt", weights_only=True)
    assert state["epochs_done"] == 2
    assert len((ckpt / "history.jsonl").read_text().splitlines()) == 2
    now = model.trained_state_dict()
    assert now.keys() == saved.keys()
    assert any(not torch.equal(now[k], saved[k]) for k in saved)  # it trained on
    resumed = load_quietly(ckpt / "last")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(resumed(x), model.eval()(x))
