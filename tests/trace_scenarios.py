"""The scenarios behind specs/traces/: one per spec rule and per end-to-end
scenario. ``python tests/trace_scenarios.py`` rewrites the traces; the tests
replay the committed files, so a behaviour change shows up as a diff."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine_script import Script

from leanjoin.engine.check.trace import step_record, to_record
from leanjoin.engine.client.config import InitialState, SessionConfig, Timeouts
from leanjoin.engine.client.inputs import (
    AttemptId,
    ChangePrompt,
    Connect,
    Disconnect,
    FrameReceived,
    Input,
    RemoteTrackReceived,
    RequestId,
    RoomConnected,
    RoomDisconnected,
    SendFailed,
    SendId,
    SocketClosed,
    SocketOpened,
    SocketOpenFailed,
    TracksPublished,
)
from leanjoin.engine.client.outputs import Output

TRACES = Path(__file__).resolve().parents[1] / "specs" / "traces"
CONFIG = SessionConfig(
    url="ws://127.0.0.1:8765/v1/stream",
    api_key="trace-key",
    model="echo",
    timeouts=Timeouts(max_queue_wait=900.0),
)
IMAGE = InitialState(image_data="aW1hZ2U=", prompt="a watercolour cat")
ROOM_INFO = json.dumps(
    {
        "type": "livekit_room_info",
        "livekit_url": "ws://127.0.0.1:7880",
        "token": "tok",
        "room_name": "room-1",
        "session_id": "sess-1",
    }
)


class Recorder(Script):
    """A Script (every step checked by the invariant monitor) that becomes a trace."""

    def __init__(self, name: str, rule: str) -> None:
        super().__init__(CONFIG)
        self.header = {"trace": name, "rule": rule, "config": to_record(CONFIG)}

    @property
    def records(self) -> list[dict[str, Any]]:
        return [self.header, *(step_record(item, now, out) for item, now, out in self.steps)]

    def feed(self, item: Input, after: float = 0.1) -> list[Output]:
        self.wait(after)
        return super().feed(item)

    def frame(self, after: float = 0.1, **fields: Any) -> None:
        self.wait(after)  # first: a deadline on the way may start a new attempt
        self.feed(FrameReceived(self.attempt, json.dumps(fields)), 0.0)

    def connected(self, initial: InitialState = IMAGE) -> None:
        self.feed(Connect(initial), after=0.0)
        self.feed(SocketOpened(self.attempt))
        self.feed(FrameReceived(self.attempt, ROOM_INFO))
        self.feed(RoomConnected(self.attempt))
        self.feed(TracksPublished(self.attempt))


def lean_join_with_image_and_prompt(r: Recorder) -> None:
    r.connected()
    r.feed(RemoteTrackReceived(r.attempt, "inference-server-1", "TR_out", "video"))
    r.frame(type="set_image_ack", success=True)
    r.frame(type="generation_started")
    r.frame(type="generation_tick", seconds=1.0)


def lean_join_prompt_only(r: Recorder) -> None:
    r.connected(InitialState(prompt="a watercolour cat"))
    r.frame(type="prompt_ack", prompt="a watercolour cat", success=True)


def passthrough_join(r: Recorder) -> None:
    r.connected(InitialState())
    r.feed(RemoteTrackReceived(r.attempt, "viewer-9", "TR_other", "video"))


def initial_state_send_failure_fails_attempt(r: Recorder) -> None:
    r.feed(Connect(IMAGE), after=0.0)
    r.feed(SocketOpened(r.attempt))
    r.feed(SendFailed(r.attempt, SendId(2), "connection reset"))
    r.feed(FrameReceived(AttemptId(1), ROOM_INFO))  # stale: dropped
    r.wait(1.0)
    r.feed(SocketOpened(r.attempt))


def connected_before_ack_then_ack_rejected(r: Recorder) -> None:
    r.connected()
    r.frame(after=2.0, type="set_image_ack", success=False, error="not a decodable image")


def ack_timeout_after_room_info(r: Recorder) -> None:
    r.connected()
    r.wait(31.0)


def early_ack_while_queued(r: Recorder) -> None:
    r.feed(Connect(IMAGE), after=0.0)
    r.feed(SocketOpened(r.attempt))
    r.frame(type="queue_position", position=2, queue_size=4)
    r.frame(after=5.0, type="set_image_ack", success=True)
    r.frame(after=40.0, type="queue_position", position=1, queue_size=4)
    r.feed(FrameReceived(r.attempt, ROOM_INFO), after=40.0)
    r.feed(RoomConnected(r.attempt))
    r.feed(TracksPublished(r.attempt))


def queue_wait_longer_than_room_info_timeout(r: Recorder) -> None:
    r.feed(Connect(IMAGE), after=0.0)
    r.feed(SocketOpened(r.attempt))
    r.frame(type="queue_position", position=6, queue_size=6)
    for position in (5, 4, 3, 2, 1):
        r.frame(after=50.0, type="queue_position", position=position, queue_size=6)
    r.feed(FrameReceived(r.attempt, ROOM_INFO), after=20.0)


def queue_falls_silent(r: Recorder) -> None:
    r.feed(Connect(InitialState()), after=0.0)
    r.feed(SocketOpened(r.attempt))
    r.frame(type="queue_position", position=3, queue_size=3)
    r.wait(61.0)


def server_error_while_connected(r: Recorder) -> None:
    r.connected()
    r.feed(ChangePrompt(RequestId(1), "ink sketch"))
    r.frame(type="error", error="model restarted")
    r.wait(60.0)


def runtime_requests_and_tombstone(r: Recorder) -> None:
    r.connected(InitialState())
    r.feed(ChangePrompt(RequestId(1), "ink sketch"))
    r.wait(30.0)
    r.feed(ChangePrompt(RequestId(2), "ink sketch"))
    r.frame(type="prompt_ack", prompt="ink sketch", success=True)
    r.frame(type="prompt_ack", prompt="ink sketch", success=True)


def backoff_then_give_up(r: Recorder) -> None:
    r.feed(Connect(InitialState()), after=0.0)
    for _ in range(6):
        r.feed(SocketOpenFailed(r.attempt, "connection refused"))
        r.wait(10.0)


def permanent_error_is_not_retried(r: Recorder) -> None:
    r.feed(Connect(InitialState()), after=0.0)
    r.feed(SocketOpened(r.attempt))
    r.frame(type="error", error="Invalid API key")


def server_close_during_join_retries(r: Recorder) -> None:
    r.feed(Connect(IMAGE), after=0.0)
    r.feed(SocketOpened(r.attempt))
    r.feed(SocketClosed(r.attempt, 1011, "internal error"))
    r.wait(1.0)
    r.feed(SocketOpened(r.attempt))
    r.feed(FrameReceived(r.attempt, ROOM_INFO))


def room_loss_while_generating_reconnects_and_replays(r: Recorder) -> None:
    r.connected()
    r.frame(type="generation_started")
    r.feed(ChangePrompt(RequestId(1), "ink sketch"))
    r.feed(RoomDisconnected(r.attempt, "media server restarted"))
    r.feed(SocketOpened(r.attempt))
    r.feed(FrameReceived(r.attempt, ROOM_INFO))
    r.feed(RoomConnected(r.attempt))
    r.feed(TracksPublished(r.attempt))


def stale_attempt_never_emits_after_retry(r: Recorder) -> None:
    r.feed(Connect(IMAGE), after=0.0)
    r.feed(SocketOpened(r.attempt))
    r.feed(FrameReceived(r.attempt, ROOM_INFO))
    r.feed(RoomDisconnected(r.attempt, "ice failed"))
    r.wait(1.0)
    old = AttemptId(1)
    r.feed(
        FrameReceived(old, json.dumps({"type": "set_image_ack", "success": False, "error": "late"}))
    )
    r.feed(RoomConnected(old))
    r.feed(SocketOpened(r.attempt))
    r.wait(35.0)


def disconnect_during_every_phase(r: Recorder) -> None:
    r.feed(Connect(IMAGE), after=0.0)
    r.feed(Disconnect())
    r.feed(Connect(IMAGE))
    r.feed(SocketOpened(r.attempt))
    r.feed(Disconnect())
    r.feed(Connect(IMAGE))
    r.feed(SocketOpened(r.attempt))
    r.frame(type="queue_position", position=1, queue_size=1)
    r.feed(Disconnect())
    r.feed(Connect(IMAGE))
    r.feed(SocketOpened(r.attempt))
    r.feed(FrameReceived(r.attempt, ROOM_INFO))
    r.feed(Disconnect())
    r.connected()
    r.feed(Disconnect())


SCENARIOS: dict[str, tuple[str, Callable[[Recorder], None]]] = {
    "lean_join_with_image_and_prompt": ("3.1 3.2 3.4 3.7", lean_join_with_image_and_prompt),
    "lean_join_prompt_only": ("3.2", lean_join_prompt_only),
    "passthrough_join": ("3.1 1.4", passthrough_join),
    "initial_state_send_failure_fails_attempt": (
        "3.3 6.7",
        initial_state_send_failure_fails_attempt,
    ),
    "connected_before_ack_then_ack_rejected": ("3.4 3.5", connected_before_ack_then_ack_rejected),
    "ack_timeout_after_room_info": ("3.5", ack_timeout_after_room_info),
    "early_ack_while_queued": ("3.5 3.6", early_ack_while_queued),
    "queue_wait_longer_than_room_info_timeout": ("5.1", queue_wait_longer_than_room_info_timeout),
    "queue_falls_silent": ("5.1", queue_falls_silent),
    "server_error_while_connected": ("3.8", server_error_while_connected),
    "runtime_requests_and_tombstone": ("4.2 4.3", runtime_requests_and_tombstone),
    "backoff_then_give_up": ("6.2", backoff_then_give_up),
    "permanent_error_is_not_retried": ("6.3", permanent_error_is_not_retried),
    "server_close_during_join_retries": ("6.1 6.2", server_close_during_join_retries),
    "room_loss_while_generating_reconnects_and_replays": (
        "4.4 6.5 6.6",
        room_loss_while_generating_reconnects_and_replays,
    ),
    "stale_attempt_never_emits_after_retry": ("5.2 6.7", stale_attempt_never_emits_after_retry),
    "disconnect_during_every_phase": ("6.6 7", disconnect_during_every_phase),
}


def build(name: str) -> list[dict[str, Any]]:
    rule, scenario = SCENARIOS[name]
    recorder = Recorder(name, rule)
    scenario(recorder)
    return recorder.records


def dump(records: list[dict[str, Any]]) -> str:
    return "".join(
        json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n" for record in records
    )


if __name__ == "__main__":
    TRACES.mkdir(parents=True, exist_ok=True)
    for scenario_name in SCENARIOS:
        (TRACES / f"{scenario_name}.jsonl").write_text(dump(build(scenario_name)))
        print(f"wrote specs/traces/{scenario_name}.jsonl", file=sys.stderr)
