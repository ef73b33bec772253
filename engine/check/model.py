"""The composed world the checker explores: the client engine, the server-role
engine per connect attempt, the admission queue and a network model (pure).

The moves themselves are :mod:`.checker_moves`.

A world is one client session (always driven through an
:class:`~leanjoin.engine.check.invariants.InvariantMonitor`), the socket of its live
attempt (:class:`Link`: a FIFO per direction, the open handshake, the room),
what is still in flight for the attempt it superseded last, and the
admission queue with capacity 1 (optionally held by a rival, so that our
client queues). Every step is one :data:`Choice` of the explorer; whatever
an engine emits is routed at once, in order, as an adapter would.

What is abstracted, and why:

* Media: the room connect, the publish and the arrival of the client's video
  at the server are choices; the server's room is ready at once and its
  reference image decodes at once (neither reaches the client directly).
  The server hears of the client's publication (``ClientPublishing``) as
  the client asks for it (``PublishTracks``), as the media server sees the
  request before it answers; the video arrives only after the answer
  (``TracksPublished``), so the server goes in_room, publishing, streaming,
  as with the real media server, and never from in_room to streaming.
* Time moves only to the next deadline of either engine (``time``): between
  deadlines only the order of inputs matters, not how far apart they are.
* Faults are choices bounded by a budget: a failed socket open (transient or
  permanent), a failed send (any frame not yet delivered), a lost socket, a
  server shutdown, an error frame from the server (its ``error_at`` knob), a
  failed room connect or publish, a lost room, a user disconnect. Timer
  expiry is free: it is bounded by the depth alone.
* Late delivery: when an attempt ends, what was in flight for it (an open
  handshake, frames the server sent, a room result) stays deliverable to the
  client with the old attempt id, up to ``max_stale`` inputs of the newest
  superseded attempt; older ones are lost, as a closed socket loses them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable
from typing import Final, TypeAlias

import attrs

from ..client.config import InitialState, RetryPolicy, SessionConfig, Timeouts
from ..client.inputs import (
    AttemptId,
    Connect,
    Input,
    SendId,
)
from ..client.session import LIVE_PHASES, ClientSession, Phase
from ..codec import encode
from ..messages import Error
from ..server.admission import Admission
from ..server.events import (
    SessionPhase,
)
from ..server.knobs import ServerKnobs
from ..server.session import ServerSession
from .invariants import InvariantMonitor
from .state import clone

Choice: TypeAlias = tuple[str, ...]
"""One move of the explorer: a name and its arguments, e.g. ``("send_failed", "2")``."""

API_KEY: Final = "checker-key"
RIVAL: Final = 0  # the admission key of the other client; attempts are 1, 2, …
IMAGE_AND_PROMPT: Final = InitialState(image_data="aW1n", prompt="a cat")
PROMPT_ONLY: Final = InitialState(prompt="a cat")
PASSTHROUGH: Final = InitialState()
CONNECTS: Final = {
    "image+prompt": Connect(IMAGE_AND_PROMPT),
    "prompt": Connect(PROMPT_ONLY),
    "passthrough": Connect(PASSTHROUGH),
    # Overrides as the JS client takes them (spec 3.1): a state after a
    # passthrough join (the server takes it as a request), and a join that
    # promises a state the user sets later (the server takes the first request).
    "prompt+passthrough=true": Connect(PROMPT_ONLY, passthrough=True),
    "nothing+passthrough=false": Connect(PASSTHROUGH, passthrough=False),
}
# Runtime prompts, in turn: the first repeats the initial prompt's text, so a
# prompt_ack must be told apart by order, not by text alone.
RUNTIME_PROMPTS: Final = ("a cat", "a dog")
PERMANENT_REASON: Final = "HTTP 401 Unauthorized"
SERVER_ERROR: Final = encode(Error("overloaded"))
PERMANENT_SERVER_ERROR: Final = encode(Error("invalid api key"))
TRANSIENT_REASON: Final = "connection refused"

DEFAULT_CONFIG: Final = SessionConfig(
    url="ws://checker.invalid/v1/stream",
    api_key=API_KEY,
    model="checker",
    timeouts=Timeouts(),
    # Two retries keep "retries exhausted" within a small fault budget.
    retry=RetryPolicy(max_retries=2),
)
# The user's own bound on queueing, shorter than the queue's silence deadline
# so that it is the one that fires: explored as a model of its own.
QUEUE_CAPPED: Final = attrs.evolve(DEFAULT_CONFIG, timeouts=Timeouts(max_queue_wait=45.0))
# Capacity 1; ticks rarer than every client deadline, so that a step of the
# clock reaches the client's deadlines instead of the next tick.
DEFAULT_KNOBS: Final = ServerKnobs(capacity=1, tick_interval=45.0)


@attrs.frozen
class Bounds:
    """How much of the world the explorer may use."""

    max_faults: int = 2  # fault choices per run
    max_connects: int = 2  # user connects per run (a reconnect after a disconnect)
    set_prompt: bool = True  # runtime set_prompt while connected
    max_prompts: int = 2  # how many, per run (the second with another text)
    rival: bool = True  # another client holds the only slot at first
    max_stale: int = 2  # late inputs kept from the newest superseded attempt


@attrs.frozen
class Model:
    """Everything fixed for one exploration."""

    config: SessionConfig = DEFAULT_CONFIG
    knobs: ServerKnobs = DEFAULT_KNOBS
    bounds: Bounds = Bounds()
    client_factory: Callable[[SessionConfig], ClientSession] = ClientSession


class Room(enum.Enum):
    NONE = "none"
    CONNECTING = "connecting"  # ConnectRoom issued
    PUBLISHING = "publishing"  # PublishTracks issued
    PUBLISHED = "published"


@attrs.frozen
class ServerClose:
    """The server's close, queued behind the frames it sent before it."""

    code: int
    reason: str


@attrs.define
class Link:
    """The socket of one attempt, as both ends and the network see it."""

    attempt: AttemptId
    opening: bool = True  # OpenSocket issued, no result yet
    server: ServerSession | None = None
    c2s: list[tuple[SendId, str]] = attrs.Factory(list)
    s2c: list[str | ServerClose] = attrs.Factory(list)
    room: Room = Room.NONE
    video: bool = False  # the client's video reached the server


CLIENT: Final = 1
LINK: Final = 2
ADMISSION: Final = 4
ALL_PARTS: Final = CLIENT | LINK | ADMISSION


@attrs.define
class World:
    """One state. Its three large parts (the client with its monitor, the live
    link with its server session, the admission queue) are copied on write:
    a forked world shares them with its parent until a move changes one
    (:meth:`own`), and keeps the parent's keys of the parts it never changed."""

    monitor: InvariantMonitor  # its session is the client: one object, never two
    admission: Admission[int]
    now: float = 0.0
    link: Link | None = None
    stale: list[Input] = attrs.Factory(list)  # late inputs of a superseded attempt, in order
    rival: bool = False
    faults: int = 0
    connects: int = 0
    prompts: int = 0
    # Not state: which parts this world may change in place, and part keys.
    owned: int = ALL_PARTS
    keys: list[Hashable | None] = attrs.Factory(lambda: [None, None, None])

    @property
    def client(self) -> ClientSession:
        return self.monitor.session

    def fork(self) -> World:
        """A child sharing every part until it changes one."""
        return World(
            self.monitor,
            self.admission,
            self.now,
            self.link,
            list(self.stale),
            self.rival,
            self.faults,
            self.connects,
            self.prompts,
            0,
            list(self.keys),
        )

    def own(self, part: int) -> None:
        """Make ``part`` private to this world before changing it."""
        if self.owned & part:
            return
        self.owned |= part
        if part == CLIENT:
            self.monitor = clone(self.monitor)
            self.keys[0] = None
        elif part == LINK:
            self.link = clone(self.link)
            self.keys[1] = None
        else:
            self.admission = clone(self.admission)
            self.keys[2] = None


Record: TypeAlias = list[tuple[Input | None, float]]
"""The client's inputs (None: its timer) with their instants, in order."""


def initial_world(model: Model) -> World:
    admission: Admission[int] = Admission(model.knobs.capacity)
    world = World(InvariantMonitor(model.client_factory(model.config)), admission)
    if model.bounds.rival:
        admission.request(RIVAL, 0.0)  # admitted at once: it holds the slot
        world.rival = True
    return world


# ---- which moves are possible -------------------------------------------------


def choices(world: World, model: Model) -> list[Choice]:
    """Every move enabled in ``world``, in a fixed order."""
    bounds = model.bounds
    client = world.client
    phase = client.phase
    faulty = world.faults < bounds.max_faults
    moves: list[Choice] = []
    if phase is Phase.DISCONNECTED and world.connects < bounds.max_connects:
        moves.extend(("connect", name) for name in CONNECTS)
    if phase in LIVE_PHASES and bounds.set_prompt and world.prompts < bounds.max_prompts:
        moves.append(("set_prompt",))
    link = world.link
    if link is not None:
        server_open = link.server is not None and link.server.phase is not SessionPhase.CLOSED
        if link.opening:
            moves.append(("socket_opened",))
        if link.c2s and link.server is not None:
            moves.append(("deliver_c2s",))
        if link.s2c:
            moves.append(("deliver_s2c",))
        if link.room is Room.CONNECTING:
            moves.append(("room_connected",))
        elif link.room is Room.PUBLISHING:
            moves.append(("tracks_published",))
        elif link.room is Room.PUBLISHED and server_open and not link.video:
            moves.append(("video_arrives",))
        if faulty:
            if link.opening:
                moves.append(("socket_open_failed", "transient"))
                moves.append(("socket_open_failed", "permanent"))
            else:
                moves.append(("socket_lost",))
            moves.extend(("send_failed", str(send)) for send, _frame in link.c2s)
            if server_open:
                moves.append(("server_shutdown",))
                moves.append(("server_error",))
                if phase in LIVE_PHASES:  # a permanent one ends even a connected session
                    moves.append(("server_error", "permanent"))
            if link.room is Room.CONNECTING:
                moves.append(("room_connect_failed",))
            elif link.room is Room.PUBLISHING:
                moves.append(("publish_failed",))
            if link.room is not Room.NONE:
                moves.append(("room_lost",))
    if faulty and phase is not Phase.DISCONNECTED:
        moves.append(("disconnect",))
    if world.stale:
        moves.append(("deliver_stale",))
    if world.rival:
        moves.append(("rival_leaves",))
    if next_deadline(world) is not None:
        moves.append(("time",))
    return moves


def next_deadline(world: World) -> float | None:
    """The earliest deadline of the client or of the live server session."""
    times = [world.client.get_timer()]
    if world.link is not None and world.link.server is not None:
        times.append(world.link.server.get_timer())
    armed = [when for when in times if when is not None]
    return min(armed) if armed else None


FAULTS: Final = frozenset(
    {
        "socket_open_failed",
        "socket_lost",
        "send_failed",
        "server_shutdown",
        "server_error",
        "room_connect_failed",
        "publish_failed",
        "room_lost",
        "disconnect",
    }
)
