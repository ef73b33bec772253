"""The moves of the checker's world (pure): each :data:`~.checker_model.Choice`
feeds one engine, and whatever an engine emits is carried out at once and in
order, as the adapters do: client effects open, write and close sockets and
start room operations; server effects go to the admission queue, are
answered (a room, a decoded image) or become frames towards the client.

Besides the client's invariants (checked by its monitor), two invariants of
the composition are checked here: the server engine never sends the client
a frame it must drop, and the client never sends the server one it refuses.
"""

from __future__ import annotations

from collections import deque
from typing import Final

import attrs

from ..client.ack_watch import AckWatch
from ..client.inputs import (
    ChangePrompt,
    Disconnect,
    FrameReceived,
    Input,
    PublishFailed,
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
from ..client.outputs import (
    CloseSocket,
    ConnectionState,
    ConnectRoom,
    ErrorKind,
    ErrorOccurred,
    OpenSocket,
    Output,
    PublishTracks,
    SendFrame,
)
from ..client.session import Phase
from ..server.events import (
    ClientPublishing,
    ClientVideoArrived,
    CloseConnection,
    CreateRoom,
    DecodeReference,
    FrameIn,
    FrameOut,
    LoadReference,
    Opened,
    PeerClosed,
    PhaseChanged,
    ProblemNoted,
    ReferenceDecoded,
    ReleaseSlot,
    RequestSlot,
    RoomReady,
    ServerOutput,
    SessionPhase,
    Shutdown,
)
from ..server.session import ServerSession
from .invariants import InvariantViolation
from .model import (
    ADMISSION,
    API_KEY,
    CLIENT,
    CONNECTS,
    FAULTS,
    LINK,
    PERMANENT_REASON,
    PERMANENT_SERVER_ERROR,
    RIVAL,
    RUNTIME_PROMPTS,
    SERVER_ERROR,
    TRANSIENT_REASON,
    Choice,
    Link,
    Model,
    Record,
    Room,
    ServerClose,
    World,
    next_deadline,
)

# Invariants of the composition (the client's own are in engine/check/invariants.py).
SERVER_NEVER_SURPRISES_THE_CLIENT: Final = "server_never_surprises_the_client"
CLIENT_NEVER_OFFENDS_THE_SERVER: Final = "client_never_offends_the_server"
COMPOSED_NAMES: Final = (SERVER_NEVER_SURPRISES_THE_CLIENT, CLIENT_NEVER_OFFENDS_THE_SERVER)

# Labels of the server's phases (the client's are its connection states).
SERVER_PUBLISHING: Final = "server_publishing"
_SERVER_LABELS: Final = {SessionPhase.PUBLISHING: SERVER_PUBLISHING}

# ---- making a move ----------------------------------------------------------------


def step(world: World, choice: Choice, model: Model, record: Record | None = None) -> set[str]:
    """Make ``choice`` in ``world`` (in place; parts it shares are copied
    first). Returns the labels it reached (the reachability targets of
    :mod:`leanjoin.engine.check.explore`). Raises
    :class:`~leanjoin.engine.check.invariants.InvariantViolation` when an invariant
    breaks, and whatever an engine raises. ``record`` collects the client's
    inputs, for a trace."""
    move = _Move(world, model, record)
    name = choice[0]
    if name in FAULTS:
        world.faults += 1
    if name == "connect":
        world.connects += 1
        move.feed(CONNECTS[choice[1]])
    elif name == "set_prompt":
        world.prompts += 1
        text = RUNTIME_PROMPTS[(world.prompts - 1) % len(RUNTIME_PROMPTS)]
        move.feed(ChangePrompt(RequestId(world.prompts), text))
    elif name == "disconnect":
        move.feed(Disconnect())
    elif name == "deliver_stale":
        move.labels.add("stale_input_dropped")
        move.feed(world.stale.pop(0))
    elif name == "rival_leaves":
        world.rival = False
        world.own(ADMISSION)
        notices = world.admission.release(RIVAL, world.now)
        if world.link is not None:  # else no one waits to be told
            move.drain(move.link(), deque(notices))
    elif name == "time":
        move.advance_time()
    elif world.link is not None:
        move.on_link(choice)
    else:
        raise ValueError(f"{choice!r} without a live socket")
    return move.labels


@attrs.define
class _Move:
    """One move in progress: the world, the model, and what the move reached.
    Engine outputs are carried out at once and in order, as the adapters do."""

    world: World
    model: Model
    record: Record | None
    labels: set[str] = attrs.Factory(set)

    def link(self) -> Link:
        """The live link, private to this world."""
        self.world.own(LINK)
        link = self.world.link
        assert link is not None
        return link

    def on_link(self, choice: Choice) -> None:
        link = self.link()
        name, attempt = choice[0], link.attempt
        if name == "socket_opened":
            link.opening = False
            link.server = ServerSession(self.model.knobs, API_KEY)
            self.serve(link, Opened(api_key=API_KEY, model="checker"))
            self.feed(SocketOpened(attempt))
        elif name == "socket_open_failed":
            reason = PERMANENT_REASON if choice[1] == "permanent" else TRANSIENT_REASON
            link.opening = False
            self.feed(SocketOpenFailed(attempt, reason))
        elif name == "deliver_c2s":
            _send, frame = link.c2s.pop(0)
            self.serve(link, FrameIn(frame))
        elif name == "deliver_s2c":
            item = link.s2c.pop(0)
            if isinstance(item, ServerClose):
                self.feed(SocketClosed(attempt, item.code, item.reason))
            else:
                self.feed(FrameReceived(attempt, item))
        elif name == "send_failed":
            send = SendId(int(choice[1]))
            link.c2s = [(s, frame) for s, frame in link.c2s if s != send]
            self.feed(SendFailed(attempt, send, "broken pipe"))
        elif name == "socket_lost":
            self.feed(SocketClosed(attempt, 1006, "connection lost"))
        elif name == "server_shutdown":
            self.serve(link, Shutdown())
        elif name == "server_error":
            # What the server's error_at knob does: an error frame, the socket stays.
            link.s2c.append(
                PERMANENT_SERVER_ERROR if choice[1:] == ("permanent",) else SERVER_ERROR
            )
        elif name == "video_arrives":
            # Only once the client's tracks are published, so after the
            # ClientPublishing its PublishTracks gave: never from in_room.
            link.video = True
            self.serve(link, ClientVideoArrived())
        else:
            self.on_room(link, name)

    def on_room(self, link: Link, name: str) -> None:
        attempt = link.attempt
        if name == "room_connected":
            self.feed(RoomConnected(attempt))
        elif name == "tracks_published":
            link.room = Room.PUBLISHED
            self.feed(TracksPublished(attempt))
        else:
            link.room = Room.NONE
            if name == "room_connect_failed":
                self.feed(RoomConnectFailed(attempt, "ice failed"))
            elif name == "publish_failed":
                self.feed(PublishFailed(attempt, "codec refused"))
            elif name == "room_lost":
                self.feed(RoomDisconnected(attempt, "room closed"))
            else:
                raise ValueError(f"unknown choice {name!r}")

    def advance_time(self) -> None:
        world = self.world
        when = next_deadline(world)
        assert when is not None, "time with no deadline armed"
        world.now = max(world.now, when)
        client_due = world.client.get_timer()
        if client_due is not None and client_due <= world.now:
            self.feed(None)
        if world.link is not None and world.link.server is not None:
            due = world.link.server.get_timer()
            if due is not None and due <= world.now:
                link = self.link()
                assert link.server is not None
                self.route_server(link, link.server.handle_timer(world.now))

    # ---- the client ---------------------------------------------------------------

    def feed(self, item: Input | None) -> None:
        """One client step through the invariant monitor; its effects are carried out."""
        world = self.world
        if self.record is not None:
            self.record.append((item, world.now))
        world.own(CLIENT)
        client = world.client
        buffered = client.ack_watch is AckWatch.BUFFERED
        outputs = world.monitor.step(item, world.now)
        if buffered and client.ack_watch is AckWatch.SETTLED:
            self.labels.add("early_ack_claimed")
        for output in outputs:
            if isinstance(output, ErrorOccurred):
                _check_not_surprised(output)
            self.client_effect(output)
        state = client.state
        if state in _STATE_LABELS:
            self.labels.add(state.value)
        if client.phase is Phase.QUEUED:
            self.labels.add("queued")
        elif client.phase is Phase.BACKOFF:
            self.labels.add("retrying")
        if any(isinstance(o, ErrorOccurred) and o.fatal for o in outputs):
            self.labels.add("gave_up")
        if any(isinstance(o, ErrorOccurred) and o.kind is ErrorKind.QUEUE_TIMEOUT for o in outputs):
            self.labels.add("queue_wait_capped")

    def client_effect(self, output: Output) -> None:
        world = self.world
        if isinstance(output, OpenSocket):
            world.link = Link(output.attempt)  # a new object: private already
            world.owned |= LINK
            world.keys[1] = None
        elif world.link is None or output.attempt != world.link.attempt:
            return  # the client names an attempt whose socket is already gone
        elif isinstance(output, SendFrame):
            self.link().c2s.append((output.send, output.frame))
        elif isinstance(output, CloseSocket):
            self.supersede(self.link(), output)
        elif isinstance(output, ConnectRoom):
            self.link().room = Room.CONNECTING
        elif isinstance(output, PublishTracks):
            link = self.link()
            link.room = Room.PUBLISHING
            # The media server hears of the publication as the client asks for
            # it (the room's add_track), before it answers (TracksPublished)
            # and before any video can flow: the session is told at once.
            if link.server is not None:
                self.serve(link, ClientPublishing())

    def supersede(self, link: Link, close: CloseSocket) -> None:
        """The client closed this attempt's socket: the server hears of it, and
        what is still in flight towards the client may yet arrive, late."""
        world = self.world
        world.link = None
        world.keys[1] = None
        if link.server is not None:
            self.serve(link, PeerClosed(close.code, close.reason))
        attempt = link.attempt
        late: list[Input] = [SocketOpened(attempt)] if link.opening else []
        for item in link.s2c:
            if isinstance(item, ServerClose):
                late.append(SocketClosed(attempt, item.code, item.reason))
            else:
                late.append(FrameReceived(attempt, item))
        if link.room is Room.CONNECTING:
            late.append(RoomConnected(attempt))
        elif link.room is Room.PUBLISHING:
            late.append(TracksPublished(attempt))
        elif link.room is Room.PUBLISHED:
            late.append(RoomDisconnected(attempt, "left"))
        world.stale = late[: self.model.bounds.max_stale]

    # ---- the server -----------------------------------------------------------------

    def serve(self, link: Link, item: object) -> None:
        assert link.server is not None
        self.route_server(link, link.server.handle(item, self.world.now))

    def route_server(self, link: Link, outputs: list[ServerOutput]) -> None:
        work: deque[tuple[int, object]] = deque()
        for output in outputs:
            self.server_effect(link, output, work)
        self.drain(link, work)

    def drain(self, link: Link, work: deque[tuple[int, object]]) -> None:
        """Admission notices and adapter answers go back to the session in order."""
        while work:
            key, item = work.popleft()
            if key == link.attempt and link.server is not None:
                for output in link.server.handle(item, self.world.now):
                    self.server_effect(link, output, work)
            # A notice for the rival has no one to hear it.

    def server_effect(
        self, link: Link, output: ServerOutput, work: deque[tuple[int, object]]
    ) -> None:
        world, key = self.world, int(link.attempt)
        if isinstance(output, FrameOut):
            link.s2c.append(output.frame)
        elif isinstance(output, CloseConnection):
            link.s2c.append(ServerClose(output.code, output.reason))
        elif isinstance(output, RequestSlot):
            world.own(ADMISSION)
            work.extend(world.admission.request(key, world.now))
        elif isinstance(output, ReleaseSlot):
            world.own(ADMISSION)
            work.extend(world.admission.release(key, world.now))
        elif isinstance(output, CreateRoom):
            work.append((key, RoomReady("ws://lk.invalid", "token", f"room-{key}", f"sess-{key}")))
        elif isinstance(output, DecodeReference | LoadReference):
            work.append((key, ReferenceDecoded(output.request)))
        elif isinstance(output, PhaseChanged):
            label = _SERVER_LABELS.get(output.phase)
            if label is not None:
                self.labels.add(label)
        elif (
            isinstance(output, ProblemNoted)
            and self.model.knobs == self.model.knobs.without_faults()
        ):
            # The client only sends what the protocol asks for, and a frame it
            # could not send never arrives: a server without injected faults
            # has nothing to refuse.
            raise InvariantViolation(CLIENT_NEVER_OFFENDS_THE_SERVER, output.detail)
        # Model configuration stays on the server.


def _check_not_surprised(error: ErrorOccurred) -> None:
    """The server engine speaks the protocol: the client never drops one of its
    frames as malformed or out of place, late acks included (a wait that ended
    by timeout or server error leaves a tombstone that absorbs its ack)."""
    if error.kind in (ErrorKind.MALFORMED_FRAME, ErrorKind.UNEXPECTED_FRAME):
        raise InvariantViolation(SERVER_NEVER_SURPRISES_THE_CLIENT, error.message)


_STATE_LABELS: Final = (
    ConnectionState.CONNECTED,
    ConnectionState.GENERATING,
    ConnectionState.RECONNECTING,
)
