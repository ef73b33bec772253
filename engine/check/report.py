"""Counterexamples of the checker, readable and replayable (pure).

A violation's path is replayed on a fresh world: each move becomes one line
(the move, what the client was fed, what the server sent, where the client
ended), and the client's side becomes a trace in the ``specs/traces`` format
(:mod:`.trace`: header, then one step per client input or timer), so that
``leanjoin.engine.check.trace.replay`` plays it back. Writing it is the caller's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import attrs

from ..client.inputs import FrameReceived, Input, SendFailed
from ..client.session import ClientSession
from . import trace
from .explore import LIVENESS, Violation
from .model import Choice, Model, Record, World, initial_world
from .moves import step


def label(choice: Choice) -> str:
    return " ".join(choice)


def _summary(item: Input | None) -> str:
    if item is None:
        return "timer"
    name = type(item).__name__
    if isinstance(item, FrameReceived):
        return f"{name}({item.attempt}, {_frame_type(item.frame)})"
    if isinstance(item, SendFailed):
        return f"{name}({item.attempt}, send {item.send})"
    attempt = getattr(item, "attempt", None)
    return name if attempt is None else f"{name}({attempt})"


@attrs.frozen
class Counterexample:
    lines: list[str]  # one per step, readable
    records: list[dict[str, Any]]  # header + client steps: engine/check/trace.py's format


def counterexample(
    model: Model, violation: Violation, name: str = "counterexample"
) -> Counterexample:
    """Replay ``violation.path`` and render it: a line per move (what the client
    was fed, what the server sent, where the client ended), and the client's
    side as a replayable trace. A liveness violation is followed by the timer
    firings that never settle it."""
    world = initial_world(model)
    record: Record = []
    lines: list[str] = []
    for index, choice in enumerate(violation.path, start=1):
        start = len(record)
        before = _s2c(world)
        try:
            step(world, choice, model, record)
        except Exception as error:
            fed = ", ".join(_summary(item) for item, _ in record[start:])
            lines.append(f"{index:>3}. t={world.now:<6g} {label(choice):<30} {fed}")
            lines.append(f"     ✗ {type(error).__name__}: {error}")
            break
        parts = [_summary(item) for item, _ in record[start:]]
        sent = _sent(before, _s2c(world), popped=choice == ("deliver_s2c",))
        if sent:
            parts.append(f"server sent {', '.join(sent)}")
        fed = "; ".join(parts) or "-"
        state = f"{world.client.phase.value}/{world.client.ack_watch.value}"
        lines.append(f"{index:>3}. t={world.now:<6g} {label(choice):<30} {fed:<58} → {state}")
    session = model.client_factory(model.config)
    steps: list[dict[str, Any]] = []
    for item, now in record:
        try:
            steps.append(trace.record_step(session, item, now))
        except Exception:
            # The engine raised here: the step stays, so that a replay raises too.
            raised: dict[str, Any] = {"at": now, "expect": []}
            raised.update({"timer": True} if item is None else {"input": trace.to_record(item)})
            steps.append(raised)
            break
    if violation.name == LIVENESS:
        tail = list(_timer_tail(session))
        for timer in tail:  # time passes with no other input
            shown = ", ".join(o["type"] for o in timer["expect"]) or "-"
            lines.append(f"  ⋯ t={timer['at']:<6g} {'timer, no other input':<30} {shown}")
        steps.extend(tail)
    lines.append(f"violated: {violation.name}: {violation.detail}")
    header = {
        "trace": name,
        "rule": f"checker counterexample: {violation.name}",
        "config": trace.to_record(model.config),
    }
    return Counterexample(lines, [header, *steps])


def _s2c(world: World) -> tuple[int, list[str]] | None:
    link = world.link
    if link is None:
        return None
    return link.attempt, [
        _frame_type(item) if isinstance(item, str) else "close" for item in link.s2c
    ]


def _frame_type(frame: str | bytes) -> str:
    """A frame's ``type``, for the eye; a server mutant may send anything."""
    try:
        message = json.loads(frame)
    except ValueError:
        return "not JSON"
    kind = message.get("type") if isinstance(message, dict) else None
    return kind if isinstance(kind, str) else "no type"


def _sent(
    before: tuple[int, list[str]] | None, after: tuple[int, list[str]] | None, *, popped: bool
) -> list[str]:
    """Frame types the server queued during a move (the queue is a FIFO)."""
    if after is None:
        return []
    if before is None or before[0] != after[0]:
        return after[1]
    kept = len(before[1]) - (1 if popped else 0)
    return after[1][kept:]


def _timer_tail(session: ClientSession, limit: int = 64) -> Iterator[dict[str, Any]]:
    for _ in range(limit):
        when = session.get_timer()
        if when is None:
            return
        yield trace.record_step(session, None, max(when, session._now))
