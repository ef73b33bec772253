"""attrs validators shared by the engines' configurations.

Numbers must be finite and must not be booleans (``True`` is an ``int`` to
Python, never a timeout to us); every error (an :class:`InvalidArgument`, a
``ValueError`` too) names the field and the value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs

from .errors import InvalidArgument

Validator = Callable[[object, "attrs.Attribute[Any]", Any], None]


def finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def non_negative(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not (finite_number(value) and value >= 0):
        raise InvalidArgument(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def positive(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not (finite_number(value) and value > 0):
        raise InvalidArgument(f"{attribute.name} must be a finite number > 0, got {value!r}")


def positive_or_none(inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        positive(inst, attribute, value)


def at_least(minimum: float) -> Validator:
    def check(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not (finite_number(value) and value >= minimum):
            raise InvalidArgument(
                f"{attribute.name} must be a finite number >= {minimum:g}, got {value!r}"
            )

    return check


def one_of(choices: tuple[object, ...]) -> Validator:
    """One of ``choices``."""

    def check(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in choices:
            listed = ", ".join(repr(choice) for choice in choices)
            raise InvalidArgument(f"{attribute.name} must be one of {listed}, got {value!r}")

    return check


def count(minimum: int, *, optional: bool = False) -> Validator:
    """An integer >= ``minimum`` (or None, if ``optional``)."""

    def check(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise InvalidArgument(
                f"{attribute.name} must be an integer >= {minimum}, got {value!r}"
            )

    return check
