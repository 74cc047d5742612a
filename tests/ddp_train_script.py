"""Worker script for tests/test_distributed.py, run as
``python -m torch.distributed.run --nproc_per_node 2 tests/ddp_train_script.py OUT``."""

from __future__ import annotations

import sys
from pathlib import Path


def main(out: Path) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, TensorDataset

    import peftsmoothing as ps

    torch.manual_seed(0)  # the same initial model on every rank
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 2))
    model[1].requires_grad_(False)  # a frozen "backbone" layer
    frozen = model[1].weight.detach().clone()
    g = torch.Generator().manual_seed(0)
    y = torch.arange(32) % 2
    x = (0.25 + 0.5 * y.view(-1, 1, 1, 1) + 0.1 * torch.randn(32, 3, 4, 4, generator=g)).clamp(0, 1)
    ds = TensorDataset(x, y)
    trainer = ps.NoiseTrainer(model, sigma=0.25, epochs=2, lr=1e-2, progress=False,
                              checkpoint_dir=out / "ckpt")
    assert isinstance(trainer.model, DistributedDataParallel)
    assert trainer.world_size == 2 and dist.get_backend() == "gloo"
    train = DataLoader(ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    history = trainer.fit(train, DataLoader(ds, batch_size=8))
    metrics = trainer.evaluate(DataLoader(ds, batch_size=8))
    torch.save(
        {
            "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "frozen_unchanged": bool(torch.equal(frozen, model[1].weight)),
            "history": history,
            "metrics": metrics,
        },
        out / f"rank{trainer.rank}.pt",
    )
    trainer.close()  # releases DDP, then the process group it created
    assert not dist.is_initialized()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
