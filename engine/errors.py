"""The one base of every error leanjoin raises on purpose, engine and adapters alike.

``except LeanJoinError`` catches whatever the library refuses or reports:
the engine's misuse errors (:class:`~leanjoin.engine.sansio.UsageError`,
``NotConnectedError``), invalid option values (:class:`InvalidArgument`) and
every error of the client API (``leanjoin.adapters``).
"""

from __future__ import annotations

__all__ = ["InvalidArgument", "LeanJoinError"]


class LeanJoinError(Exception):
    """Base class of every error leanjoin raises on purpose."""


class InvalidArgument(LeanJoinError, ValueError):
    """A value given to leanjoin is not valid; the message names what was wrong
    (never a secret). A ``ValueError`` too."""
