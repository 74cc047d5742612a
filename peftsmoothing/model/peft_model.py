"""The wrapped model: [`PEFTModel`][peftsmoothing.PEFTModel] and the
[`WrapSpec`][peftsmoothing.WrapSpec] that rebuilds it.

A [`PEFTModel`][peftsmoothing.PEFTModel] is ``pixel`` (a method's pixel-space module, e.g. a
denoiser; usually empty) -> ``resize`` (optional, e.g. 32 -> 224 px) -> ``normalize`` (mean/std, so
the model takes [0, 1] images; docs/design.md, "Normalization lives in the model") -> ``model`` (the
original network, modified in place by the method). It is built by
[`peftsmoothing.wrap`][peftsmoothing.wrap] (``model/wrapping.py``, which this module does not
import); this module holds the class itself: trainable parameters, merging, the frozen
reference of the ``stability`` loss, saving (the format is in ``model/serialization.py``) and
``push_to_hub``.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from typing_extensions import Self, override

from ..backbones.architecture import TimmCandidate, verify_candidate
from ..backbones.zoo import BASE_ATTR
from ..core.params import freeze_frozen_batchnorm, trained_state_dict
from ..methods.base import Method
from .normalize import Normalize, Resize
from .serialization import base_record, frozen_fingerprint, write_model

if TYPE_CHECKING:
    from ..report.accuracy import CertificationReport

__all__ = ["PEFTModel", "WrapSpec"]


@dataclass(frozen=True)
class WrapSpec:
    """Everything [`wrap`][peftsmoothing.wrap] needs to rebuild a wrapped model around the same base
    model.

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

    Built by [`wrap`][peftsmoothing.wrap]; takes images in [0, 1] and returns the original model's
    output.

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
        base_candidate: TimmCandidate | None = None,
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
        #: SHA-256 of the frozen weights as ``wrap`` found them (a reset head left out); taken
        #: here when not given, so that every save records it.
        self.base_fingerprint = (
            base_fingerprint if base_fingerprint is not None else frozen_fingerprint(model)
        )
        self._base_recipe: dict[str, Any] | None = getattr(model, BASE_ATTR, None)
        # A plain timm model records no recipe: what may rebuild it is verified once, on save.
        self._base_candidate = base_candidate if self._base_recipe is None else None
        self._merged = False

    @property
    def base_recipe(self) -> dict[str, Any] | None:
        """How to rebuild the base model, or ``None`` if that is not known.

        The recipe of [`create_model`][peftsmoothing.create_model] when the base model was
        made with it;
        for a model made with ``timm.create_model``, its timm name (with the pretrained tag)
        and the constructor options that differ from the name's defaults, with
        ``"pretrained": None`` (which weights it held cannot be read from the model). Such a
        recipe is recorded only when a rebuild on the meta device has exactly the wrapped
        model's architecture (every ``state_dict`` key and shape, every submodule's settings);
        it is checked the first time it is needed.

        Examples:
            >>> import timm, peftsmoothing as ps
            >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4)
            >>> recipe = ps.wrap(vit, method="lora", r=4, num_classes=10).base_recipe
            >>> recipe["name"], recipe["pretrained"], recipe["kwargs"]
            ('vit_tiny_patch16_224.augreg_in21k_ft_in1k', None, {'img_size': 32, 'patch_size': 4})
        """
        if self._base_candidate is not None:
            self._base_recipe = verify_candidate(self._base_candidate)
            self._base_candidate = None
        return self._base_recipe

    @base_recipe.setter
    def base_recipe(self, recipe: Mapping[str, Any] | None) -> None:
        # an attribute before 0.2, so assigning it (a recipe of your own, or None) still works
        self._base_recipe = dict(recipe) if recipe is not None else None
        self._base_candidate = None

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(self.resize(self.pixel(x))))

    def forward_without_pixel(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped model without its pixel-space module: resize, normalize, model.

        For the ``denoiser`` method this is the frozen classifier alone, e.g. the reference
        of the ``stability`` loss; for methods without a pixel-space module it equals
        ``forward``.

        Args:
            x: Images in [0, 1], shape ``(N, C, H, W)``.

        Returns:
            The model's output (logits).

        Examples:
            >>> import torch, peftsmoothing as ps
            >>> from torch import nn
            >>> m = ps.wrap(nn.Flatten(), method="denoiser", depth=2, width=4, normalize=None,
            ...             input_size=4)
            >>> m.forward_without_pixel(torch.zeros(1, 3, 2, 2)).shape  # resized to 4 x 4
            torch.Size([1, 48])
        """
        return self.model(self.normalize(self.resize(x)))

    def frozen_reference(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The frozen classifier behind a trained pixel-space module, else ``None``.

        For the ``denoiser`` method (a trained module in front of a frozen classifier) this is
        [`forward_without_pixel`][peftsmoothing.PEFTModel.forward_without_pixel]: the reference of
        the ``stability`` loss. Part of the ``peftsmoothing.core.trainable.Trainable`` contract.

        Examples:
            >>> import peftsmoothing as ps
            >>> from torch import nn
            >>> m = ps.wrap(nn.Flatten(), method="denoiser", depth=2, width=4, normalize=None)
            >>> m.frozen_reference() == m.forward_without_pixel
            True
            >>> ps.wrap(nn.Linear(3, 2), method="full", normalize=None).frozen_reference() is None
            True
        """
        trained_pixel = not isinstance(self.pixel, nn.Identity)
        frozen = not any(p.requires_grad for p in self.model.parameters())
        return self.forward_without_pixel if trained_pixel and frozen else None

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
        yield from ((name, p) for name, p in self.named_parameters() if p.requires_grad)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters that training updates (pass them to an optimizer).

        Examples:
            >>> import torch, peftsmoothing as ps
            >>> from torch import nn
            >>> m = ps.wrap(nn.Linear(3, 2), method="full", normalize=None)
            >>> opt = torch.optim.AdamW(m.trainable_parameters(), lr=1e-3)
        """
        return [p for _, p in self.named_trainable_parameters()]

    @override
    def train(self, mode: bool = True) -> Self:
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

    def merge(self) -> Self:
        """Fold the trained update into the base weights: inference then costs what the base
        model costs. Undo with [`unmerge`][peftsmoothing.PEFTModel.unmerge]. A no-op when already
        merged.

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
        return self._set_merged(True)

    def unmerge(self) -> Self:
        """Undo [`merge`][peftsmoothing.PEFTModel.merge] (restores the base weights up to float
        rounding).

        Examples:
            >>> import timm, peftsmoothing as ps
            >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False,
            ...                         img_size=32, patch_size=4, num_classes=10)
            >>> ps.wrap(vit, method="lora").merge().unmerge().merged
            False
        """
        return self._set_merged(False)

    def _set_merged(self, merged: bool) -> Self:
        if not self.supports_merge:
            name = "merge" if merged else "unmerge"
            raise NotImplementedError(f"method {self.spec.method!r} does not support {name}()")
        if merged != self._merged:
            (self.method.merge if merged else self.method.unmerge)(self.model)
            self._merged = merged
        return self

    @contextlib.contextmanager
    def merged_for_inference(self) -> Iterator[Self]:
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
        unmerge_after = self.supports_merge and not self._merged
        if unmerge_after:
            self.merge()
        try:
            yield self
        finally:
            if unmerge_after:
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

    def save(
        self,
        path: str | os.PathLike[str],
        metadata: Mapping[str, Any] | None = None,
        report: CertificationReport | None = None,
    ) -> Path:
        """Save the trained tensors and a JSON config to the directory ``path``.

        The directory holds ``peftsmoothing.json`` (method, options, head, normalization, the
        base model's recipe (``base_recipe``) and frozen-weights fingerprint, and your
        ``metadata``) and ``trainable.safetensors`` (only trained tensors: kilobytes to a few
        megabytes for PEFT methods). Files are written atomically. Rebuild with
        [`peftsmoothing.load`][peftsmoothing.load].

        Args:
            path: Output directory (created if needed).
            metadata: Extra JSON-serialisable information stored in the config.
            report: A certification of this model, read from a log with its settings file
                ([`CertificationReport.from_log`][peftsmoothing.CertificationReport.from_log]):
                also write the certification card ``README.md`` (``peftsmoothing.model.card``).

        Raises:
            ValueError: If ``report`` certified another model, or lacks its settings.

        Returns:
            The directory path.

        Examples:
            >>> import tempfile, timm, peftsmoothing as ps
            >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False,
            ...                         img_size=32, patch_size=4, num_classes=10)
            >>> m = ps.wrap(vit, method="lora", r=4)
            >>> out = m.save(tempfile.mkdtemp())
            >>> sorted(p.name for p in out.iterdir())
            ['peftsmoothing.json', 'trainable.safetensors']
        """
        # Merged base weights are never saved (only trained tensors are), so saving a merged
        # model is exact too.
        base = base_record(
            self.model,
            num_parameters=self.base_parameters,
            fingerprint=self.base_fingerprint,
            recipe=self.base_recipe,
        )
        if report is not None:
            from ..core.fingerprint import model_fingerprint

            if (report.settings or {}).get("model_sha256") != model_fingerprint(self):
                raise ValueError(
                    "the report certified another model (its log's model_sha256 differs), or "
                    "has no settings: pass CertificationReport.from_log(...) of this model"
                )
        out = write_model(
            path,
            spec=asdict(self.spec),
            base=base,
            tensors=self.trained_state_dict(),
            metadata=metadata,
        )
        if report is not None:
            from .card import write_card

            write_card(out, {report.name or "certification": report})
        return out

    def push_to_hub(
        self,
        repo_id: str,
        report: CertificationReport | None = None,
        *,
        private: bool = False,
        token: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Save the model with its certification card and upload it to the Hugging Face Hub.

        ``ps.load("hf-hub:" + repo_id)`` loads it back through every check of a local
        directory. Needs ``pip install 'peftsmoothing[hub]'`` and a Hub login (or ``token``).

        Args:
            repo_id: ``user/name`` (created if it does not exist).
            report: A certification of this model read from its log (the card's tables).
            private: Create the repository private.
            token: A Hub token.
            metadata: As for ``save``.

        Returns:
            The commit's URL.

        Raises:
            ValueError: If ``report`` certified another model.
            ImportError: If ``huggingface_hub`` is not installed.

        Examples:
            >>> import peftsmoothing as ps
            >>> from torch import nn
            >>> m = ps.wrap(nn.Linear(4, 2), method="full", normalize=None)
            >>> m.push_to_hub("not a repo name")
            Traceback (most recent call last):
            ...
            ValueError: 'not a repo name': a Hub model is hf-hub:user/name[@revision]
        """
        import tempfile

        from .card import write_card
        from .hub import hub_repo, upload_directory

        hub_repo(repo_id)  # a malformed name fails before anything is written
        with tempfile.TemporaryDirectory() as folder:
            out = self.save(folder, metadata=metadata, report=report)
            if report is None:
                write_card(out, {})
            return upload_directory(out, repo_id, private=private, token=token)

    @override
    def extra_repr(self) -> str:
        return f"method={self.spec.method!r}, merged={self._merged}"
