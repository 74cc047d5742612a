"""Attacks and faults that a certificate library must survive (docs/security.md).

Each test makes the attack or the fault happen: a crafted saved directory, a model that returns
NaN, a training run that diverges, a pickle that would run code.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import peftsmoothing as ps
from peftsmoothing.cli import main
from peftsmoothing.core.files import temporary_prefix
from peftsmoothing.data.datasets import load_cifar

RECIPE = {"name": "vit_tiny_patch16_224", "pretrained": False, "seed": 0,
          "kwargs": {"img_size": 16, "patch_size": 4, "depth": 1, "embed_dim": 32,
                     "num_heads": 2}}  # fmt: skip


def saved(tmp_path: Path, seed: int = 0) -> Path:
    base = ps.create_model(RECIPE["name"], seed=seed, **RECIPE["kwargs"])  # type: ignore[arg-type]
    return ps.wrap(base, method="lora", r=2, num_classes=10).save(tmp_path / f"model{seed}")


def craft(directory: Path, **recipe: Any) -> None:
    config = json.loads((directory / "peftsmoothing.json").read_text())
    config["base"]["recipe"] = {**config["base"]["recipe"], **recipe}
    (directory / "peftsmoothing.json").write_text(json.dumps(config))


@pytest.fixture
def no_timm_build(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record every call of timm.create_model: a refused recipe must never reach it."""
    calls: list[Any] = []
    real = timm.create_model

    def spy(*args: Any, **kwargs: Any) -> nn.Module:
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy)
    return calls


# ------------------------------------------------------------------ loading reads only the dir
@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({"name": "hf-hub:attacker/model"}, "refusing model name"),
        ({"name": "local-dir:/tmp/evil"}, "refusing model name"),
        ({"name": "no_such_model_anywhere"}, "not a model in timm's registry"),
        ({"name": "vit_tiny_patch16_224.no_such_tag"}, "no pretrained tag"),
        ({"kwargs": {"pretrained_cfg_overlay": {"url": "http://x/w.pth"}}}, "refusing timm"),
        ({"kwargs": {"pretrained_cfg": {"file": "/etc/passwd"}}}, "refusing timm"),
        ({"kwargs": {"checkpoint_path": "/tmp/evil.pth"}}, "refusing timm"),
        ({"kwargs": {"cache_dir": "/tmp/outside"}}, "refusing timm"),
        ({"kwargs": {"global_pool": "../../etc"}}, "refusing value"),
        ({"kwargs": {"img_size": {"nested": 1}}}, "refusing value"),
        ({"hub": "x"}, "unknown base-model recipe fields"),
        ({"seed": "0; rm -rf"}, "'seed' must be"),
        ({"kwargs": {"img_size": 10**9}}, "refusing value"),  # bounded numbers
        ({"kwargs": {"depths": [2, 10**7]}}, "refusing value"),
    ],
)
def test_crafted_recipe_is_refused_before_timm_is_called(
    tmp_path: Path, no_timm_build: list[Any], recipe: dict[str, Any], message: str
) -> None:
    directory = saved(tmp_path)
    craft(directory, **recipe)
    no_timm_build.clear()
    with pytest.raises(ValueError, match=message):
        ps.load(directory)
    assert no_timm_build == []


def test_recipe_for_a_huge_model_is_sized_on_meta_and_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    devices: list[torch.device] = []
    real = timm.create_model

    def spy(*args: Any, **kwargs: Any) -> nn.Module:
        devices.append(torch.get_default_device())
        return real(*args, **kwargs)

    directory = saved(tmp_path)
    # ~3.3e12 parameters: every number is within bounds, the model is not
    craft(directory, kwargs={**RECIPE["kwargs"], "embed_dim": 65_536, "depth": 64})  # type: ignore[dict-item]
    monkeypatch.setattr(timm, "create_model", spy)
    with pytest.raises(ValueError, match=r"refusing a recipe for [\d,]+ bytes of parameters"):
        ps.load(directory)
    assert devices and all(d.type == "meta" for d in devices)  # never allocated
    # buffers count too: BEiT's relative-position index grows with the image, not its weights
    devices.clear()
    beit = {"name": "beit_base_patch16_224", "kwargs": {"img_size": 4096, "depth": 1}}
    with pytest.raises(ValueError, match="bytes of parameters and buffers"):
        ps.zoo.check_recipe(beit)
    assert devices and all(d.type == "meta" for d in devices)
    # the limit is a module attribute a user who trusts the directory can raise
    from peftsmoothing.backbones import recipes

    monkeypatch.setattr(recipes, "MAX_BYTES", 100)
    with pytest.raises(ValueError, match="than peftsmoothing.backbones.recipes.MAX_BYTES = 100"):
        ps.zoo.check_recipe(RECIPE)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"depth": 4096}, "than peftsmoothing.backbones.recipes.MAX_DEPTH"),  # slow even on meta
        ({"depths": [200, 200]}, "MAX_DEPTH"),
        ({"mlp_ratio": "9"}, "refusing value '9'"),  # a number in disguise: 8 * "9" = 99999999
        ({"embed_dim": "wide"}, "refusing value 'wide'"),  # a string where a number goes
    ],
)
def test_recipe_options_are_bounded_before_timm_is_called(
    no_timm_build: list[Any], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ps.zoo.check_recipe({**RECIPE, "kwargs": {**RECIPE["kwargs"], **kwargs}})  # type: ignore[dict-item]
    assert no_timm_build == []


def test_recipe_that_cannot_be_sized_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from peftsmoothing.backbones import recipes

    recipe = {"name": "convnext_atto", "kwargs": {"norm_layer": "frozenbatchnorm2d"}}
    with pytest.raises(ValueError, match="cannot size 'convnext_atto' .*MAX_BYTES = None"):
        ps.zoo.check_recipe(recipe)
    monkeypatch.setattr(recipes, "MAX_BYTES", None)  # trusted: no sizing, timm decides
    assert ps.zoo.check_recipe(recipe)["kwargs"] == recipe["kwargs"]


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        (("num_classes",), 10**9, r"spec.num_classes: refusing 1000000000"),
        (("method_config", "r"), 10**9, r"spec.method_config.r: refusing"),
        (("method_config", "alpha"), float("inf"), r"spec.method_config.alpha: refusing inf"),
        (("input_size",), [40_000, 40_000], r"spec.input_size\[0\]: refusing 40000"),
    ],
)
def test_saved_spec_numbers_are_bounded(
    tmp_path: Path, no_timm_build: list[Any], where: tuple[str, ...], value: Any, message: str
) -> None:
    directory = saved(tmp_path)
    path = directory / "peftsmoothing.json"
    config = json.loads(path.read_text())
    node = config["spec"]
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    path.write_text(json.dumps(config))
    no_timm_build.clear()
    with pytest.raises(ValueError, match=message):
        ps.load(directory)
    assert no_timm_build == []


def test_crafted_recipe_is_a_one_line_cli_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = saved(tmp_path)
    craft(directory, kwargs={"checkpoint_path": str(tmp_path / "evil.pth")})
    code = main(["certify", "--model", str(directory), "--root", str(tmp_path), "--sigma", "0.25",
                 "--out", str(tmp_path / "log.tsv"), "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "refusing timm.create_model option 'checkpoint_path'" in err
    assert "Traceback" not in err


def test_recorded_weights_file_is_never_opened_without_base_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = timm.create_model(RECIPE["name"], **RECIPE["kwargs"])  # type: ignore[arg-type]
    weights = tmp_path / "backbone.pt"
    torch.save(base.state_dict(), weights)
    model = ps.wrap(ps.create_model(RECIPE["name"], file=weights, **RECIPE["kwargs"]),
                    method="lora", r=2, num_classes=10)  # fmt: skip
    directory = model.eval().save(tmp_path / "m")
    with pytest.raises(ValueError, match="pass it yourself with base_weights"):
        ps.load(directory)
    loaded = ps.load(directory, base_weights=weights).eval()
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(loaded(x), model(x))


def wrapped(seed: int = 0) -> ps.PEFTModel:
    base = ps.create_model(RECIPE["name"], seed=seed, **RECIPE["kwargs"])  # type: ignore[arg-type]
    return ps.wrap(base, method="lora", r=2, num_classes=10)


def edit_config(directory: Path, **base: Any) -> None:
    """Set (or, with ``...``, delete) fields of the saved config: ``base`` fields, or the
    top-level ``format_version`` / ``peftsmoothing_version``."""
    path = directory / "peftsmoothing.json"
    config = json.loads(path.read_text())
    for key, value in base.items():
        node = config if key in ("format_version", "peftsmoothing_version") else config["base"]
        if value is ...:
            node.pop(key, None)
        else:
            node[key] = value
    path.write_text(json.dumps(config))


def safetensors_file(path: Path, header: dict[str, Any], data: bytes) -> None:
    """Write a safetensors file by hand: 8-byte header length, JSON header, data."""
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)


def recording(calls: list[str], name: str, real: Callable[..., Any]) -> Callable[..., Any]:
    """``real``, appending ``name`` to ``calls`` on every call."""

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return real(*args, **kwargs)

    return spy


def read_header(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def test_symlink_out_of_the_directory_is_refused(tmp_path: Path) -> None:
    directory = saved(tmp_path)
    outside = tmp_path / "elsewhere.safetensors"
    (directory / "trainable.safetensors").rename(outside)
    os.symlink(outside, directory / "trainable.safetensors")
    with pytest.raises(ValueError, match="outside"):
        ps.load(directory)


def test_save_writes_safetensors_only(tmp_path: Path) -> None:
    model = wrapped().eval()
    directory = model.save(tmp_path / "m")
    assert sorted(p.name for p in directory.iterdir()) == [
        "peftsmoothing.json", "trainable.safetensors"]  # fmt: skip
    header, _ = read_header(directory / "trainable.safetensors")
    expected = model.trained_state_dict()
    assert set(header) - {"__metadata__"} == set(expected)
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(ps.load(directory).eval()(x), model(x))


def test_frozen_backbone_keys_in_the_tensors_file_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    directory = saved(tmp_path)
    tensors = load_file(directory / "trainable.safetensors")
    tensors["model.blocks.0.attn.qkv.weight"] = torch.zeros(96, 32)  # overwrite the backbone
    save_file(tensors, directory / "trainable.safetensors")
    with pytest.raises(ValueError, match="not a trained tensor"):
        ps.load(directory)


def test_tensors_file_beside_a_legacy_one_is_ambiguous(tmp_path: Path) -> None:
    model = wrapped()
    directory = model.save(tmp_path / "m")
    torch.save(model.trained_state_dict(), directory / "trainable.pt")
    with pytest.raises(ValueError, match="ambiguous"):
        ps.load(directory)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("frozen key", "not a trained tensor"),  # the header names a backbone weight
        ("dtype", r"saved F64, model F32"),
        ("huge shape", r"saved \(1073741824,\), model \(10,\)"),  # claims 4 GiB
        ("missing", "lacks trained tensors"),
        ("huge header", "header of 1099511627776 bytes"),  # 1 TiB of JSON announced
        ("trailing bytes", "bytes where its header"),
    ],
)
def test_crafted_safetensors_header_is_refused_before_data_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str, message: str
) -> None:
    import safetensors
    import safetensors.torch

    directory = saved(tmp_path)
    file = directory / "trainable.safetensors"
    header, data = read_header(file)
    bias = "model.head.bias"
    if change == "frozen key":
        header["model.blocks.0.attn.qkv.weight"] = {**header[bias]}
    elif change == "dtype":
        header[bias] = {**header[bias], "dtype": "F64"}
    elif change == "huge shape":
        start = header[bias]["data_offsets"][0]
        header[bias] = {"dtype": "F32", "shape": [2**30], "data_offsets": [start, start + 2**32]}
    elif change == "missing":
        del header[bias]
    elif change == "trailing bytes":
        data += bytes(2**20)
    safetensors_file(file, header, data)
    if change == "huge header":
        raw = file.read_bytes()
        file.write_bytes((2**40).to_bytes(8, "little") + raw[8:])
    reads: list[str] = []
    for module, name in ((safetensors, "safe_open"), (safetensors.torch, "safe_open"),
                         (safetensors.torch, "load_file"), (safetensors.torch, "load")):
        monkeypatch.setattr(module, name, recording(reads, name, getattr(module, name)))
    with pytest.raises(ValueError, match=message):
        ps.load(directory)
    assert reads == []  # refused from the header alone: safetensors never opened it


def legacy_bomb(model: ps.PEFTModel, directory: Path, compress: bool) -> int:
    """Write ``trainable.pt`` as release 0.1 did, with ``model.head.bias`` a correctly shaped
    view into a large storage (64 MiB deflated to ~64 kB, or 4 MiB stored). Returns its size."""
    import io
    import zipfile

    tensors = model.trained_state_dict()
    big = torch.zeros((2**24 if compress else 2**20) + 10)
    big[-10:] = tensors["model.head.bias"]
    tensors["model.head.bias"] = big[-10:]
    (directory / "trainable.safetensors").unlink(missing_ok=True)
    if not compress:
        torch.save(tensors, directory / "trainable.pt")
    else:
        buffer = io.BytesIO()
        torch.save(tensors, buffer)
        plain = zipfile.ZipFile(buffer)
        with zipfile.ZipFile(directory / "trainable.pt", "w", zipfile.ZIP_DEFLATED) as out:
            for name in plain.namelist():
                out.writestr(name, plain.read(name))
    return (directory / "trainable.pt").stat().st_size


@pytest.mark.parametrize("compress", [True, False])
def test_legacy_tensors_file_with_a_huge_storage_is_refused_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compress: bool
) -> None:
    model = wrapped()
    directory = model.save(tmp_path / "m")
    size = legacy_bomb(model, directory, compress)
    assert size < (2**20 if compress else 5 * 2**20)
    loads: list[str] = []
    monkeypatch.setattr(torch, "load", recording(loads, "torch.load", torch.load))
    with pytest.raises(ValueError, match="trainable.pt .*more than the trained tensors"):
        ps.load(directory)
    assert loads == []  # refused from the zip directory: no storage was ever allocated


def two_directories(model: ps.PEFTModel, directory: Path, zip64: bool) -> None:
    """Write ``trainable.pt`` whose zip holds two central directories (red-team #1): torch's
    reader follows the end record's offsets to deflated records of a 16 MiB storage, while
    Python's ``zipfile`` finds a decoy directory of tiny stored records just before the end
    record (``zip64``: through a zip64 end record, whose locator torch follows and Python not)."""
    import io
    import struct
    import zipfile

    legacy_bomb(model, directory, compress=True)  # local records + the real directory
    real = (directory / "trainable.pt").read_bytes()
    end = real.rindex(b"PK\x05\x06")
    count, cd_size, cd_offset = struct.unpack("<2xHLL", real[end + 8 : end + 20])
    body = real[:end]
    names = zipfile.ZipFile(io.BytesIO(real)).namelist()
    decoy = b"".join(
        struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 1, 1, len(n), 0, 0, 0,
                    0, 0, 0) + n.encode()
        for n in names
    )  # fmt: skip
    if not zip64:  # same size as the real one: Python re-bases the offsets onto the decoy
        decoy += b"x" * (cd_size - len(decoy))
        tail = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, cd_size, cd_offset, 0)
        (directory / "trainable.pt").write_bytes(body + decoy + tail)
        return
    record = b"PK\x06\x06" + struct.pack("<QHHLL4Q", 44, 45, 45, 0, 0, count, count, cd_size,
                                         cd_offset)  # fmt: skip
    decoy_at = len(body) + len(record)
    fake = b"PK\x06\x06" + struct.pack("<QHHLL4Q", 44, 45, 45, 0, 0, count, count, len(decoy),
                                       decoy_at)  # fmt: skip
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, len(body), 1)  # torch: the real record
    tail = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 2**32 - 1, 2**32 - 1, 0)
    (directory / "trainable.pt").write_bytes(body + record + decoy + fake + locator + tail)


@pytest.mark.parametrize("zip64", [False, True])
def test_legacy_tensors_file_with_two_zip_directories_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zip64: bool
) -> None:
    model = wrapped()
    directory = model.save(tmp_path / "m")
    two_directories(model, directory, zip64)
    loads: list[str] = []
    monkeypatch.setattr(torch, "load", recording(loads, "torch.load", torch.load))
    with pytest.raises(ValueError, match=r"trainable\.pt: an ambiguous zip directory"):
        ps.load(directory)
    assert loads == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("prefix", "ambiguous zip directory"),  # Python re-bases the offsets, torch does not
        ("comment", "no end record at its end"),
        ("second end record", "more than one"),
        ("count", "where its end record counts"),
    ],
)
def test_legacy_zip_layouts_readers_may_see_differently_are_refused(
    tmp_path: Path, change: str, message: str
) -> None:
    from peftsmoothing.model.tensorfile import read_legacy

    file = tmp_path / "trainable.pt"
    torch.save({"w": torch.ones(2)}, file)
    raw = file.read_bytes()
    if change == "prefix":
        raw = bytes(64) + raw
    elif change == "comment":
        raw = raw[:-2] + b"\x04\x00note"
    elif change == "second end record":
        raw = raw[:-22] + raw[-22:-2] + b"\x16\x00" + raw[-22:]
    else:  # one entry more than the central directory holds, in both end records
        more = int.from_bytes(raw[-14:-12], "little") + 1
        edited = bytearray(raw)
        edited[-14:-10] = more.to_bytes(2, "little") * 2
        edited[-98 + 24 : -98 + 40] = more.to_bytes(8, "little") * 2  # the zip64 end record
        raw = bytes(edited)
    file.write_bytes(raw)
    with pytest.raises(ValueError, match=message):
        read_legacy(file, {"w": torch.zeros(2)})


def test_legacy_tensors_file_still_loads(tmp_path: Path) -> None:
    model = wrapped().eval()
    directory = model.save(tmp_path / "m")
    (directory / "trainable.safetensors").unlink()
    torch.save(model.trained_state_dict(), directory / "trainable.pt")
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(ps.load(directory).eval()(x), model(x))


@pytest.mark.parametrize(
    ("change", "message"),
    [("frozen key", "not a trained tensor"), ("missing", "lacks trained tensors")],
)
def test_legacy_tensors_file_that_does_not_fit_is_refused(
    tmp_path: Path, change: str, message: str
) -> None:
    model = wrapped()
    directory = model.save(tmp_path / "m")
    (directory / "trainable.safetensors").unlink()
    tensors = model.trained_state_dict()
    if change == "frozen key":
        tensors["model.blocks.0.attn.qkv.bias"] = torch.zeros(96)
    else:
        del tensors["model.head.bias"]
    torch.save(tensors, directory / "trainable.pt")
    with pytest.raises(ValueError, match=rf"trainable\.pt: .*{message}"):
        ps.load(directory)


# ------------------------------------------------------------------ frozen-weights fingerprint
def test_other_backbone_with_the_same_shapes_is_refused(tmp_path: Path) -> None:
    directory = saved(tmp_path, seed=0)
    other = ps.create_model(RECIPE["name"], seed=1, **RECIPE["kwargs"])  # type: ignore[arg-type]
    weights = tmp_path / "other.pt"
    torch.save(other.state_dict(), weights)
    with pytest.raises(ValueError, match="other frozen weights than those of the base model you"):
        ps.load(other, directory)
    with pytest.raises(ValueError, match="base_weights="):
        ps.load(directory, base_weights=weights)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"fingerprint": None}, r"base.fingerprint is None"),  # the issue: a null fingerprint
        ({"fingerprint": 42}, r"base.fingerprint is 42"),
        ({"fingerprint": ...}, r"format 2.* always records one"),  # what this release writes
        ({"fingerprint": ..., "format_version": 1, "peftsmoothing_version": "0.2.0"},
         r"peftsmoothing '0.2.0'.* always records one"),
        ({"fingerprint": ..., "format_version": 1, "peftsmoothing_version": "banana"},
         r"no readable peftsmoothing_version"),
        ({"fingerprint": ..., "format_version": 1, "peftsmoothing_version": ...},
         r"no readable peftsmoothing_version"),
    ],
)
def test_missing_fingerprint_is_refused_unless_written_by_0_1(
    tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    directory = saved(tmp_path, seed=0)
    edit_config(directory, **fields)
    other = ps.create_model(RECIPE["name"], seed=1, **RECIPE["kwargs"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        ps.load(other, directory)  # another backbone: it must not load


@pytest.mark.parametrize("damage", ["truncate", "garbage", "json"])
def test_corrupt_files_give_one_line_errors(tmp_path: Path, damage: str) -> None:
    directory = saved(tmp_path)
    tensors = directory / "trainable.safetensors"
    if damage == "truncate":
        tensors.write_bytes(tensors.read_bytes()[:100])
        with pytest.raises(ValueError, match="corrupt or truncated"):
            ps.load(directory)
    elif damage == "garbage":
        tensors.write_bytes(b"\x10" + bytes(7) + b"not a header....")
        with pytest.raises(ValueError, match="corrupt or truncated"):
            ps.load(directory)
    else:
        (directory / "peftsmoothing.json").write_text("{not json")
        with pytest.raises(ValueError, match="not valid JSON"):
            ps.load(directory)



@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ("base", "x", "base must be a JSON object, got 'x'"),
        ("base", None, "base must be a JSON object, got None"),
        ("base", [1], r"base must be a JSON object, got \[1\]"),
        ("spec", None, "spec must be a JSON object, got None"),
        ("spec", {"num_classes": 10}, "spec.method is missing"),
        ("spec", {"method": 5}, "spec.method must be a string, got 5"),
        ("metadata", "x", "metadata must be a JSON object, got 'x'"),
        ("tensors", [], r"tensors must be a JSON object, got \[\]"),
        ("spec", {"method": "lora", "method_config": "x"}, "spec.method_config must be a JSON"),
        ("base", {"recipe": "x"}, "base.recipe must be a JSON object"),
    ],
)
def test_config_sections_of_the_wrong_shape_are_one_line_errors(
    tmp_path: Path, section: str, value: Any, message: str
) -> None:
    """Each would otherwise end in an AttributeError or TypeError traceback (red-team #8)."""
    directory = saved(tmp_path)
    path = directory / "peftsmoothing.json"
    config = json.loads(path.read_text())
    config[section] = value
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"peftsmoothing\.json: {message}"):
        ps.load(directory)
    with pytest.raises(ValueError, match=rf"peftsmoothing\.json: {message}"):
        ps.load(ps.create_model(RECIPE["name"], seed=0, **RECIPE["kwargs"]), directory)  # type: ignore[arg-type]


def test_a_malformed_or_deep_config_is_a_one_line_cli_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = saved(tmp_path)
    path = directory / "peftsmoothing.json"
    config = json.loads(path.read_text())
    for text in (json.dumps({**config, "base": "x"}), "[" * 100_000 + "]" * 100_000):
        path.write_text(text)
        code = main(["certify", "--model", str(directory), "--root", str(tmp_path), "--sigma",
                     "0.25", "--out", str(tmp_path / "log.tsv"), "--device", "cpu"])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
        assert "base must be a JSON object" in err or "nested too deeply" in err

# ------------------------------------------------------------------ no vote from a NaN logit
class PartlyNaN(nn.Module):
    """Class 0 wins everywhere, but logits are NaN on a fraction of the inputs (by pixel)."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.tensor([1.0, 0.0]).repeat(len(x), 1) * self.scale
        bad = x.flatten(1)[:, 0] > self.threshold
        return torch.where(bad[:, None], torch.full_like(logits, float("nan")), logits)


@pytest.mark.parametrize("threshold", [-1e9, 0.5])
def test_nonfinite_logits_never_certify(threshold: float) -> None:
    smoothed = ps.SmoothedClassifier(PartlyNaN(threshold), num_classes=2, sigma=0.5)
    x = torch.full((1, 2, 2), 0.5)
    with pytest.raises(FloatingPointError, match=r"PartlyNaN.*non-finite logits .* on \d+ of"):
        smoothed.certify(x, n0=10, n=200, alpha=0.001, batch_size=64, seed=0)
    with pytest.raises(FloatingPointError, match="non-finite"):
        smoothed.predict(x, n=200, batch_size=64, seed=0)


def test_nonfinite_count_is_exact() -> None:
    smoothed = ps.SmoothedClassifier(PartlyNaN(-1e9), num_classes=2, sigma=0.5)
    with pytest.raises(FloatingPointError, match="on 37 of 37 noise samples"):
        smoothed.predict(torch.zeros(1, 2, 2), n=37, batch_size=10, seed=0)


def test_finite_model_certifies_as_before() -> None:
    smoothed = ps.SmoothedClassifier(PartlyNaN(1e9), num_classes=2, sigma=0.5)
    cert = smoothed.certify(torch.zeros(1, 2, 2), n0=10, n=100, alpha=0.001, seed=0)
    assert (cert.prediction, cert.count) == (0, 100)
    assert cert.pa_lower == pytest.approx(0.001 ** (1 / 100))


# ------------------------------------------------------------------ training that diverges
class Diverges(nn.Module):
    """A linear model whose output is NaN on the training-mode forward calls in ``bad``
    (numbered from 1; evaluation calls are not counted)."""

    def __init__(self, bad: set[int]) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 2)
        self.calls = 0
        self.bad = bad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x.flatten(1))
        if not self.training:
            return out
        self.calls += 1
        return out * float("nan") if self.calls in self.bad else out


def data() -> DataLoader[Any]:
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(
        torch.rand(16, 3, 2, 2, generator=g), torch.randint(0, 2, (16,), generator=g)
    )
    return DataLoader(ds, batch_size=4)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    model = Diverges(bad=set(range(7, 100)))  # epoch 1: 4 batches fine; epoch 2: batch 3 NaN
    trainer = ps.NoiseTrainer(model, 0.25, epochs=3, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(FloatingPointError, match="epoch 2, batch 3"):
        trainer.fit(data())
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "last" / "trainable.safetensors")
    assert all(torch.isfinite(t).all() for t in saved.values())
    state = torch.load(tmp_path / "last" / "trainer_state.pt", weights_only=True)
    assert state["epochs_done"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())  # no NaN step was taken


def test_nan_loss_can_be_skipped() -> None:
    model = Diverges(bad={3, 4})
    trainer = ps.NoiseTrainer(model, 0.25, epochs=1, progress=False, nonfinite="skip")
    with pytest.warns(RuntimeWarning, match="skipped 2 optimizer step"):
        history = trainer.fit(data())
    assert history[0]["nonfinite_steps"] == 2 and trainer.step == 2
    assert np.isfinite(history[0]["train_loss"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nonfinite_option_is_validated() -> None:
    with pytest.raises(ValueError, match="unknown nonfinite 'ignore'"):
        ps.TrainerConfig(nonfinite="ignore")


# ------------------------------------------------------------------ pickles that run code
class RunsCode:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch pwned",))


def test_crafted_cifar_batch_cannot_run_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    payload = {b"data": RunsCode(), b"labels": [0]}
    (folder / "test_batch").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(ValueError, match=r"not a CIFAR batch file: refusing to load posix.system"):
        load_cifar(tmp_path, train=False)
    assert not (tmp_path / "pwned").exists()


def test_official_format_still_loads(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": [3, 8], b"data": data,
             b"filenames": [b"a.png", b"b.png"]}  # fmt: skip
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    x, y = load_cifar(tmp_path, train=False)
    assert x.shape == (2, 32, 32, 3) and y.tolist() == [3, 8]
    assert np.array_equal(x[1].transpose(2, 0, 1).reshape(-1), data[1])


# ---------------------------------------------------------- checkpoints: fail early, recover
def trained_checkpoint(tmp_path: Path, epochs: int = 2) -> Path:
    torch.manual_seed(0)
    trainer = ps.NoiseTrainer(Diverges(bad=set()), 0.25, epochs=epochs, progress=False,
                              checkpoint_dir=tmp_path / "ckpt", monitor="train_loss")  # fmt: skip
    trainer.fit(data())
    return tmp_path / "ckpt"


def test_unwritable_checkpoint_dir_fails_before_training(tmp_path: Path) -> None:
    a_file = tmp_path / "out"
    a_file.write_text("not a folder")
    with pytest.raises(ValueError, match="is a file"):
        ps.NoiseTrainer(Diverges(bad=set()), 0.25, checkpoint_dir=a_file)
    with pytest.raises(ValueError, match="cannot write checkpoints"):
        ps.NoiseTrainer(Diverges(bad=set()), 0.25, checkpoint_dir=a_file / "sub")
    with pytest.raises(ValueError, match="cannot write checkpoints"):  # read-only even for root
        ps.NoiseTrainer(Diverges(bad=set()), 0.25, checkpoint_dir="/proc/self/peftsmoothing")


def test_corrupt_last_checkpoint_falls_back_to_best(tmp_path: Path) -> None:
    ckpt = trained_checkpoint(tmp_path)
    state = ckpt / "last" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:200])  # truncated, as by a full disk
    trainer = ps.NoiseTrainer(Diverges(bad=set()), 0.25, epochs=3, progress=False,
                              checkpoint_dir=ckpt, monitor="train_loss")  # fmt: skip
    with pytest.warns(UserWarning, match=r"corrupt or truncated.*resuming from .*best"):
        history = trainer.fit(data(), resume=True)
    assert len(history) == 3


def test_trainer_state_zip_bomb_is_refused_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deflated 256 MiB storage in a small ``trainer_state.pt``: ``torch.load`` would allocate
    it whole, so resume refuses it from the zip directory and falls back to ``best/``."""
    import io
    import zipfile

    ckpt = trained_checkpoint(tmp_path)
    file = ckpt / "last" / "trainer_state.pt"
    state = torch.load(file, weights_only=True)
    state["history"].append({"padding": torch.zeros(2**26)})
    buffer = io.BytesIO()
    torch.save(state, buffer)
    plain = zipfile.ZipFile(buffer)
    with zipfile.ZipFile(file, "w", zipfile.ZIP_DEFLATED) as out:
        for name in plain.namelist():
            out.writestr(name, plain.read(name))
    assert file.stat().st_size < 2**20
    loads: list[str] = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: loads.append(str(f)) or real(f, *a, **k))
    trainer = ps.NoiseTrainer(Diverges(bad=set()), 0.25, epochs=3, progress=False,
                              checkpoint_dir=ckpt, monitor="train_loss")  # fmt: skip
    refused = r"unpacks to .*more than the file holds.*resuming from .*best"
    with pytest.warns(UserWarning, match=refused):
        assert len(trainer.fit(data(), resume=True)) == 3
    assert str(file) not in loads


def test_zip_records_that_overlap_are_refused_before_loading(tmp_path: Path) -> None:
    """64 directory entries that all point at one 1 MiB record: a 1 MiB file that would make
    ``torch.load`` allocate 64 MiB."""
    import copy
    import zipfile

    from peftsmoothing.model.tensorfile import check_torch_zip

    file = tmp_path / "trainer_state.pt"
    with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED) as out:
        out.writestr("archive/data/0", bytes(2**20))
        for i in range(1, 64):
            entry = copy.copy(out.filelist[0])
            entry.filename = f"archive/data/{i}"
            out.filelist.append(entry)
    with pytest.raises(ValueError, match=r"trainer_state\.pt unpacks to 67,108,864 bytes"):
        check_torch_zip(file)
    torch.save({"w": torch.ones(4)}, file)
    check_torch_zip(file)  # what torch.save writes passes


def test_both_checkpoints_corrupt_is_one_error_naming_both(tmp_path: Path) -> None:
    ckpt = trained_checkpoint(tmp_path)
    for name in ("last", "best"):
        (ckpt / name / "trainable.safetensors").write_bytes(b"garbage")
    trainer = ps.NoiseTrainer(Diverges(bad=set()), 0.25, epochs=3, progress=False,
                              checkpoint_dir=ckpt, monitor="train_loss")  # fmt: skip
    with pytest.raises(ValueError, match=r"no readable checkpoint: .*last.*best"):
        trainer.fit(data(), resume=True)


def test_stale_temporaries_of_dead_runs_are_cleaned_live_ones_kept(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    dead = ckpt / f"{temporary_prefix('last', pid=4999999)}abcd.tmp"  # no such process
    dead.mkdir()
    (dead / "trainable.pt").write_bytes(b"half")
    live = ckpt / f"{temporary_prefix('last')}efgh.tmp"  # this process: alive
    live.mkdir()
    ps.NoiseTrainer(Diverges(bad=set()), 0.25, checkpoint_dir=ckpt)
    assert not dead.exists() and live.exists()


DISK_FULL = r"""
import resource, signal, sys, torch
from torch.utils.data import DataLoader, TensorDataset
import peftsmoothing as ps
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12 * 64, 2))
data = DataLoader(TensorDataset(torch.rand(8, 3, 2, 2).repeat(1, 1, 8, 8),
                                torch.randint(0, 2, (8,))), batch_size=4)
trainer = ps.NoiseTrainer(model, 0.25, epochs=2, progress=False, checkpoint_dir=sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # the disk is full from now on
try:
    trainer.fit(data)
except OSError as err:
    print("OSError", err.errno)
"""


def test_full_disk_leaves_no_torn_checkpoint(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = tmp_path / "full.py"
    script.write_text(DISK_FULL)
    ckpt = tmp_path / "ckpt"
    out = subprocess.run([sys.executable, str(script), str(ckpt)], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert "OSError 27" in out.stdout, out.stderr  # EFBIG: the write hit the limit
    assert not (ckpt / "last").exists()  # nothing half-written was swapped in
    assert not [p for p in ckpt.iterdir() if p.name.endswith(".tmp")]  # temporaries removed


# ------------------------------------------------------------------ command line: one line, early
@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--model", "vit_tiny_patch16_224", "--root", ".", "--out", "x",
         "--val-fraction", "1.5"],
        ["train", "--model", "vit_tiny_patch16_224", "--root", ".", "--out", "x", "--batch", "0"],
        ["predict", "--model", "m", "--root", ".", "--sigma", "0.25", "--out", "x", "--max", "-1"],
        ["predict", "--model", "m", "--root", ".", "--sigma", "0", "--out", "x"],
    ],
)
def test_impossible_numbers_are_refused_when_parsing(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "must be" in err and "Traceback" not in err


def test_a_folder_where_a_file_belongs_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "log.tsv").mkdir()  # a folder given as the log to report on
    assert main(["report", str(tmp_path / "log.tsv")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "log.tsv" in err and "Traceback" not in err


def test_stale_settings_temporary_is_cleaned_when_a_log_opens(tmp_path: Path) -> None:
    dead = tmp_path / f"{temporary_prefix('log.tsv.json', pid=4999999)}abcd.tmp"  # a killed run's
    dead.write_text("{")
    smoothed = ps.SmoothedClassifier(PartlyNaN(1e9), num_classes=2, sigma=0.5)
    data = [(torch.zeros(1, 2, 2), 0)]
    smoothed.certify_dataset(data, n0=4, n=8, batch_size=8, log=tmp_path / "log.tsv")
    assert not dead.exists() and (tmp_path / "log.tsv.json").exists()


def test_saved_method_options_that_name_files_are_refused(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = ps.create_model(RECIPE["name"], seed=0, **RECIPE["kwargs"])  # type: ignore[arg-type]
    config = peft.LoraConfig(r=2, target_modules=["qkv"])
    directory = ps.wrap(base, method="peft", config=config, num_classes=10).save(tmp_path / "m")
    settings = json.loads((directory / "peftsmoothing.json").read_text())
    settings["spec"]["method_config"]["adapter"] = str(tmp_path / "elsewhere")  # crafted
    (directory / "peftsmoothing.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match=r"refusing method options \['adapter'\]"):
        ps.load(directory)


class InfGradient(nn.Module):
    """Finite outputs and loss, but the backward pass overflows on training call ``bad``."""

    def __init__(self, bad: int) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 2)
        self.calls, self.bad = 0, bad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x.flatten(1))
        if self.training:
            self.calls += 1
            if self.calls == self.bad:
                out = _BlowUp.apply(out)
        return out


class _BlowUp(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("inf")


def test_nonfinite_gradient_with_a_finite_loss_stops_before_the_step() -> None:
    model = InfGradient(bad=2)
    trainer = ps.NoiseTrainer(model, 0.25, epochs=1, progress=False)
    with pytest.raises(FloatingPointError, match="non-finite loss or gradient at epoch 1, batch 2"):
        trainer.fit(data())
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad step never ran
