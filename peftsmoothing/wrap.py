"""``wrap()`` / ``load()``: freeze a model, add a method's parameters, normalize, save, merge.

A wrapped model is a :class:`PEFTModel`: ``pixel`` (a method's pixel-space module, e.g. a
denoiser; usually empty) -> ``resize`` (optional, e.g. 32 -> 224 px) -> ``normalize``
(mean/std, so the model takes [0, 1] images) ->
``model`` (the original network, modified in place by the method). Saving writes only what
was trained plus a JSON file that rebuilds the wrapper around the same base model.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._io import atomic_save, atomic_write
from ._version import __version__
from .fingerprint import tensors_fingerprint
from .methods.base import Method, MethodContext, get_method
from .methods.targets import get_submodule, replace_module
from .normalize import Normalize, Resize, timm_mean_std
from .params import freeze_frozen_batchnorm, trained_keys, trained_state_dict
from .zoo import BASE_ATTR, rebuild_base_model, unreproducible_reason

__all__ = ["CONFIG_FILE", "TENSORS_FILE", "PEFTModel", "WrapSpec", "load", "read_config", "wrap"]

CONFIG_FILE = "peftsmoothing.json"
TENSORS_FILE = "trainable.pt"
_FORMAT = "peftsmoothing-wrapped-model"
_FORMAT_VERSION = 1
_WRAPPED_ATTR = "_peftsmoothing_wrapped"

NormalizeArg = str | tuple[Sequence[float], Sequence[float]] | None


@dataclass(frozen=True)
class WrapSpec:
    """Everything :func:`wrap` needs to rebuild a wrapped model around the same base model.

    Attributes:
        method: Registered method name.
        method_config: The method's options (JSON-serialisable).
        num_classes: New head width, or ``None`` if the head was kept.
        head: Qualified name of the classification head (``None`` if unknown).
        train_head: Whether the head is trained.
        mean: Normalization mean, or ``None`` without normalization.
        std: Normalization std, or ``None`` without normalization.
        input_size: Size images are resized to inside the model, or ``None``.
    """

    method: str
    method_config: dict[str, Any]
    num_classes: int | None
    head: str | None
    train_head: bool
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    input_size: tuple[int, int] | None = None


class PEFTModel(nn.Module):
    """A frozen model with a method's trainable parameters and built-in input normalization.

    Built by :func:`wrap`; takes images in [0, 1] and returns the original model's output.

    Examples:
        >>> import timm, torch, peftsmoothing as ps
        >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False,
        ...                         img_size=32, patch_size=4, num_classes=10)
        >>> m = ps.wrap(vit, method="lora", r=4)
        >>> m(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
        >>> sum(p.numel() for p in m.trainable_parameters())  # LoRA on q, v + the head
        36864
    """

    def __init__(
        self,
        model: nn.Module,
        method: Method,
        spec: WrapSpec,
        *,
        normalize: Normalize | None = None,
        pixel: nn.Module | None = None,
        resize: Resize | None = None,
        modules: Mapping[str, nn.Module] | None = None,
        base_parameters: int = 0,
        base_fingerprint: str | None = None,
    ) -> None:
        super().__init__()
        self.pixel = pixel if pixel is not None else nn.Identity()
        self.resize: nn.Module = resize if resize is not None else nn.Identity()
        self.normalize: nn.Module = normalize if normalize is not None else nn.Identity()
        self.model = model
        self.peft = nn.ModuleDict(dict(modules or {}))
        self.method = method
        self.spec = spec
        self.base_parameters = base_parameters
        #: SHA-256 of the base model's weights as ``wrap`` found them (a reset head left out).
        self.base_fingerprint = base_fingerprint
        self.base_recipe: dict[str, Any] | None = getattr(model, BASE_ATTR, None)
        self._merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(self.resize(self.pixel(x))))

    def forward_without_pixel(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped model without its pixel-space module: resize, normalize, model.

        For the ``denoiser`` method this is the frozen classifier alone, e.g. the reference
        of the ``stability`` loss; for methods without a pixel-space module it equals
        :meth:`forward`.

        Args:
            x: Images in [0, 1], shape ``(N, C, H, W)``.

        Returns:
            The model's output (logits).

        Examples:
            >>> import torch
            >>> from torch import nn
            >>> m = wrap(nn.Flatten(), method="denoiser", depth=2, width=4, normalize=None,
            ...          input_size=4)
            >>> m.forward_without_pixel(torch.zeros(1, 3, 2, 2)).shape  # resized to 4 x 4
            torch.Size([1, 48])
        """
        return self.model(self.normalize(self.resize(x)))

    def frozen_reference(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The frozen classifier behind a trained pixel-space module, else ``None``.

        For the ``denoiser`` method (a trained module in front of a frozen classifier) this is
        :meth:`forward_without_pixel`: the reference of the ``stability`` loss. Part of the
        :class:`peftsmoothing.trainable.Trainable` contract.

        Examples:
            >>> from torch import nn
            >>> m = wrap(nn.Flatten(), method="denoiser", depth=2, width=4, normalize=None)
            >>> m.frozen_reference() == m.forward_without_pixel
            True
            >>> wrap(nn.Linear(3, 2), method="full", normalize=None).frozen_reference() is None
            True
        """
        if isinstance(self.pixel, nn.Identity):
            return None
        if any(p.requires_grad for p in self.model.parameters()):
            return None
        return self.forward_without_pixel

    # ----------------------------------------------------------------- trainable parameters
    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Yield ``(name, parameter)`` for every parameter with ``requires_grad``.

        Examples:
            >>> import peftsmoothing as ps
            >>> from torch import nn
            >>> m = ps.wrap(nn.Linear(3, 2), method="full", normalize=None)
            >>> [n for n, _ in m.named_trainable_parameters()]
            ['model.weight', 'model.bias']
        """
        for name, p in self.named_parameters():
            if p.requires_grad:
                yield name, p

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters that training updates (pass them to an optimizer).

        Examples:
            >>> import torch, peftsmoothing as ps
            >>> from torch import nn
            >>> m = ps.wrap(nn.Linear(3, 2), method="full", normalize=None)
            >>> opt = torch.optim.AdamW(m.trainable_parameters(), lr=1e-3)
        """
        return [p for _, p in self.named_trainable_parameters()]

    def train(self, mode: bool = True) -> PEFTModel:
        """Like ``nn.Module.train``, but frozen BatchNorm layers stay in eval mode.

        A BatchNorm whose affine parameters are frozen is part of the frozen backbone; updating
        its running statistics in training would change the backbone and make saved
        checkpoints (which hold only trained tensors) irreproducible.
        """
        super().train(mode)
        if mode:
            freeze_frozen_batchnorm(self)
            if self._merged:
                warnings.warn(
                    "training a merged model: call unmerge() first, or the merged LoRA update "
                    "is frozen into the weights and the LoRA parameters get no gradient",
                    stacklevel=2,
                )
        return self

    # ------------------------------------------------------------------------ merge
    @property
    def supports_merge(self) -> bool:
        """Whether the method can fold its parameters into the base weights."""
        return bool(self.method.supports_merge)

    @property
    def merged(self) -> bool:
        """Whether the method's parameters are currently folded into the base weights."""
        return self._merged

    def merge(self) -> PEFTModel:
        """Fold the trained update into the base weights: inference then costs what the base
        model costs. Undo with :meth:`unmerge`. A no-op when already merged.

        Raises:
            NotImplementedError: If the method does not support merging.

        Examples:
            >>> import timm, torch, peftsmoothing as ps
            >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False,
            ...                         img_size=32, patch_size=4, num_classes=10)
            >>> m = ps.wrap(vit, method="lora", r=4).eval()
            >>> x = torch.rand(1, 3, 32, 32)
            >>> y = m(x)
            >>> torch.allclose(m.merge()(x), y, atol=1e-5), m.merged
            (True, True)
        """
        if not self.supports_merge:
            raise NotImplementedError(f"method {self.spec.method!r} does not support merge()")
        if not self._merged:
            self.method.merge(self.model)
            self._merged = True
        return self

    def unmerge(self) -> PEFTModel:
        """Undo :meth:`merge` (restores the base weights up to float rounding).

        Examples:
            >>> import timm, peftsmoothing as ps
            >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False,
            ...                         img_size=32, patch_size=4, num_classes=10)
            >>> ps.wrap(vit, method="lora").merge().unmerge().merged
            False
        """
        if not self.supports_merge:
            raise NotImplementedError(f"method {self.spec.method!r} does not support unmerge()")
        if self._merged:
            self.method.unmerge(self.model)
            self._merged = False
        return self

    @contextlib.contextmanager
    def merged_for_inference(self) -> Iterator[PEFTModel]:
        """Context manager: merge if the method supports it, restore the previous state after.

        Examples:
            >>> import timm, torch, peftsmoothing as ps
            >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False,
            ...                         img_size=32, patch_size=4, num_classes=10)
            >>> m = ps.wrap(vit, method="lora").eval()
            >>> with m.merged_for_inference():
            ...     m.merged
            True
            >>> m.merged
            False
        """
        was_merged = self._merged
        if self.supports_merge:
            self.merge()
        try:
            yield self
        finally:
            if self.supports_merge and not was_merged:
                self.unmerge()

    # ------------------------------------------------------------------------ saving
    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors that training changes: trainable parameters, plus the persistent buffers
        of modules that own trainable parameters (e.g. running statistics of a trained
        BatchNorm).

        Examples:
            >>> import peftsmoothing as ps
            >>> from torch import nn
            >>> m = ps.wrap(nn.Linear(3, 2), method="full", normalize=None)
            >>> sorted(m.trained_state_dict())
            ['model.bias', 'model.weight']
        """
        return trained_state_dict(self)

    def save(self, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None) -> Path:
        """Save the trained tensors and a JSON config to the directory ``path``.

        The directory holds ``peftsmoothing.json`` (method, options, head, normalization, and
        your ``metadata``) and ``trainable.pt`` (only trained tensors: kilobytes to a few
        megabytes for PEFT methods). Files are written atomically. Rebuild with
        :func:`peftsmoothing.load`.

        Args:
            path: Output directory (created if needed).
            metadata: Extra JSON-serialisable information stored in the config.

        Returns:
            The directory path.

        Examples:
            >>> import tempfile, timm, peftsmoothing as ps
            >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False,
            ...                         img_size=32, patch_size=4, num_classes=10)
            >>> m = ps.wrap(vit, method="lora", r=4)
            >>> out = m.save(tempfile.mkdtemp())
            >>> sorted(p.name for p in out.iterdir())
            ['peftsmoothing.json', 'trainable.pt']
        """
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        # Merged base weights are never saved (only trained tensors are), so saving a merged
        # model is exact too.
        tensors = self.trained_state_dict()
        config = {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "peftsmoothing_version": __version__,
            "spec": asdict(self.spec),
            "base": {
                "class": f"{type(self.model).__module__}.{type(self.model).__qualname__}",
                "architecture": _architecture(self.model),
                "num_parameters": self.base_parameters,
                "fingerprint": self.base_fingerprint,
                "recipe": self.base_recipe,
            },
            "tensors": {k: list(v.shape) for k, v in tensors.items()},
            "metadata": dict(metadata) if metadata else {},
        }
        atomic_save(tensors, out / TENSORS_FILE)
        atomic_write(out / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
        return out

    def extra_repr(self) -> str:
        return f"method={self.spec.method!r}, merged={self._merged}"


def _architecture(model: nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        arch = cfg.get("architecture")
        return str(arch) if arch else None
    return None


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
    classifiers = list(found) if isinstance(found, (tuple, list)) else [found]
    return [
        name
        for c in classifiers
        for name, module in model.named_modules()
        if module is c and name and isinstance(c, nn.Module)
    ]


def _find_head(model: nn.Module, head: str | None) -> str | None:
    if head is not None:
        get_submodule(model, head)
        return head
    names = _head_names(model)
    return names[0] if names else None


def _reset_head(model: nn.Module, head: str | None, user_named: bool, num_classes: int) -> str:
    ref = next(model.parameters(), None)
    factory: dict[str, Any] = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
    if not user_named and callable(getattr(model, "reset_classifier", None)):
        model.reset_classifier(num_classes)  # type: ignore[operator]
        new_head = _find_head(model, None)
        if new_head is None:
            raise ValueError(f"{type(model).__name__}.reset_classifier() left no classifier")
        for name in _head_names(model):
            model.get_submodule(name).to(**factory)
        return new_head
    if head is None:
        raise ValueError(
            f"num_classes={num_classes} needs a classification head to reset, and "
            f"{type(model).__name__} has no timm reset_classifier(); pass head='<module name>' "
            f"(e.g. one of: {', '.join(_linear_names(model)[-3:]) or 'no nn.Linear found'})"
        )
    old = model.get_submodule(head)
    if not isinstance(old, nn.Linear):
        raise ValueError(
            f"head {head!r} is a {type(old).__name__}; only an nn.Linear head can be reset"
        )
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None, **factory)
    replace_module(model, head, new)
    return head


def _linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


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
    :class:`PEFTModel` that takes images in [0, 1].

    Args:
        model: A timm VisionTransformer-family model or any ``nn.Module`` the method supports.
        method: A registered method name (see :func:`available_methods`).
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
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
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
    head_name = _find_head(model, head)
    if train_head and num_classes is None and head_name is None:
        raise ValueError("train_head=True but no classification head was found; pass head=")

    saved_flags = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
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
            for p in model.get_submodule(name).parameters():
                p.requires_grad_(True)
    setattr(model, _WRAPPED_ATTR, True)
    base_fingerprint = frozen_fingerprint(model)
    if norm is not None:
        ref = next(model.parameters(), None)
        if ref is not None:
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
        base_fingerprint=base_fingerprint,
    )


def frozen_fingerprint(model: nn.Module) -> str:
    """Fingerprint of a model's frozen tensors: every ``state_dict`` entry training leaves
    alone (see :func:`peftsmoothing.params.trained_keys`).

    ``wrap`` records it and ``load`` checks it, so that trained adapters are never loaded onto
    another backbone (other weights with the same shapes).

    Examples:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> _ = net[0].requires_grad_(False)
        >>> before = frozen_fingerprint(net)
        >>> with torch.no_grad():
        ...     _ = net[1].weight.add_(1.0)  # trained: not part of the fingerprint
        >>> frozen_fingerprint(net) == before
        True
    """
    trained = trained_keys(model)
    return tensors_fingerprint((k, v) for k, v in model.state_dict().items() if k not in trained)


def _file_in(directory: Path, name: str) -> Path:
    """``directory / name``, refusing a symlink that leads out of the directory."""
    path = directory / name
    if path.is_symlink() or path.exists():
        inside = directory.resolve()
        target = path.resolve()
        if target != inside / name and inside not in target.parents:
            raise ValueError(f"{path} is a link to {target}, outside {directory}: refused")
    return path


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check the JSON config of a directory written by :meth:`PEFTModel.save`.

    Raises:
        FileNotFoundError: If the directory holds no ``peftsmoothing.json``.
        ValueError: If the file is a link out of the directory, is not valid JSON, or is not
            a peftsmoothing model config.
    """
    cfg_path = _file_in(Path(path), CONFIG_FILE)
    if not cfg_path.is_file():
        raise FileNotFoundError(
            f"{path} is not a saved peftsmoothing model: {CONFIG_FILE} not found"
        )
    try:
        config = json.loads(cfg_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{cfg_path} is corrupt (not valid JSON: {err})") from None
    if not isinstance(config, dict) or config.get("format") != _FORMAT:
        raise ValueError(f"{cfg_path} is not a peftsmoothing model config")
    if int(config.get("format_version", 0)) > _FORMAT_VERSION:
        raise ValueError(
            f"{cfg_path} was written by a newer peftsmoothing "
            f"({config.get('peftsmoothing_version')}); upgrade to load it"
        )
    return config


def load(
    base_model: nn.Module | str | os.PathLike[str],
    path: str | os.PathLike[str] | None = None,
    *,
    map_location: Any = None,
    base_weights: str | os.PathLike[str] | None = None,
    **method_overrides: Any,
) -> PEFTModel:
    """Rebuild a model saved with :meth:`PEFTModel.save` around a fresh copy of its base model.

    ``base_model`` must be the same architecture with the same pretrained weights that was
    wrapped before saving (e.g. the same ``timm.create_model(...)`` call). The result computes
    bit-identical outputs to the saved model. ``ps.load(path)`` alone rebuilds the base model
    from the recipe recorded when it was made with :func:`peftsmoothing.create_model` (or given
    as ``metadata={"base_model": {...}}`` to ``save``).

    Loading reads only the directory (docs/security.md): the recipe may name a model in timm's
    registry and architecture options, nothing that fetches or opens other files; a weights
    file is used only when you pass it as ``base_weights``. The frozen weights are checked
    against the fingerprint recorded at save time: another backbone (other weights, same
    shapes) is refused. Directories saved before fingerprints existed load with a warning.

    Args:
        base_model: The original (unwrapped) model, modified in place; or the directory, when
            the base model is to be rebuilt from its recorded recipe.
        path: Directory written by ``save`` (omit when passing it as the first argument).
        map_location: Passed to ``torch.load``; default: the base model's device.
        base_weights: A ``state_dict`` file with the base model's weights, loaded into the
            rebuilt (or given) base model before wrapping, e.g. a backbone you pre-trained
            yourself or timm's weights downloaded on another machine.
        **method_overrides: Method options that replace the saved ones, e.g. a custom
            module that could not be stored in JSON (``denoiser=MyDenoiser()``).

    Returns:
        The wrapped model with the saved tensors loaded.

    Raises:
        FileNotFoundError: If ``path`` holds no saved model, or ``base_weights`` is missing.
        ValueError: If the base model does not fit the saved tensors, its frozen weights are
            not those the model was trained on, the recipe is refused, or a file is corrupt.

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
    if path is None:
        if isinstance(base_model, nn.Module):
            raise TypeError("load(base_model, path): path is missing")
        path = base_model
        config = read_config(path)
        recipe = config.get("base", {}).get("recipe") or config.get("metadata", {}).get(
            "base_model"
        )
        if not recipe:
            raise ValueError(
                f"{path} does not record how to build its base model (it was not made with "
                "ps.create_model); call ps.load(base_model, path) with the base model"
            )
        reason = unreproducible_reason(recipe) if base_weights is None else None
        if reason is not None:
            raise ValueError(
                f"{path}: cannot rebuild its base model: {reason}, so a rebuilt one would have "
                "other weights. Call ps.load(base_model, path) with the original base model "
                "(next time: ps.create_model(..., seed=N) or file=...)"
            )
        source = f"{Path(path) / CONFIG_FILE}"
        base_model = rebuild_base_model(recipe, base_weights=base_weights, source=source)
        origin = (
            f"the weights file you passed (base_weights={os.fspath(base_weights)!r})"
            if base_weights is not None
            else f"the base model rebuilt from its recipe ({recipe.get('name')})"
        )
    elif not isinstance(base_model, nn.Module):
        raise TypeError(f"base_model must be an nn.Module, got {type(base_model).__name__}")
    else:
        config = read_config(path)
        if base_weights is not None:
            from .zoo import _load_weights

            _load_weights(base_model, base_weights)
            origin = f"the weights file you passed (base_weights={os.fspath(base_weights)!r})"
        else:
            origin = "the base model you passed (ps.load(base_model, path))"
    spec = config["spec"]
    normalize: NormalizeArg = None
    if spec.get("mean") is not None:
        normalize = (spec["mean"], spec["std"])
    wrapped = wrap(
        base_model,
        spec["method"],
        num_classes=spec.get("num_classes"),
        head=spec.get("head") if spec.get("num_classes") is None else _user_head(base_model, spec),
        train_head=spec.get("train_head"),
        normalize=normalize,
        input_size=tuple(spec["input_size"]) if spec.get("input_size") else None,
        **{**spec.get("method_config", {}), **method_overrides},
    )
    base = config.get("base", {})
    expected = base.get("num_parameters")
    if expected and expected != wrapped.base_parameters:
        raise ValueError(
            f"base model mismatch: the saved model was built on a "
            f"{base.get('class')} with {expected:,} parameters, but the given base "
            f"model has {wrapped.base_parameters:,}"
        )
    _check_base_fingerprint(base.get("fingerprint"), wrapped, path, origin)
    if map_location is None:
        ref = next(wrapped.parameters(), None)
        map_location = ref.device if ref is not None else "cpu"
    tensors = _read_tensors(Path(path), map_location)
    listed = config.get("tensors")
    trained = wrapped.trained_state_dict()
    problems = [
        f"{k} (not a trained tensor of this model: frozen weights are never saved)"
        for k in tensors
        if k not in trained or (isinstance(listed, dict) and k not in listed)
    ]
    problems += [
        f"{k} (saved {tuple(v.shape)}, model {tuple(trained[k].shape)})"
        for k, v in tensors.items()
        if k in trained and trained[k].shape != v.shape
    ]
    if problems:
        raise ValueError(
            "the saved tensors do not fit this base model: " + ", ".join(problems[:10])
        )
    missing = [n for n, _ in wrapped.named_trainable_parameters() if n not in tensors]
    if missing:
        raise ValueError(f"the saved model lacks trained tensors: {', '.join(missing[:10])}")
    wrapped.load_state_dict(tensors, strict=False)
    return wrapped


def _check_base_fingerprint(
    stored: object, wrapped: PEFTModel, path: str | os.PathLike[str], origin: str
) -> None:
    if stored is None:
        warnings.warn(
            f"{path} was saved without a fingerprint of its frozen weights (peftsmoothing "
            "< 0.2), so whether this base model is the one it was trained on cannot be checked",
            UserWarning,
            stacklevel=3,
        )
        return
    if stored != wrapped.base_fingerprint:
        raise ValueError(
            f"{path} was trained on other frozen weights than those of {origin}: the "
            f"fingerprints differ (saved {str(stored)[:12]}..., given "
            f"{str(wrapped.base_fingerprint)[:12]}...). Its adapters would run on the wrong "
            "backbone; pass the base model (or base_weights=) it was trained on"
        )


def _read_tensors(directory: Path, map_location: Any) -> dict[str, torch.Tensor]:
    """``trainable.pt`` as a dict of tensors, with one-line errors for a bad file."""
    file = _file_in(directory, TENSORS_FILE)
    if not file.is_file():
        raise FileNotFoundError(f"{directory} holds no {TENSORS_FILE}")
    try:
        tensors = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise ValueError(f"{file} is corrupt or truncated ({type(err).__name__}: {err})") from None
    if not isinstance(tensors, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()
    ):
        raise ValueError(f"{file} does not hold a dict of named tensors")
    return tensors


def _user_head(base_model: nn.Module, spec: Mapping[str, Any]) -> str | None:
    """When the head was reset through timm's ``reset_classifier`` let ``wrap`` do that again;
    when it was a user-named module, name it again."""
    if callable(getattr(base_model, "reset_classifier", None)):
        return None
    head = spec.get("head")
    return str(head) if head is not None else None
