"""HF peft adapters (LoRA, DoRA, IA3, LoHa, LoKr, OFT) on timm / torchvision models.

The ``peft`` method applies a `peft <https://github.com/huggingface/peft>`_ config object to
the frozen model in place through peft's custom-model support
(``peft.inject_adapter_in_model``), or loads an adapter directory that
``PeftModel.save_pretrained`` wrote (``adapter_config.json`` + ``adapter_model.safetensors``).
It is registered only when peft is installed (``pip install peftsmoothing[peft]``); this module
imports peft lazily, so ``import peftsmoothing`` neither needs peft nor pays for importing it.

A saved model stores the peft config as JSON (its ``to_dict()``, sets as sorted lists) with the
name of its class, and rebuilds it on load from an allow-list of peft's own config classes
(``ALLOWED_CONFIGS``): a file never names the class or module to build, and may set only
reviewed options (``peft_options``; docs/security.md).
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import importlib.util
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..backbones import recipes
from ..core.files import file_inside, read_json
from .base import Method, MethodConfig, MethodContext, register_method
from .peft_options import check_patterns, check_reviewed_options, check_work

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_WEIGHTS_FILE",
    "ALLOWED_CONFIGS",
    "MIN_ADAPTER_BYTES",
    "PeftMethod",
    "PeftMethodConfig",
    "peft_available",
]

#: The peft config classes the ``peft`` method builds (from a saved model or an adapter
#: directory); each is applied with ``inject_adapter_in_model`` and supports merging.
ALLOWED_CONFIGS = ("LoraConfig", "LoHaConfig", "LoKrConfig", "IA3Config", "OFTConfig")
#: The config file of a peft adapter directory.
ADAPTER_CONFIG_FILE = "adapter_config.json"
#: The weights file of a peft adapter directory (safetensors: no pickled code).
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
#: An adapter read from a file (a saved model's config, an adapter directory) may hold as many
#: bytes as the model it adapts, and at least this many, but never more than
#: ``peftsmoothing.backbones.recipes.MAX_BYTES`` (``None`` there: not sized at all).
MIN_ADAPTER_BYTES = 64 * 2**20
_ADAPTER = "default"
_PREFIX = "base_model.model."  # what a PeftModel puts in front of its model's keys


def peft_available() -> bool:
    """Whether HF peft is installed (found without importing it).

    Examples:
        >>> peft_available()
        True
    """
    try:
        return importlib.util.find_spec("peft") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["peft"] is None
        return False


def _peft() -> Any:
    try:
        import peft
    except ImportError as err:
        raise ImportError(
            "the 'peft' method needs HF peft: pip install 'peftsmoothing[peft]'"
        ) from err
    return peft


def _config_class(name: str, source: str) -> type:
    if name not in ALLOWED_CONFIGS:
        raise ValueError(
            f"{source}: peft config class {name!r} is not allowed; allowed: "
            f"{', '.join(ALLOWED_CONFIGS)}"
        )
    return getattr(_peft(), name)


def _class_for_type(peft_type: object, source: str) -> str:
    peft = _peft()
    cls = peft.PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type) if isinstance(peft_type, str) else None
    if cls is not None and cls.__name__ in ALLOWED_CONFIGS:
        return str(cls.__name__)
    raise ValueError(
        f"{source}: peft_type {peft_type!r} is not allowed; allowed config classes: "
        f"{', '.join(ALLOWED_CONFIGS)}"
    )


def _checked(config: Any, source: str, *, yours: bool = False) -> Any:
    """Refuse options this method cannot honour, and patterns or work out of bounds (only
    warned about for ``yours``, a config object of your own code: a saved copy of it will not
    load); return a copy that trains the adapter."""
    check_reviewed_options(config, source)
    try:
        check_patterns(config, source)
        check_work(config, source)
    except ValueError as err:
        if not yours:
            raise
        # stack: _checked <- __post_init__ <- __init__ <- from_kwargs <- wrap <- your code
        warnings.warn(f"{err}; a saved copy of this model will not load", stacklevel=6)
    config = copy.deepcopy(config)  # peft keeps (and may change) the object it is given
    config.inference_mode = False  # the adapter is trained, and saved with the trained tensors
    return config


def config_from_dict(
    values: Mapping[str, Any], class_name: str | None = None, source: str = "peft"
) -> Any:
    """Build an allowed peft config from its ``to_dict()`` / ``adapter_config.json`` values.

    The class is ``class_name`` or the one peft maps ``values["peft_type"]`` to, and must be in
    ``ALLOWED_CONFIGS``; keys that are not options of that class are dropped with a warning
    (as peft itself does for configs of newer versions). The values are checked as read from
    a file: numbers are bounded (``recipes.check_numbers``), module names and regular
    expressions too (``peft_options.check_patterns``), and so is the work each merge repeats
    (``peft_options.check_work``).

    Args:
        values: The config's options.
        class_name: The config class (``"LoraConfig"``, ...); default: from ``peft_type``.
        source: Where the values came from, for messages.

    Returns:
        The peft config object (with ``inference_mode=False``).

    Raises:
        ValueError: For a class or ``peft_type`` that is not allowed, invalid options, a
            number or pattern out of bounds.

    Examples:
        >>> config_from_dict({"peft_type": "LORA", "r": 4, "target_modules": ["qkv"]}).r
        4
        >>> config_from_dict({}, "PromptTuningConfig")
        Traceback (most recent call last):
        ...
        ValueError: peft: peft config class 'PromptTuningConfig' is not allowed; allowed: LoraConfig, LoHaConfig, LoKrConfig, IA3Config, OFTConfig
    """  # noqa: E501
    if not isinstance(values, Mapping):
        raise ValueError(f"{source}: a peft config must be a JSON object, got {values!r}")
    recipes.check_numbers(values, source)
    peft_type = values.get("peft_type")
    cls = _config_class(class_name or _class_for_type(peft_type, source), source)
    if class_name and peft_type is not None and _class_for_type(peft_type, source) != class_name:
        raise ValueError(f"{source}: peft_type {peft_type!r} does not match {class_name}")
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(k for k in values if k not in fields)
    if unknown:
        warnings.warn(
            f"{source}: ignoring options {cls.__name__} does not know: {', '.join(unknown)}",
            UserWarning,
            stacklevel=3,
        )
    kwargs = {k: v for k, v in values.items() if k in fields and k != "peft_type"}
    try:
        config = cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: invalid {cls.__name__}: {err}") from None
    return _checked(config, source)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A peft config as JSON values: ``to_dict()`` with sets as sorted lists, enums as values.

    Examples:
        >>> from peft import LoraConfig
        >>> d = config_to_dict(LoraConfig(r=4, target_modules=["qkv", "proj"]))
        >>> d["peft_type"], d["target_modules"]
        ('LORA', ['proj', 'qkv'])
    """

    def plain(value: object) -> Any:  # what json cannot write by itself
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, (set, frozenset)):
            return sorted(value, key=str)
        name = type(config).__name__
        raise TypeError(f"peft: {name} holds a {type(value).__name__}, which JSON cannot store")

    return json.loads(json.dumps(config.to_dict(), default=plain))


def _adapter_file(directory: Path, name: str) -> Path:
    path = file_inside(directory, name)
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a peft adapter directory: no {name}")
    return path


def read_adapter_config(directory: str | os.PathLike[str]) -> Any:
    """The allowed peft config of an adapter directory (``adapter_config.json``).

    Raises:
        FileNotFoundError: If the directory has no ``adapter_config.json``.
        ValueError: If the file is not JSON or names a config type that is not allowed.
    """
    path = _adapter_file(Path(directory), ADAPTER_CONFIG_FILE)
    return config_from_dict(read_json(path), None, str(path))


@dataclass(frozen=True)
class PeftMethodConfig(MethodConfig):
    """Options of the ``peft`` method: one of ``config`` or ``adapter``.

    Attributes:
        config: A peft config object of an allowed class (``ALLOWED_CONFIGS``), e.g.
            ``peft.LoraConfig(r=8, target_modules=["qkv"], use_dora=True)``; or its dict, as
            a saved model stores it (then ``config_class`` names the class).
        config_class: The class name of a config given as a dict.
        adapter: A directory written by ``PeftModel.save_pretrained``: its config is read
            from ``adapter_config.json`` and its weights from ``adapter_model.safetensors``.
            A saved model does not record it: the loaded weights are trained tensors, so
            they are saved with the model.

    A config read from a file (``adapter``, or a dict as a saved model stores it) is bounded
    (numbers, patterns: ``config_from_dict``) and its adapter is sized before it is built.
    """

    config: Any = None
    config_class: str | None = None
    adapter: str | None = None
    #: Whether ``config`` was read from a file (not an option: set by ``__post_init__``).
    _from_file = False

    def __post_init__(self) -> None:
        if self.adapter is not None:
            if self.config is not None:
                raise ValueError("peft: pass config= or adapter=, not both")
            self._normalize(adapter=os.fspath(self.adapter))
            config = read_adapter_config(self.adapter)
        elif self.config is None:
            raise ValueError(
                "peft: pass config=<a peft config, e.g. peft.LoraConfig(target_modules="
                "['qkv'])> or adapter=<a directory written by PeftModel.save_pretrained>"
            )
        elif isinstance(self.config, Mapping):
            config = config_from_dict(self.config, self.config_class, "peft: config")
        else:
            name = type(self.config).__name__
            if type(self.config) is not _config_class(name, "peft: config"):
                raise ValueError(f"peft: config must be a peft.{name}, not a subclass of it")
            config = _checked(self.config, "peft: config", yours=True)
        name = type(config).__name__
        if self.config_class is not None and self.config_class != name:
            raise ValueError(f"peft: config_class={self.config_class!r} but config is a {name}")
        from_file = self.adapter is not None or isinstance(self.config, Mapping)
        self._normalize(config=config, config_class=name, _from_file=from_file)

    @classmethod
    def saved_keys(cls) -> frozenset[str]:
        """``config`` and ``config_class``: the adapter path is never read from a saved model.

        Examples:
            >>> sorted(PeftMethodConfig.saved_keys())
            ['config', 'config_class']
        """
        return frozenset({"config", "config_class"})

    def to_dict(self) -> dict[str, Any]:
        """The config class and its options as JSON (the adapter path is not stored).

        Examples:
            >>> from peft import IA3Config
            >>> c = PeftMethodConfig(config=IA3Config(target_modules=["fc2"],
            ...                                       feedforward_modules=["fc2"]))
            >>> d = c.to_dict()
            >>> d["config_class"], d["config"]["feedforward_modules"]
            ('IA3Config', ['fc2'])
            >>> PeftMethodConfig(**d).config == c.config
            True
        """
        return {"config": config_to_dict(self.config), "config_class": self.config_class}


class PeftMethod(Method[PeftMethodConfig]):
    """HF peft adapters through ``inject_adapter_in_model``; merges into the base weights.

    Examples:
        >>> import timm, torch, peftsmoothing as ps
        >>> from peft import LoraConfig
        >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False,
        ...                         img_size=32, patch_size=4, num_classes=10)
        >>> m = ps.wrap(vit, method="peft", config=LoraConfig(r=4, target_modules=["qkv"]))
        >>> ps.parameter_report(m).trainable  # 12 blocks * r * (192 + 576): q, k and v
        36864
        >>> m(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    description = "HF peft adapters (LoRA, DoRA, IA3, LoHa, LoKr, OFT) from a peft config"
    Config = PeftMethodConfig
    supports_merge = True

    def apply(self, model: nn.Module, context: MethodContext) -> None:
        self._originals: dict[str, dict[str, torch.Tensor]] = {}  # kept by merge for unmerge
        cfg = self.config
        if cfg._from_file:
            where = Path(cfg.adapter, ADAPTER_CONFIG_FILE) if cfg.adapter else "peft: config"
            _check_adapter_size(cfg.config, model, str(where))
        _inject(cfg.config, model)
        if cfg.adapter is not None:
            _load_adapter_weights(model, Path(cfg.adapter))

    def _tuner_layers(self, model: nn.Module) -> list[tuple[str, Any]]:
        from peft.tuners.tuners_utils import BaseTunerLayer

        return [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]

    @torch.no_grad()
    def merge(self, model: nn.Module) -> None:
        """Merge every adapter layer, keeping a copy of all its tensors for ``unmerge``."""
        for name, layer in self._tuner_layers(model):
            if not layer.merged:
                self._originals[name] = {n: t.clone() for n, t in _tensors(layer).items()}
                layer.merge()

    @torch.no_grad()
    def unmerge(self, model: nn.Module) -> None:
        """Unmerge, then restore every tensor of the layer exactly: peft subtracts or divides
        the update back out, which leaves float rounding in the frozen weights, and OFT's
        ``coft`` projects the trained ``oft_R`` in place when it merges."""
        for name, layer in self._tuner_layers(model):
            if layer.merged:
                with warnings.catch_warnings():  # (IA)^3: "Unmerge result can be inaccurate"
                    warnings.filterwarnings("ignore", "Unmerge result", UserWarning)
                    layer.unmerge()
                saved = self._originals.pop(name, None)
                if saved is not None:
                    for n, t in _tensors(layer).items():
                        t.copy_(saved[n])


def _inject(config: Any, model: nn.Module) -> None:
    """``peft.inject_adapter_in_model`` with a copy of ``config`` (peft keeps the object)."""
    try:
        _peft().inject_adapter_in_model(copy.deepcopy(config), model, adapter_name=_ADAPTER)
    except ValueError as err:
        raise ValueError(f"peft: {err}") from err


def _tensors(layer: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of an adapter layer: its base layer's and the adapter's."""
    return {n: t.detach() for n, t in [*layer.named_parameters(), *layer.named_buffers()]}


def _bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def _check_adapter_size(config: Any, model: nn.Module, source: str) -> None:
    """Build the adapter on a meta-device copy of ``model`` (shapes only, no memory) and
    refuse it above the model's own size (at least ``MIN_ADAPTER_BYTES``) or
    ``recipes.MAX_BYTES``."""
    limit = recipes.MAX_BYTES
    if limit is None:
        return
    base = _bytes(model)
    limit = min(limit, max(base, MIN_ADAPTER_BYTES))
    memo: dict[int, Any] = {}
    for t in [*model.parameters(), *model.buffers()]:
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, t.requires_grad) if isinstance(t, nn.Parameter) else meta
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            skeleton = copy.deepcopy(model, memo)
            _inject(config, skeleton)
    except (TypeError, RuntimeError, NotImplementedError, AssertionError) as err:
        raise ValueError(
            f"{source}: cannot size the adapter on the meta device ({err}); set "
            "peftsmoothing.backbones.recipes.MAX_BYTES = None to build it unsized, if you trust it"
        ) from None
    size = _bytes(skeleton) - base
    if size > limit:
        raise ValueError(
            f"{source}: refusing an adapter of {size:,} bytes (more than {limit:,}: the size of "
            f"the model it adapts, at least {MIN_ADAPTER_BYTES:,}, at most "
            "peftsmoothing.backbones.recipes.MAX_BYTES); set that to None if you trust this file"
        )


def _load_adapter_weights(model: nn.Module, directory: Path) -> None:
    """Load ``adapter_model.safetensors`` into the injected adapter, refusing keys that do not
    fit it exactly (a key of the frozen model, a missing adapter key, another shape)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    path = _adapter_file(directory, ADAPTER_WEIGHTS_FILE)
    try:
        raw = load_file(str(path))
    except Exception as err:  # safetensors raises its own types for a corrupt file
        raise ValueError(f"{path} is corrupt ({type(err).__name__}: {err})") from None
    state = {k.removeprefix(_PREFIX): v for k, v in raw.items()}
    expected = get_peft_model_state_dict(model, adapter_name=_ADAPTER)
    problems = [f"{k} (not a key of this adapter)" for k in state if k not in expected]
    problems += [f"{k} (missing)" for k in expected if k not in state]
    problems += [
        f"{k} (file {tuple(v.shape)}, model {tuple(expected[k].shape)})"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if problems:
        raise ValueError(f"{path} does not fit this model: {', '.join(problems[:10])}")
    state = {k: v.to(device=expected[k].device, dtype=expected[k].dtype) for k, v in state.items()}
    result: Any = set_peft_model_state_dict(model, state, adapter_name=_ADAPTER)
    if result.unexpected_keys:
        raise ValueError(f"{path}: unexpected keys {', '.join(result.unexpected_keys[:10])}")


if peft_available():  # only then is the method listed; without peft it does not exist
    register_method("peft")(PeftMethod)
