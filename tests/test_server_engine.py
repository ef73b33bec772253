"""The server engine on a fake clock: every path, and a property that peer
input (any bytes, any JSON) never makes it raise.

``Harness`` plays the adapter: it routes RequestSlot/ReleaseSlot through one
shared admission queue and feeds the notices back in order, answers
CreateRoom with a room, and records every output per connection.
"""

from __future__ import annotations

import base64
import json
from collections import deque
from typing import Any

import attrs
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from leanjoin.engine.codec import FrameProblem, IgnoredFrame, parse_server_frame
from leanjoin.engine.server.admission import Admission, AdmissionError
from leanjoin.engine.server.events import (
    ClientPublishing,
    ClientVideoArrived,
    CloseConnection,
    ConfigureModel,
    CreateRoom,
    DecodeReference,
    FailMedia,
    FrameIn,
    FrameOut,
    LoadReference,
    Opened,
    PeerClosed,
    PhaseChanged,
    QueueFull,
    QueueMoved,
    ReferenceDecoded,
    ReferenceMissing,
    ReferenceUndecodable,
    ReleaseSlot,
    RequestNumber,
    RequestSlot,
    RoomFailed,
    RoomReady,
    ServerOutput,
    SessionPhase,
    Shutdown,
    SlotGranted,
    StopModel,
)
from leanjoin.engine.server.knobs import AckDrop, FaultPhase, MediaFailurePhase, ServerKnobs
from leanjoin.engine.server.session import (
    FAULT_PHASES,
    MACHINE,
    TRANSITIONS,
    ServerSession,
    UsageError,
)

KEY = "test-key"
TOKEN = "secret-livekit-token"
IMAGE = base64.b64encode(b"\x89PNG fake image bytes").decode()
P = SessionPhase
DEFAULTS = ServerKnobs()


class Harness:
    """A synchronous stand-in for the adapter, around N sessions."""

    def __init__(self, knobs: ServerKnobs = DEFAULTS, sessions: int = 1) -> None:
        self.knobs = knobs
        self.admission: Admission[int] = Admission(
            knobs.capacity, knobs.max_queue, knobs.admissions_per_second
        )
        self.sessions = [ServerSession(knobs, KEY) for _ in range(sessions)]
        self.now = 0.0
        self.auto_room = True
        self.log: list[list[ServerOutput]] = [[] for _ in range(sessions)]
        self._seen = [0] * sessions

    def feed(self, index: int, event: object) -> None:
        work: deque[tuple[int, object]] = deque([(index, event)])
        while work:
            j, item = work.popleft()
            for out in self.sessions[j].handle(item, self.now):
                self._route(j, out, work)

    def _route(self, j: int, out: ServerOutput, work: deque[tuple[int, object]]) -> None:
        self.log[j].append(out)
        if isinstance(out, RequestSlot):
            work.extend(self.admission.request(j, self.now))
        elif isinstance(out, ReleaseSlot):
            work.extend(self.admission.release(j, self.now))
        elif isinstance(out, CreateRoom) and self.auto_room:
            work.append((j, RoomReady("ws://127.0.0.1:7880", TOKEN, f"room-{j}", f"sess-{j}")))

    def advance(self, seconds: float) -> None:
        """Move the clock, firing every timer that falls due on the way, in order."""
        end = self.now + seconds
        while True:
            timers = [(s.get_timer(), i) for i, s in enumerate(self.sessions)]
            due = sorted((t, i) for t, i in timers if t is not None and t <= end)
            admit = self.admission.get_timer()
            if admit is not None and admit <= end and (not due or admit < due[0][0]):
                self.now = max(self.now, admit)
                work: deque[tuple[int, object]] = deque(self.admission.handle_timer(self.now))
                while work:
                    j, item = work.popleft()
                    for out in self.sessions[j].handle(item, self.now):
                        self._route(j, out, work)
                continue
            if not due:
                break
            when, i = due[0]
            self.now = max(self.now, when)
            work = deque()
            for out in self.sessions[i].handle_timer(self.now):
                self._route(i, out, work)
            while work:
                j, item = work.popleft()
                for out in self.sessions[j].handle(item, self.now):
                    self._route(j, out, work)
        self.now = end

    def new(self, index: int = 0) -> list[ServerOutput]:
        """Outputs of connection ``index`` since the last call."""
        out = self.log[index][self._seen[index] :]
        self._seen[index] = len(self.log[index])
        return out

    def sent(self, index: int = 0) -> list[dict[str, Any]]:
        """Frames sent to connection ``index`` since the last call, as JSON."""
        return [json.loads(o.frame) for o in self.new(index) if isinstance(o, FrameOut)]

    def types(self, index: int = 0) -> list[str]:
        return [frame["type"] for frame in self.sent(index)]

    def open(self, index: int = 0, key: str | None = KEY) -> None:
        self.feed(index, Opened(api_key=key, model="echo"))

    def frame(self, index: int, message: dict[str, Any] | str | bytes) -> None:
        text = json.dumps(message) if isinstance(message, dict) else message
        self.feed(index, FrameIn(text))

    def join(self, index: int = 0, **fields: Any) -> None:
        self.frame(index, {"type": "livekit_join", **fields})

    def phase(self, index: int = 0) -> SessionPhase:
        return self.sessions[index].phase


def effects(outputs: list[ServerOutput], kind: type) -> list[Any]:
    return [o for o in outputs if isinstance(o, kind)]


def decode_request(h: Harness, index: int = 0) -> RequestNumber:
    """The request of the latest DecodeReference (the log is not consumed)."""
    return [o for o in h.log[index] if isinstance(o, DecodeReference)][-1].request


# ---- authentication ------------------------------------------------------------------


@pytest.mark.parametrize("key", ["wrong", None, ""])
def test_a_wrong_or_missing_key_gets_unauthorized_and_a_close(key: str | None) -> None:
    h = Harness()
    h.open(key=key)
    out = h.new()
    frames = [json.loads(o.frame) for o in effects(out, FrameOut)]
    assert frames == [{"type": "error", "error": "unauthorized: invalid api key"}]
    assert effects(out, CloseConnection) == [CloseConnection(1008, "unauthorized")]
    assert h.phase() is P.CLOSED
    assert not effects(out, RequestSlot)


def test_inputs_after_close_are_dropped() -> None:
    h = Harness()
    h.open(key="wrong")
    h.new()
    h.join(passthrough=True)
    h.feed(0, ClientVideoArrived())
    h.feed(0, RoomReady("ws://x", TOKEN, "r", "s"))
    assert h.new() == []
    assert h.sessions[0].handle_timer(99.0) == []


# ---- the lean join ---------------------------------------------------------------------


def test_passthrough_join_runs_to_generation_and_ticks() -> None:
    h = Harness()
    h.open()
    assert [o.phase for o in effects(h.new(), PhaseChanged)] == [P.AWAITING_JOIN]
    h.join(passthrough=True)
    info = h.sent()
    assert [f["type"] for f in info] == ["livekit_room_info"]
    assert info[0]["token"] == TOKEN and info[0]["room_name"] == "room-0"
    assert h.phase() is P.IN_ROOM
    assert h.sessions[0].get_timer() is None  # nothing to wait for but the video

    h.now = 2.0
    h.feed(0, ClientVideoArrived())
    out = h.new()
    assert [json.loads(o.frame)["type"] for o in effects(out, FrameOut)] == ["generation_started"]
    assert effects(out, ConfigureModel) == [ConfigureModel(None, None, True)]
    assert h.sessions[0].deadlines() == {"tick": 3.0}

    h.advance(2.0)
    assert h.sent() == [
        {"type": "generation_tick", "seconds": 1.0},
        {"type": "generation_tick", "seconds": 2.0},
    ]
    h.feed(0, Shutdown())
    out = h.new()
    frames = [json.loads(o.frame) for o in effects(out, FrameOut)]
    assert frames == [
        {"type": "generation_ended", "seconds": 2.0, "reason": "server shutting down"}
    ]
    assert effects(out, CloseConnection) == [CloseConnection(1001, "server shutting down")]
    assert effects(out, StopModel) and effects(out, ReleaseSlot)
    assert h.admission.admitted == 0


def test_a_late_tick_skips_missed_ticks_instead_of_bursting() -> None:
    h = Harness()
    h.open()
    h.join(passthrough=True)
    h.feed(0, ClientVideoArrived())
    h.new()
    h.now = 5.5
    h.feed(0, FrameIn('{"type":"unknown"}'))  # moves the engine's clock without a timer
    h.sent()
    out = h.sessions[0].handle_timer(5.5)
    assert [json.loads(o.frame) for o in effects(out, FrameOut)] == [
        {"type": "generation_tick", "seconds": 5.5}
    ]
    assert h.sessions[0].deadlines() == {"tick": 6.5}


def test_set_image_initial_state_is_acked_then_generation_waits_for_video() -> None:
    h = Harness()
    h.open()
    h.join(passthrough=False)
    assert h.sessions[0].deadlines() == {"initial_state": 30.0}
    h.frame(0, {"type": "set_image", "image_data": IMAGE, "prompt": "a cat"})
    request = decode_request(h)
    assert h.sessions[0].deadlines() == {}
    h.feed(0, ReferenceDecoded(request))
    assert h.types() == ["livekit_room_info", "set_image_ack"]
    assert h.sessions[0].model_state == ("a cat", request)
    h.feed(0, ClientVideoArrived())
    out = h.new()
    assert effects(out, ConfigureModel) == [ConfigureModel("a cat", request, False)]


def test_video_before_the_initial_state_waits_for_it() -> None:
    h = Harness()
    h.open()
    h.join(passthrough=False)
    h.feed(0, ClientVideoArrived())
    assert h.types() == ["livekit_room_info"]
    assert h.phase() is P.STREAMING
    (streaming,) = [o for o in effects(h.log[0], PhaseChanged) if o.phase is P.STREAMING]
    assert streaming.detail == "waiting for the initial state"
    h.frame(0, {"type": "prompt", "prompt": "late but fine"})
    assert h.types() == ["prompt_ack", "generation_started"]
    assert h.phase() is P.GENERATING


def test_the_media_phases_follow_the_client_into_the_room() -> None:
    h = Harness()
    h.open()
    h.join(passthrough=True)
    h.new()
    h.feed(0, ClientPublishing())
    assert h.phase() is P.PUBLISHING and h.sent() == []
    h.feed(0, ClientPublishing())  # a further publication changes nothing
    assert h.new() == []
    h.feed(0, ClientVideoArrived())
    out = h.new()
    changes = [(o.previous, o.phase) for o in effects(out, PhaseChanged)]
    assert changes == [(P.PUBLISHING, P.STREAMING), (P.STREAMING, P.GENERATING)]
    assert [json.loads(o.frame)["type"] for o in effects(out, FrameOut)] == ["generation_started"]
    h.feed(0, ClientPublishing())
    h.feed(0, ClientVideoArrived())  # reported once already
    assert h.new() == []
    assert h.phase() is P.GENERATING


def test_video_without_a_reported_publication_is_enough() -> None:
    # An adapter whose media server does not report publications skips that phase.
    h = Harness()
    h.open()
    h.join(passthrough=True)
    h.feed(0, ClientVideoArrived())
    assert h.phase() is P.GENERATING
    h.feed(0, ClientPublishing())
    assert h.phase() is P.GENERATING


def test_prompt_initial_state_is_acked_by_its_text() -> None:
    h = Harness()
    h.open()
    h.join(passthrough=False)
    h.frame(0, {"type": "prompt", "prompt": "neon", "enhance_prompt": False})
    frames = h.sent()
    assert frames[-1] == {"type": "prompt_ack", "prompt": "neon", "success": True}


def test_no_initial_state_after_passthrough_false_closes_with_a_clear_error() -> None:
    h = Harness(ServerKnobs(initial_state_timeout=5.0))
    h.open()
    h.join(passthrough=False)
    h.sent()
    h.advance(4.9)
    assert h.phase() is P.IN_ROOM
    h.advance(0.1)
    out = h.new()
    (error,) = [json.loads(o.frame) for o in effects(out, FrameOut)]
    assert "no initial state" in error["error"] and "passthrough=false" in error["error"]
    assert effects(out, CloseConnection) == [CloseConnection(1008, "no initial state")]


def test_null_bootstrap_set_image_is_acked_and_changes_nothing() -> None:
    h = Harness()
    h.open()
    h.join(passthrough=True)
    h.frame(0, {"type": "set_image", "image_data": None, "prompt": None})
    assert h.types() == ["livekit_room_info", "set_image_ack"]
    assert h.sessions[0].model_state == (None, None)


def test_the_initial_state_may_arrive_while_queued_and_is_acked_there() -> None:
    h = Harness(ServerKnobs(capacity=0))
    h.open()
    h.join(passthrough=False)
    h.frame(0, {"type": "prompt", "prompt": "early"})
    assert h.types() == ["queue_position", "prompt_ack"]
    assert h.phase() is P.QUEUED


# ---- legacy joins -----------------------------------------------------------------------


def test_legacy_bare_join_is_treated_as_passthrough() -> None:
    h = Harness()
    h.open()
    h.join()
    assert h.sessions[0].passthrough is True
    changed = effects(h.new(), PhaseChanged)
    assert "legacy bare join" in changed[1].detail
    h.feed(0, ClientVideoArrived())
    assert h.phase() is P.GENERATING


def test_legacy_bundled_join_with_an_image_is_its_initial_state() -> None:
    h = Harness()
    h.open()
    h.join(initial_state={"image_data": IMAGE, "prompt": "p"})
    request = decode_request(h)
    h.feed(0, ReferenceDecoded(request))
    assert h.types() == ["livekit_room_info", "set_image_ack"]
    assert h.sessions[0].passthrough is False
    assert h.sessions[0].model_state == ("p", request)


def test_legacy_bundled_join_with_a_prompt_gets_a_prompt_ack() -> None:
    h = Harness()
    h.open()
    h.join(initial_state={"image_data": None, "prompt": "only words"})
    assert {"type": "prompt_ack", "prompt": "only words", "success": True} in h.sent()


def test_legacy_bundled_join_with_an_empty_state_is_passthrough() -> None:
    h = Harness()
    h.open()
    h.join(initial_state={})
    assert h.sessions[0].passthrough is True


# ---- admission ---------------------------------------------------------------------------


def test_capacity_one_queues_the_second_and_admits_it_when_the_first_leaves() -> None:
    h = Harness(ServerKnobs(capacity=1), sessions=3)
    for i in range(3):
        h.open(i)
        h.join(i, passthrough=True)
    assert h.types(0) == ["livekit_room_info"]
    assert h.sent(1) == [
        {"type": "queue_position", "position": 1, "queue_size": 1},
        {"type": "queue_position", "position": 1, "queue_size": 2},
    ]
    assert h.sent(2) == [{"type": "queue_position", "position": 2, "queue_size": 2}]
    h.feed(0, PeerClosed(1000, "bye"))
    assert h.types(1) == ["livekit_room_info"]
    assert h.sent(2) == [{"type": "queue_position", "position": 1, "queue_size": 1}]


def test_a_waiting_connection_leaving_updates_everyone_behind_it() -> None:
    h = Harness(ServerKnobs(capacity=0), sessions=3)
    for i in range(3):
        h.open(i)
        h.join(i, passthrough=True)
    for i in range(3):
        h.sent(i)
    h.feed(0, PeerClosed(None, "lost"))
    assert h.sent(1) == [{"type": "queue_position", "position": 1, "queue_size": 2}]
    assert h.sent(2) == [{"type": "queue_position", "position": 2, "queue_size": 2}]
    assert h.admission.waiting == [1, 2]


def test_a_full_queue_refuses_with_an_error_and_try_later() -> None:
    h = Harness(ServerKnobs(capacity=1, max_queue=1), sessions=3)
    for i in range(3):
        h.open(i)
        h.join(i, passthrough=True)
    out = h.new(2)
    (error,) = [json.loads(o.frame) for o in effects(out, FrameOut)]
    assert "server at capacity" in error["error"]
    assert effects(out, CloseConnection) == [CloseConnection(1013, "server at capacity")]
    assert not effects(out, ReleaseSlot)
    assert h.admission.waiting == [1]


def test_the_admission_rate_spaces_admissions() -> None:
    h = Harness(ServerKnobs(capacity=5, admissions_per_second=2.0), sessions=3)
    for i in range(3):
        h.open(i)
        h.join(i, passthrough=True)
    assert [h.phase(i) for i in range(3)] == [P.IN_ROOM, P.QUEUED, P.QUEUED]
    assert h.admission.get_timer() == 0.5
    h.advance(0.5)
    assert [h.phase(i) for i in range(3)] == [P.IN_ROOM, P.IN_ROOM, P.QUEUED]
    h.advance(0.5)
    assert h.phase(2) is P.IN_ROOM


def test_admission_refuses_misuse() -> None:
    admission: Admission[str] = Admission(1)
    admission.request("a", 0.0)
    with pytest.raises(AdmissionError):
        admission.request("a", 0.0)
    with pytest.raises(AdmissionError):
        admission.release("b", 0.0)
    with pytest.raises(AdmissionError):
        admission.release("a", -1.0)


def test_room_info_delay_holds_room_info_back() -> None:
    h = Harness(ServerKnobs(room_info_delay=2.0))
    h.open()
    h.join(passthrough=True)
    assert h.phase() is P.ADMITTED and h.sent() == []
    h.advance(2.0)
    assert h.types() == ["livekit_room_info"]


def test_a_failed_room_closes_with_an_internal_error() -> None:
    h = Harness()
    h.auto_room = False
    h.open()
    h.join(passthrough=True)
    assert effects(h.new(), CreateRoom)
    h.feed(0, RoomFailed("token service down"))
    out = h.new()
    (error,) = [json.loads(o.frame) for o in effects(out, FrameOut)]
    assert error["error"] == "could not prepare a room: token service down"
    assert effects(out, CloseConnection) == [CloseConnection(1011, "room unavailable")]


# ---- references and acks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_data", "problem"),
    [
        ("not base64!!", "not valid base64"),
        ("data:image/png;base64," + IMAGE, "without a data: URL prefix"),
        ("", "reference image is empty"),
        (base64.b64encode(b"x" * 1001).decode(), "1001 bytes, over the limit of 1000 bytes"),
        (base64.b64encode(b"x" * 4000).decode(), "about 4002 bytes, over the limit of 1000 bytes"),
    ],
)
def test_bad_references_are_rejected_by_name(image_data: str, problem: str) -> None:
    h = Harness(ServerKnobs(max_reference_bytes=1000))
    h.open()
    h.join(passthrough=False)
    h.frame(0, {"type": "set_image", "image_data": image_data})
    out = h.new()
    assert not effects(out, DecodeReference)
    ack = [json.loads(o.frame) for o in effects(out, FrameOut)][-1]
    assert ack["type"] == "set_image_ack" and ack["success"] is False
    assert problem in ack["error"]
    assert image_data[:12] not in ack["error"] or not image_data


def test_an_undecodable_reference_is_rejected_after_the_adapter_tries() -> None:
    h = Harness()
    h.open()
    h.join(passthrough=False)
    h.frame(0, {"type": "set_image", "image_data": IMAGE})
    h.feed(0, ReferenceUndecodable(decode_request(h), "InvalidDataError"))
    ack = h.sent()[-1]
    assert ack["success"] is False and "not a decodable image" in ack["error"]
    h.feed(0, ClientVideoArrived())
    assert h.phase() is P.STREAMING  # nothing applied: no generation yet


def test_an_image_ref_is_loaded_by_the_adapter_and_applied_as_the_reference() -> None:
    h = Harness()
    h.open()
    h.join(passthrough=False)
    h.new()
    h.frame(0, {"type": "set_image", "image_ref": "file_123", "prompt": "a cat"})
    out = h.new()
    assert effects(out, LoadReference) == [LoadReference(RequestNumber(1), "file_123")]
    assert not effects(out, DecodeReference) and not effects(out, FrameOut)
    h.feed(0, ReferenceDecoded(RequestNumber(1)))
    assert h.sent() == [{"type": "set_image_ack", "success": True}]
    assert h.sessions[0].model_state == ("a cat", RequestNumber(1))


def test_an_image_ref_naming_no_stored_file_is_rejected_naming_the_id() -> None:
    h = Harness()
    h.open()
    h.join(passthrough=False)
    h.frame(0, {"type": "set_image", "image_ref": "file_gone"})
    h.feed(0, ReferenceMissing(RequestNumber(1), "file_gone"))
    ack = h.sent()[-1]
    assert ack["type"] == "set_image_ack" and ack["success"] is False
    assert "'file_gone' names no stored file" in ack["error"]
    h.feed(0, ClientVideoArrived())
    assert h.phase() is P.STREAMING  # nothing applied: no generation yet


@pytest.mark.parametrize(
    ("ref", "problem"), [("", "image_ref is empty"), ("f" * 129, "129 characters, over the limit")]
)
def test_a_bad_image_ref_is_rejected_unloaded(ref: str, problem: str) -> None:
    h = Harness()
    h.open()
    h.join(passthrough=False)
    h.frame(0, {"type": "set_image", "image_ref": ref})
    out = h.new()
    assert not effects(out, LoadReference)
    ack = [json.loads(o.frame) for o in effects(out, FrameOut)][-1]
    assert ack["success"] is False and problem in ack["error"]


def test_reject_reference_knob_refuses_image_refs_too() -> None:
    h = Harness(ServerKnobs(reject_reference=True))
    h.open()
    h.join(passthrough=False)
    h.frame(0, {"type": "set_image", "image_ref": "file_1"})
    assert "reject_reference" in h.sent()[-1]["error"]


def test_reject_reference_knob() -> None:
    h = Harness(ServerKnobs(reject_reference=True))
    h.open()
    h.join(passthrough=False)
    h.frame(0, {"type": "set_image", "image_data": IMAGE})
    assert "reject_reference" in h.sent()[-1]["error"]


def test_processing_time_and_ack_delay_are_deadlines() -> None:
    h = Harness(ServerKnobs(reference_processing_time=0.5, ack_delay=0.25))
    h.open()
    h.join(passthrough=False)
    h.frame(0, {"type": "set_image", "image_data": IMAGE})
    h.feed(0, ReferenceDecoded(decode_request(h)))
    h.sent()
    assert h.sessions[0].deadlines() == {"processing": 0.5}
    h.advance(0.5)
    assert h.sessions[0].deadlines() == {"ack": 0.75}
    h.advance(0.2)
    assert h.sent() == []
    h.advance(0.05)
    assert h.sent() == [{"type": "set_image_ack", "success": True}]


def test_requests_are_handled_one_at_a_time_so_acks_keep_their_order() -> None:
    h = Harness()
    h.open()
    h.join(passthrough=True)
    h.sent()
    h.frame(0, {"type": "set_image", "image_data": IMAGE})
    h.frame(0, {"type": "prompt", "prompt": "second"})
    h.frame(0, {"type": "set_image", "image_data": "bad!"})
    assert h.sent() == []  # the prompt waits behind the image being decoded
    h.feed(0, ReferenceDecoded(RequestNumber(1)))
    assert h.sent() == [
        {"type": "set_image_ack", "success": True},
        {"type": "prompt_ack", "prompt": "second", "success": True},
        {"type": "set_image_ack", "success": False, "error": "reference image is not valid base64"},
    ]


@pytest.mark.parametrize(("drop", "acks"), [(AckDrop.INITIAL, 1), (AckDrop.ALL, 0)])
def test_drop_ack_knob(drop: AckDrop, acks: int) -> None:
    h = Harness(ServerKnobs(drop_ack=drop))
    h.open()
    h.join(passthrough=False)
    h.frame(0, {"type": "prompt", "prompt": "initial"})
    h.frame(0, {"type": "prompt", "prompt": "runtime"})
    assert h.types().count("prompt_ack") == acks


def test_runtime_requests_while_generating_reconfigure_the_model() -> None:
    h = Harness()
    h.open()
    h.join(passthrough=True)
    h.feed(0, ClientVideoArrived())
    h.new()
    h.frame(0, {"type": "prompt", "prompt": "blue"})
    out = h.new()
    assert effects(out, ConfigureModel) == [ConfigureModel("blue", None, True)]
    h.frame(0, {"type": "set_image", "image_data": IMAGE, "prompt": None})
    h.feed(0, ReferenceDecoded(decode_request(h)))
    out = h.new()
    assert effects(out, ConfigureModel) == [ConfigureModel(None, RequestNumber(2), True)]
    h.frame(0, {"type": "set_image", "image_data": None, "prompt": "plain"})
    out = h.new()
    assert effects(out, ConfigureModel) == [ConfigureModel("plain", None, True)]  # cleared


def test_a_bare_null_set_image_clears_the_reference_but_is_no_state_to_start_from() -> None:
    """The JS client's setImage(null): {"type":"set_image","image_data":null}."""
    h = Harness()
    h.open()
    h.join(passthrough=False)
    h.feed(0, ClientVideoArrived())
    h.frame(0, {"type": "set_image", "image_data": None})
    assert h.types()[-1] == "set_image_ack" and h.phase() is P.STREAMING  # still waiting
    h.frame(0, {"type": "set_image", "image_data": IMAGE, "prompt": "a cat"})
    request = decode_request(h)
    h.feed(0, ReferenceDecoded(request))
    h.new()
    assert h.phase() is P.GENERATING and h.sessions[0].model_state == ("a cat", request)
    h.frame(0, {"type": "set_image", "image_data": None, "enhance_prompt": True})
    out = h.new()
    assert effects(out, ConfigureModel) == [ConfigureModel("a cat", None, False)]
    cleared: tuple[str | None, RequestNumber | None] = h.sessions[0].model_state
    assert cleared == ("a cat", None)


def test_too_many_pending_requests_close_the_connection() -> None:
    h = Harness(ServerKnobs(max_pending_requests=2))
    h.open()
    h.join(passthrough=True)
    for _ in range(3):
        h.frame(0, {"type": "set_image", "image_data": IMAGE})
    out = h.new()
    assert effects(out, CloseConnection) == [CloseConnection(1008, "too many pending requests")]


# ---- injected faults ---------------------------------------------------------------------------

# The knobs that let a session stop in a phase, and the media reports that take it there.
FAULT_SETUPS = {
    FaultPhase.BEFORE_JOIN: (ServerKnobs(), 0),
    FaultPhase.QUEUED: (ServerKnobs(capacity=0), 0),
    FaultPhase.BEFORE_ROOM_INFO: (ServerKnobs(room_info_delay=1.0), 0),
    FaultPhase.AFTER_ROOM_INFO: (ServerKnobs(), 0),
    FaultPhase.PUBLISHING: (ServerKnobs(), 1),
    FaultPhase.CLIENT_VIDEO: (ServerKnobs(), 2),
    FaultPhase.GENERATING: (ServerKnobs(), 2),
}
MEDIA_REPORTS = (ClientPublishing(), ClientVideoArrived())


def _walk(h: Harness, reports: int) -> None:
    h.open()
    h.join(passthrough=True)
    for report in MEDIA_REPORTS[:reports]:
        if h.phase() is not P.CLOSED:
            h.feed(0, report)


@pytest.mark.parametrize("fault", list(FaultPhase))
def test_error_at_sends_the_error_text_and_goes_on(fault: FaultPhase) -> None:
    knobs, reports = FAULT_SETUPS[fault]
    h = Harness(attrs.evolve(knobs, error_at=fault, error_text="boom"))
    _walk(h, reports)
    frames = h.sent()
    assert frames.count({"type": "error", "error": "boom"}) == 1
    assert h.phase() is not P.CLOSED


@pytest.mark.parametrize("fault", list(FaultPhase))
def test_close_at_closes_in_that_phase(fault: FaultPhase) -> None:
    knobs, reports = FAULT_SETUPS[fault]
    h = Harness(attrs.evolve(knobs, close_at=fault))
    _walk(h, reports)
    out = h.new()
    closes = effects(out, CloseConnection)
    assert closes == [CloseConnection(1011, f"injected close at {fault.value}")]
    (closed,) = [o for o in effects(out, PhaseChanged) if o.phase is P.CLOSED]
    assert FAULT_PHASES[closed.previous] is fault
    if fault is FaultPhase.GENERATING:
        assert [json.loads(o.frame)["type"] for o in effects(out, FrameOut)][-1] == (
            "generation_ended"
        )


def test_an_error_on_client_video_comes_before_generation_starts() -> None:
    h = Harness(ServerKnobs(error_at=FaultPhase.CLIENT_VIDEO, error_text="boom"))
    _walk(h, 1)
    h.sent()
    h.feed(0, ClientVideoArrived())
    assert h.types() == ["error", "generation_started"]
    assert h.phase() is P.GENERATING


def test_a_close_on_client_video_starts_no_generation() -> None:
    h = Harness(ServerKnobs(close_at=FaultPhase.CLIENT_VIDEO))
    _walk(h, 2)
    out = h.new()
    assert not [o for o in effects(out, FrameOut) if "generation" in o.kind]
    assert not effects(out, ConfigureModel) and h.phase() is P.CLOSED


@pytest.mark.parametrize("media", list(MediaFailurePhase))
def test_media_failure_at_fails_the_media_once_in_that_phase_and_goes_on(
    media: MediaFailurePhase,
) -> None:
    knobs, reports = FAULT_SETUPS[media.phase]
    h = Harness(attrs.evolve(knobs, media_failure_at=media))
    h.open()
    h.join(passthrough=True)
    out = h.new()
    for report in MEDIA_REPORTS[:reports]:
        assert not effects(out, FailMedia), f"failed before {media.value}"
        h.feed(0, report)
        out = h.new()
    assert effects(out, FailMedia) == [FailMedia()]
    (entered,) = [o for o in effects(out, PhaseChanged) if FAULT_PHASES[o.phase] is media.phase]
    assert out.index(entered) < out.index(FailMedia())
    if media is MediaFailurePhase.GENERATING:  # the client hears generation started first
        sent = [o.kind for o in out[: out.index(FailMedia())] if isinstance(o, FrameOut)]
        assert "generation_started" in sent
    assert h.phase() is not P.CLOSED and not effects(out, CloseConnection)


@pytest.mark.parametrize("media", list(MediaFailurePhase))
def test_media_failure_at_spares_unfaulted_sessions(media: MediaFailurePhase) -> None:
    h = Harness(ServerKnobs(media_failure_at=media))
    h.sessions[0] = ServerSession(h.knobs, KEY, faults=False)
    _walk(h, 2)
    assert h.phase() is P.GENERATING
    assert not effects(h.new(), FailMedia)


def test_faults_can_be_switched_off_per_session() -> None:
    session = ServerSession(ServerKnobs(close_at=FaultPhase.BEFORE_JOIN), KEY, faults=False)
    session.handle(Opened(api_key=KEY), 0.0)
    assert session.phase is P.AWAITING_JOIN


# ---- hostile and misordered frames ------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        (b"\x00\x01", "binary frames are not part of the protocol"),
        ("{not json", "frame is not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"no": "type"}', "no 'type' field"),
        ('{"type": "livekit_join", "passthrough": "yes"}', "field 'passthrough' must be a boolean"),
        ('{"type": "prompt", "prompt": 7}', "field 'prompt' must be a string"),
        ("x" * 2000, "exceeds the maximum of 1024 bytes"),
    ],
)
def test_bad_frames_get_an_error_naming_the_problem(frame: str | bytes, problem: str) -> None:
    h = Harness(ServerKnobs(max_frame_bytes=1024))
    h.open()
    h.new()
    h.feed(0, FrameIn(frame))
    (error,) = h.sent()
    assert error["type"] == "error" and problem in error["error"]
    assert h.phase() is P.AWAITING_JOIN


def test_unknown_types_are_ignored() -> None:
    h = Harness()
    h.open()
    h.frame(0, {"type": "telemetry", "x": 1})
    assert h.sent() == []


def test_frames_before_the_join_and_a_second_join_are_refused() -> None:
    h = Harness()
    h.open()
    h.frame(0, {"type": "prompt", "prompt": "too early"})
    assert "before livekit_join" in h.sent()[0]["error"]
    h.join(passthrough=True)
    h.join(passthrough=True)
    assert h.sent()[-1] == {
        "type": "error",
        "error": "unexpected livekit_join: this connection already joined",
    }
    assert h.phase() is P.IN_ROOM


def test_too_many_bad_frames_close_the_connection() -> None:
    h = Harness(ServerKnobs(max_bad_frames=2))
    h.open()
    for _ in range(3):
        h.feed(0, FrameIn("garbage"))
    out = h.new()
    assert len(effects(out, FrameOut)) == 3
    assert effects(out, CloseConnection) == [CloseConnection(1008, "too many bad frames")]


def test_a_flood_of_frames_closes_the_connection() -> None:
    h = Harness(ServerKnobs(frame_rate=10.0, frame_burst=5))
    h.open()
    for _ in range(5):
        h.frame(0, {"type": "noise"})
    assert h.phase() is P.AWAITING_JOIN
    h.now += 0.1  # one more token
    h.frame(0, {"type": "noise"})
    h.frame(0, {"type": "noise"})
    out = h.new()
    (error,) = [json.loads(o.frame) for o in effects(out, FrameOut)]
    assert error["error"] == "too many frames: more than 10 per second"
    assert effects(out, CloseConnection) == [CloseConnection(1008, "too many frames")]


def test_peer_close_while_generating_stops_the_model_and_frees_the_slot() -> None:
    h = Harness()
    h.open()
    h.join(passthrough=True)
    h.feed(0, ClientVideoArrived())
    h.new()
    h.feed(0, PeerClosed(1001, "going away"))
    out = h.new()
    assert effects(out, StopModel) and effects(out, ReleaseSlot)
    assert not effects(out, FrameOut) and not effects(out, CloseConnection)
    assert (
        effects(out, PhaseChanged)[-1].detail == "client closed the connection (1001: going away)"
    )


# ---- misuse by the adapter ---------------------------------------------------------------------


def test_adapter_misuse_raises_usage_error() -> None:
    session = ServerSession(ServerKnobs(), KEY)
    with pytest.raises(UsageError):
        session.handle(FrameIn("{}"), 0.0)
    with pytest.raises(UsageError):
        session.handle("not an input", 0.0)
    session.handle(Opened(api_key=KEY), 1.0)
    with pytest.raises(UsageError):
        session.handle(Opened(api_key=KEY), 1.0)
    with pytest.raises(UsageError):
        session.handle(SlotGranted(), 1.0)
    with pytest.raises(UsageError):
        session.handle(RoomReady("ws://x", TOKEN, "r", "s"), 1.0)
    with pytest.raises(UsageError):
        session.handle(ClientVideoArrived(), 1.0)
    with pytest.raises(UsageError):
        session.handle(ClientPublishing(), 1.0)
    with pytest.raises(UsageError):
        session.handle(ReferenceDecoded(RequestNumber(1)), 1.0)
    with pytest.raises(UsageError):
        session.handle_timer(0.5)
    session.handle(FrameIn('{"type":"livekit_join","passthrough":true}'), 1.0)
    session.handle(SlotGranted(), 1.0)
    with pytest.raises(UsageError):
        session.handle(QueueMoved(1, 1), 1.0)  # admitted already: no queue to move in
    with pytest.raises(UsageError):
        session.handle(QueueFull("full"), 1.0)
    for media in (ClientPublishing(), ClientVideoArrived()):  # CreateRoom is not answered yet
        with pytest.raises(UsageError, match="no room is ready"):
            session.handle(media, 1.0)
    session.handle(RoomReady("ws://x", TOKEN, "r", "s"), 1.0)
    with pytest.raises(UsageError):
        session.handle(RoomReady("ws://x", TOKEN, "r", "s"), 1.0)
    with pytest.raises(UsageError):
        session.handle(RoomFailed("late"), 1.0)


def test_secrets_stay_out_of_reprs_and_frames_out_of_logs() -> None:
    assert KEY not in repr(Opened(api_key=KEY))
    assert TOKEN not in repr(RoomReady("ws://x", TOKEN, "r", "s"))
    h = Harness()
    h.open()
    h.join(passthrough=True)
    for out in h.new():
        assert TOKEN not in repr(out)
        if isinstance(out, PhaseChanged):
            assert TOKEN not in out.detail and KEY not in out.detail
    assert KEY not in repr(h.sessions[0])


def test_the_table_is_the_machine() -> None:
    assert {row[0] for row in TRANSITIONS} == set(MACHINE.events)
    assert set(MACHINE.states) == {phase.name for phase in SessionPhase}
    edges = sum(len(row[1]) for row in TRANSITIONS)
    assert edges == sum(len(t) for e in MACHINE.events.values() for t in e.transitions.values())


# ---- the property: peer input never makes the engine raise ------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_types = st.sampled_from(["livekit_join", "set_image", "prompt", "queue_position", "x", ""])
_field_values = st.one_of(
    _json, st.sampled_from([IMAGE, "bad!", None, "", "data:x"]), st.booleans()
)
_messages = st.builds(
    lambda kind, fields: json.dumps({"type": kind, **fields}),
    _types,
    st.dictionaries(
        st.sampled_from(
            ["passthrough", "image_data", "image_ref", "prompt", "enhance_prompt", "initial_state"]
        ),
        _field_values,
        max_size=4,
    ),
)
_frames = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64),
    _json.map(json.dumps),
    _messages,
    st.sampled_from(
        [
            '{"type":"livekit_join","passthrough":false}',
            '{"type":"livekit_join","passthrough":true}',
            '{"type":"livekit_join"}',
            f'{{"type":"set_image","image_data":"{IMAGE}"}}',
            '{"type":"prompt","prompt":"p"}',
        ]
    ),
)
_actions = st.lists(
    st.one_of(
        st.tuples(st.just("frame"), st.integers(0, 1), _frames),
        st.tuples(st.just("wait"), st.integers(0, 1), st.floats(0.0, 40.0)),
        st.tuples(st.just("video"), st.integers(0, 1), st.none()),
        st.tuples(st.just("publishing"), st.integers(0, 1), st.none()),
        st.tuples(st.just("decode"), st.integers(0, 1), st.booleans()),
        st.tuples(st.just("close"), st.integers(0, 1), st.none()),
    ),
    max_size=40,
)


ROOM_READY = (P.IN_ROOM, P.PUBLISHING, P.STREAMING, P.GENERATING)
PROPERTY_KNOBS = [
    ServerKnobs(capacity=1, frame_burst=30),
    ServerKnobs(
        capacity=1,
        ack_delay=0.5,
        reference_processing_time=0.3,
        max_bad_frames=3,
        error_at=FaultPhase.AFTER_ROOM_INFO,
    ),
    ServerKnobs(
        capacity=1, error_at=FaultPhase.CLIENT_VIDEO, close_at=FaultPhase.PUBLISHING, frame_burst=30
    ),
    ServerKnobs(capacity=1, media_failure_at=MediaFailurePhase.CLIENT_VIDEO),
]


_JOINS = [
    None,
    '{"type":"livekit_join","passthrough":true}',
    '{"type":"livekit_join","passthrough":false}',
    '{"type":"livekit_join"}',
    f'{{"type":"livekit_join","initial_state":{{"image_data":"{IMAGE}"}}}}',
]


@settings(max_examples=300, deadline=None)
@given(
    _actions,
    st.sampled_from(PROPERTY_KNOBS),
    st.lists(st.sampled_from(_JOINS), min_size=2, max_size=2),
)
def test_peer_input_never_makes_the_engine_raise(
    actions: list[tuple[str, int, Any]], knobs: ServerKnobs, joins: list[str | None]
) -> None:
    h = Harness(knobs, sessions=2)
    for i, join in enumerate(joins):
        h.open(i)
        if join is not None:  # most runs start joined, so they reach the later phases
            h.feed(i, FrameIn(join))
    pending: list[list[RequestNumber]] = [[], []]
    for action, i, arg in actions:
        session = h.sessions[i]
        if action == "frame":
            h.feed(i, FrameIn(arg))
        elif action == "wait":
            h.advance(arg)
        elif action in ("video", "publishing") and session.phase in ROOM_READY:
            h.feed(i, ClientVideoArrived() if action == "video" else ClientPublishing())
        elif action == "decode" and pending[i]:
            request = pending[i].pop(0)
            h.feed(i, ReferenceDecoded(request) if arg else ReferenceUndecodable(request, "bad"))
        elif action == "close":
            h.feed(i, PeerClosed(1000, "bye"))
        for j in (0, 1):
            for out in h.log[j][h._seen[j] :]:
                if isinstance(out, DecodeReference):
                    pending[j].append(out.request)
            h._seen[j] = len(h.log[j])
    for j in (0, 1):
        reached = {o.phase for o in effects(h.log[j], PhaseChanged)} - {P.CLOSED}
        event(f"furthest phase: {max(reached, key=list(SessionPhase).index).value}")
        closes = effects(h.log[j], CloseConnection)
        assert len(closes) <= 1
        for out in effects(h.log[j], FrameOut):
            parsed = parse_server_frame(out.frame)
            assert not isinstance(parsed, FrameProblem | IgnoredFrame), out.frame
        if h.sessions[j].phase is P.CLOSED:
            after = h.log[j].index(effects(h.log[j], PhaseChanged)[-1])
            assert h.log[j][after + 1 :] == []
