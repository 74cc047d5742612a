"""A real 2-process torch.distributed (gloo, CPU) run of NoiseTrainer under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("ddp_train_script.py")


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_process_gloo_training(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(SCRIPT), str(tmp_path)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    # DDP keeps the replicas identical; the frozen layer stays frozen
    for k, v in r0["state"].items():
        torch.testing.assert_close(v, r1["state"][k], atol=0, rtol=0, msg=k)
    assert r0["frozen_unchanged"] and r1["frozen_unchanged"]
    # DistributedSampler: each rank sees half of the 32 images, 4 batches of 4 -> 4 steps/epoch
    hist = r0["history"]
    assert [h["epoch"] for h in hist] == [1, 2]
    assert hist[-1]["step"] == 8 and hist[-1]["images"] == 32
    timing = ("images_per_s", "time_s")
    for h0, h1 in zip(r0["history"], r1["history"], strict=True):  # reduced over the ranks
        assert {k: v for k, v in h0.items() if k not in timing} == {
            k: v for k, v in h1.items() if k not in timing
        }
    # evaluation is sharded without padding and summed over the ranks
    assert r0["metrics"]["n"] == 32 and r0["metrics"] == r1["metrics"]
    # rank 0 alone writes the checkpoints
    ckpt = tmp_path / "ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == ["best", "history.jsonl", "last"]
    assert len((ckpt / "history.jsonl").read_text().splitlines()) == 2
