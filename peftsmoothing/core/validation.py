"""Argument checks shared by every module: one wording for one kind of mistake.

Each ``check_*`` returns the value converted to its plain Python type, or raises
``ValueError`` naming the argument and what it got. ``bool`` is never accepted as a number
(``True`` is an ``int`` in Python, but ``n=True`` is always a mistake).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

__all__ = [
    "check_alpha",
    "check_choice",
    "check_int",
    "check_positive_int",
    "check_real",
    "check_sigma",
    "is_int",
]


def is_int(value: object) -> bool:
    """Whether ``value`` is an integer (a Python or numpy integer, not a ``bool``).

    Examples:
        >>> is_int(3), is_int(True), is_int(3.0)
        (True, False, False)
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _requirement(
    what: str, low: float | None, high: float | None, left: str, right: str, fmt: str
) -> str:
    """What a bounded argument must be, as error messages say it: ``an integer >= 1``,
    ``a finite number in [0, 1)`` (``left``/``right``: the interval's brackets; ``fmt``: how
    the bounds are written)."""
    if low is not None and high is not None:
        return f"{what} in {left}{low:{fmt}}, {high:{fmt}}{right}"
    if low is not None:
        return f"{what} {'>' if left == '(' else '>='} {low:{fmt}}"
    if high is not None:
        return f"{what} {'<' if right == ')' else '<='} {high:{fmt}}"
    return what


def check_int(
    value: object, name: str, minimum: int | None = None, maximum: int | None = None
) -> int:
    """Return ``value`` as an ``int`` if it is an integer within ``[minimum, maximum]``.

    Args:
        value: The value to check.
        name: The argument's name, used in the error message.
        minimum: Smallest allowed value (``None``: no bound).
        maximum: Largest allowed value (``None``: no bound).

    Returns:
        ``int(value)``.

    Raises:
        ValueError: If ``value`` is not an integer in range.

    Examples:
        >>> check_int(0, "skip", minimum=0)
        0
        >>> check_int(-1, "max", minimum=0)
        Traceback (most recent call last):
        ...
        ValueError: max must be an integer >= 0, got -1
    """
    low = -math.inf if minimum is None else minimum
    high = math.inf if maximum is None else maximum
    if not is_int(value) or not low <= int(value) <= high:  # type: ignore[call-overload]
        need = _requirement("an integer", minimum, maximum, "[", "]", "")
        raise ValueError(f"{name} must be {need}, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` as an ``int`` if it is an integer >= 1, else raise ``ValueError``.

    Args:
        value: The value to check (``bool`` is rejected).
        name: The argument's name, used in the error message.

    Returns:
        ``int(value)``.

    Raises:
        ValueError: If ``value`` is not an integer >= 1.

    Examples:
        >>> check_positive_int(100, "n")
        100
        >>> check_positive_int(0, "n0")
        Traceback (most recent call last):
        ...
        ValueError: n0 must be an integer >= 1, got 0
    """
    return check_int(value, name, minimum=1)


def check_real(
    value: object,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a finite ``float`` within the given bounds.

    Args:
        value: The value to check.
        name: The argument's name, used in the error message.
        low: Lower bound (``None``: none).
        high: Upper bound (``None``: none).
        low_open: Exclude ``low`` itself.
        high_open: Exclude ``high`` itself.

    Returns:
        ``float(value)``.

    Raises:
        ValueError: If ``value`` is not a finite real number within the bounds.

    Examples:
        >>> check_real(0.2, "val_fraction", low=0, high=1, high_open=True)
        0.2
        >>> check_real(1.5, "val_fraction", low=0, high=1, high_open=True)
        Traceback (most recent call last):
        ...
        ValueError: val_fraction must be a finite number in [0, 1), got 1.5
    """
    need = _requirement(
        "a finite number", low, high, "(" if low_open else "[", ")" if high_open else "]", "g"
    )
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be {need}, got {value!r}")
    v = float(value)
    below = low is not None and (v <= low if low_open else v < low)
    above = high is not None and (v >= high if high_open else v > high)
    if not math.isfinite(v) or below or above:
        raise ValueError(f"{name} must be {need}, got {value!r}")
    return v


def check_alpha(alpha: object) -> float:
    """Return ``alpha`` as a ``float`` if it lies strictly between 0 and 1, else raise.

    Args:
        alpha: Failure probability of a certificate (e.g. ``0.001``).

    Returns:
        ``float(alpha)``.

    Raises:
        ValueError: If ``alpha`` is not a real number in the open interval (0, 1).

    Examples:
        >>> check_alpha(0.001)
        0.001
        >>> check_alpha(1.0)
        Traceback (most recent call last):
        ...
        ValueError: alpha must be a number in the open interval (0, 1), got 1.0
    """
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < float(alpha) < 1:
        raise ValueError(f"alpha must be a number in the open interval (0, 1), got {alpha!r}")
    return float(alpha)  # nan fails the comparison above


def check_sigma(sigma: object) -> float:
    """Return ``sigma`` as a ``float`` if it is finite and positive, else raise ``ValueError``.

    Args:
        sigma: Standard deviation of the Gaussian noise, in pixel units of [0, 1] images.

    Returns:
        ``float(sigma)``.

    Raises:
        ValueError: If ``sigma`` is not a finite number > 0.

    Examples:
        >>> check_sigma(0.5)
        0.5
        >>> check_sigma(0)
        Traceback (most recent call last):
        ...
        ValueError: sigma must be a finite number > 0, got 0
    """
    return check_real(sigma, "sigma", low=0.0, low_open=True)


def check_choice(value: object, name: str, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise naming them.

    Examples:
        >>> check_choice("bf16", "precision", ("fp32", "bf16", "fp16"))
        'bf16'
        >>> check_choice("fp8", "precision", ("fp32", "bf16", "fp16"))
        Traceback (most recent call last):
        ...
        ValueError: unknown precision 'fp8'; choose one of fp32, bf16, fp16
    """
    options = tuple(choices)
    if value not in options:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(options)}")
    return str(value)
