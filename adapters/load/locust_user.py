"""The Locust user: lean-join sessions back to back, each phase a request type.

Configured from Locust's command line (or the environment, for the workers):

| what | option | environment |
|---|---|---|
| the stream URL (or a base URL the model's path goes below) | ``--host`` | ``LOCUST_HOST`` |
| the api key (never an option: it would travel and show) | | ``LEANJOIN_API_KEY`` (then ``DECART_API_KEY``) |
| the model | ``--leanjoin-model`` | ``LEANJOIN_MODEL`` |
| the initial prompt ('' for none) | ``--leanjoin-prompt`` | ``LEANJOIN_PROMPT`` |
| an initial reference image file | ``--leanjoin-image`` | ``LEANJOIN_IMAGE`` |
| runtime prompts per session | ``--leanjoin-prompts`` | ``LEANJOIN_PROMPTS`` |
| seconds a session stays connected | ``--leanjoin-session-seconds`` | ``LEANJOIN_SESSION_SECONDS`` |
| sessions per user, then it stops (0: no limit) | ``--leanjoin-sessions`` | ``LEANJOIN_SESSIONS`` |
| real media: join the room, publish, decode, report ``first_frame`` | ``--leanjoin-media`` | ``LEANJOIN_MEDIA`` |

The master sends its options to the workers when a run starts; the api key
is read by each process from its own environment. Request names are the
model's name, failures the engine's error kind: no secret reaches Locust's
statistics.

A distributed run ended by ``--run-time`` loses what its workers measure
after the master quits (Locust's master waits 0.5 s for their last report,
whatever ``--stop-timeout`` says): sessions still running then are not
counted. ``--leanjoin-sessions`` bounds the work instead, so that every
session started is counted whole.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Final

import locust
from locust import User, constant, events, task
from locust.argument_parser import LocustArgumentParser
from locust.exception import StopUser

from leanjoin.adapters.client.endpoint import api_key_from_env, default_user_agent, stream_url
from leanjoin.engine.client.config import InitialState, SessionConfig
from leanjoin.engine.client.outputs import ErrorKind
from leanjoin.engine.codec import Base64Text

from .session_runner import DEFAULT_PROMPT, Measure, RoomsFactory, SessionPlan, SessionRunner

log = logging.getLogger(__name__)
# transitions logs every callback at INFO: thousands of lines a second under load.
logging.getLogger("transitions").setLevel(logging.WARNING)

DEFAULT_MODEL: Final = "echo"
MAX_IMAGE_BYTES: Final = 20 * 1024 * 1024


class SessionFailure(Exception):
    """A failure the engine reported, as Locust records it: by kind only (the
    engine's message may quote the server)."""

    def __init__(self, kind: ErrorKind) -> None:
        super().__init__(kind.value)
        self.kind = kind


class ConfigurationError(Exception):
    """The run's options cannot make a session (said once per process)."""


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]  # unannotated
def _add_options(parser: LocustArgumentParser, **_kwargs: Any) -> None:
    parser.add_argument(
        "--leanjoin-model",
        env_var="LEANJOIN_MODEL",
        default=DEFAULT_MODEL,
        help="model name sent in the socket URL (also each request's name)",
    )
    parser.add_argument(
        "--leanjoin-prompt",
        env_var="LEANJOIN_PROMPT",
        default=DEFAULT_PROMPT,
        help="initial prompt ('' for none); runtime prompts are it with their number",
    )
    parser.add_argument(
        "--leanjoin-image",
        env_var="LEANJOIN_IMAGE",
        default="",
        help="initial reference image file (PNG/JPEG), read once by each worker",
    )
    parser.add_argument(
        "--leanjoin-prompts",
        env_var="LEANJOIN_PROMPTS",
        type=int,
        default=2,
        help="runtime prompts per session, spread over its length",
    )
    parser.add_argument(
        "--leanjoin-session-seconds",
        env_var="LEANJOIN_SESSION_SECONDS",
        type=float,
        default=5.0,
        help="seconds each session stays connected before it disconnects",
    )
    parser.add_argument(
        "--leanjoin-media",
        env_var="LEANJOIN_MEDIA",
        action="store_true",
        default=False,
        help="join the LiveKit room for real: publish a small test pattern, decode the "
        "model's video, report first_frame (costs a worker far more CPU per user)",
    )
    parser.add_argument(
        "--leanjoin-sessions",
        env_var="LEANJOIN_SESSIONS",
        type=int,
        default=0,
        help="sessions each user runs before it stops (0: as many as the run allows)",
    )


@functools.cache
def _read_image(path: str) -> Base64Text:
    data = Path(path).read_bytes()
    if len(data) > MAX_IMAGE_BYTES:
        raise ConfigurationError(f"--leanjoin-image: over {MAX_IMAGE_BYTES} bytes")
    return Base64Text(data)


def _media_rooms() -> RoomsFactory:
    # Imported only here: the LiveKit client and asyncio, in a thread of their own.
    from leanjoin.adapters.client.room_transport import MediaOptions

    from .media import MediaRooms

    options = MediaOptions(max_framerate=10.0, max_bitrate=300_000)
    return lambda post, first_frame: MediaRooms(post, first_frame, options)


@functools.cache
def _complain_once(message: str) -> None:
    log.error("leanjoin user: %s", message)


def session_setup(host: str | None, options: Any) -> tuple[SessionConfig, SessionPlan]:
    """The session config and plan named by Locust's host and parsed options.
    Raises :class:`ConfigurationError` (its message quotes no secret)."""
    api_key = api_key_from_env()
    if api_key is None:
        raise ConfigurationError("no api key: set LEANJOIN_API_KEY in every process's environment")
    try:
        url = stream_url(host)  # None: the service's default endpoint
    except ValueError as exc:
        raise ConfigurationError(f"--host: {exc}") from None
    model = getattr(options, "leanjoin_model", DEFAULT_MODEL)
    prompt = getattr(options, "leanjoin_prompt", DEFAULT_PROMPT) or None
    image = getattr(options, "leanjoin_image", "")
    try:
        image_data = _read_image(image) if image else None
    except OSError as exc:
        raise ConfigurationError(f"--leanjoin-image: cannot read it ({exc.strerror})") from None
    integration = f"locust/{locust.__version__}"
    try:
        config = SessionConfig(
            url=url, api_key=api_key, model=model, user_agent=default_user_agent(integration)
        )
        plan = SessionPlan(
            initial=InitialState(image_data=image_data, prompt=prompt),
            prompts=getattr(options, "leanjoin_prompts", 2),
            length=getattr(options, "leanjoin_session_seconds", 5.0),
            prompt=prompt or DEFAULT_PROMPT,
        )
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    return config, plan


class LeanJoinUser(User):
    """A lean-join client on Locust's gevent: one session per task, back to
    back. Signaling only by default: join, queue, room_info, the initial-state
    ack and runtime prompts; the room step is reported by the adapter, no
    media is sent. With ``--leanjoin-media`` each session joins its LiveKit
    room for real (``media.py``). Subclass it in a locustfile (it is abstract, as Locust's HttpUser is)."""

    abstract = True
    wait_time = constant(0)

    def on_start(self) -> None:
        try:
            self._config, self._plan = session_setup(self.host, self.environment.parsed_options)
        except ConfigurationError as exc:
            _complain_once(str(exc))
            raise StopUser() from None
        self._name = self._config.model
        sessions = getattr(self.environment.parsed_options, "leanjoin_sessions", 0)
        self._sessions_left: int | None = sessions if sessions > 0 else None

    @task
    def session(self) -> None:
        """The user's one task: a session, from connect to disconnect."""
        self.run_session()
        if self._sessions_left is not None:
            self._sessions_left -= 1
            if self._sessions_left <= 0:
                raise StopUser()

    def run_session(self) -> None:
        """One session (returns when it is over); a subclass may add steps around it."""
        media = getattr(self.environment.parsed_options, "leanjoin_media", False)
        rooms = _media_rooms() if media else None
        SessionRunner(self._config, self._plan, self._report, rooms=rooms).run()

    def _report(self, measure: Measure, seconds: float, failure: ErrorKind | None) -> None:
        self.environment.events.request.fire(
            request_type=measure.value,
            name=self._name,
            response_time=seconds * 1000.0,
            response_length=0,
            exception=None if failure is None else SessionFailure(failure),
            context={},
        )
