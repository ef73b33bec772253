# mypy: disallow-untyped-calls=False
"""One test per rule of the client engine (issue #2 / specs/protocol.md §Client),
each named after the rule it proves."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from engine_script import QUEUE_CONFIG, ROOM_INFO, Script, frame, of_type

from leanjoin.engine.client.ack_watch import AckWatch
from leanjoin.engine.client.config import InitialState
from leanjoin.engine.client.inputs import (
    AttemptId,
    ChangeImage,
    ChangePrompt,
    Disconnect,
    FrameReceived,
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
from leanjoin.engine.client.outputs import (
    CloseSocket,
    ConnectionState,
    ConnectRoom,
    DisconnectRoom,
    ErrorKind,
    ErrorOccurred,
    FramePurpose,
    GenerationStopped,
    InitialStateAcked,
    OpenSocket,
    Output,
    PublishTracks,
    QueuePositionChanged,
    RemoteStream,
    RequestAcked,
    RequestFailed,
    RetryScheduled,
    SendFrame,
    SessionStarted,
    StateChanged,
)
from leanjoin.engine.client.session import (
    ClientSession,
    NotConnectedError,
    Phase,
    UsageError,
    subscribe_token,
)

IMAGE_AND_PROMPT = InitialState(image_data="aW1hZ2U=", prompt="a cat")


def sends(outputs: Sequence[Output]) -> list[SendFrame]:
    return of_type(outputs, SendFrame)


# ---- rule 1 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("initial", "override", "passthrough", "follow"),
    [
        (InitialState(), None, True, None),
        (
            InitialState(prompt="a cat"),
            None,
            False,
            {"type": "prompt", "prompt": "a cat", "enhance_prompt": True},
        ),
        (InitialState(image_data="aW1n"), None, False, {"type": "set_image", "image_data": "aW1n"}),
        (
            IMAGE_AND_PROMPT,
            None,
            False,
            # As the JS client: the prompt's enhance_prompt (default true) goes with it.
            {
                "type": "set_image",
                "image_data": "aW1hZ2U=",
                "prompt": "a cat",
                "enhance_prompt": True,
            },
        ),
        (
            InitialState(image_ref="file-9", prompt="a cat", enhance_prompt=False),
            None,
            False,
            {
                "type": "set_image",
                "image_ref": "file-9",
                "prompt": "a cat",
                "enhance_prompt": False,
            },
        ),
        (
            InitialState(image_ref="file-9"),
            None,
            False,
            {"type": "set_image", "image_ref": "file-9"},
        ),
        # An image alone: no enhance_prompt, even if asked for (JS has no prompt to enhance).
        (
            InitialState(image_data="aW1n", enhance_prompt=False),
            None,
            False,
            {"type": "set_image", "image_data": "aW1n"},
        ),
        # The override sets the join's passthrough only: the state still follows (JS).
        (
            IMAGE_AND_PROMPT,
            True,
            True,
            {
                "type": "set_image",
                "image_data": "aW1hZ2U=",
                "prompt": "a cat",
                "enhance_prompt": True,
            },
        ),
        (InitialState(), False, False, None),
    ],
)
def test_rule1_join_first_then_exactly_one_initial_state_frame_iff_state_given(
    initial: InitialState,
    override: bool | None,
    passthrough: bool,
    follow: dict[str, object] | None,
) -> None:
    script = Script()
    script.connect(initial, override)
    frames = sends(script.feed(SocketOpened(script.attempt)))
    assert frames[0].purpose is FramePurpose.JOIN
    assert json.loads(frames[0].frame) == {"type": "livekit_join", "passthrough": passthrough}
    if follow is None:
        assert len(frames) == 1
    else:
        assert [f.purpose for f in frames] == [FramePurpose.JOIN, FramePurpose.INITIAL_STATE]
        assert json.loads(frames[1].frame) == follow


def test_rule1_a_state_after_a_passthrough_join_is_watched_like_any_initial_state() -> None:
    script = Script()
    script.connect(InitialState(prompt="a cat"), passthrough=True)
    script.feed(SocketOpened(script.attempt))
    watch = [script.session.ack_watch]
    script.feed(FrameReceived(script.attempt, ROOM_INFO))
    assert "initial_state_ack" in script.session.deadlines()
    ack = frame(type="prompt_ack", prompt="a cat", success=True)
    out = script.feed(FrameReceived(script.attempt, ack))
    watch.append(script.session.ack_watch)
    assert watch == [AckWatch.AWAITING, AckWatch.SETTLED]
    assert of_type(out, InitialStateAcked)


def test_rule1_passthrough_false_with_nothing_to_send_joins_and_watches_nothing() -> None:
    script = Script()
    script.connect(InitialState(), passthrough=False)
    frames = sends(script.feed(SocketOpened(script.attempt)))
    assert [json.loads(f.frame) for f in frames] == [{"type": "livekit_join", "passthrough": False}]
    script.feed(FrameReceived(script.attempt, ROOM_INFO))
    assert script.session.ack_watch is AckWatch.NONE
    assert "initial_state_ack" not in script.session.deadlines()


# ---- rule 2 ---------------------------------------------------------------------------


def test_rule2_initial_state_send_failure_fails_the_attempt_and_it_is_retried() -> None:
    script = Script()
    script.to_joining(IMAGE_AND_PROMPT)
    failed = script.attempt
    out = script.feed(SendFailed(failed, SendId(2), "connection reset"))
    assert of_type(out, CloseSocket) and script.session.phase is Phase.BACKOFF
    (retry,) = of_type(out, RetryScheduled)
    assert retry.kind is ErrorKind.SEND_FAILED and retry.delay == 1.0
    # room_info for the failed attempt arrives late: it never goes on to connect.
    assert script.feed(FrameReceived(failed, ROOM_INFO)) == []
    out = script.wait(1.0)
    assert of_type(out, OpenSocket)[0].attempt == failed + 1


def test_rule2_join_send_failure_fails_the_attempt_too() -> None:
    script = Script()
    script.to_joining()
    out = script.feed(SendFailed(script.attempt, SendId(1), "closed"))
    assert of_type(out, RetryScheduled) and not of_type(out, ConnectRoom)


# ---- rule 3 ---------------------------------------------------------------------------


def test_rule3_connected_depends_on_room_info_alone_never_on_the_ack() -> None:
    script = Script()
    script.to_joining(IMAGE_AND_PROMPT)
    out = script.feed(FrameReceived(script.attempt, ROOM_INFO))
    assert of_type(out, ConnectRoom) and script.session.ack_watch is AckWatch.WATCHING
    assert of_type(script.feed(RoomConnected(script.attempt)), PublishTracks)
    out = script.feed(TracksPublished(script.attempt))
    assert [type(o) for o in out] == [StateChanged, SessionStarted]
    (started,) = of_type(out, SessionStarted)
    assert started.session_id == "sess-1" and started.subscribe_token == subscribe_token("room-1")
    assert json.loads(__import__("base64").b64decode(started.subscribe_token)) == {
        "room_name": "room-1"
    }
    # ...and the ack, arriving afterwards, only confirms.
    assert of_type(script.server(type="set_image_ack", success=True), InitialStateAcked)


# ---- rule 4 ---------------------------------------------------------------------------


def test_rule4_ack_deadline_armed_at_room_info_never_during_a_queue_wait() -> None:
    script = Script(QUEUE_CONFIG)
    script.to_joining(IMAGE_AND_PROMPT)
    script.server(type="queue_position", position=3, queue_size=9)
    for _ in range(4):
        script.wait(50.0)  # minutes in the queue, with updates: nothing fires
        assert script.server(type="queue_position", position=2, queue_size=9)
    assert set(script.session.deadlines()) == {"queue_silence", "max_queue_wait"}
    script.server(
        type="livekit_room_info", livekit_url="ws://lk", token="t", room_name="r", session_id="s"
    )
    assert script.session.deadlines()["initial_state_ack"] == script.now + 30.0


def test_rule4_ack_rejection_raises_one_error_and_keeps_the_session() -> None:
    script = Script()
    script.to_connected(IMAGE_AND_PROMPT)
    out = script.server(type="set_image_ack", success=False, error="not an image")
    (error,) = of_type(out, ErrorOccurred)
    assert error.kind is ErrorKind.INITIAL_STATE_REJECTED and not error.fatal
    assert "not an image" in error.message
    assert script.session.state is ConnectionState.CONNECTED and not of_type(out, CloseSocket)


def test_rule4_ack_timeout_raises_one_error_and_no_retry() -> None:
    script = Script()
    script.to_connected(IMAGE_AND_PROMPT)
    out = script.wait(30.0)
    assert [e.kind for e in of_type(out, ErrorOccurred)] == [ErrorKind.INITIAL_STATE_TIMEOUT]
    assert not of_type(out, RetryScheduled) and script.session.state is ConnectionState.CONNECTED
    assert script.wait(600.0) == []


def test_rule4_a_late_ack_after_the_timeout_is_absorbed_not_taken_for_a_request() -> None:
    script = Script()
    script.to_connected(IMAGE_AND_PROMPT)
    assert [e.kind for e in of_type(script.wait(30.0), ErrorOccurred)] == [
        ErrorKind.INITIAL_STATE_TIMEOUT
    ]
    script.feed(ChangeImage(RequestId(1), image_data="bmV3"))
    # The initial state's own late ack: silent, and not request 1's.
    assert script.server(type="set_image_ack", success=True) == []
    assert of_type(script.server(type="set_image_ack", success=True), RequestAcked)[0].request == 1


def test_rule4_early_ack_is_buffered_and_claimed_once_at_room_info() -> None:
    script = Script(QUEUE_CONFIG)
    script.to_joining(IMAGE_AND_PROMPT)
    script.server(type="queue_position", position=1, queue_size=2)
    assert script.server(type="set_image_ack", success=True) == []
    assert script.session.ack_watch is AckWatch.BUFFERED
    out = script.feed(FrameReceived(script.attempt, ROOM_INFO))
    assert len(of_type(out, InitialStateAcked)) == 1
    assert "initial_state_ack" not in script.session.deadlines()
    script.feed(RoomConnected(script.attempt))
    script.feed(TracksPublished(script.attempt))
    # A runtime set_image later must not be "acked" by anything buffered.
    script.feed(ChangeImage(RequestId(1), image_data="bmV3"))
    assert not of_type(script.log[-1:], RequestAcked)


def test_rule4_buffered_ack_never_leaks_into_a_later_attempt() -> None:
    script = Script()
    script.to_joining(IMAGE_AND_PROMPT)
    script.server(type="set_image_ack", success=False, error="old")
    script.feed(SocketClosed(script.attempt, 1006, "dropped"))
    script.wait(1.0)
    script.feed(SocketOpened(script.attempt))
    out = script.feed(FrameReceived(script.attempt, ROOM_INFO))
    assert not of_type(out, ErrorOccurred) and not of_type(out, InitialStateAcked)
    assert script.session.ack_watch is AckWatch.WATCHING


# ---- rule 5 ---------------------------------------------------------------------------


def test_rule5_room_info_deadline_is_suspended_while_queued() -> None:
    script = Script()
    script.to_joining()
    assert script.session.deadlines()["room_info"] == 15.0
    script.wait(10.0)
    script.server(type="queue_position", position=5, queue_size=5)
    assert "room_info" not in script.session.deadlines()
    for _ in range(8):  # 400 s queued: past room_info (15 s) and connect (300 s)
        out = script.wait(50.0)
        assert not of_type(out, ErrorOccurred) and script.session.phase is Phase.QUEUED
        assert of_type(
            script.server(type="queue_position", position=4, queue_size=5), QueuePositionChanged
        )
    # room_info restores the connect deadline with the budget left before queueing.
    script.feed(FrameReceived(script.attempt, ROOM_INFO))
    assert script.session.deadlines()["connect"] == script.now + 300.0 - 10.0


def test_rule5_a_queue_that_falls_silent_does_not_wait_forever() -> None:
    script = Script()
    script.to_joining()
    script.server(type="queue_position", position=5, queue_size=5)
    (retry,) = of_type(script.wait(60.0), RetryScheduled)
    assert retry.kind is ErrorKind.ROOM_INFO_TIMEOUT and "said nothing for 60 s" in retry.message


def test_rule5_room_info_timeout_without_queue() -> None:
    script = Script()
    script.to_joining()
    (retry,) = of_type(script.wait(15.0), RetryScheduled)
    assert retry.kind is ErrorKind.ROOM_INFO_TIMEOUT


def test_rule5_optional_maximum_queue_wait_gives_up() -> None:
    script = Script(QUEUE_CONFIG)
    script.to_joining()
    out: list[object] = []
    for _ in range(12):
        script.server(type="queue_position", position=5, queue_size=5)
        out += script.wait(50.0)
    (error,) = of_type(out, ErrorOccurred)
    assert error.kind is ErrorKind.QUEUE_TIMEOUT and error.fatal
    assert script.session.state is ConnectionState.DISCONNECTED


# ---- rule 6 ---------------------------------------------------------------------------


def test_rule6_stale_attempt_input_is_dropped_and_its_deadlines_are_gone() -> None:
    script = Script()
    script.to_joining(IMAGE_AND_PROMPT)
    stale = script.attempt
    script.server(
        type="livekit_room_info", livekit_url="ws://lk", token="t", room_name="r", session_id="s"
    )
    out = script.feed(RoomDisconnected(stale, "ice"))  # fails the attempt
    assert of_type(out, DisconnectRoom)
    assert of_type(out, CloseSocket)
    assert "initial_state_ack" not in script.session.deadlines()
    script.wait(1.0)
    script.feed(SocketOpened(script.attempt))
    for late in (
        FrameReceived(stale, frame(type="set_image_ack", success=False, error="late")),
        FrameReceived(stale, frame(type="error", error="late")),
        RoomConnected(stale),
        TracksPublished(stale),
        SocketClosed(stale, 1000, "late"),
        RemoteTrackReceived(stale, "inference-server-1", "TR_1", "video"),
    ):
        assert script.feed(late) == []
    # The stale attempt's ack watch (30 s) is gone: later outputs are all newer.
    later = script.wait(40.0)
    assert later and all(o.attempt > stale for o in later)
    assert not [
        e for e in of_type(later, ErrorOccurred) if e.kind is ErrorKind.INITIAL_STATE_TIMEOUT
    ]


def test_rule6_nothing_reaches_the_user_after_disconnect() -> None:
    script = Script()
    script.to_connected(IMAGE_AND_PROMPT)
    old = script.attempt
    out = script.feed(Disconnect())
    assert of_type(out, CloseSocket)[0].code == 1000 and of_type(out, DisconnectRoom)
    assert script.session.get_timer() is None
    assert script.feed(FrameReceived(old, frame(type="set_image_ack", success=False))) == []
    assert script.feed(Disconnect()) == []


def test_rule6_inputs_for_attempts_never_started_are_misuse() -> None:
    script = Script()
    script.connect()
    with pytest.raises(UsageError, match="never started"):
        script.feed(SocketOpened(AttemptId(7)))


# ---- rule 7 ---------------------------------------------------------------------------


def test_rule7_backoff_doubles_from_one_second_capped_at_ten_then_gives_up_once() -> None:
    script = Script()
    script.connect()
    delays = []
    errors = []
    for _ in range(6):
        out = script.feed(SocketOpenFailed(script.attempt, "connection refused"))
        delays += [r.delay for r in of_type(out, RetryScheduled)]
        errors += of_type(out, ErrorOccurred)
        script.wait(10.0)
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0]
    assert len(errors) == 1 and errors[0].fatal and "gave up after 5 retries" in errors[0].message
    assert script.session.state is ConnectionState.DISCONNECTED


@pytest.mark.parametrize(
    "text", ["Permission denied", "401", "Invalid API key", "unauthorized", "invalid session"]
)
def test_rule7_permanent_errors_are_not_retried(text: str) -> None:
    script = Script()
    script.to_joining()
    out = script.server(type="error", error=text)
    assert not of_type(out, RetryScheduled)
    (error,) = of_type(out, ErrorOccurred)
    assert error.fatal and error.kind is ErrorKind.SERVER_ERROR


def test_rule7_connection_loss_reconnects_and_replays_the_latest_initial_state() -> None:
    script = Script()
    script.to_connected(IMAGE_AND_PROMPT)
    script.feed(ChangePrompt(RequestId(1), "a dog"))
    out = script.feed(RoomDisconnected(script.attempt, "server gone"))
    assert script.session.state is ConnectionState.RECONNECTING
    assert of_type(out, RequestFailed)[0].kind is ErrorKind.CONNECTION_LOST
    frames = sends(script.feed(SocketOpened(script.attempt)))
    assert json.loads(frames[1].frame) == {
        "type": "set_image",
        "image_data": "aW1hZ2U=",
        "prompt": "a dog",
        "enhance_prompt": True,
    }
    script.feed(FrameReceived(script.attempt, ROOM_INFO))
    script.feed(RoomConnected(script.attempt))
    out = script.feed(TracksPublished(script.attempt))
    assert of_type(out, StateChanged)[0].state is ConnectionState.CONNECTED


def test_rule7_runtime_requests_match_acks_by_text_and_in_order_and_time_out() -> None:
    script = Script()
    script.to_connected(InitialState())
    script.feed(ChangePrompt(RequestId(1), "one"))
    script.feed(ChangePrompt(RequestId(2), "two"))
    script.feed(ChangeImage(RequestId(3), image_data="aQ=="))
    script.feed(ChangeImage(RequestId(4), image_ref="file-2"))
    assert (
        of_type(script.server(type="prompt_ack", prompt="two", success=True), RequestAcked)[
            0
        ].request
        == 2
    )
    assert of_type(script.server(type="set_image_ack", success=True), RequestAcked)[0].request == 3
    (failed,) = of_type(
        script.server(type="set_image_ack", success=False, error="big"), RequestFailed
    )
    assert failed.request == 4 and failed.kind is ErrorKind.REQUEST_REJECTED
    (timeout,) = of_type(script.wait(30.0), RequestFailed)
    assert timeout.request == 1 and timeout.kind is ErrorKind.REQUEST_TIMEOUT
    # The late ack of the timed-out request is absorbed, not taken for a newer one.
    script.feed(ChangePrompt(RequestId(5), "one"))
    assert script.server(type="prompt_ack", prompt="one", success=True) == []
    assert (
        of_type(script.server(type="prompt_ack", prompt="one", success=True), RequestAcked)[
            0
        ].request
        == 5
    )


def test_rule7_requests_are_refused_clearly_when_not_connected() -> None:
    script = Script()
    with pytest.raises(
        NotConnectedError, match="set_prompt needs a connected session; the session is disconnected"
    ):
        script.feed(ChangePrompt(RequestId(1), "x"))
    script.to_joining()
    with pytest.raises(NotConnectedError, match="connecting"):
        script.feed(ChangeImage(RequestId(1), image_data="eA=="))


def test_rule7_at_most_one_error_event_per_failure() -> None:
    script = Script()
    script.to_connected(IMAGE_AND_PROMPT)
    script.feed(ChangePrompt(RequestId(1), "x"))
    out = script.server(type="error", error="model crashed")
    assert len(of_type(out, ErrorOccurred)) == 1
    assert of_type(out, RequestFailed)[0].kind is ErrorKind.SERVER_ERROR
    assert script.wait(60.0) == []  # the ack watch ended with that one error


def test_rule7_only_model_participants_tracks_reach_the_user() -> None:
    script = Script()
    script.to_connected()
    assert script.feed(RemoteTrackReceived(script.attempt, "viewer-7", "TR_1", "video")) == []
    (stream,) = of_type(
        script.feed(RemoteTrackReceived(script.attempt, "inference-server-2", "TR_2", "video")),
        RemoteStream,
    )
    assert stream.track_sid == "TR_2"


def test_rule7_generation_states_and_ticks() -> None:
    script = Script()
    script.to_joining()
    script.feed(FrameReceived(script.attempt, ROOM_INFO))
    script.server(type="generation_started")  # before the publish completed
    script.feed(RoomConnected(script.attempt))
    out = script.feed(TracksPublished(script.attempt))
    assert [c.state for c in of_type(out, StateChanged)] == [
        ConnectionState.CONNECTED,
        ConnectionState.GENERATING,
    ]
    out = script.server(type="generation_ended", seconds=4, reason="idle")
    assert of_type(out, StateChanged)[0].state is ConnectionState.CONNECTED


# ---- rule 8 ---------------------------------------------------------------------------


def test_rule8_the_same_inputs_give_the_same_outputs() -> None:
    def run() -> list[object]:
        script = Script()
        script.to_connected(IMAGE_AND_PROMPT)
        script.feed(ChangePrompt(RequestId(1), "b"))
        script.wait(45.0)
        script.feed(SocketClosed(script.attempt, 1006, "x"))
        script.wait(3.0)
        return list(script.log)

    assert run() == run()


# ---- misuse raises; nothing a peer sends does -------------------------------------------


def test_misuse_raises_usage_error() -> None:
    script = Script()
    with pytest.raises(UsageError, match="not an engine input"):
        script.session.handle("connect", 0.0)  # type: ignore[arg-type]
    script.connect()
    with pytest.raises(UsageError, match="connect while connecting"):
        script.connect()
    with pytest.raises(UsageError, match="FrameReceived before SocketOpened"):
        script.feed(FrameReceived(script.attempt, "{}"))
    with pytest.raises(UsageError, match="no ConnectRoom"):
        script.feed(RoomConnected(script.attempt))
    script.now = 5.0
    script.feed(SocketOpened(script.attempt))
    with pytest.raises(UsageError, match="time went backwards"):
        script.session.handle(SocketClosed(script.attempt, 1000, ""), 1.0)
    with pytest.raises(UsageError, match="never issued"):
        script.feed(SendFailed(script.attempt, SendId(99), "x"))


def test_secrets_stay_out_of_reprs() -> None:
    script = Script()
    out = script.connect(IMAGE_AND_PROMPT)
    out += script.feed(SocketOpened(script.attempt))
    out += script.feed(
        FrameReceived(
            script.attempt,
            frame(
                type="livekit_room_info",
                livekit_url="ws://lk",
                token="TOKEN-SECRET",
                room_name="r",
                session_id="s",
            ),
        )
    )
    text = repr(out) + repr(script.session.replay_state) + repr(script.session.config)
    for secret in ("k-secret", "TOKEN-SECRET", "aW1hZ2U="):
        assert secret not in text
    assert of_type(out, OpenSocket)[0].url.endswith("?api_key=k-secret&model=m")


def test_idle_session_is_small() -> None:
    from pympler import asizeof

    session = ClientSession(Script().session.config)
    # The config is shared by every session of a client; measure the session's own state.
    size = asizeof.asizeof(session) - asizeof.asizeof(session.config)
    assert size < 10_000, size


# ---- what the user sees of requests, replays and permanent failures (issue #12) ------------


def test_rule7_a_runtime_prompt_ack_is_never_taken_for_the_initial_prompts() -> None:
    """The initial prompt's ack is matched by its text: a runtime prompt's ack
    answers the runtime prompt even while the initial one is still watched."""
    script = Script()
    script.to_connected(InitialState(prompt="a cat"))
    assert script.session.ack_watch is AckWatch.WATCHING
    script.feed(ChangePrompt(RequestId(1), "a dog"))
    out = script.server(type="prompt_ack", prompt="a dog", success=True)
    assert of_type(out, RequestAcked) == [RequestAcked(script.attempt, RequestId(1))]
    assert of_type(out, InitialStateAcked) == []
    out = script.server(type="prompt_ack", prompt="a cat", success=True)
    assert of_type(out, InitialStateAcked) == [InitialStateAcked(script.attempt)]


def test_rule7_a_runtime_image_is_what_a_reconnect_replays() -> None:
    script = Script()
    script.to_connected(IMAGE_AND_PROMPT)
    script.feed(ChangeImage(RequestId(1), image_data="bmV3"))
    script.server(type="set_image_ack", success=True)  # the initial state's
    script.server(type="set_image_ack", success=True)  # the runtime image's
    script.feed(SocketClosed(script.attempt, 1006, "lost"))
    frames = sends(script.feed(SocketOpened(script.attempt)))
    assert json.loads(frames[1].frame)["image_data"] == "bmV3"


def test_rule7_a_request_whose_send_fails_is_answered_once() -> None:
    """`await set_prompt()` must end: a failed send answers its request."""
    script = Script()
    script.to_connected()
    (sent,) = sends(script.feed(ChangePrompt(RequestId(1), "a dog")))
    out = script.feed(SendFailed(script.attempt, sent.send, "broken pipe"))
    (failed,) = of_type(out, RequestFailed)
    assert (failed.request, failed.kind) == (RequestId(1), ErrorKind.SEND_FAILED)
    assert script.session.state is ConnectionState.CONNECTED
    # Its ack can no longer come; one that does matches nothing and answers nothing.
    assert (
        of_type(script.server(type="prompt_ack", prompt="a dog", success=True), RequestAcked) == []
    )


def test_rule7_a_permanent_failure_ends_even_a_connected_session() -> None:
    script = Script()
    script.to_connected()
    out = script.server(type="error", error="Invalid API key")
    (error,) = of_type(out, ErrorOccurred)
    assert error.fatal and error.kind is ErrorKind.SERVER_ERROR
    assert of_type(out, RetryScheduled) == [] and of_type(out, OpenSocket) == []
    assert script.session.state is ConnectionState.DISCONNECTED


# ---- failures a retry cannot mend (issue #14) -----------------------------------------------


@pytest.mark.parametrize("opened", [False, True])
def test_rule7_a_failure_the_adapter_knows_is_permanent_is_not_retried(opened: bool) -> None:
    """A 404 on the upgrade, a frame refused as too big: retrying repeats it."""
    script = Script()
    script.connect(IMAGE_AND_PROMPT)
    failure: SocketOpenFailed | SocketClosed = SocketOpenFailed(
        script.attempt, "HTTP 404: not found", permanent=True
    )
    if opened:
        script.feed(SocketOpened(script.attempt))
        failure = SocketClosed(script.attempt, 1009, "message too big", permanent=True)
    out = script.feed(failure)
    (error,) = of_type(out, ErrorOccurred)
    assert error.fatal and of_type(out, RetryScheduled) == []
    assert script.session.state is ConnectionState.DISCONNECTED


def test_rule7_an_initial_state_refused_as_too_big_while_written_is_not_retried() -> None:
    script = Script()
    script.connect(IMAGE_AND_PROMPT)
    initial = sends(script.feed(SocketOpened(script.attempt)))[1]
    out = script.feed(SendFailed(script.attempt, initial.send, "code 1009", permanent=True))
    (error,) = of_type(out, ErrorOccurred)
    assert error.fatal and of_type(out, RetryScheduled) == []


def test_rule7_a_frame_refused_as_too_large_ends_a_connect_not_a_session() -> None:
    too_big = "frame exceeds the maximum of 1024 bytes"
    script = Script()
    script.to_joining(IMAGE_AND_PROMPT)
    out = script.server(type="error", error=too_big)
    (error,) = of_type(out, ErrorOccurred)
    assert error.fatal and of_type(out, RetryScheduled) == []
    # Connected, the same refusal answers a request; the session stays.
    script = Script()
    script.to_connected(IMAGE_AND_PROMPT)
    script.feed(ChangeImage(RequestId(1), image_data="bmV3"))
    out = script.server(type="error", error=too_big)
    assert not of_type(out, ErrorOccurred)[0].fatal
    assert of_type(out, RequestFailed)[0].request == RequestId(1)
    assert script.session.state is ConnectionState.CONNECTED


def test_rule7_an_unclassified_failure_is_still_retried() -> None:
    script = Script()
    script.connect(IMAGE_AND_PROMPT)
    out = script.feed(SocketOpenFailed(script.attempt, "HTTP 503: try later"))
    assert of_type(out, RetryScheduled) and of_type(out, ErrorOccurred) == []


# ---- set(), clearing the reference, per-call timeouts (issue #14, spec §4) -------------------


@pytest.mark.parametrize(
    ("command", "sent"),
    [
        # set(prompt=...) as the JS client's set(): one set_image, the image cleared.
        (
            ChangeImage(RequestId(1), prompt="a dog", enhance_prompt=True),
            {"type": "set_image", "image_data": None, "prompt": "a dog", "enhance_prompt": True},
        ),
        (ChangeImage(RequestId(1)), {"type": "set_image", "image_data": None}),
        # setImage(image, {enhance}) without a prompt: JS sends enhance_prompt as given.
        (
            ChangeImage(RequestId(1), image_data="aQ==", enhance_prompt=False),
            {"type": "set_image", "image_data": "aQ==", "enhance_prompt": False},
        ),
    ],
)
def test_rule7_a_runtime_set_image_is_sent_as_the_js_client_sends_it(
    command: ChangeImage, sent: dict[str, object]
) -> None:
    script = Script()
    script.to_connected(IMAGE_AND_PROMPT)
    (request,) = sends(script.feed(command))
    assert json.loads(request.frame) == sent


def test_rule7_a_cleared_reference_stays_cleared_after_a_reconnect() -> None:
    script = Script()
    script.to_connected(IMAGE_AND_PROMPT)
    script.feed(ChangeImage(RequestId(1), prompt="a dog", enhance_prompt=False))
    assert script.session.replay_state == InitialState(prompt="a dog", enhance_prompt=False)
    script.feed(RoomDisconnected(script.attempt, "server gone"))
    frames = sends(script.feed(SocketOpened(script.attempt)))
    assert [json.loads(f.frame) for f in frames] == [
        {"type": "livekit_join", "passthrough": False},
        {"type": "prompt", "prompt": "a dog", "enhance_prompt": False},
    ]
    # A bare clear (image_data: null, no prompt) keeps the prompt for the next replay.
    script.feed(FrameReceived(script.attempt, ROOM_INFO))
    script.feed(RoomConnected(script.attempt))
    script.feed(TracksPublished(script.attempt))
    script.feed(ChangeImage(RequestId(2), image_data="aQ=="))
    script.feed(ChangeImage(RequestId(3)))
    script.feed(RoomDisconnected(script.attempt, "server gone"))
    frames = sends(script.feed(SocketOpened(script.attempt)))
    assert json.loads(frames[1].frame) == {
        "type": "prompt",
        "prompt": "a dog",
        "enhance_prompt": False,
    }


def test_rule7_a_call_carries_its_own_ack_deadline() -> None:
    script = Script()
    script.to_connected(InitialState())
    script.feed(ChangePrompt(RequestId(1), "quick", timeout=2.0))
    script.feed(ChangeImage(RequestId(2), image_data="aQ==", timeout=45.0))
    script.feed(ChangePrompt(RequestId(3), "default"))
    deadlines = script.session.deadlines()
    assert [deadlines[f"request:{n}"] - script.now for n in (1, 2, 3)] == [2.0, 45.0, 30.0]
    (quick,) = of_type(script.wait(2.0), RequestFailed)
    assert (quick.request, quick.kind) == (1, ErrorKind.REQUEST_TIMEOUT)
    assert quick.message == "no ack within 2 s"
    (default,) = of_type(script.wait(28.0), RequestFailed)
    assert default.request == 3 and default.message == "no ack within 30 s"
    (slow,) = of_type(script.wait(15.0), RequestFailed)
    assert slow.request == 2 and slow.message == "no ack within 45 s"


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), float("inf"), True])
def test_rule7_a_calls_timeout_is_a_positive_number(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout must be a finite number > 0"):
        ChangePrompt(RequestId(1), "p", timeout=timeout)
    with pytest.raises(ValueError, match="timeout"):
        ChangeImage(RequestId(1), timeout=timeout)


# ---- lenient parsing (spec §2.3) ------------------------------------------------------


def test_lenient_a_queue_position_without_queue_size_shows_the_position_as_the_size() -> None:
    script = Script(QUEUE_CONFIG)
    script.to_joining()
    (moved,) = of_type(script.server(type="queue_position", position=3), QueuePositionChanged)
    assert (moved.position, moved.queue_size) == (3, 3)
    assert "queue_silence" in script.session.deadlines()  # acted on: the queue wait began


def test_lenient_room_info_without_session_id_or_room_name_still_connects() -> None:
    script = Script()
    script.to_joining()
    out = script.server(type="livekit_room_info", livekit_url="ws://lk", token="t", extra=1)
    (room,) = of_type(out, ConnectRoom)
    assert (room.livekit_url, room.token) == ("ws://lk", "t")
    script.feed(RoomConnected(script.attempt))
    (started,) = of_type(script.feed(TracksPublished(script.attempt)), SessionStarted)
    assert (started.session_id, started.room_name, started.subscribe_token) == ("", "", "")
    assert script.session.state is ConnectionState.CONNECTED


def test_lenient_room_info_without_token_is_refused_naming_it() -> None:
    script = Script()
    script.to_joining()
    out = script.server(type="livekit_room_info", livekit_url="ws://lk", room_name="r")
    (error,) = of_type(out, ErrorOccurred)
    assert error.kind is ErrorKind.MALFORMED_FRAME and "'token'" in error.message
    assert not of_type(out, ConnectRoom) and not error.fatal


def test_lenient_an_ack_whose_error_is_not_text_is_still_a_rejection() -> None:
    script = Script()
    script.to_connected(IMAGE_AND_PROMPT)
    (error,) = of_type(script.server(type="set_image_ack", success=False, error=500), ErrorOccurred)
    assert error.kind is ErrorKind.INITIAL_STATE_REJECTED and "no reason given" in error.message


def test_lenient_an_error_frame_without_text_is_still_a_server_error() -> None:
    script = Script()
    script.to_connected()
    (error,) = of_type(script.server(type="error"), ErrorOccurred)
    assert error.kind is ErrorKind.SERVER_ERROR
    assert error.message == "server error: no reason given"


def test_lenient_generation_ended_without_seconds_or_reason_still_ends_generation() -> None:
    script = Script()
    script.to_connected()
    script.server(type="generation_started")
    out = script.server(type="generation_ended")
    assert of_type(out, StateChanged)[0].state is ConnectionState.CONNECTED
    (stopped,) = of_type(out, GenerationStopped)
    assert (stopped.seconds, stopped.reason) == (None, "no reason given")


def test_lenient_a_prompt_ack_without_its_prompt_is_refused_and_the_request_times_out() -> None:
    script = Script()
    script.to_connected()
    script.feed(ChangePrompt(RequestId(1), "one"))
    (error,) = of_type(script.server(type="prompt_ack", success=True), ErrorOccurred)
    assert error.kind is ErrorKind.MALFORMED_FRAME and "'prompt'" in error.message
    (failed,) = of_type(script.wait(30.0), RequestFailed)
    assert failed.request == 1 and failed.kind is ErrorKind.REQUEST_TIMEOUT


def test_an_open_socket_scrubs_its_url_and_key_from_any_text() -> None:
    """Both transports (anyio and gevent) report errors through OpenSocket.scrub."""
    url = "ws://h:1/v1/stream?api_key=k-s3cret&model=m"
    effect = OpenSocket(AttemptId(1), url, "ws://h:1/v1/stream?api_key=%3Credacted%3E&model=m")
    text = effect.scrub(f"refused {url}: the key k-s3cret is unknown")
    assert "k-s3cret" not in text and "api_key=%3Credacted%3E" in text
