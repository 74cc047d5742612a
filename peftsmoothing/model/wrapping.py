"""``wrap()`` and ``load()``: freeze a model and add a method's parameters; rebuild a saved one.

[`wrap`][peftsmoothing.wrap] finds (or resets) the classification head, resolves the input
normalization (docs/design.md, "Normalization lives in the model"), lets the method modify the
frozen model and returns a [`PEFTModel`][peftsmoothing.PEFTModel]. [`load`][peftsmoothing.load]
rebuilds a directory written by [`PEFTModel.save`][peftsmoothing.PEFTModel.save] around the same
base
model: the one you pass (``load(base_model, path)``) or one rebuilt from its recorded recipe
(``load(path)``); the save format itself is in ``peftsmoothing.model.serialization``.

``PEFTModel``, ``WrapSpec``, ``read_config``, ``CONFIG_FILE`` and ``TENSORS_FILE`` are
re-exported here, where they were defined before 0.2.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..backbones.architecture import timm_candidate
from ..backbones.zoo import BASE_ATTR, load_weights, rebuild_base_model
from ..core.validation import is_int
from ..methods.base import MethodContext, get_method
from ..methods.targets import get_submodule, replace_module
from .hub import local_directory
from .normalize import Normalize, Resize, timm_mean_std
from .peft_model import PEFTModel, WrapSpec
from .serialization import (
    CONFIG_FILE,
    TENSORS_FILE,
    check_base_fingerprint,
    read_config,
    read_tensors,
    saved_method_options,
)

__all__ = ["CONFIG_FILE", "TENSORS_FILE", "PEFTModel", "WrapSpec", "load", "read_config", "wrap"]

_WRAPPED_ATTR = "_peftsmoothing_wrapped"

NormalizeArg = str | tuple[Sequence[float], Sequence[float]] | None


def _resolve_normalize(model: nn.Module, normalize: NormalizeArg) -> Normalize | None:
    if normalize is None:
        return None
    if any(isinstance(m, Normalize) for m in model.modules()):
        raise ValueError(
            "the model already contains a peftsmoothing.Normalize layer; normalizing again "
            "would apply mean/std twice. Pass normalize=None."
        )
    if isinstance(normalize, str):
        if normalize != "auto":
            raise ValueError(f"normalize must be 'auto', None or (mean, std), got {normalize!r}")
        stats = timm_mean_std(model)
        if stats is None:
            raise ValueError(
                "normalize='auto' reads mean/std from a timm model's pretrained_cfg, and this "
                f"{type(model).__name__} has none. Pass normalize=(mean, std) for the "
                "statistics it was trained with, or normalize=None if it takes [0, 1] images."
            )
        return Normalize(*stats)
    try:
        mean, std = normalize
    except (TypeError, ValueError):
        raise ValueError(
            f"normalize must be 'auto', None or a (mean, std) pair, got {normalize!r}"
        ) from None
    return Normalize(mean, std)


def _head_names(model: nn.Module) -> list[str]:
    """Names of the modules timm's ``get_classifier()`` returns (two for distilled DeiTs)."""
    get_classifier = getattr(model, "get_classifier", None)
    if not callable(get_classifier):
        return []
    found = get_classifier()
    classifiers = found if isinstance(found, (tuple, list)) else [found]
    modules = list(model.named_modules())
    return [name for c in classifiers for name, module in modules if module is c and name]


def _reset_head(model: nn.Module, head: str | None, user_named: bool, num_classes: int) -> str:
    ref = next(model.parameters(), None)
    factory: dict[str, Any] = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
    if not user_named and callable(getattr(model, "reset_classifier", None)):
        model.reset_classifier(num_classes)  # type: ignore[operator]
        names = _head_names(model)
        if not names:
            raise ValueError(f"{type(model).__name__}.reset_classifier() left no classifier")
        for name in names:
            model.get_submodule(name).to(**factory)
        return names[0]
    if head is None:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(
            f"num_classes={num_classes} needs a classification head to reset, and "
            f"{type(model).__name__} has no timm reset_classifier(); pass head='<module name>' "
            f"(e.g. one of: {', '.join(linears[-3:]) or 'no nn.Linear found'})"
        )
    old = model.get_submodule(head)
    if not isinstance(old, nn.Linear):
        raise ValueError(
            f"head {head!r} is a {type(old).__name__}; only an nn.Linear head can be reset"
        )
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None, **factory)
    replace_module(model, head, new)
    return head


def wrap(
    model: nn.Module,
    method: str = "lora",
    *,
    num_classes: int | None = None,
    head: str | None = None,
    train_head: bool | None = None,
    normalize: NormalizeArg = "auto",
    input_size: int | tuple[int, int] | None = None,
    **config: Any,
) -> PEFTModel:
    """Freeze ``model``, add a PEFT method's trainable parameters and built-in normalization.

    The model is modified in place (no copy of a large backbone is made) and returned inside a
    [`PEFTModel`][peftsmoothing.PEFTModel] that takes images in [0, 1].

    Args:
        model: A timm VisionTransformer-family model or any ``nn.Module`` the method supports.
        method: A registered method name (see
            [`available_methods`][peftsmoothing.available_methods]).
        num_classes: Reset the classification head to this many classes (timm
            ``reset_classifier``, or the ``nn.Linear`` named by ``head``); the new head is
            trained along with the method's parameters.
        head: Qualified name of the classification head, for models without timm's
            ``get_classifier`` / ``reset_classifier``.
        train_head: Train the head too. Default: ``True`` when ``num_classes`` resets it,
            otherwise ``False``. ``False`` together with ``num_classes`` is an error.
        normalize: ``"auto"`` (mean/std from timm's ``pretrained_cfg``), ``None`` (the model
            already takes [0, 1] images), or a ``(mean, std)`` pair.
        input_size: Resize images to this size inside the model (bilinear, before
            normalization), e.g. 224 to feed 32x32 CIFAR-10 images to a ViT-B/16. Noise and
            certified radii then stay in the data's native resolution.
        **config: The method's options, e.g. ``r=8`` for LoRA. Unknown keys raise an error
            naming the valid ones.

    Returns:
        The wrapped model.

    Raises:
        UnknownMethodError: If ``method`` is not registered.
        TypeError: If ``config`` has an option the method does not know.
        ValueError: For invalid options, a model the method cannot handle, a second
            normalization, or a head that cannot be found or reset.

    Examples:
        >>> import timm, torch, peftsmoothing as ps
        >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False,
        ...                         img_size=32, patch_size=4)
        >>> m = ps.wrap(vit, method="lora", r=8, num_classes=10)
        >>> m(torch.rand(4, 3, 32, 32)).shape
        torch.Size([4, 10])
    """
    if isinstance(model, PEFTModel):
        raise ValueError(
            "this model is already wrapped (method "
            f"{model.spec.method!r}); wrap the original model instead. Wrapping twice would "
            "normalize the input twice."
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"wrap() expects an nn.Module, got {type(model).__name__}")
    if getattr(model, _WRAPPED_ATTR, False):
        raise ValueError(
            "this model was already wrapped (wrap() modifies the model in place); create a "
            "fresh copy of the base model to wrap it again"
        )
    method_cls = get_method(method)
    cfg = method_cls.Config.from_kwargs(method, config)
    if num_classes is not None and (not is_int(num_classes) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if train_head is None:
        train_head = num_classes is not None
    if num_classes is not None and not train_head:
        raise ValueError(
            "num_classes resets the head to random weights, so it must be trained; "
            "drop train_head=False or num_classes"
        )
    norm = _resolve_normalize(model, normalize)
    resize = Resize(input_size) if input_size is not None else None
    if head is not None:
        get_submodule(model, head)  # a missing module is an error naming the model's children
    head_name = head if head is not None else next(iter(_head_names(model)), None)
    if train_head and num_classes is None and head_name is None:
        raise ValueError("train_head=True but no classification head was found; pass head=")

    # What rebuilds a plain timm model, read before anything changes it (verified on save).
    candidate = timm_candidate(model) if getattr(model, BASE_ATTR, None) is None else None
    saved_flags = {id(p): p.requires_grad for p in model.parameters()}
    model.requires_grad_(False)
    try:
        if num_classes is not None:
            head_name = _reset_head(model, head_name, head is not None, num_classes)
        base_parameters = sum(p.numel() for p in model.parameters())
        method_obj = method_cls(cfg)
        context = MethodContext(head_name=head_name)
        method_obj.apply(model, context)
    except BaseException:
        for p in model.parameters():
            p.requires_grad_(saved_flags.get(id(p), True))
        raise
    if train_head and head_name is not None:
        heads = [head_name] if head is not None else (_head_names(model) or [head_name])
        for name in heads:
            model.get_submodule(name).requires_grad_(True)
    setattr(model, _WRAPPED_ATTR, True)
    ref = next(model.parameters(), None)
    if norm is not None and ref is not None:
        norm = norm.to(device=ref.device)
    spec = WrapSpec(
        method=method,
        method_config=cfg.to_dict(),
        num_classes=num_classes,
        head=head_name,
        train_head=bool(train_head),
        mean=norm.given_mean if norm is not None else None,
        std=norm.given_std if norm is not None else None,
        input_size=resize.size if resize is not None else None,
    )
    return PEFTModel(
        model,
        method_obj,
        spec,
        normalize=norm,
        pixel=context.pixel_module,
        resize=resize,
        modules=context.modules,
        base_parameters=base_parameters,
        base_candidate=candidate,
    )


def load(
    base_model: nn.Module | str | os.PathLike[str],
    path: str | os.PathLike[str] | None = None,
    *,
    map_location: Any = None,
    base_weights: str | os.PathLike[str] | None = None,
    pretrained: bool | None = None,
    **method_overrides: Any,
) -> PEFTModel:
    """Rebuild a model saved with [`PEFTModel.save`][peftsmoothing.PEFTModel.save] around a fresh
    copy of its base model.

    ``base_model`` must be the same architecture with the same pretrained weights that was
    wrapped before saving (e.g. the same ``timm.create_model(...)`` call). The result computes
    bit-identical outputs to the saved model. ``ps.load(path)`` alone rebuilds the base model
    from the recipe recorded at save time: that of
    [`peftsmoothing.create_model`][peftsmoothing.create_model], or, for a model made with
    ``timm.create_model``, its timm name with the pretrained tag and the constructor options
    that differ from the name's defaults (recorded only when a rebuild has exactly the wrapped
    architecture; see ``PEFTModel.base_recipe``).

    Which weights the rebuilt base model gets:

    - ``base_weights=FILE``: the ``state_dict`` in FILE (read with ``weights_only``);
    - ``pretrained=True``: timm's registry weights for the recorded name and tag;
    - neither, recipe of ``ps.create_model``: timm's registry weights if it was made with
      ``pretrained=True``, its recorded seed otherwise;
    - neither, recipe of a plain ``timm.create_model`` model: refused, since which weights it
      held is not recorded: choose ``base_weights=FILE`` or ``pretrained=True``;
    - ``pretrained=False``: never timm's registry weights (offline): a recipe that needs them
      is refused unless ``base_weights`` is given.

    Loading reads only the directory (docs/security.md): the recipe may name a model in timm's
    registry and architecture options, nothing that fetches or opens other files. The frozen
    weights are checked against the fingerprint recorded at save time (another backbone is
    refused); only directories of release 0.1, which never recorded one, load without it.

    Args:
        base_model: The original (unwrapped) model, modified in place; or the directory, when
            the base model is to be rebuilt from its recorded recipe.
        path: Directory written by ``save`` (omit when passing it as the first argument), or
            ``"hf-hub:user/name[@revision]"``: its copy on the Hugging Face Hub, downloaded
            (``model/hub.py``) and then checked exactly as a local directory.
        map_location: Device the saved tensors are read to (default: the CPU) before they
            are copied into the model, which keeps its own devices.
        base_weights: A ``state_dict`` file with the base model's weights, loaded into the
            rebuilt (or given) base model before wrapping, e.g. a backbone you pre-trained
            yourself or timm's weights downloaded on another machine.
        pretrained: For ``load(path)``: ``True`` to use timm's registry weights for the
            recorded name, ``False`` to never use them, ``None`` (default) as recorded.
        **method_overrides: Method options that replace the saved ones, e.g. a custom
            module that could not be stored in JSON (``denoiser=MyDenoiser()``).

    Returns:
        The wrapped model with the saved tensors loaded.

    Raises:
        FileNotFoundError: If ``path`` holds no saved model, or ``base_weights`` is missing.
        ValueError: If the base model does not fit the saved tensors, its frozen weights are
            not those the model was trained on, the recipe is refused, the recipe does not say
            which weights to use and neither ``base_weights`` nor ``pretrained`` does, or a
            file is corrupt.
        TypeError: If ``pretrained`` is given together with a base model.

    Examples:
        >>> import tempfile, timm, torch, peftsmoothing as ps
        >>> make = lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False,
        ...                                  img_size=32, patch_size=4)
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> base = make()
        >>> base_state = base.state_dict()
        >>> m = ps.wrap(base, method="lora", r=4, num_classes=10).eval()
        >>> d = m.save(tempfile.mkdtemp())
        >>> fresh = make(); _ = fresh.load_state_dict(base_state)
        >>> m2 = ps.load(fresh, d).eval()
        >>> x = torch.rand(2, 3, 32, 32)
        >>> torch.equal(m(x), m2(x))
        True
    """
    if path is None:  # load(path): rebuild the base model from the recorded recipe
        if isinstance(base_model, nn.Module):
            raise TypeError("load(base_model, path): path is missing")
        path = local_directory(base_model)
        config = read_config(path)
        base_model, origin = _rebuild(path, config, base_weights, pretrained)
    else:
        if not isinstance(base_model, nn.Module):
            raise TypeError(f"base_model must be an nn.Module, got {type(base_model).__name__}")
        if pretrained is not None:
            raise TypeError(
                "pretrained= chooses the weights of a base model rebuilt by load(path); "
                "load(base_model, path) uses the base model you pass"
            )
        path = local_directory(path)
        config = read_config(path)
        origin = "the base model you passed (ps.load(base_model, path))"
        if base_weights is not None:
            load_weights(base_model, base_weights)
    if base_weights is not None:
        origin = f"the weights file you passed (base_weights={os.fspath(base_weights)!r})"
    spec = config["spec"]
    saved = saved_method_options(config, path, get_method(spec["method"]).Config.saved_keys())
    # a head reset through timm's reset_classifier is reset so again; a user-named one is named
    timm_reset = callable(getattr(base_model, "reset_classifier", None))
    head = None if timm_reset and spec.get("num_classes") is not None else spec.get("head")
    wrapped = wrap(
        base_model,
        spec["method"],
        num_classes=spec.get("num_classes"),
        head=head,
        train_head=spec.get("train_head"),
        normalize=(spec["mean"], spec["std"]) if spec.get("mean") is not None else None,
        input_size=tuple(spec["input_size"]) if spec.get("input_size") else None,
        **{**saved, **method_overrides},
    )
    expected = config["base"].get("num_parameters")
    if expected and expected != wrapped.base_parameters:
        raise ValueError(
            f"base model mismatch: the saved model was built on a "
            f"{config['base'].get('class')} with {expected:,} parameters, but the given base "
            f"model has {wrapped.base_parameters:,}"
        )
    check_base_fingerprint(config, wrapped.base_fingerprint, path, origin)
    # exactly those tensors; load_state_dict copies them onto the model's devices
    tensors = read_tensors(path, map_location, wrapped.trained_state_dict())
    wrapped.load_state_dict(tensors, strict=False)
    return wrapped


def _rebuild(
    path: str | os.PathLike[str],
    config: Mapping[str, Any],
    base_weights: str | os.PathLike[str] | None,
    pretrained: bool | None,
) -> tuple[nn.Module, str]:
    """``load(path)``'s base model, rebuilt from its recipe, and where its weights came from."""
    recipe = config["base"].get("recipe") or config.get("metadata", {}).get("base_model")
    if not recipe:
        raise ValueError(
            f"{path} does not record how to build its base model (it was not made with "
            "timm.create_model or ps.create_model, or a rebuild of its timm name did not have "
            "the same architecture); call ps.load(base_model, path) with the base model"
        )
    source = f"{Path(path) / CONFIG_FILE}"  # a refused recipe builds and fetches nothing
    base_model = rebuild_base_model(
        recipe, base_weights=base_weights, pretrained=pretrained, source=source, directory=path
    )
    built = getattr(base_model, BASE_ATTR)
    name = built.get("name") or built.get("zoo")
    if pretrained:
        return base_model, f"timm's registry weights for {name} (pretrained=True)"
    return base_model, f"the base model rebuilt from its recipe ({name})"
