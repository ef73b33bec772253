"""The realtime models a session can name: their names, aliases, camera size and rate.

``connect(model=...)`` takes a name from this registry or a
:class:`ModelDefinition` of its own. A name is checked here before anything
is opened: an unknown one raises :class:`UnknownModelError` listing the known
ones, a deprecated alias still works with a :class:`ModelDeprecationWarning`
naming its replacement (as the official JS client warns), and the model's
frame size and rate become the default camera's.

The service's models are those of the official clients (JS ``@decartai/sdk``
0.1.20 ``shared/model.js``; Python ``decart`` 0.2.4 ``models.py``). Where they
disagree the JS client's size wins (lucy-2.1 and lucy-latest: JS 1088x624,
Python 1280x720); the names only the Python client knows (lucy-2.6,
lucy-vton-3.6) are known here too, with its size. ``echo`` is the reference
server's model (``leanjoin serve``). A model of any other server is named by
passing a :class:`ModelDefinition`: it is sent as given, unchecked
(specs/protocol.md §1.6).
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Mapping
from typing import Final, Literal

import attrs

from .errors import InvalidArgument, LeanJoinError

__all__ = [
    "STREAM_PATH",
    "ModelDefinition",
    "ModelDeprecationWarning",
    "UnknownModelError",
    "is_realtime_model",
    "list_models",
    "resolve_model",
]

STREAM_PATH: Final = "/v1/stream"
"""Where every realtime model is served, below the base URL."""

Kind = Literal["realtime", "local", "custom"]


def _frame_side(inst: ModelDefinition, attribute: attrs.Attribute[int], value: int) -> None:
    # The encoders work on 2x2 chroma blocks (as the camera sources require).
    if isinstance(value, bool) or not isinstance(value, int) or value < 16 or value % 2:
        raise InvalidArgument(
            f"{attribute.name} must be an even number of pixels >= 16, got {value!r}"
        )


def _fps(_inst: ModelDefinition, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 120:
        raise InvalidArgument(f"{attribute.name} must be a number in (0, 120], got {value!r}")


def _path(_inst: ModelDefinition, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.startswith("/") or "?" in value or "#" in value:
        raise InvalidArgument(
            f"{attribute.name} must be a URL path starting with '/', got {value!r}"
        )


@attrs.frozen
class ModelDefinition:
    """A realtime model: the name sent as ``model=``, the path of its stream
    endpoint below the base URL, and the camera size and rate it expects.

    ``kind``: ``realtime`` (the service's, from :func:`list_models`),
    ``local`` (the reference server's) or ``custom`` (made by the caller: any
    name, sent unchecked). ``replaced_by`` names the canonical model of a
    deprecated alias; ``latest`` marks an alias the server resolves (it moves
    to newer models)."""

    name: str = attrs.field(validator=attrs.validators.min_len(1))
    width: int = attrs.field(validator=_frame_side)
    height: int = attrs.field(validator=_frame_side)
    fps: float = attrs.field(default=30.0, validator=_fps)
    path: str = attrs.field(default=STREAM_PATH, validator=_path)
    kind: Kind = attrs.field(
        default="custom", validator=attrs.validators.in_(("realtime", "local", "custom"))
    )
    replaced_by: str | None = None
    latest: bool = False

    @property
    def canonical(self) -> bool:
        """Neither a deprecated alias nor a server-side "latest" alias."""
        return self.replaced_by is None and not self.latest


class UnknownModelError(LeanJoinError, ValueError):
    """A model name the registry does not know (the message lists those it does)."""


class ModelDeprecationWarning(FutureWarning):
    """A deprecated model alias was used; the message names its replacement.

    A ``FutureWarning`` (shown by default, like the JS client's console
    warning), not a ``DeprecationWarning``, which Python hides outside
    ``__main__``."""


def _realtime(
    name: str, width: int, height: int, *, replaced_by: str | None = None, latest: bool = False
) -> ModelDefinition:
    return ModelDefinition(
        name, width, height, kind="realtime", replaced_by=replaced_by, latest=latest
    )


_REALTIME: Final[Mapping[str, ModelDefinition]] = {
    m.name: m
    for m in (
        _realtime("lucy-2.1", 1088, 624),
        _realtime("lucy-2.5", 1280, 720),
        _realtime("lucy-2.6", 1280, 720),  # Python 0.2.4 only
        _realtime("lucy-vton-2", 1088, 624),
        _realtime("lucy-vton-3", 1088, 624),
        _realtime("lucy-vton-3.5", 1280, 720),
        _realtime("lucy-vton-3.6", 1280, 720),  # Python 0.2.4 only
        _realtime("lucy-restyle-2", 1280, 704),
        _realtime("lucy-latest", 1088, 624, latest=True),  # Python 0.2.4: 1280x720
        _realtime("lucy-vton-latest", 1280, 720, latest=True),
        _realtime("lucy-restyle-latest", 1280, 704, latest=True),
        _realtime("lucy-2.1-vton-2", 1088, 624, replaced_by="lucy-vton-2"),
    )
}

# The reference server's model (leanjoin serve): it echoes any frame size.
_LOCAL: Final[Mapping[str, ModelDefinition]] = {
    "echo": ModelDefinition("echo", 640, 360, kind="local"),
}

# Models of the official clients' batch APIs (video and image jobs): named
# here only to say why they cannot stream. Deprecated names point at theirs.
_BATCH: Final[Mapping[str, str | None]] = {
    "lucy-clip": None,
    "lucy-clip-latest": None,
    "lucy-image-2": None,
    "lucy-image-latest": None,
    "lucy-pro-v2v": "lucy-clip",
    "lucy-restyle-v2v": "lucy-restyle-2",
    "lucy-pro-i2i": "lucy-image-2",
}


def list_models(*, canonical_only: bool = False) -> tuple[ModelDefinition, ...]:
    """The service's realtime models; ``canonical_only`` leaves out the
    deprecated aliases and the server-side "latest" aliases."""
    return tuple(m for m in _REALTIME.values() if m.canonical or not canonical_only)


def is_realtime_model(name: str) -> bool:
    """True for a name of the service's realtime models (aliases included)."""
    return name in _REALTIME


def resolve_model(model: str | ModelDefinition) -> ModelDefinition:
    """The definition a session uses for ``model``: a :class:`ModelDefinition`
    as given; a name from the registry (a deprecated alias warns once per
    call site with :class:`ModelDeprecationWarning` and is still sent as
    given, as the official clients do). Raises :class:`UnknownModelError`."""
    if isinstance(model, ModelDefinition):
        return model
    if not isinstance(model, str):
        raise TypeError(f"model must be a name or a ModelDefinition, not {type(model).__name__}")
    known = _REALTIME.get(model) or _LOCAL.get(model)
    if known is None:
        raise UnknownModelError(_unknown(model))
    if known.replaced_by is not None:
        warnings.warn(
            f"model {model!r} is deprecated: use {known.replaced_by!r} instead",
            ModelDeprecationWarning,
            stacklevel=2,
        )
    return known


def _unknown(name: str) -> str:
    shown = name if len(name) <= 64 else name[:64] + "…"
    if name in _BATCH:
        replacement = _BATCH[name]
        why = f"model {shown!r} is a batch (video/image) model, not a realtime one"
        if replacement is not None and replacement in _REALTIME:
            why += f"; its realtime counterpart is {replacement!r}"
    else:
        why = f"unknown model {shown!r}"
        close = difflib.get_close_matches(name, [*_REALTIME, *_LOCAL], n=1)
        if close:
            why += f" (did you mean {close[0]!r}?)"
    return (
        f"{why}. Realtime models: {', '.join(_REALTIME)}; the reference server's: "
        f"{', '.join(_LOCAL)}. For a model of another server pass "
        "ModelDefinition(name, width, height)."
    )
