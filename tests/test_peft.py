"""The ``peft`` method: HF peft configs and adapter directories on a timm ViT, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import peftsmoothing as ps
from tests.conftest import tiny_vit

peft = pytest.importorskip("peft")

DEPTH, DIM = 2, 32


def small_vit(seed: int = 0) -> nn.Module:
    return tiny_vit(seed, embed_dim=DIM, depth=DEPTH, num_heads=2, num_classes=3)


CONFIGS: dict[str, Any] = {
    "lora": lambda: peft.LoraConfig(r=4, target_modules=["qkv"]),
    "dora": lambda: peft.LoraConfig(r=4, target_modules=["qkv"], use_dora=True),
    "ia3": lambda: peft.IA3Config(target_modules=["qkv", "fc2"], feedforward_modules=["fc2"]),
    "loha": lambda: peft.LoHaConfig(r=4, target_modules=["qkv"]),
    "lokr": lambda: peft.LoKrConfig(r=4, target_modules=["qkv"]),
    "oft": lambda: peft.OFTConfig(r=0, oft_block_size=8, target_modules=["qkv"]),
}


def toy_data(n: int = 16) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    x = (0.2 + 0.3 * y.view(-1, 1, 1, 1) + 0.1 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 1)
    return TensorDataset(x, y)


def frozen_state(m: ps.PEFTModel) -> dict[str, torch.Tensor]:
    trained = set(m.trained_state_dict())
    return {k: v.clone() for k, v in m.state_dict().items() if k not in trained}


def test_registered_when_peft_is_installed_and_absent_without() -> None:
    assert "peft" in ps.available_methods()
    assert "peft" in ps.method_descriptions()["peft"]
    code = (
        "import sys; sys.modules['peft'] = None\n"
        "import peftsmoothing as ps\n"
        "assert 'peft' not in ps.available_methods(), ps.available_methods()\n"
        "assert 'lora' in ps.available_methods()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_wrap_train_certify_save_load_merge(
    kind: str, tmp_path: Path, images: torch.Tensor
) -> None:
    m = ps.wrap(small_vit(), method="peft", config=CONFIGS[kind](), num_classes=3)
    adapter = {n: p.detach().clone() for n, p in m.named_trainable_parameters() if "head" not in n}
    assert adapter and all(".default" in n for n in adapter)
    head = DIM * 3 + 3
    report = ps.parameter_report(m)
    assert report.trainable == head + sum(p.numel() for p in adapter.values())
    if kind == "lora":  # one rank-4 update of the whole fused qkv (q, k and v) per block
        assert report.trainable == head + DEPTH * 4 * (DIM + 3 * DIM)
    frozen = frozen_state(m)

    ps.NoiseTrainer(m, sigma=0.25, epochs=2, lr=1e-2, progress=False).fit(
        DataLoader(toy_data(), batch_size=8)
    )
    after = dict(m.named_trainable_parameters())
    assert any(not torch.equal(after[n], v) for n, v in adapter.items()), "adapter not trained"
    now = frozen_state(m)
    assert now.keys() == frozen.keys()
    assert all(torch.equal(now[k], frozen[k]) for k in frozen), "the backbone changed"

    m.eval()
    cert = ps.SmoothedClassifier(m, 3, sigma=0.25).certify(images[0], n0=8, n=16, batch_size=16)
    assert cert.prediction in (ps.ABSTAIN, 0, 1, 2)

    y = m(images)
    d = m.save(tmp_path / "saved")
    config = json.loads((d / "peftsmoothing.json").read_text())["spec"]["method_config"]
    assert config["config_class"] == type(CONFIGS[kind]()).__name__
    loaded = ps.load(small_vit(), d).eval()
    assert torch.equal(loaded(images), y)

    weights = {k: v.clone() for k, v in m.state_dict().items()}
    torch.testing.assert_close(m.merge()(images), y, atol=1e-4, rtol=1e-4)
    assert m.merged
    m.unmerge()
    assert all(torch.equal(v, weights[k]) for k, v in m.state_dict().items()), "not restored"
    assert torch.equal(m(images), y)


def test_dora_config_round_trips_through_json() -> None:
    m = ps.wrap(small_vit(), method="peft",
                config=peft.LoraConfig(r=2, target_modules=["qkv"], use_dora=True))
    stored = json.loads(json.dumps(m.spec.method_config))
    assert stored["config"]["use_dora"] is True and stored["config"]["target_modules"] == ["qkv"]
    assert "adapter" not in stored
    rebuilt = ps.get_method("peft").Config.from_kwargs("peft", stored)
    assert rebuilt.config == m.method.config.config  # type: ignore[attr-defined]


def _peft_adapter_dir(tmp_path: Path) -> tuple[Path, nn.Module]:
    """A directory written by peft's own ``save_pretrained``, and the peft model."""
    torch.manual_seed(1)
    pm = peft.get_peft_model(
        small_vit(), peft.LoraConfig(r=4, target_modules=["qkv"], init_lora_weights=False)
    )
    out = tmp_path / "adapter"
    pm.save_pretrained(str(out))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}
    return out, pm.eval()


def test_loads_an_adapter_directory(tmp_path: Path, images: torch.Tensor) -> None:
    directory, pm = _peft_adapter_dir(tmp_path)
    m = ps.wrap(small_vit(), method="peft", adapter=directory, normalize=None).eval()
    with torch.no_grad():
        reference = pm(images)
        assert not torch.equal(reference, small_vit().eval()(images))  # the adapter matters
    assert torch.equal(m(images), reference)
    assert ps.parameter_report(m).trainable == DEPTH * 4 * (DIM + 3 * DIM)
    saved = m.save(tmp_path / "saved")
    for f in directory.iterdir():  # the saved model does not need the adapter directory
        f.unlink()
    assert torch.equal(ps.load(small_vit(), saved).eval()(images), reference)


def test_adapter_directory_with_keys_that_do_not_fit_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    directory, _ = _peft_adapter_dir(tmp_path)
    weights = directory / "adapter_model.safetensors"
    good = load_file(str(weights))
    save_file({**good, "base_model.model.head.weight": torch.zeros(3, DIM)}, str(weights))
    with pytest.raises(ValueError, match=r"head\.weight \(not a key of this adapter\)"):
        ps.wrap(small_vit(), method="peft", adapter=directory)
    key = next(iter(good))
    save_file({**good, key: torch.zeros(1, 1)}, str(weights))
    with pytest.raises(ValueError, match="does not fit this model"):
        ps.wrap(small_vit(), method="peft", adapter=directory)
    save_file({k: v for k, v in good.items() if k != key}, str(weights))
    with pytest.raises(ValueError, match=r"\(missing\)"):
        ps.wrap(small_vit(), method="peft", adapter=directory)


def test_adapter_directory_of_a_type_that_is_not_allowed_is_refused(tmp_path: Path) -> None:
    directory, _ = _peft_adapter_dir(tmp_path)
    cfg = directory / "adapter_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "peft_type": "PROMPT_TUNING"}))
    with pytest.raises(ValueError, match="peft_type 'PROMPT_TUNING' is not allowed"):
        ps.wrap(small_vit(), method="peft", adapter=directory)


@pytest.mark.parametrize("name", ["PromptTuningConfig", "os.system", "PeftConfig"])
def test_saved_config_naming_a_class_not_allowed_is_refused(name: str, tmp_path: Path) -> None:
    m = ps.wrap(small_vit(), method="peft", config=peft.LoraConfig(target_modules=["qkv"]))
    d = m.save(tmp_path / "saved")
    path = d / "peftsmoothing.json"
    config = json.loads(path.read_text())
    config["spec"]["method_config"]["config_class"] = name
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"peft config class '{name}' is not allowed"):
        ps.load(small_vit(), d)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (lambda: peft.LoraConfig(target_modules=["qkv"], layer_replication=[(0, 1)]),
         "option layer_replication=.* is not supported"),
        (lambda: peft.LoraConfig(target_modules=["qkv"], bias="all"),
         "bias='all' is not supported .* use one of 'none'"),
        (lambda: peft.LoraConfig(target_modules=["qkv"], trainable_token_indices=[0]),
         "option trainable_token_indices"),
        (lambda: peft.LoraConfig(target_modules=["qkv"], init_lora_weights="olora"),
         "init_lora_weights='olora' is not supported"),
        (lambda: peft.OFTConfig(r=0, oft_block_size=8, target_modules=["qkv"], bias="lora_only"),
         "bias='lora_only'"),
    ],
)  # fmt: skip
def test_only_reviewed_peft_options_may_leave_their_defaults(config: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ps.wrap(small_vit(), method="peft", config=config())


def test_custom_peft_layer_classes_are_refused() -> None:
    cfg = peft.LoraConfig(target_modules=["qkv"])
    cfg._register_custom_module({nn.Linear: peft.tuners.lora.layer.Linear})
    with pytest.raises(ValueError, match="custom peft layer classes"):
        ps.wrap(small_vit(), method="peft", config=cfg)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_tested_config_uses_reviewed_options_only(name: str) -> None:
    from peftsmoothing.methods.peft_options import check_reviewed_options

    check_reviewed_options(CONFIGS[name](), "test")  # passes
    lycoris = peft.LoKrConfig(r=4, target_modules=["qkv"], init_weights="lycoris")
    check_reviewed_options(lycoris, "test")  # a data-free initialization


def test_saved_config_setting_an_unreviewed_option_is_refused_on_load(tmp_path: Path) -> None:
    m = ps.wrap(small_vit(), method="peft", config=peft.LoraConfig(target_modules=["qkv"]))
    d = m.save(tmp_path / "saved")
    path = d / "peftsmoothing.json"
    config = json.loads(path.read_text())
    config["spec"]["method_config"]["config"]["layer_replication"] = [[0, 2]]
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="layer_replication"):
        ps.load(small_vit(), d)


def test_options_it_cannot_honour_are_refused() -> None:
    with pytest.raises(ValueError, match="pass config=.* or adapter="):
        ps.wrap(small_vit(), method="peft")
    with pytest.raises(ValueError, match="modules_to_save"):
        ps.wrap(small_vit(), method="peft",
                config=peft.LoraConfig(target_modules=["qkv"], modules_to_save=["head"]))
    with pytest.raises(ValueError, match="init_lora_weights='pissa' is not supported"):
        ps.wrap(small_vit(), method="peft",
                config=peft.LoraConfig(target_modules=["qkv"], init_lora_weights="pissa"))
    with pytest.raises(ValueError, match=r"peft_type \['LORA'\] is not allowed"):
        ps.wrap(small_vit(), method="peft", config={"peft_type": ["LORA"]})
    with pytest.raises(ValueError, match="'PromptTuningConfig' is not allowed"):
        ps.wrap(small_vit(), method="peft", config=peft.PromptTuningConfig(num_virtual_tokens=2))
    with pytest.raises(ValueError, match="peft: .*qkvv"):
        ps.wrap(small_vit(), method="peft", config=peft.LoraConfig(target_modules=["qkvv"]))
    with pytest.warns(UserWarning, match="ignoring options LoraConfig does not know: shiny"):
        ps.wrap(small_vit(), method="peft", config={"peft_type": "LORA", "shiny": 1,
                                                    "target_modules": ["qkv"]})


def test_user_config_object_is_not_changed_and_stays_trainable() -> None:
    cfg = peft.LoraConfig(r=2, target_modules=["qkv"], inference_mode=True)
    m = ps.wrap(small_vit(), method="peft", config=cfg)
    assert cfg.inference_mode is True  # the user's object is left alone
    assert ps.parameter_report(m).trainable == DEPTH * 2 * (DIM + 3 * DIM)


def test_a_model_without_timm_helpers(tmp_path: Path, images: torch.Tensor) -> None:
    from tests.conftest import tiny_cnn

    cfg = peft.LoraConfig(r=2, target_modules=["conv1", "conv2", "mlp.0"], init_lora_weights=False)
    m = ps.wrap(tiny_cnn(), method="peft", config=cfg, num_classes=4, head="fc", normalize=None)
    trained = {n.split(".")[1] for n, _ in m.named_trainable_parameters()}
    assert trained == {"conv1", "conv2", "mlp", "fc"}
    m.eval()
    y = m(images)
    assert torch.equal(ps.load(tiny_cnn(), m.save(tmp_path / "saved")).eval()(images), y)
    torch.testing.assert_close(m.merge()(images), y, atol=1e-5, rtol=1e-5)
    assert torch.equal(m.unmerge()(images), y)


#: One config per accepted config class (``peft_options.REVIEWED``), and the variants whose
#: merge runs other code (DoRA; OFT's constrained ``coft``, which projects ``oft_R`` in place,
#: and its block sharing / Cayley-Neumann paths).
MERGE_CONFIGS: dict[str, Any] = {
    **CONFIGS,
    "lora_bias": lambda: peft.LoraConfig(r=4, target_modules=["qkv"], lora_bias=True),
    "lokr_both": lambda: peft.LoKrConfig(r=4, target_modules=["qkv"], decompose_both=True),
    "oft_coft": lambda: peft.OFTConfig(r=0, oft_block_size=8, target_modules=["qkv"],
                                       coft=True, eps=1e-4),
    "oft_share": lambda: peft.OFTConfig(r=0, oft_block_size=8, target_modules=["qkv"],
                                        block_share=True, coft=True),
    "oft_neumann": lambda: peft.OFTConfig(r=0, oft_block_size=8, target_modules=["qkv"],
                                          use_cayley_neumann=False),
}  # fmt: skip


def test_merge_configs_cover_every_accepted_config_class() -> None:
    from peftsmoothing.methods.peft import ALLOWED_CONFIGS
    from peftsmoothing.methods.peft_options import REVIEWED

    assert {type(c()).__name__ for c in MERGE_CONFIGS.values()} == set(ALLOWED_CONFIGS)
    assert set(ALLOWED_CONFIGS) == set(REVIEWED)


@pytest.mark.parametrize("kind", sorted(MERGE_CONFIGS))
def test_merge_then_unmerge_leaves_every_tensor_bit_identical(
    kind: str, images: torch.Tensor
) -> None:
    from peftsmoothing.core.fingerprint import model_fingerprint

    m = ps.wrap(small_vit(), method="peft", config=MERGE_CONFIGS[kind](), num_classes=3).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # trained-looking adapter tensors: nonzero, not yet projected (coft)
        for _, p in m.named_trainable_parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    fingerprint = model_fingerprint(m)
    with m.merged_for_inference():
        assert m.merged
        m(images)
    changed = [k for k, v in m.state_dict().items() if not torch.equal(v, before[k])]
    assert not changed, f"merge/unmerge changed {changed[:5]}"
    m.merge()
    m.unmerge()
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    assert model_fingerprint(m) == fingerprint


# --------------------------------------------------------------- configs read from files
_LOAD_CRAFTED = """
import json, sys
import peftsmoothing as ps
from tests.conftest import tiny_vit

saved, adapter = sys.argv[1:]
for kind, load in [("saved", lambda: ps.load(tiny_vit(0, embed_dim=32, depth=2, num_heads=2,
                                                      num_classes=3), saved)),
                   ("adapter", lambda: ps.wrap(tiny_vit(0, embed_dim=32, depth=2, num_heads=2,
                                                        num_classes=3),
                                               method="peft", adapter=adapter))]:
    try:
        load()
        print(kind, "LOADED")
    except ValueError as err:
        print(kind, "REFUSED", err)
"""


def test_a_crafted_regex_in_a_file_is_refused_in_time(tmp_path: Path) -> None:
    """(.*.*)*X takes exponential time in re.fullmatch: minutes per module name of ~16
    characters. Loading runs in a subprocess, so a hang fails the test instead of blocking."""
    m = ps.wrap(small_vit(), method="peft", config=peft.LoraConfig(target_modules=r".*\.qkv"))
    saved = m.save(tmp_path / "saved")
    path = saved / "peftsmoothing.json"
    config = json.loads(path.read_text())
    config["spec"]["method_config"]["config"]["target_modules"] = "(.*.*)*X"
    path.write_text(json.dumps(config))
    adapter, _ = _peft_adapter_dir(tmp_path)
    cfg = adapter / "adapter_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "target_modules": "(.*.*)*X"}))
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", _LOAD_CRAFTED, str(saved), str(adapter)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    ).stdout
    assert "saved REFUSED" in out and "adapter REFUSED" in out, out
    assert out.count("nested quantifier") == 2, out


def test_a_users_own_regex_saves_and_loads(tmp_path: Path, images: torch.Tensor) -> None:
    cfg = peft.LoraConfig(
        r=2, target_modules=r".*blocks\.\d+\.attn\.(qkv|proj)", init_lora_weights=False
    )
    m = ps.wrap(small_vit(), method="peft", config=cfg).eval()
    loaded = ps.load(small_vit(), m.save(tmp_path / "saved")).eval()
    assert torch.equal(loaded(images), m(images))


def test_a_users_regex_that_a_saved_copy_could_not_load_is_warned_about() -> None:
    cfg = peft.LoraConfig(target_modules=".*(qkv)+")  # trusted in code, refused from a file
    with pytest.warns(UserWarning, match="nested quantifier.*a saved copy of this model will"):
        m = ps.wrap(small_vit(), method="peft", config=cfg)
    assert ps.parameter_report(m).trainable > 0


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"target_modules": "(a*)*b"}, "nested quantifier"),
        ({"target_modules": "(a+|b)+"}, "nested quantifier"),
        ({"target_modules": ["qkv"], "exclude_modules": "(.*.*)*X"}, "nested quantifier"),
        ({"target_modules": r"(a)\1"}, "refusing groupref"),
        ({"target_modules": "q" * 257}, "refusing 257 characters"),
        ({"target_modules": ["q" * 257]}, "at most 256 characters"),
        ({"target_modules": [f"m{i}" for i in range(1025)]}, "1025 entries"),
        ({"target_modules": ".*" * 6 + "X"}, "backtrack"),
        ({"target_modules": "(.|.)" * 12 + ".*.*.*X"}, "backtrack"),
        ({"target_modules": ["qkv"], "rank_pattern": {"(a*)*b": 2}}, "nested quantifier"),
        ({"target_modules": ["qkv"], "alpha_pattern": {"x)|((a+)+": 2}}, "nested quantifier"),
        ({"target_modules": ["qkv"], "layers_to_transform": [0],
          "layers_pattern": ["(b*)*"]}, "nested quantifier"),
        ({"target_modules": "("}, "not a valid regular expression"),
    ],
)  # fmt: skip
def test_patterns_of_a_saved_config_are_bounded(options: dict[str, Any], match: str) -> None:
    from peftsmoothing.methods.peft_options import check_patterns

    with pytest.raises(ValueError, match=match):
        check_patterns(peft.LoraConfig(**options), "file")


def test_ia3_feedforward_patterns_of_a_saved_config_are_bounded() -> None:
    from peftsmoothing.methods.peft_options import check_patterns

    with pytest.raises(ValueError, match="feedforward_modules='\\(a\\*\\)\\*b'"):
        check_patterns(peft.IA3Config(target_modules="fc2", feedforward_modules="(a*)*b"), "f")


@pytest.mark.parametrize(
    "options",
    [
        {"target_modules": r".*\.qkv"},
        {"target_modules": r".*\.blocks\.\d+\.(q|k|v)_\w+"},
        {"target_modules": r"^(?!.*head).*\.(fc1|fc2|qkv|proj)"},
        {"target_modules": ["qkv", "blocks.0.mlp.fc1"], "exclude_modules": ["blocks.1.attn.qkv"]},
        {"target_modules": ["qkv"], "layers_to_transform": [0, 1], "layers_pattern": "blocks"},
        {"target_modules": ["qkv"], "rank_pattern": {f"blocks.{i}.attn.qkv": 2 for i in range(999)},
         "alpha_pattern": {r"blocks\.\d+\.attn\.qkv": 4}},
    ],
)  # fmt: skip
def test_usual_patterns_of_a_saved_config_pass(options: dict[str, Any]) -> None:
    from peftsmoothing.methods.peft_options import check_patterns

    check_patterns(peft.LoraConfig(**options), "file")


@pytest.fixture
def no_real_adapter_above(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail, instead of allocating gigabytes, if an adapter of rank > 64 is built on real
    memory (sizing it on the meta device is allowed)."""
    inject = peft.inject_adapter_in_model

    def guarded(config: Any, model: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
        real = any(p.device.type != "meta" for p in model.parameters())
        if real and getattr(config, "r", 0) > 64:
            raise AssertionError(f"an adapter of rank {config.r} was built before it was sized")
        return inject(config, model, *args, **kwargs)

    monkeypatch.setattr(peft, "inject_adapter_in_model", guarded)


@pytest.mark.usefixtures("no_real_adapter_above")
def test_adapter_config_numbers_are_bounded(tmp_path: Path) -> None:
    adapter, _ = _peft_adapter_dir(tmp_path)
    cfg = adapter / "adapter_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "r": 10_000_000}))
    with pytest.raises(ValueError, match=r"adapter_config.json.*\.r: refusing 10000000"):
        ps.wrap(small_vit(), method="peft", adapter=adapter)


ALL_LINEAR = ["qkv", "proj", "fc1", "fc2"]
#: A rank-65,536 LoRA (the largest number a file may hold) of the small ViT's qkv, proj, fc1
#: and fc2 in both blocks, and of patch_embed.proj (a 4x4 convolution from 3 channels):
#: 289,406,976 bytes, above the 64 MiB any adapter read from a file may have.
HUGE_ADAPTER_BYTES = 4 * 65_536 * (DEPTH * (128 + 64 + 160 + 160) + 3 * 4 * 4 + 32)


@pytest.mark.usefixtures("no_real_adapter_above")
def test_an_adapter_from_a_file_is_sized_before_it_is_built(tmp_path: Path) -> None:
    adapter, _ = _peft_adapter_dir(tmp_path)
    cfg = adapter / "adapter_config.json"
    cfg.write_text(
        json.dumps({**json.loads(cfg.read_text()), "r": 65_536, "target_modules": ALL_LINEAR})
    )
    refused = f"refusing an adapter of {HUGE_ADAPTER_BYTES:,} bytes"
    with pytest.raises(ValueError, match=refused):
        ps.wrap(small_vit(), method="peft", adapter=adapter)

    m = ps.wrap(small_vit(), method="peft", config=peft.LoraConfig(target_modules=["qkv"]))
    saved = m.save(tmp_path / "saved")
    path = saved / "peftsmoothing.json"
    config = json.loads(path.read_text())
    config["spec"]["method_config"]["config"].update(r=65_536, target_modules=ALL_LINEAR)
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=refused):
        ps.load(small_vit(), saved)


def test_oft_neumann_terms_from_a_file_are_bounded(tmp_path: Path) -> None:
    """65,536 Cayley-Neumann terms would make every merge run 65,534 matrix products per
    adapted layer (red-team #3): a file may ask for at most 64; your own config is warned."""
    oft = peft.OFTConfig(r=0, oft_block_size=8, target_modules=["qkv"])
    saved = ps.wrap(small_vit(), method="peft", config=oft).save(tmp_path / "saved")
    path = saved / "peftsmoothing.json"
    values = json.loads(path.read_text())
    for terms, loads in ((64, True), (65, False), (65_536, False)):
        values["spec"]["method_config"]["config"]["num_cayley_neumann_terms"] = terms
        path.write_text(json.dumps(values))
        if loads:
            ps.load(small_vit(), saved)
            continue
        with pytest.raises(ValueError, match=rf"num_cayley_neumann_terms={terms}: refusing .*64"):
            ps.load(small_vit(), saved)
    many = peft.OFTConfig(r=0, oft_block_size=8, target_modules=["qkv"],
                          num_cayley_neumann_terms=100)  # fmt: skip
    with pytest.warns(UserWarning, match="num_cayley_neumann_terms=100.*a saved copy of this"):
        ps.wrap(small_vit(), method="peft", config=many)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"rank_pattern": ["qkv"]}, "rank_pattern must be a JSON object of module name -> int"),
        ({"rank_pattern": {"qkv": True}}, "rank_pattern must be a JSON object"),
        ({"alpha_pattern": ["qkv"]}, "alpha_pattern must be a JSON object of module name -> num"),
        ({"layers_to_transform": 1.5, "layers_pattern": "blocks"},
         "layers_to_transform must be an integer or a list of integers, got 1.5"),
    ],
)  # fmt: skip
def test_peft_options_of_the_wrong_shape_in_a_file_are_one_line_errors(
    tmp_path: Path, options: dict[str, Any], match: str
) -> None:
    """peft would fail on these with a traceback (red-team #8)."""
    saved = ps.wrap(small_vit(), method="peft", config=CONFIGS["lora"]()).save(tmp_path / "s")
    path = saved / "peftsmoothing.json"
    values = json.loads(path.read_text())
    values["spec"]["method_config"]["config"].update(options)
    path.write_text(json.dumps(values))
    with pytest.raises(ValueError, match=match):
        ps.load(small_vit(), saved)


def test_a_deeply_nested_adapter_config_is_a_one_line_error(tmp_path: Path) -> None:
    adapter, _ = _peft_adapter_dir(tmp_path)
    (adapter / "adapter_config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=r"adapter_config\.json is not valid JSON \(nested too"):
        ps.wrap(small_vit(), method="peft", adapter=adapter)
