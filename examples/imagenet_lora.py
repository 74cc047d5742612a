"""ImageNet: LoRA on a pretrained ViT-B/16, noise training and certification on several GPUs.

What it shows: the paper's ImageNet setting (Certified PEFTSmoothing, Fu & Wang 2024) as one
script for ``torchrun``. ``ps.NoiseTrainer`` notices torchrun by itself (``RANK`` /
``WORLD_SIZE``): it starts ``torch.distributed``, wraps the model in DistributedDataParallel and
gives every process its share of the DataLoader; only rank 0 prints and writes checkpoints.
Certification is then split too: process ``rank`` certifies the shard ``(rank, world)`` of the
validation images into its own log, and rank 0 merges the logs into one report
(``ps.CertificationReport.from_logs``). Certificates depend only on the image index and the
seed, so the merged result is the same for any number of processes.

Data: an ImageFolder tree, ``ROOT/train/<class>/*.JPEG`` and ``ROOT/val/<class>/*.JPEG`` (the
usual ImageNet layout, val sorted into class folders).

How long it takes:
    full size       ViT-B/16, 1 epoch on the 1.28M training images, then 500 val images
                    certified at n=100,000: hours on a multi-GPU machine (not timed here;
                    certification dominates: 100,100 ViT-B forward passes per image)
    --smoke         a few seconds on a CPU, one process: a tiny fake ImageFolder (3 classes,
                    a few PNGs) made in a temporary folder, and a tiny random ViT

How to run it:
    torchrun --nproc_per_node 8 examples/imagenet_lora.py --root /data/imagenet
    torchrun --nproc_per_node 8 examples/imagenet_lora.py --root /data/imagenet --resume
    python examples/imagenet_lora.py --smoke --out /tmp/imagenet_lora
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torchvision
from torch.utils.data import DataLoader

import peftsmoothing as ps


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="ImageNet LoRA + certification, for torchrun")
    parser.add_argument("--root", type=Path, help="ImageNet folder with train/ and val/")
    parser.add_argument("--model", default="vit_base_patch16_224.augreg_in21k",
                        help="timm model name (pretrained weights are downloaded)")
    parser.add_argument("--sigma", type=float, default=0.5, help="noise level (pixel units)")
    parser.add_argument("--r", type=int, default=8, help="LoRA rank")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128, help="per process")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--workers", type=int, default=8, help="data loading processes per GPU")
    parser.add_argument("--resume", action="store_true",
                        help="continue training from OUT/checkpoint and the certification logs")
    parser.add_argument("--skip", type=int, default=100, help="certify every skip-th val image")
    parser.add_argument("--n0", type=int, default=100, help="selection samples per image")
    parser.add_argument("--n", type=int, default=100_000, help="estimation samples per image")
    parser.add_argument("--alpha", type=float, default=0.001, help="failure probability")
    parser.add_argument("--cert-batch", type=int, default=1000, help="noisy images per forward")
    parser.add_argument("--out", type=Path, default=Path("runs/imagenet_lora"))
    parser.add_argument("--smoke", action="store_true", help="tiny fake data and model, on CPU")
    args = parser.parse_args()
    if args.smoke:
        args.epochs, args.batch_size, args.workers, args.skip = 1, 8, 0, 2
        args.n0, args.n, args.cert_batch = 10, 100, 100
    elif args.root is None:
        parser.error("--root is required (or --smoke)")
    return args


def make_fake_imagefolder(root: Path, classes: int = 3, per_class: int = 6) -> None:
    """A tiny ImageFolder (train/ and val/, one solid colour per class plus noise), for --smoke."""
    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            colour = torch.zeros(3, 1, 1)
            colour[c % 3] = 1.0
            for i in range(per_class):
                image = (0.6 * colour + 0.4 * torch.rand(3, 40, 40, generator=g)).clamp(0, 1)
                torchvision.utils.save_image(image, folder / f"{i}.png")


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)  # the same new head and LoRA initialisation in every run and process
    started = time.time()
    temp = tempfile.TemporaryDirectory() if args.smoke else None

    # 1. Data: float images in [0, 1] (no normalization here; it goes inside the model).
    #    Training: random resized crop + flip; validation: resize + center crop.
    if temp is not None:
        root = Path(temp.name)
        make_fake_imagefolder(root)
        image_size = 32
    else:
        root = args.root
        image_size = 224
    train = ps.datasets.load_dataset("imagenet", root, train=True, image_size=image_size)
    val = ps.datasets.load_dataset("imagenet", root, train=False, image_size=image_size)
    num_classes = ps.datasets.num_classes("imagefolder", root)  # class folders in train/

    # 2. The pretrained ViT-B/16 (ImageNet-21k), with LoRA on q and v of every block and a new
    #    head. ps.create_model records how the backbone was built, so the checkpoints can be
    #    loaded later with ps.load(path) alone. Every process builds the same model; DDP then
    #    copies rank 0's weights to all of them anyway.
    if args.smoke:
        base = ps.create_model("vit_tiny_patch16_224", pretrained=False, seed=0,
                               img_size=32, patch_size=8, depth=2)
    else:
        base = ps.create_model(args.model, pretrained=True)
    model = ps.wrap(base, method="lora", r=args.r, num_classes=num_classes)

    # 3. Noise training. Under torchrun, NoiseTrainer sets up the process group (nccl on GPUs),
    #    uses cuda:LOCAL_RANK and shards this DataLoader (batch_size is per process).
    cuda = torch.cuda.is_available() and not args.smoke
    trainer = ps.NoiseTrainer(
        model,
        sigma=args.sigma,
        epochs=args.epochs,
        lr=args.lr,
        warmup_steps=0 if args.smoke else 500,
        precision="bf16" if cuda else "fp32",
        device="cpu" if args.smoke else None,  # None: cuda:LOCAL_RANK when there is a GPU
        checkpoint_dir=args.out / "checkpoint",  # last/ and best/, written by rank 0
    )
    rank, world = trainer.rank, trainer.world_size
    if trainer.is_main:
        print(f"{world} process(es); {ps.parameter_report(model).summary()}", flush=True)
    train_loader = DataLoader(train, batch_size=args.batch_size, shuffle=True,
                              num_workers=args.workers, pin_memory=cuda, drop_last=True)
    val_loader = DataLoader(val, batch_size=args.batch_size, num_workers=args.workers)
    trainer.fit(train_loader, val_loader, resume=args.resume)

    # 4. Certify every skip-th val image; this process takes the shard (rank, world). Each
    #    shard has its own log, so the processes never write to the same file. With --resume
    #    a killed run continues the logs; without it, existing logs are an error (they may
    #    hold certificates of a previously trained model).
    smoothed = ps.SmoothedClassifier(model, num_classes=num_classes, sigma=args.sigma,
                                     precision="bf16" if cuda else "fp32")
    log = args.out / f"certify.shard{rank}of{world}.tsv"
    smoothed.certify_dataset(val, n0=args.n0, n=args.n, alpha=args.alpha,
                             batch_size=args.cert_batch, skip=args.skip, shard=(rank, world),
                             log=log, resume=args.resume, seed=0)

    # 5. Wait for every shard, then rank 0 merges the logs into one report.
    if world > 1:
        dist.barrier()
    if trainer.is_main:
        logs = [args.out / f"certify.shard{i}of{world}.tsv" for i in range(world)]
        report = ps.CertificationReport.from_logs(logs, name=f"LoRA r={args.r}")
        radii = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5]
        print(f"\ncertified accuracy (sigma={args.sigma}, n={args.n}, alpha={args.alpha}):")
        print(report.summary(radii))
        print(f"logs: {', '.join(map(str, logs))}; done in {time.time() - started:.0f} s")
    trainer.close()  # releases DDP and the process group (avoids errors at exit)
    if temp is not None:
        temp.cleanup()


if __name__ == "__main__":
    main()
