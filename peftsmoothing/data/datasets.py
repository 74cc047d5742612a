"""Image datasets that yield ``(float CHW tensor in [0, 1], int label)``, no normalization.

Normalization lives inside the model (docs/design.md, "Normalization lives in the model"), so
every dataset here returns raw pixels scaled to [0, 1]. CIFAR-10/100 are read from their
standard python format directly, which also accepts subsets of the official files (torchvision
refuses those because it checks md5 sums); ``download=True`` fetches the official archive
through torchvision first.
"""

from __future__ import annotations

import codecs
import os
import pickle
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..core.validation import check_choice
from .preprocessing import preprocessing_config, preprocessing_transform

try:  # numpy >= 2 keeps the implementation in numpy._core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

__all__ = [
    "CIFAR10_CLASSES",  # noqa: F822  (deprecated: served by __getattr__ with a warning)
    "DATASETS",
    "ArrayDataset",
    "cifar10_sample",
    "load_cifar",
    "load_dataset",
    "num_classes",
    "preprocessing_config",
    "preprocessing_transform",
]

# CIFAR-10 class names, in label order: ``datasets.CIFAR10_CLASSES``, deprecated (nothing uses it;
# removed in 0.3), still served by the module ``__getattr__`` below with a DeprecationWarning.
_CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

#: Dataset names understood by [`load_dataset`][peftsmoothing.data.datasets.load_dataset],
#: with their number of classes (``None``: read from the folder).
DATASETS: dict[str, int | None] = {
    "cifar10": 10,
    "cifar100": 100,
    "imagenet": 1000,
    "imagefolder": None,
}


class ArrayDataset(Dataset[tuple[torch.Tensor, int]]):
    """Images held in memory as ``uint8`` NHWC, served as float CHW tensors in [0, 1].

    Args:
        images: ``uint8`` array of shape (N, H, W, C).
        labels: Integer labels, shape (N,).
        image_size: Resize (bilinear, antialiased) to this square size, e.g. 224 for a ViT-B/16.
        augment: Random crop (4-pixel zero padding) and horizontal flip, for training.
        transform: Optional callable applied to each float tensor last.

    Examples:
        >>> import numpy as np
        >>> ds = ArrayDataset(np.full((2, 4, 4, 3), 255, np.uint8), np.array([0, 1]))
        >>> x, y = ds[1]
        >>> tuple(x.shape), float(x.max()), y
        ((3, 4, 4), 1.0, 1)
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        image_size: int | None = None,
        augment: bool = False,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 of shape (N, H, W, C), got {images.dtype} {images.shape}"
            )
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.image_size = image_size
        self.augment = augment
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index].permute(2, 0, 1).float().div_(255.0)
        if self.augment:
            h, w = x.shape[-2:]
            padded = F.pad(x, (4, 4, 4, 4))
            i, j = (int(v) for v in torch.randint(0, 9, (2,)))
            x = padded[:, i : i + h, j : j + w]
            if bool(torch.rand(()) < 0.5):
                x = x.flip(-1)
        if self.image_size is not None and tuple(x.shape[-2:]) != (self.image_size,) * 2:
            x = F.interpolate(
                x[None], size=(self.image_size, self.image_size), mode="bilinear",
                align_corners=False, antialias=True,
            )[0].clamp_(0.0, 1.0)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[index])


#: The only globals a CIFAR batch file may name: how numpy arrays, and Python 3 bytes at
#: protocol 2, are pickled (``numpy._core`` is numpy 2's name of ``numpy.core``).
_ARRAY_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds only what CIFAR's python-format files hold: dicts, lists,
    strings, bytes, numbers and numpy arrays. Any other global (a function to call, a class to
    build) is refused, so a crafted batch file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ARRAY_GLOBALS.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: CIFAR batch files hold only arrays, "
                "lists, dicts and strings"
            )
        return allowed


def _unpickle(path: Path) -> dict[str, Any]:
    """Read one CIFAR python-format batch file with ``_ArrayUnpickler``.

    Raises:
        ValueError: If the file holds anything but plain data and numpy arrays, or is not a
            dict (a crafted or corrupted file); the message names the file.

    Examples:
        >>> import pickle, tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "batch"
        >>> _ = p.write_bytes(pickle.dumps({b"labels": [1, 2]}, protocol=2))
        >>> _unpickle(p)
        {'labels': [1, 2]}
        >>> _ = p.write_bytes(pickle.dumps(print))
        >>> _unpickle(p)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ...batch is not a CIFAR batch file: refusing to load builtins.print: ...
    """
    try:
        with open(path, "rb") as f:
            raw = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{path} is not a CIFAR batch file: {err}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} is not a CIFAR batch file: it holds a {type(raw).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _cifar_dir(root: Path, folder: str) -> Path:
    for candidate in (root / folder, root):
        if (candidate / "test_batch").is_file() or (candidate / "test").is_file():
            return candidate
    raise FileNotFoundError(
        f"no {folder}/ found under {root}; pass --root pointing at the folder that contains "
        f"{folder}/ (the standard python format), or download=True"
    )


def load_cifar(root: str | os.PathLike[str], train: bool, cifar100: bool = False) -> tuple[
    np.ndarray, np.ndarray
]:
    """Read CIFAR-10/100 from the standard python format as ``(uint8 NHWC, int64 labels)``.

    Any subset of the official batch files in that format works (no md5 check).

    Examples:
        >>> import pathlib
        >>> root = pathlib.Path("../shared/data")
        >>> if (root / "cifar-10-batches-py").is_dir():
        ...     x, y = load_cifar(root, train=False)
        ...     print(x.dtype, x.shape[1:], y[:4].tolist())
        ... else:
        ...     print("uint8 (32, 32, 3) [3, 8, 8, 0]")
        uint8 (32, 32, 3) [3, 8, 8, 0]
    """
    base = _cifar_dir(Path(root), "cifar-100-python" if cifar100 else "cifar-10-batches-py")
    if cifar100:
        files = [base / ("train" if train else "test")]
    else:
        files = sorted(base.glob("data_batch_*")) if train else [base / "test_batch"]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(f"CIFAR files missing under {base}")
    batches = [_unpickle(f) for f in files]
    x = np.concatenate([np.asarray(d["data"], np.uint8).reshape(-1, 3, 32, 32) for d in batches])
    label_key = "fine_labels" if cifar100 else "labels"
    y = np.concatenate([np.asarray(d[label_key], np.int64) for d in batches])
    return x.transpose(0, 2, 3, 1), y


def _split_dir(root: Path, train: bool) -> Path:
    for name in ("train",) if train else ("val", "test"):
        if (root / name).is_dir():
            return root / name
    return root


def load_dataset(
    name: str,
    root: str | os.PathLike[str],
    train: bool,
    *,
    image_size: int | None = None,
    augment: bool | None = None,
    download: bool = False,
    preprocessing: Mapping[str, Any] | None = None,
) -> Dataset[Any]:
    """Load a dataset by name; items are ``(float CHW tensor in [0, 1], int label)``.

    Args:
        name: ``"cifar10"``, ``"cifar100"``, ``"imagenet"`` (an ImageFolder tree with
            ``train/`` and ``val/``) or ``"imagefolder"`` (``root/{train,val|test}`` or
            ``root`` itself).
        root: Data directory. For CIFAR: the folder containing ``cifar-10-batches-py/``
            (or that folder itself).
        train: Training split (with augmentation by default) or test/validation split.
        image_size: Resize CIFAR images to this size (e.g. 224); crop size for folders
            (replaces the size in ``preprocessing``; default 224).
        augment: Training augmentation (CIFAR: crop + flip); default ``train``.
        download: For CIFAR, download the official files through torchvision if missing.
        preprocessing: For folders: ``preprocessing_config`` (e.g. of the model, to follow
            timm's data config). Default: 224 px, ``crop_pct`` 0.875, bilinear. CIFAR tensors
            are not affected.

    Returns:
        A ``torch.utils.data.Dataset``.

    Raises:
        ValueError: For an unknown dataset name.
        FileNotFoundError: If the data is not under ``root``.

    Examples:
        >>> import pathlib
        >>> root = pathlib.Path("../shared/data")
        >>> if (root / "cifar-10-batches-py").is_dir():
        ...     x, y = load_dataset("cifar10", root, train=False)[0]
        ...     print(tuple(x.shape), y)
        ... else:
        ...     print((3, 32, 32), 3)
        (3, 32, 32) 3
    """
    key = check_choice(name.lower(), "dataset", DATASETS)
    augment = train if augment is None else augment
    if key in ("cifar10", "cifar100"):
        if download:
            from torchvision.datasets import CIFAR10, CIFAR100

            official = CIFAR100 if key == "cifar100" else CIFAR10
            official(os.fspath(root), train=train, download=True)
        x, y = load_cifar(root, train, cifar100=key == "cifar100")
        return ArrayDataset(x, y, image_size=image_size, augment=augment)
    folder = _split_dir(Path(root), train)  # ImageFolder raises FileNotFoundError if missing
    config = dict(preprocessing) if preprocessing is not None else preprocessing_config()
    if image_size is not None:
        config["image_size"] = [image_size, image_size]
    from torchvision.datasets import ImageFolder

    return ImageFolder(str(folder), transform=preprocessing_transform(config, train and augment))


def num_classes(name: str, root: str | os.PathLike[str] | None = None) -> int:
    """Number of classes of a dataset (``imagefolder`` counts the class folders under ``root``).

    Examples:
        >>> num_classes("cifar10"), num_classes("cifar100")
        (10, 100)
    """
    known = DATASETS[check_choice(name.lower(), "dataset", DATASETS)]
    if known is not None:
        return known
    if root is None:
        raise ValueError(f"num_classes({name!r}) needs root= to count the class folders")
    folder = _split_dir(Path(root), True)
    return sum(1 for p in folder.iterdir() if p.is_dir())


def cifar10_sample(
    train: bool = True, *, augment: bool | None = None, image_size: int | None = None
) -> ArrayDataset:
    """A small real CIFAR-10 sample shipped inside the package (works offline).

    2,000 training images (200 per class) and 500 test images (the first 500 of the official
    test set, in order), taken from CIFAR-10 (Krizhevsky, Nair & Hinton, 2009) by
    ``examples/make_demo_assets.py``.

    Args:
        train: The training (2,000) or test (500) part.
        augment: Random crop + flip; default ``train``.
        image_size: Resize to this size (prefer ``ps.wrap(..., input_size=...)``, which keeps
            certified radii at the native 32x32 resolution).

    Returns:
        An [`ArrayDataset`][peftsmoothing.data.datasets.ArrayDataset] of
        ``(float CHW tensor in [0, 1], int label)``.

    Examples:
        >>> test = cifar10_sample(train=False)
        >>> len(test), [test[i][1] for i in range(4)]
        (500, [3, 8, 8, 0])
    """
    from importlib import resources

    path = resources.files("peftsmoothing") / "assets" / "cifar10_sample.npz"
    with resources.as_file(path) as p, np.load(p) as data:
        split = "train" if train else "test"
        x, y = data[f"x_{split}"], data[f"y_{split}"]
    return ArrayDataset(
        x, y, augment=train if augment is None else augment, image_size=image_size
    )


def __getattr__(name: str) -> Any:
    """Deprecated module attributes (``CIFAR10_CLASSES``), served with a warning.

    Examples:
        >>> import warnings
        >>> from peftsmoothing import datasets
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     datasets.CIFAR10_CLASSES[0], caught[0].category.__name__
        ('airplane', 'DeprecationWarning')
    """
    if name == "CIFAR10_CLASSES":
        warnings.warn(
            "peftsmoothing.data.datasets.CIFAR10_CLASSES is deprecated and will be removed in 0.3 "
            "(nothing uses it)",
            DeprecationWarning,
            stacklevel=2,
        )
        return _CIFAR10_CLASSES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
