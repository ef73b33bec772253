"""The logger handed to ``websockets`` by every socket the adapters open or serve."""

from __future__ import annotations

import logging


def _info_and_above(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.INFO


def wire_logger(owner: logging.Logger) -> logging.Logger:
    """``owner``'s ``.wire`` child, which passes only INFO and above.

    Why it exists: at DEBUG, websockets logs the handshake's request line and
    headers and the start of every frame it sends or receives. Ours carry
    secrets (the api key in the stream URL's query, a LiveKit token in the
    double's query or ``Authorization`` header) and image data (the base64 of
    a ``set_image``). This logger drops those records whatever the
    application's logging configuration says, so DEBUG for ``leanjoin`` or for
    everything never prints them; websockets' INFO and above (server start and
    stop, errors) still come through.
    """
    wire = owner.getChild("wire")
    if _info_and_above not in wire.filters:
        wire.addFilter(_info_and_above)
    return wire
