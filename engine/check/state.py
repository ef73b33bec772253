"""Structural copy and canonical key of a checker world (pure).

Both walk the world's objects generically, slot by slot and attrs field by
attrs field, so that an engine variant with extra fields (a test mutant)
is copied and keyed completely without this module knowing it. Objects that
cannot change are shared, never copied, and stand for themselves in a key:
frozen attrs instances (messages, inputs, outputs, the configuration and
server knobs), enums, numbers and strings; members of sets and keys of
dicts are hashable, hence immutable too.

``copy.deepcopy`` gives the same copies, about three times slower (measured
on the composed world; see bench/bench_checker.py), because it memoizes
every object and goes through ``__reduce_ex__`` for slotted classes.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, Final

import attrs

_ATOMS: Final = (type(None), bool, int, float, str, bytes)
_FROZEN_CACHE: dict[type, bool] = {}
_SLOTS_CACHE: dict[type, tuple[str, ...]] = {}
_MISSING: Final = object()


def _frozen(kind: type) -> bool:
    """Whether instances of ``kind`` never change after construction."""
    known = _FROZEN_CACHE.get(kind)
    if known is None:
        # attrs makes a class hashable only when it is frozen (eq=True, no
        # unsafe_hash): mutable attrs classes get ``__hash__ = None``.
        known = (
            kind in _ATOMS
            or issubclass(kind, enum.Enum)
            or (attrs.has(kind) and getattr(kind, "__hash__", None) is not None)
        )
        _FROZEN_CACHE[kind] = known
    return known


def _slots(kind: type) -> tuple[str, ...]:
    """Every slot of ``kind`` and its bases, name-mangled as stored."""
    names = _SLOTS_CACHE.get(kind)
    if names is None:
        found: list[str] = []
        for base in reversed(kind.__mro__):
            declared = base.__dict__.get("__slots__", ())
            for slot in (declared,) if isinstance(declared, str) else declared:
                if slot in ("__dict__", "__weakref__"):
                    continue
                if slot.startswith("__") and not slot.endswith("__"):
                    slot = f"_{base.__name__.lstrip('_')}{slot}"
                if slot not in found:
                    found.append(slot)
        names = tuple(found)
        _SLOTS_CACHE[kind] = names
    return names


# The walkers below are the checker's hot path: they test whether a value
# can be shared inline (one cache lookup) instead of calling themselves for
# every atom, and dispatch on the exact container type.


def clone(value: Any) -> Any:
    """A copy of ``value`` that shares nothing mutable with it."""
    kind: Any = type(value)
    frozen = _FROZEN_CACHE.get(kind)
    if frozen is None:
        frozen = _frozen(kind)
    if frozen:
        return value
    copier = _COPIERS.get(kind)
    if copier is not None:
        return copier(value)
    copy = kind.__new__(kind)
    setter = object.__setattr__
    cache = _FROZEN_CACHE
    for name in _SLOTS_CACHE.get(kind) or _slots(kind):
        item = getattr(value, name, _MISSING)
        if item is _MISSING:
            continue
        setter(copy, name, item if cache.get(type(item)) else clone(item))
    if hasattr(value, "__dict__"):
        for name, item in value.__dict__.items():
            setter(copy, name, clone(item))
    return copy


def _clone_list(value: list[Any]) -> list[Any]:
    cache = _FROZEN_CACHE
    return [item if cache.get(type(item)) else clone(item) for item in value]


def _clone_tuple(value: tuple[Any, ...]) -> tuple[Any, ...]:
    cache = _FROZEN_CACHE
    if all(cache.get(type(item)) for item in value):
        return value  # immutable all the way down: share it
    return tuple(clone(item) for item in value)


def _clone_dict(value: dict[Any, Any]) -> dict[Any, Any]:
    cache = _FROZEN_CACHE  # keys are hashable, hence shared
    return {k: v if cache.get(type(v)) else clone(v) for k, v in value.items()}


def _clone_deque(value: deque[Any]) -> deque[Any]:
    return deque(_clone_list(list(value)))


def _clone_set(value: set[Any]) -> set[Any]:
    return set(value)  # members are hashable, hence shared


_COPIERS: Final[dict[type, Callable[[Any], Any]]] = {
    list: _clone_list,
    tuple: _clone_tuple,
    dict: _clone_dict,
    deque: _clone_deque,
    set: _clone_set,
}


def freeze(value: Any) -> Hashable:
    """A hashable snapshot of ``value``: equal snapshots mean equal states."""
    kind: type = type(value)
    frozen = _FROZEN_CACHE.get(kind)
    if frozen is None:
        frozen = _frozen(kind)
    if frozen:
        snapshot: Hashable = value  # atoms, enums and frozen attrs instances hash by value
        return snapshot
    cache = _FROZEN_CACHE
    if kind is list or kind is tuple or kind is deque:
        return tuple(item if cache.get(type(item)) else freeze(item) for item in value)
    if kind is dict:
        # Insertion order is state too (the admission queue is an ordered dict).
        return tuple((k, v if cache.get(type(v)) else freeze(v)) for k, v in value.items())
    if kind is set or kind is frozenset:
        return frozenset(value)
    parts: list[Hashable] = [kind.__qualname__]
    for name in _SLOTS_CACHE.get(kind) or _slots(kind):
        item = getattr(value, name, _MISSING)
        parts.append(item if cache.get(type(item)) else freeze(item))
    if hasattr(value, "__dict__"):
        parts.extend((name, freeze(item)) for name, item in sorted(value.__dict__.items()))
    return tuple(parts)


class Snapshot:
    """A frozen part of a world with its hash computed once: tuples recompute
    theirs on every set lookup, and a world key is looked up several times.
    Equal parts shared by parent and child compare by identity first."""

    __slots__ = ("hash", "value")

    def __init__(self, value: Hashable) -> None:
        self.value = value
        self.hash = hash(value)

    def __hash__(self) -> int:
        return self.hash

    def __eq__(self, other: object) -> bool:
        return self is other or (
            isinstance(other, Snapshot) and self.hash == other.hash and self.value == other.value
        )

    def __repr__(self) -> str:
        return f"Snapshot({self.hash:#x})"
