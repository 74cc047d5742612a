"""Public names deprecated in 0.2 still work, warn, and say when they go (0.3)."""

from __future__ import annotations

import warnings

import pytest

import peftsmoothing as ps
from peftsmoothing import datasets


def test_method_context_extra_warns_only_when_used() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        ctx = ps.MethodContext(head_name="head")  # the default does not warn
        assert ctx == ps.MethodContext(head_name="head")
    with pytest.warns(DeprecationWarning, match="MethodContext.extra.*removed in 0.3"):
        ctx = ps.MethodContext(extra={"a": 1})
    with pytest.warns(DeprecationWarning, match="removed in 0.3"):
        assert ctx.extra == {"a": 1}


def test_normalize_as_lists_warns() -> None:
    with pytest.warns(DeprecationWarning, match="as_lists.*removed in 0.3"):
        assert ps.Normalize((0.5,), (0.25,)).as_lists() == ([0.5], [0.25])


def test_cifar10_classes_warns() -> None:
    with pytest.warns(DeprecationWarning, match="CIFAR10_CLASSES.*removed in 0.3"):
        assert datasets.CIFAR10_CLASSES[9] == "truck"
    with pytest.raises(AttributeError):
        datasets.NO_SUCH_NAME  # noqa: B018
