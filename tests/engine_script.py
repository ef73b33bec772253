"""A small script driver for the client engine: named steps, a fake clock, and
the outputs of each step, so rule tests read like the protocol."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeVar

from leanjoin.engine.check.invariants import InvariantMonitor
from leanjoin.engine.client.config import InitialState, SessionConfig, Timeouts
from leanjoin.engine.client.inputs import (
    AttemptId,
    Connect,
    FrameReceived,
    Input,
    RoomConnected,
    SocketOpened,
    TracksPublished,
)
from leanjoin.engine.client.outputs import Output
from leanjoin.engine.client.session import ClientSession, Phase

T = TypeVar("T")
NO_STATE = InitialState()
CONFIG = SessionConfig(url="ws://127.0.0.1:9/v1/stream", api_key="k-secret", model="m")


def frame(**fields: Any) -> str:
    return json.dumps(fields)


ROOM_INFO = frame(
    type="livekit_room_info",
    livekit_url="ws://lk",
    token="tok",
    room_name="room-1",
    session_id="sess-1",
)


class Script:
    """Drives one session through the invariant monitor."""

    def __init__(self, config: SessionConfig = CONFIG) -> None:
        self.session = ClientSession(config)
        self.monitor = InvariantMonitor(self.session)
        self.now = 0.0
        self.log: list[Output] = []
        # Every step as (input or None for the timer, time, outputs): traces are made of these.
        self.steps: list[tuple[Input | None, float, list[Output]]] = []

    @property
    def attempt(self) -> AttemptId:
        attempt = self.session.attempt
        assert attempt is not None, "no live attempt"
        return attempt

    def feed(self, item: Input) -> list[Output]:
        outputs = self.monitor.step(item, self.now)
        self.log.extend(outputs)
        self.steps.append((item, self.now, outputs))
        return outputs

    def wait(self, seconds: float) -> list[Output]:
        """Advance the clock, firing every deadline on the way, in order."""
        end = self.now + seconds
        outputs: list[Output] = []
        while (timer := self.session.get_timer()) is not None and timer <= end:
            self.now = max(self.now, timer)
            step = self.monitor.step(None, self.now)
            self.log.extend(step)
            self.steps.append((None, self.now, step))
            outputs.extend(step)
        self.now = round(end, 6)  # a decimal clock, not float sums (0.30000000000000004)
        return outputs

    def server(self, **fields: Any) -> list[Output]:
        return self.feed(FrameReceived(self.attempt, frame(**fields)))

    def connect(
        self, initial: InitialState = NO_STATE, passthrough: bool | None = None
    ) -> list[Output]:
        return self.feed(Connect(initial, passthrough))

    def to_joining(self, initial: InitialState = NO_STATE) -> list[Output]:
        return self.connect(initial) + self.feed(SocketOpened(self.attempt))

    def to_connected(self, initial: InitialState = NO_STATE) -> list[Output]:
        out = self.to_joining(initial)
        out += self.feed(FrameReceived(self.attempt, ROOM_INFO))
        out += self.feed(RoomConnected(self.attempt))
        out += self.feed(TracksPublished(self.attempt))
        assert self.session.phase is Phase.CONNECTED
        return out


def of_type(outputs: Sequence[object], kind: type[T]) -> list[T]:
    return [o for o in outputs if isinstance(o, kind)]


QUEUE_CONFIG = SessionConfig(
    url="ws://127.0.0.1:9/v1/stream",
    api_key="k-secret",
    model="m",
    timeouts=Timeouts(max_queue_wait=600.0),
)
