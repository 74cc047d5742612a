"""``peftsmoothing train``: build a timm model, wrap it with a PEFT method, train it on noise.

The output directory is a saved [`PEFTModel`][peftsmoothing.PEFTModel] whose config records how to
rebuild the base model (``metadata["base_model"]``), so ``peftsmoothing certify --model OUT``
and ``peftsmoothing.load(OUT)`` accept it. Checkpoints (``last/``, ``best/``) and
``history.jsonl`` go to ``OUT/checkpoints``; rerun with ``--resume`` to continue.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..core.names import DATASET_NAMES, method_names
from ._args import USER_ERRORS, int_at_least, real

if TYPE_CHECKING:
    from ..training.config import TrainerConfig

__all__ = [
    "EXAMPLE",
    "add_trainer_options",
    "check_method_options",
    "parse_options",
    "register",
    "run",
    "trainer_config",
]

#: A complete ``peftsmoothing train`` command (shown in ``--help``; a test parses and checks it).
EXAMPLE = (
    "peftsmoothing train --model vit_tiny_patch16_224 --model-kwargs img_size=32 patch_size=4 "
    "--method lora --r 8 --opt alpha=16 \"target_modules=['qkv']\" --dataset cifar10 "
    "--root data --sigma 0.25 --epochs 10 --out runs/lora"
)


#: Spellings of ``KEY=VALUE`` values that are not Python literals but mean one.
_WORDS = {"true": True, "false": False, "none": None, "null": None}


def _value(text: str) -> Any:
    """``"8"`` -> 8, ``"0.1"`` -> 0.1, ``"true"`` -> True, ``"[1,2]"`` -> [1, 2], else the text."""
    if text.lower() in _WORDS:
        return _WORDS[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_options(items: Sequence[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are Python literals when they parse as one.

    Raises:
        ValueError: For an item without ``=``.

    Examples:
        >>> parse_options(["img_size=32", "drop_rate=0.1", "target_modules=['qkv']", "name=x"])
        {'img_size': 32, 'drop_rate': 0.1, 'target_modules': ['qkv'], 'name': 'x'}
    """
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value, got {item!r}")
        out[key.strip().replace("-", "_")] = _value(value.strip())
    return out


def run(args: argparse.Namespace) -> int:
    """Train as the arguments say and save the model to ``args.out``; returns the exit status."""
    import torch
    from torch.utils.data import DataLoader, Subset, random_split

    import peftsmoothing as ps

    from ..backbones.zoo import create_model
    from ..data import datasets

    config = trainer_config(args)  # bad options fail before any data is loaded
    model_kwargs = parse_options(args.model_kwargs)
    model_kwargs.pop("num_classes", None)
    method_options = parse_options(args.opt)
    if args.r is not None:
        method_options["r"] = args.r
    check_method_options(args.method, method_options)
    classes = datasets.num_classes(args.dataset, args.root)
    train_set: Any = datasets.load_dataset(args.dataset, args.root, True, image_size=args.img_size)
    train_set = Subset(train_set, range(len(train_set))[: args.limit])  # --limit: the first N
    val_loader = None
    if args.val_fraction > 0:
        n_val = max(1, round(len(train_set) * args.val_fraction))
        train_set, val_set = random_split(train_set, [len(train_set) - n_val, n_val],
                                          generator=torch.Generator().manual_seed(args.seed))
        val_loader = DataLoader(val_set, batch_size=args.batch, num_workers=args.workers)
    seed = None if args.pretrained else args.seed
    base = create_model(args.model, args.pretrained, seed=seed, **model_kwargs)
    model = ps.wrap(base, args.method, num_classes=classes, input_size=args.input_size,
                    **method_options)
    train_loader = DataLoader(
        train_set, batch_size=args.batch, shuffle=True, num_workers=args.workers,
        generator=torch.Generator().manual_seed(args.seed), pin_memory=torch.cuda.is_available(),
    )
    metadata = {
        "base_model": {"name": args.model, "pretrained": bool(args.pretrained),
                       "kwargs": model_kwargs, "seed": seed},
        "data": {"dataset": args.dataset, "image_size": args.img_size},
    }
    trainer = ps.NoiseTrainer(model, config=config, device=args.device,
                              checkpoint_dir=f"{args.out}/checkpoints", metadata=metadata)
    if trainer.is_main:
        print(ps.parameter_report(model).summary(), file=sys.stderr)
    history = trainer.fit(train_loader, val_loader, resume=args.resume)
    if trainer.is_main:
        training = {"config": trainer.config.to_dict(), "history": history}
        model.save(args.out, metadata={**metadata, "training": training})
        print(f"saved {args.method} model to {args.out} "
              f"(certify with: peftsmoothing certify --model {args.out} ...)")
    return 0


def check_method_options(method: str, options: dict[str, Any]) -> None:
    """Check ``--opt`` options against the method's ``Config`` (before any data is loaded);
    the keywords of [`wrap`][peftsmoothing.wrap] itself (``train_head``, ``head``, ...) pass.

    Raises:
        ValueError: For an unknown method (``UnknownMethodError``) or an invalid value.
        TypeError: For an option the method does not have.

    Examples:
        >>> check_method_options("lora", {"r": 4, "target_modules": ["qkv"]})
        >>> check_method_options("lora", {"targets": ["qkv"]})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: ...
    """
    import inspect

    from ..methods.base import get_method
    from ..model.wrapping import wrap

    own = set(inspect.signature(wrap).parameters)
    method_options = {k: v for k, v in options.items() if k not in own}
    get_method(method).Config.from_kwargs(method, method_options)


def register(subparsers: Any) -> None:
    """Add the ``train`` sub-command."""
    p = subparsers.add_parser(
        "train",
        help="fine-tune a PEFT method on Gaussian-noised images",
        description="Build a timm model, wrap it with a PEFT method and train it on noisy "
        "images; the output directory is accepted by `peftsmoothing certify --model`. "
        f"Run under torchrun for several GPUs. Example: `{EXAMPLE}`",
    )
    p.add_argument("--model", required=True,
                   help="timm model name, e.g. `--model vit_base_patch16_224`")
    p.add_argument("--pretrained", action="store_true", help="load timm's pretrained weights")
    p.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra timm.create_model options, e.g. "
                   "`--model-kwargs img_size=32 patch_size=4`")
    p.add_argument("--method", default="lora", choices=method_names(),
                   help="PEFT method (see `peftsmoothing methods`)")
    p.add_argument("--r", type=int_at_least("r", 1), help="LoRA rank (shortcut for --opt r=R)")
    p.add_argument("--opt", nargs="*", default=[], metavar="KEY=VALUE",
                   help="options of the method's Config, values as Python literals, e.g. "
                   "`--opt alpha=16 \"target_modules=['qkv']\"`")
    p.add_argument("--dataset", default="cifar10", choices=DATASET_NAMES, help="dataset")
    p.add_argument("--root", required=True, help="data directory")
    p.add_argument("--img-size", "--image-size", dest="img_size",
                   type=int_at_least("image_size", 1), help="resize the data before the noise "
                   "(radii then refer to the resized images; pass the same --image-size to "
                   "certify); see --input-size")
    p.add_argument("--input-size", type=int_at_least("input_size", 1),
                   help="resize inside the model (e.g. `--input-size 224` for ViT-B on "
                   "CIFAR): noise and certified radii stay at the data's native resolution")
    p.add_argument("--limit", type=int_at_least("limit", 1),
                   help="use only the first N training images")
    p.add_argument("--val-fraction", default=0.0,
                   type=real("val_fraction", low=0, high=1, high_open=True),
                   help="hold out this fraction of the training set for validation / best/")
    p.add_argument("--batch", type=int_at_least("batch", 1), default=128,
                   help="batch size per process")
    p.add_argument("--workers", type=int_at_least("workers", 0), default=2,
                   help="DataLoader worker processes")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--device", help="torch device (None: cuda:LOCAL_RANK if available, else cpu)")
    add_trainer_options(p)
    p.set_defaults(func=run, user_errors=USER_ERRORS)


def _with_default(text: str) -> str:
    return text.replace("%", "%%") + " (default: %(default)s)"


def add_trainer_options(parser: argparse.ArgumentParser) -> None:
    """Add one flag per [`TrainerConfig`][peftsmoothing.TrainerConfig] field (``--grad-accum``
    for ``grad_accum``), with the help, type and choices its declaration carries (imports no
    torch), and one per loss option alias (``--consistency-weight``).

    Examples:
        >>> p = argparse.ArgumentParser()
        >>> add_trainer_options(p)
        >>> a = p.parse_args(["--grad-accum", "2", "--sigma", "0.25", "0.5"])
        >>> a.grad_accum, a.sigma, a.precision
        (2, [0.25, 0.5], 'fp32')
    """
    from ..training.config import LOSS_OPTION_ALIASES, TrainerConfig, flag

    group = parser.add_argument_group(
        "training options", "the fields of peftsmoothing.TrainerConfig")
    for f in dataclasses.fields(TrainerConfig):
        meta = f.metadata
        default = {} if f.default is dataclasses.MISSING else f.default
        kwargs: dict[str, Any] = {"dest": f.name, "default": default,
                                  "help": _with_default(meta["help"])}
        kwargs.update({k: meta[k] for k in ("type", "choices", "nargs", "metavar") if k in meta})
        if "cli_choices" in meta:
            kwargs["choices"] = list(meta["cli_choices"]())
        group.add_argument(flag(f.name), **kwargs)
    for alias, (option, convert) in LOSS_OPTION_ALIASES.items():
        group.add_argument(flag(alias), dest=alias, type=convert, metavar="VALUE",
                           help=_with_default(f"shortcut for --loss-options {option}=VALUE"))


def trainer_config(args: argparse.Namespace) -> TrainerConfig:
    """The [`TrainerConfig`][peftsmoothing.TrainerConfig] the flags of
    [`add_trainer_options`][peftsmoothing.commands.train.add_trainer_options] give.

    A flag with several values gives a tuple (one value: that value); ``KEY=VALUE`` lists a
    dict (see [`parse_options`][peftsmoothing.commands.train.parse_options]).

    Raises:
        ValueError: For an invalid option (the config's own checks).

    Examples:
        >>> p = argparse.ArgumentParser()
        >>> add_trainer_options(p)
        >>> args = p.parse_args(["--sigma", "0.25", "0.5", "--loss", "consistency",
        ...                      "--consistency-weight", "20",
        ...                      "--loss-options", "entropy_weight=1"])
        >>> c = trainer_config(args)
        >>> c.sigma, c.loss_options
        ((0.25, 0.5), {'entropy_weight': 1, 'consistency_weight': 20.0})
    """
    from ..training.config import LOSS_OPTION_ALIASES, TrainerConfig, config_from_keywords

    values: dict[str, Any] = {alias: getattr(args, alias, None) for alias in LOSS_OPTION_ALIASES}
    for f in dataclasses.fields(TrainerConfig):
        value = getattr(args, f.name)
        if f.metadata.get("mapping") and not isinstance(value, dict):
            value = parse_options(value)
        elif isinstance(value, list):
            value = value[0] if len(value) == 1 else tuple(value)
        values[f.name] = value
    return config_from_keywords(values, {})
