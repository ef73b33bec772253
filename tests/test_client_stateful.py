"""Arbitrary interleavings of user commands, socket and media results (for the
live attempt and for stale ones) and clock advances, checked step by step by
the engine's named invariants and against a shadow model of what the user
should see. Every example is then replayed on a fresh session."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from hypothesis import event, settings, target
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from leanjoin.engine.check.invariants import InvariantMonitor
from leanjoin.engine.client.ack_watch import AckWatch
from leanjoin.engine.client.config import InitialState, RetryPolicy, SessionConfig, Timeouts
from leanjoin.engine.client.inputs import (
    AttemptId,
    ChangeImage,
    ChangePrompt,
    Connect,
    Disconnect,
    FrameReceived,
    Input,
    PublishFailed,
    RemoteTrackReceived,
    RequestId,
    RoomConnected,
    RoomConnectFailed,
    RoomDisconnected,
    SendFailed,
    SendId,
    SocketClosed,
    SocketOpened,
    SocketOpenFailed,
    TracksPublished,
)
from leanjoin.engine.client.outputs import (
    ConnectionState,
    ErrorOccurred,
    Output,
    SendFrame,
    StateChanged,
)
from leanjoin.engine.client.session import LIVE_PHASES, ClientSession, Phase

CONFIG = SessionConfig(
    url="ws://127.0.0.1:9/v1/stream",
    api_key="test-key",
    model="m",
    timeouts=Timeouts(max_queue_wait=120.0),
    retry=RetryPolicy(max_retries=3),
)

REACHED: Counter[str] = Counter()

initial_states = st.sampled_from(
    [
        InitialState(),
        InitialState(prompt="a cat"),
        InitialState(image_data="aW1n"),
        InitialState(image_data="aW1n", prompt="a cat"),
        InitialState(image_ref="file-1", prompt="a cat"),
    ]
)

ROOM_INFO = json.dumps(
    {
        "type": "livekit_room_info",
        "livekit_url": "ws://lk",
        "token": "tok",
        "room_name": "r",
        "session_id": "s",
    }
)
QUEUE_POSITION = json.dumps({"type": "queue_position", "position": 2, "queue_size": 5})
acks = st.sampled_from(
    [
        json.dumps({"type": "set_image_ack", "success": True}),
        json.dumps({"type": "set_image_ack", "success": False, "error": "bad image"}),
        json.dumps({"type": "prompt_ack", "prompt": "a cat", "success": True}),
        json.dumps({"type": "prompt_ack", "prompt": "a dog", "success": False, "error": "nope"}),
    ]
)
generation_frames = st.sampled_from(
    [
        json.dumps({"type": "generation_started"}),
        json.dumps({"type": "generation_tick", "seconds": 1}),
        json.dumps({"type": "generation_ended", "seconds": 3, "reason": "done"}),
    ]
)
bad_frames = st.sampled_from(
    [
        json.dumps({"type": "error", "error": "overloaded"}),
        json.dumps({"type": "error", "error": "Unauthorized"}),
        json.dumps({"type": "ready"}),
        ROOM_INFO,
        QUEUE_POSITION,
        "not json",
        '{"type":"queue_position","position":"x"}',
    ]
)
FAULTS = [
    "disconnect",
    "socket_open_failed",
    "socket_closed",
    "send_failed",
    "bad_frame",
    "room_connect_failed",
    "publish_failed",
    "room_disconnected",
]

stale_inputs = st.sampled_from(
    [
        lambda a: SocketOpened(a),
        lambda a: FrameReceived(a, ROOM_INFO),
        lambda a: FrameReceived(a, json.dumps({"type": "set_image_ack", "success": False})),
        lambda a: SocketClosed(a, 1006, "late"),
        lambda a: SendFailed(a, SendId(2), "late"),
        lambda a: RoomConnected(a),
        lambda a: TracksPublished(a),
        lambda a: RoomDisconnected(a, "late"),
        lambda a: RemoteTrackReceived(a, "inference-server-1", "TR_1", "video"),
    ]
)


class ClientEngineMachine(RuleBasedStateMachine):
    attempts = Bundle("attempts")

    def __init__(self) -> None:
        super().__init__()
        self.session = ClientSession(CONFIG)
        self.monitor = InvariantMonitor(self.session)
        self.now = 0.0
        self.log: list[tuple[Input | None, float]] = []
        self.outputs: list[Output] = []
        self.sends: list[SendId] = []
        self.next_request = 0
        self.retried = False
        # Shadow model: the user-visible state the rules predict.
        self.expected: ConnectionState = ConnectionState.DISCONNECTED

    # ---- plumbing ------------------------------------------------------------------

    def feed(self, item: Input | None) -> list[Output]:
        outputs = self.monitor.step(item, self.now)
        self.log.append((item, self.now))
        self.outputs.extend(outputs)
        for output in outputs:
            if isinstance(output, SendFrame):
                self.sends.append(output.send)
            if isinstance(output, StateChanged):
                self.expected_from_event(output)
        return outputs

    def expected_from_event(self, change: StateChanged) -> None:
        # The shadow only accepts changes the rules allow from where it stands.
        allowed = {
            ConnectionState.DISCONNECTED: {ConnectionState.CONNECTING},
            ConnectionState.CONNECTING: {ConnectionState.CONNECTED, ConnectionState.DISCONNECTED},
            ConnectionState.CONNECTED: {
                ConnectionState.GENERATING,
                ConnectionState.RECONNECTING,
                ConnectionState.DISCONNECTED,
            },
            ConnectionState.GENERATING: {
                ConnectionState.CONNECTED,
                ConnectionState.RECONNECTING,
                ConnectionState.DISCONNECTED,
            },
            ConnectionState.RECONNECTING: {ConnectionState.CONNECTED, ConnectionState.DISCONNECTED},
        }
        assert change.previous is self.expected
        assert change.state in allowed[self.expected], (self.expected, change.state)
        self.expected = change.state

    @property
    def live(self) -> AttemptId | None:
        return self.session.attempt

    # ---- user commands ----------------------------------------------------------------

    @initialize(
        target=attempts, initial=initial_states, override=st.sampled_from([None, None, True, False])
    )
    def connect_first(self, initial: InitialState, override: bool | None) -> AttemptId:
        # Every pairing is allowed (spec 3.1), false with nothing to send included.
        self.feed(Connect(initial, override))
        assert self.live is not None
        return self.live

    @precondition(lambda self: self.session.phase is Phase.DISCONNECTED)
    @rule(target=attempts, initial=initial_states)
    def connect_again(self, initial: InitialState) -> AttemptId:
        self.feed(Connect(initial))
        assert self.live is not None
        return self.live

    @precondition(lambda self: self.session.phase in LIVE_PHASES)
    @rule(prompt=st.sampled_from(["a cat", "a dog"]))
    def change_prompt(self, prompt: str) -> None:
        self.next_request += 1
        self.feed(ChangePrompt(RequestId(self.next_request), prompt))

    @precondition(lambda self: self.session.phase in LIVE_PHASES)
    @rule(
        fields=st.sampled_from(
            [
                {"image_data": "bmV3"},
                {},  # image_data: null, the reference cleared
                {"prompt": "a dog", "enhance_prompt": True},  # set(prompt=...)
                {"image_ref": "file-2", "enhance_prompt": False},
            ]
        ),
        timeout=st.sampled_from([None, 5.0, 45.0]),
    )
    def change_image(self, fields: dict[str, Any], timeout: float | None) -> None:
        self.next_request += 1
        self.feed(ChangeImage(RequestId(self.next_request), **fields, timeout=timeout))

    # ---- progress: what a healthy server and room report -------------------------------

    @rule()
    def progress(self) -> None:
        """The natural next step from wherever the session is: keeps examples deep."""
        live, phase = self.live, self.session.phase
        if phase is Phase.BACKOFF:
            timer = self.session.get_timer()
            assert timer is not None
            self.now = max(self.now, timer)
            self.retried = True
            self.feed(None)
        elif live is None:
            return
        elif phase is Phase.OPENING:
            self.feed(SocketOpened(live))
        elif phase in (Phase.JOINING, Phase.QUEUED):
            self.feed(FrameReceived(live, ROOM_INFO))
        elif phase is Phase.ROOM_CONNECTING:
            self.feed(RoomConnected(live))
        elif phase is Phase.PUBLISHING:
            self.feed(TracksPublished(live))
        elif phase is Phase.CONNECTED:
            self.feed(FrameReceived(live, json.dumps({"type": "generation_started"})))

    @precondition(lambda self: self.session.phase is Phase.OPENING)
    @rule()
    def socket_opened(self) -> None:
        assert self.live is not None
        self.feed(SocketOpened(self.live))

    @precondition(lambda self: self.session.phase in (Phase.JOINING, Phase.QUEUED))
    @rule()
    def queue_position(self) -> None:
        assert self.live is not None
        self.feed(FrameReceived(self.live, QUEUE_POSITION))

    @precondition(lambda self: self.session.phase in (Phase.JOINING, Phase.QUEUED))
    @rule()
    def room_info(self) -> None:
        assert self.live is not None
        self.feed(FrameReceived(self.live, ROOM_INFO))

    @precondition(lambda self: self.live is not None and self.session.phase is not Phase.OPENING)
    @rule(frame=acks)
    def ack(self, frame: str) -> None:
        assert self.live is not None
        before = self.session.ack_watch
        queued = self.session.phase is Phase.QUEUED
        self.feed(FrameReceived(self.live, frame))
        if queued and before is AckWatch.AWAITING and self.session.ack_watch is AckWatch.BUFFERED:
            REACHED["queued-with-early-ack"] += 1
            event("reached: queued-with-early-ack")

    @precondition(
        lambda self: (
            self.session.phase is Phase.QUEUED and self.session.ack_watch is AckWatch.AWAITING
        )
    )
    @rule(success=st.booleans())
    def early_ack_while_queued(self, success: bool) -> None:
        """The initial state's own ack overtakes room_info during a queue wait."""
        attempt = self.session._attempt
        assert attempt is not None and attempt.initial_frame is not None
        frame = attempt.initial_frame
        ack = {"type": "set_image_ack", "success": success}
        if frame.type == "prompt":
            ack = {"type": "prompt_ack", "prompt": getattr(frame, "prompt", ""), "success": success}
        self.feed(FrameReceived(attempt.id, json.dumps(ack)))
        assert self.session.ack_watch is AckWatch.BUFFERED
        assert (
            self.session.get_timer() is not None
            and "initial_state_ack" not in self.session.deadlines()
        )
        REACHED["queued-with-early-ack"] += 1
        event("reached: queued-with-early-ack")

    @precondition(lambda self: self.session.phase is Phase.ROOM_CONNECTING)
    @rule()
    def room_connected(self) -> None:
        assert self.live is not None
        self.feed(RoomConnected(self.live))

    @precondition(lambda self: self.session.phase is Phase.PUBLISHING)
    @rule()
    def tracks_published(self) -> None:
        assert self.live is not None
        self.feed(TracksPublished(self.live))

    @precondition(
        lambda self: self.session._attempt is not None and self.session._attempt.room_requested
    )
    @rule(participant=st.sampled_from(["inference-server-1", "someone-else"]))
    def remote_track(self, participant: str) -> None:
        assert self.live is not None
        self.feed(RemoteTrackReceived(self.live, participant, "TR_x", "video"))

    @precondition(
        lambda self: self.session._attempt is not None and self.session._attempt.room_requested
    )
    @rule(frame=generation_frames)
    def generation(self, frame: str) -> None:
        assert self.live is not None
        self.feed(FrameReceived(self.live, frame))

    @precondition(lambda self: self.session.phase in LIVE_PHASES)
    @rule(room=st.booleans())
    def connection_drop(self, room: bool) -> None:
        """A healthy session loses its socket or its room: it must reconnect."""
        assert self.live is not None
        self.feed(
            RoomDisconnected(self.live, "lost") if room else SocketClosed(self.live, 1006, "lost")
        )
        assert self.session.state is ConnectionState.RECONNECTING

    # ---- faults: one rule, so that they do not crowd out progress -----------------------

    @rule(fault=st.sampled_from(FAULTS), gate=st.integers(0, 3), data=st.data())
    def fault(self, fault: str, gate: int, data: st.DataObject) -> None:
        if gate:
            return  # faults fire on a quarter of their draws, so sessions live long enough
        phase = self.session.phase
        attempt = self.session._attempt
        if fault == "disconnect":
            outputs = self.feed(Disconnect())
            assert not any(isinstance(o, ErrorOccurred) for o in outputs)
            assert self.session.state is ConnectionState.DISCONNECTED
            assert self.session.get_timer() is None
            return
        if attempt is None:
            return
        live = attempt.id
        if fault == "socket_open_failed" and phase is Phase.OPENING:
            self.feed(SocketOpenFailed(live, data.draw(st.sampled_from(["refused", "HTTP 401"]))))
        elif fault == "socket_closed":
            self.feed(
                SocketClosed(live, 1001, data.draw(st.sampled_from(["going away", "unauthorized"])))
            )
        elif fault == "send_failed" and attempt.socket_open:
            self.feed(
                SendFailed(
                    live, SendId(data.draw(st.integers(1, attempt.next_send))), "broken pipe"
                )
            )
        elif fault == "bad_frame" and attempt.socket_open:
            self.feed(FrameReceived(live, data.draw(bad_frames)))
        elif fault == "room_connect_failed" and phase is Phase.ROOM_CONNECTING:
            self.feed(RoomConnectFailed(live, "ice failed"))
        elif fault == "publish_failed" and phase is Phase.PUBLISHING:
            self.feed(PublishFailed(live, "codec refused"))
        elif fault == "room_disconnected" and attempt.room_requested:
            self.feed(RoomDisconnected(live, "server left"))

    # ---- time and staleness ----------------------------------------------------------------

    @rule(seconds=st.sampled_from([0.5, 0.5, 2.0, 5.0, 16.0, 31.0, 130.0, 301.0]))
    def advance_clock(self, seconds: float) -> None:
        self.now += seconds
        timer = self.session.get_timer()
        if timer is not None and timer <= self.now:
            was_backoff = self.session.phase is Phase.BACKOFF
            self.feed(None)
            if was_backoff and self.session.phase is Phase.OPENING:
                self.retried = True

    @rule(attempt=attempts, make=stale_inputs)
    def stale_input(self, attempt: AttemptId, make: Any) -> None:
        if attempt == self.live:
            return
        outputs = self.feed(make(attempt))
        assert outputs == [], "a stale attempt's input produced output"
        if self.retried:
            REACHED["stale-after-retry"] += 1
            event("reached: stale-after-retry")

    @precondition(lambda self: self.session.phase is Phase.OPENING)
    @rule(target=attempts)
    def remember_attempt(self) -> AttemptId:
        assert self.live is not None
        return self.live

    # ---- invariants and coverage --------------------------------------------------------

    @invariant()
    def shadow_agrees(self) -> None:
        assert self.session.state is self.expected

    @invariant()
    def record_reached(self) -> None:
        state = self.session.state.value
        REACHED[state] += 1
        event(f"state: {state}")
        if self.session.phase is Phase.BACKOFF:
            REACHED["backoff"] += 1

    def teardown(self) -> None:
        # Steer generation towards sessions that live through many attempts.
        target(float(self.session.latest_attempt), label="attempts started")
        # Replay the recorded log on a fresh session: identical outputs.
        replay = ClientSession(CONFIG)
        again: list[Output] = []
        for item, now in self.log:
            again.extend(replay.handle_timer(now) if item is None else replay.handle(item, now))
        assert again == self.outputs


ClientEngineMachine.TestCase.settings = settings(
    max_examples=250, stateful_step_count=80, deadline=None
)
TestClientEngineInterleavings = ClientEngineMachine.TestCase


def test_interesting_states_are_reached() -> None:
    """The interleavings are only worth something if they get somewhere. A
    derandomized run of its own, so that whether each state is reached is the
    same on every run, not a matter of the day's seed."""
    REACHED.clear()
    run_state_machine_as_test(
        ClientEngineMachine,
        settings=settings(ClientEngineMachine.TestCase.settings, derandomize=True, database=None),
    )
    for label in (
        "connected",
        "generating",
        "reconnecting",
        "queued-with-early-ack",
        "stale-after-retry",
    ):
        assert REACHED[label] > 0, f"the interleavings never reached {label}: {dict(REACHED)}"
