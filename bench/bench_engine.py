"""Client engine cost: full handshakes per second, cost per input against a bare
``transitions`` trigger measured in the same run, and the size of an idle
session. Run on demand: ``.venv/bin/python bench/bench_engine.py``.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

from pympler import asizeof
from transitions import Machine

from leanjoin.engine.client import ClientSession
from leanjoin.engine.config import InitialState, SessionConfig
from leanjoin.engine.inputs import (
    AttemptId,
    Connect,
    Disconnect,
    FrameReceived,
    Input,
    RemoteTrackReceived,
    RoomConnected,
    SocketOpened,
    TracksPublished,
)

CONFIG = SessionConfig(url="ws://127.0.0.1:8765/v1/stream", api_key="bench-key", model="echo")
INITIAL = InitialState(image_data="aW1hZ2U=" * 16, prompt="a watercolour cat")
A = AttemptId(1)


def _frame(**fields: object) -> FrameReceived:
    return FrameReceived(A, json.dumps(fields))


# A dozen inputs: connect to connected and generating, then disconnect.
HANDSHAKE: list[Input] = [
    Connect(INITIAL),
    SocketOpened(A),
    _frame(type="queue_position", position=1, queue_size=3),
    _frame(type="set_image_ack", success=True),
    _frame(type="livekit_room_info", livekit_url="ws://lk", token="t", room_name="r", session_id="s"),
    RoomConnected(A),
    RemoteTrackReceived(A, "inference-server-1", "TR_v", "video"),
    RemoteTrackReceived(A, "inference-server-1", "TR_a", "audio"),
    TracksPublished(A),
    _frame(type="generation_started"),
    _frame(type="generation_tick", seconds=1.0),
    Disconnect(),
]


def handshake() -> None:
    session = ClientSession(CONFIG)
    now = 0.0
    for item in HANDSHAKE:
        now += 0.01
        session.handle(item, now)


class _Toggle:
    state: str


def bare_trigger_factory() -> Callable[[], None]:
    model = _Toggle()
    machine = Machine(model=model, states=["a", "b"], initial="a", auto_transitions=False)
    machine.add_transition("go", "a", "b")
    machine.add_transition("go", "b", "a")
    trigger = model.go  # type: ignore[attr-defined]

    def run() -> None:
        trigger()

    return run


def per_call(func: Callable[[], None], calls: int, repeats: int = 7) -> float:
    """Median CPU seconds per call over ``repeats`` loops. CPU time of this
    process, not wall time: the goal is per core, and the machine is shared."""
    samples = []
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(calls):
            func()
        samples.append((time.process_time() - start) / calls)
    return statistics.median(samples)


def main() -> None:
    handshake()  # warm up imports and caches
    per_handshake = per_call(handshake, 2_000)
    per_trigger = per_call(bare_trigger_factory(), 20_000)
    per_input = per_handshake / len(HANDSHAKE)
    idle = ClientSession(CONFIG)
    idle_bytes = asizeof.asizeof(idle) - asizeof.asizeof(idle.config)
    rows = [
        ("handshakes per second (12 inputs, fresh session each)", f"{1 / per_handshake:,.0f}", ">= 5,000"),
        ("engine cost per input", f"{per_input * 1e6:.1f} µs", ""),
        ("bare transitions trigger (same run)", f"{per_trigger * 1e6:.1f} µs", ""),
        ("per input / bare trigger", f"{per_input / per_trigger:.2f}x", "<= 3x"),
        ("idle session object", f"{idle_bytes:,} B", "< 10 KB"),
    ]
    print("| measure | result | goal |")
    print("|---|---|---|")
    for name, value, goal in rows:
        print(f"| {name} | {value} | {goal} |")


if __name__ == "__main__":
    main()
