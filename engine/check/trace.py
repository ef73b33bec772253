"""Conformance traces: engine inputs and outputs as JSON-ready records, and replay.

A trace (``specs/traces/*.jsonl``, format in ``specs/traces/README.md``) is a
header record followed by steps ``{"at": t, "input": {...}, "expect": [...]}``
or ``{"at": t, "timer": true, "expect": [...]}``. Replaying feeds each step to
a fresh :class:`~leanjoin.engine.client.session.ClientSession` and compares what comes
out, record for record. Pure: the caller reads the file.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

from .. import messages
from ..client import config, inputs, outputs
from ..client.session import ClientSession

_INPUT_TYPES: Final[dict[str, type]] = {
    cls.__name__: cls
    for cls in (
        inputs.Connect,
        inputs.ChangePrompt,
        inputs.ChangeImage,
        inputs.Disconnect,
        inputs.SocketOpened,
        inputs.SocketOpenFailed,
        inputs.FrameReceived,
        inputs.SendFailed,
        inputs.SocketClosed,
        inputs.RoomConnected,
        inputs.RoomConnectFailed,
        inputs.TracksPublished,
        inputs.PublishFailed,
        inputs.RemoteTrackReceived,
        inputs.RoomDisconnected,
    )
}


def to_record(value: Any) -> Any:
    """An input, output, config or message as plain JSON data."""
    if attrs.has(type(value)):
        record: dict[str, Any] = {"type": type(value).__name__}
        for field in attrs.fields(type(value)):
            if field.init:  # a record holds what rebuilds the value, not what it derives
                record[field.name] = to_record(getattr(value, field.name))
        return record
    if value is messages.ABSENT:
        return {"type": "ABSENT"}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [to_record(item) for item in value]
    return value


def _fields(record: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key != "type"}


def config_from_record(record: Mapping[str, Any]) -> config.SessionConfig:
    fields = _fields(record)
    fields["timeouts"] = config.Timeouts(**_fields(fields["timeouts"]))
    retry = _fields(fields["retry"])
    retry["permanent_markers"] = tuple(retry["permanent_markers"])
    if "futile_markers" in retry:
        retry["futile_markers"] = tuple(retry["futile_markers"])
    fields["retry"] = config.RetryPolicy(**retry)
    capabilities = fields.get("client_capabilities")
    if isinstance(capabilities, Mapping) and capabilities.get("type") == "ClientCapabilities":
        frame_timing = capabilities["frame_timing"]
        fields["client_capabilities"] = messages.ClientCapabilities(
            frame_timing=messages.ABSENT if isinstance(frame_timing, Mapping) else frame_timing
        )
    else:
        fields["client_capabilities"] = messages.ABSENT
    return config.SessionConfig(**fields)


def input_from_record(record: Mapping[str, Any]) -> inputs.Input:
    cls = _INPUT_TYPES.get(str(record.get("type")))
    if cls is None:
        raise ValueError(f"unknown input type in trace: {record.get('type')!r}")
    fields = _fields(record)
    if cls is inputs.Connect:
        fields["initial"] = config.InitialState(**_fields(fields["initial"]))
    result: inputs.Input = cls(**fields)
    return result


@attrs.frozen
class Mismatch:
    step: int
    expected: list[Any]
    actual: list[Any]


def replay(records: Iterable[Mapping[str, Any]]) -> list[Mismatch]:
    """Replay a trace on a fresh session; the steps whose outputs differ."""
    items = iter(records)
    header = next(items)
    session = ClientSession(config_from_record(header["config"]))
    mismatches = []
    for index, step in enumerate(items, start=1):
        now = float(step["at"])
        if step.get("timer"):
            produced = session.handle_timer(now)
        else:
            produced = session.handle(input_from_record(step["input"]), now)
        actual = [to_record(output) for output in produced]
        if actual != step["expect"]:
            mismatches.append(Mismatch(index, list(step["expect"]), actual))
    return mismatches


def step_record(
    item: inputs.Input | None, now: float, produced: Iterable[outputs.Output]
) -> dict[str, Any]:
    """One step (an input, or the timer when ``item`` is None) as a trace record."""
    step: dict[str, Any] = (
        {"at": now, "timer": True} if item is None else {"at": now, "input": to_record(item)}
    )
    step["expect"] = [to_record(output) for output in produced]
    return step


def record_step(session: ClientSession, item: inputs.Input | None, now: float) -> dict[str, Any]:
    """Run one step on ``session`` and return it as a trace record."""
    produced = session.handle_timer(now) if item is None else session.handle(item, now)
    return step_record(item, now, produced)
