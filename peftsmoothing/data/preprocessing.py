"""Preprocessing of image files: timm's data config, as a JSON-able dict and a transform.

Image folders (ImageNet-style) are resized and cropped the way the model's timm data config says
(``timm.data.resolve_model_data_config``: input size, ``crop_pct``, crop mode, interpolation)
and stop at a tensor in [0, 1]: normalization stays inside the model, so that noise lives in
pixel space (docs/design.md). ``preprocessing_config`` returns the settings as a plain dict
(certification logs record it); ``preprocessing_transform`` builds the transform from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..core.validation import check_real

__all__ = ["INTERPOLATIONS", "preprocessing_config", "preprocessing_transform"]


#: Interpolation names ``preprocessing_config`` accepts (timm's and torchvision's).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


def _pretrained_cfg_module(model: Any) -> Any:
    """The first module with a timm ``pretrained_cfg`` (the model, or the model it wraps)."""
    modules = model.modules() if hasattr(model, "modules") else [model]
    return next((m for m in modules if isinstance(getattr(m, "pretrained_cfg", None), dict)), None)


def preprocessing_config(
    model: Any = None,
    *,
    image_size: int | tuple[int, int] | None = None,
    crop_pct: float | None = None,
    crop_mode: str | None = None,
    interpolation: str | None = None,
) -> dict[str, Any]:
    """How image files are turned into tensors in [0, 1], as a JSON-able dict.

    Read from timm's data config of the model (``timm.data.resolve_model_data_config``: input
    size, ``crop_pct``, ``crop_mode``, interpolation), with each value replaceable by an
    argument. Normalization (mean/std) is not part of it: it stays inside the model, so that
    noise lives in pixel space (docs/design.md). A timm model built for another size than its
    pretrained config says (``img_size=...``) is preprocessed for the size it was built for.
    Without a model: 224 px, ``crop_pct`` 0.875, bilinear, center crop.

    Args:
        model: A timm model, or a module that contains one (e.g. a wrapped model), or
            ``None``.
        image_size: Crop size (square int, or ``(height, width)``).
        crop_pct: Fraction of the resized image the center crop keeps, in (0, 1].
        crop_mode: ``"center"`` (resize the shorter side, then crop) or ``"squash"`` (resize
            both sides, then crop).
        interpolation: One of ``INTERPOLATIONS``.

    Returns:
        ``{"image_size": [h, w], "crop_pct", "crop_mode", "interpolation"}``.

    Raises:
        ValueError: For an unknown crop mode or interpolation, or a bad size or crop_pct.

    Examples:
        >>> import timm, torch
        >>> with torch.device("meta"):
        ...     vit = timm.create_model("vit_base_patch16_384", pretrained=False)
        >>> preprocessing_config(vit)
        {'image_size': [384, 384], 'crop_pct': 1.0, 'crop_mode': 'center', \
'interpolation': 'bicubic'}
        >>> preprocessing_config(image_size=32, interpolation="bilinear")["image_size"]
        [32, 32]
    """
    cfg: dict[str, Any] = {"input_size": (3, 224, 224), "crop_pct": 0.875, "crop_mode": "center",
                           "interpolation": "bilinear"}  # fmt: skip
    timm_model = _pretrained_cfg_module(model)  # None without a model
    if timm_model is not None:
        from timm.data import resolve_model_data_config

        cfg.update({k: v for k, v in resolve_model_data_config(timm_model).items() if v})
        built = getattr(getattr(timm_model, "patch_embed", None), "img_size", None)
        if isinstance(built, tuple) and len(built) == 2:
            cfg["input_size"] = (cfg["input_size"][0], *built)
    size = image_size if image_size is not None else tuple(cfg["input_size"][-2:])
    hw = [int(size), int(size)] if isinstance(size, int) else [int(v) for v in size]
    pct = crop_pct if crop_pct is not None else cfg["crop_pct"]
    mode = str(crop_mode or cfg["crop_mode"])
    interp = str(interpolation or cfg["interpolation"])
    if interp == "random":  # timm's training-time choice; evaluation is deterministic
        interp = "bilinear"
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"image_size must be a positive int or (height, width), got {size!r}")
    check_real(pct, "crop_pct", low=0.0, high=1.0, low_open=True)
    if mode not in ("center", "squash"):
        raise ValueError(f"crop_mode must be 'center' or 'squash', got {mode!r}")
    if interp not in INTERPOLATIONS:
        names = ", ".join(INTERPOLATIONS)
        raise ValueError(f"interpolation must be one of {names}, got {interp!r}")
    return {"image_size": hw, "crop_pct": float(pct), "crop_mode": mode, "interpolation": interp}


def preprocessing_transform(
    config: Mapping[str, Any], train: bool = False
) -> Callable[[Any], torch.Tensor]:
    """The transform ``preprocessing_config`` describes: a PIL image to a tensor in [0, 1].

    Evaluation follows timm's eval transform without its normalization: resize to
    ``image_size / crop_pct`` (the shorter side for ``"center"``, both sides for
    ``"squash"``), then a center crop of ``image_size``. Training: a random resized crop of
    ``image_size`` and a horizontal flip, with the same interpolation.

    Args:
        config: From ``preprocessing_config`` (e.g. read back from a certification log).
        train: The training transform instead of the evaluation one.

    Returns:
        A callable, e.g. for ``torchvision.datasets.ImageFolder(transform=...)``.

    Examples:
        >>> from PIL import Image
        >>> tf = preprocessing_transform(preprocessing_config(image_size=16))
        >>> x = tf(Image.new("RGB", (40, 30), color=(255, 0, 0)))
        >>> tuple(x.shape), float(x[0].min()), float(x[1].max())
        ((3, 16, 16), 1.0, 0.0)
    """
    from timm.data import create_transform
    from torchvision import transforms

    options = {key: config.get(key) for key in ("crop_pct", "crop_mode", "interpolation")}
    # checks a config read back from a file; what is left are create_transform's options
    clean = preprocessing_config(image_size=tuple(config["image_size"]), **options)
    size = tuple(clean.pop("image_size"))
    if not train:  # timm's eval transform, with an identity normalization: (x - 0) / 1
        return create_transform(size, **clean, mean=(0.0,), std=(1.0,))
    mode = transforms.InterpolationMode(clean["interpolation"])
    crop = transforms.RandomResizedCrop(size, interpolation=mode)
    return transforms.Compose([crop, transforms.RandomHorizontalFlip(), transforms.ToTensor()])
