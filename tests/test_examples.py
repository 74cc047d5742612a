"""Run every example in ``--smoke`` mode, so that none of them rots.

Each example runs as a subprocess (the interpreter running the tests, from the repository root)
with its output in a temporary folder; the test checks the exit code and a line of output that
only a complete run prints. ``make_demo_assets.py`` takes about 20 minutes, so only its
``--help`` is checked. ``cifar10_paper_table.py`` is not covered here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TIMEOUT_S = 180


def run_example(script: str, *args: str | Path) -> str:
    """Run ``examples/<script>`` with ``args``; return stdout + stderr, fail on a non-zero exit."""
    env = dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # a single process, even if pytest itself runs under torchrun
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *map(str, args)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{script} exited with {proc.returncode}:\n{output[-4000:]}"
    return output


def test_quickstart(tmp_path: Path) -> None:
    out = run_example("quickstart.py", "--smoke", "--out", tmp_path)
    assert "trainable 25,866 / 1,230,474" in out
    assert "ps.load round trip: max logit difference" in out
    assert (tmp_path / "lora" / "peftsmoothing.json").is_file()


def test_custom_model(tmp_path: Path) -> None:
    out = run_example("custom_model.py", "--smoke", "--out", tmp_path)
    assert "layer1[0].bn1.training = False" in out
    assert "BatchNorm running mean unchanged by training: True" in out
    assert "| ResNet-18 + LoRA |" in out
    assert (tmp_path / "checkpoint" / "last" / "trainable.safetensors").is_file()


def test_certify_existing_model_and_resume(tmp_path: Path) -> None:
    out = run_example("certify_existing_model.py", "--smoke", "--out", tmp_path)
    assert "images: 4 " in out and "| demo ViT (clean-trained) |" in out
    first = (tmp_path / "certify_demo_vit.tsv").read_text()
    # a second run finds every image in the log and certifies nothing again
    out = run_example("certify_existing_model.py", "--smoke", "--out", tmp_path)
    assert "resuming: 4 image(s) already in" in out
    assert (tmp_path / "certify_demo_vit.tsv").read_text() == first


def test_imagenet_lora(tmp_path: Path) -> None:
    out = run_example("imagenet_lora.py", "--smoke", "--out", tmp_path)
    assert "1 process(es)" in out
    assert "| LoRA r=8 |" in out and "images: 9 " in out
    assert (tmp_path / "certify.shard0of1.tsv").is_file()
    assert (tmp_path / "checkpoint" / "best").is_dir()


@pytest.mark.parametrize("script", ["make_demo_assets.py"])
def test_help_only(script: str) -> None:
    assert "usage:" in run_example(script, "--help")
