"""Hub sharing end to end against a Hub-like server on 127.0.0.1 (``tests/hub_server.py``):
``huggingface_hub``'s real upload and download code runs, pointed at it through its endpoint
setting (as ``HF_ENDPOINT`` points it at a mirror). A model pushed with its card loads back
through the same checks as a local directory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import peftsmoothing as ps
from peftsmoothing.cli import main
from peftsmoothing.model.card import CARD_FILE
from peftsmoothing.model.hub import HUB_FILES
from tests.hub_server import HubServer

hub_lib = pytest.importorskip("huggingface_hub")

KWARGS = {"img_size": 16, "patch_size": 4, "depth": 1, "embed_dim": 32, "num_heads": 2}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    from huggingface_hub import constants

    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)  # as for a mirror
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        yield server


def _certified(tmp_path: Path) -> tuple[ps.PEFTModel, ps.CertificationReport]:
    torch.manual_seed(0)
    base = ps.create_model("vit_tiny_patch16_224", seed=0, **KWARGS)
    model = ps.wrap(base, method="lora", r=2, num_classes=3).eval()
    data = [(torch.rand(3, 16, 16), i % 3) for i in range(4)]
    smoothed = ps.SmoothedClassifier(model, 3, sigma=0.25)
    smoothed.certify_dataset(data, n0=8, n=32, batch_size=40, log=tmp_path / "run.tsv")
    return model, ps.CertificationReport.from_log(tmp_path / "run.tsv")


def test_push_then_load_from_the_hub_round_trips_with_its_card(
    hub: HubServer, tmp_path: Path
) -> None:
    model, report = _certified(tmp_path)
    url = model.push_to_hub("me/lora-tiny", report, token="test-token")
    assert "me/lora-tiny" in url
    assert sorted(hub.repos["me/lora-tiny"]) == sorted(HUB_FILES)
    card = hub.repos["me/lora-tiny"][CARD_FILE].decode()
    assert "library_name: peftsmoothing" in card and report.settings["model_sha256"] in card
    loaded = ps.load("hf-hub:me/lora-tiny").eval()
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(loaded(x), model(x))
    assert any(r.startswith("GET /me/lora-tiny/resolve/") for r in hub.requests)
    # a card is written into a local directory, never into the download cache
    assert main(["card", "--model", "hf-hub:me/lora-tiny", str(tmp_path / "run.tsv")]) == 1


def test_a_hub_model_goes_through_the_checks_of_a_local_directory(
    hub: HubServer, tmp_path: Path
) -> None:
    model, _ = _certified(tmp_path)
    folder = model.save(tmp_path / "m")
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    config = json.loads(files["peftsmoothing.json"])
    config["base"]["fingerprint"] = None  # the backbone check switched off by an edit
    hub.repos["evil/nofp"] = {**files, "peftsmoothing.json": json.dumps(config).encode()}
    with pytest.raises(ValueError, match="fingerprint"):
        ps.load("hf-hub:evil/nofp")
    config["base"]["recipe"]["kwargs"]["pretrained_cfg_overlay"] = {"url": "http://x/w.pth"}
    config["base"]["fingerprint"] = json.loads(files["peftsmoothing.json"])["base"]["fingerprint"]
    hub.repos["evil/overlay"] = {**files, "peftsmoothing.json": json.dumps(config).encode()}
    with pytest.raises(ValueError, match="refusing"):
        ps.load("hf-hub:evil/overlay")
    # only the model's own files are fetched: never a pickle or code the repository holds
    hub.repos["evil/extra"] = {**files, "trainable.pt": b"pickle", "evil.py": b"import os"}
    ps.load("hf-hub:evil/extra")
    fetched = [r for r in hub.requests if "/evil/extra/resolve/" in r]
    assert fetched and not any("trainable.pt" in r or "evil.py" in r for r in fetched)
    with pytest.raises(ValueError, match="hf-hub:user/name"):
        ps.load("hf-hub:../../etc")
