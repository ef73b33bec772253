"""anyio I/O around the sans-IO engine: ``async with leanjoin.adapters.connect(...)``."""

from leanjoin.adapters.client.api import Milestone, Session, connect
from leanjoin.adapters.client.errors import (
    ConnectFailed,
    ImageError,
    InvalidArgument,
    LeanJoinError,
    RequestError,
    RequestRejected,
    RequestTimedOut,
    SessionClosed,
    UnsupportedImageSource,
)
from leanjoin.adapters.client.images import image_to_base64
from leanjoin.adapters.client.models import (
    ModelDefinition,
    ModelDeprecationWarning,
    UnknownModelError,
    is_realtime_model,
    list_models,
)
from leanjoin.adapters.client.room_transport import MediaOptions
from leanjoin.adapters.client.video_sources import (
    ArraySource,
    FileSource,
    Frame,
    TestPattern,
    VideoSource,
)
from leanjoin.adapters.client.ws_transport import SocketOptions
from leanjoin.engine.client.config import RetryPolicy, Timeouts
from leanjoin.engine.client.outputs import (
    ConnectionState,
    ErrorKind,
    ErrorOccurred,
    Event,
    GenerationStopped,
    GenerationTicked,
    InitialStateAcked,
    QueuePositionChanged,
    RemoteStream,
    RequestAcked,
    RequestFailed,
    RetryScheduled,
    SessionStarted,
    StateChanged,
)
from leanjoin.engine.client.session import NotConnectedError, UsageError

__all__ = [
    "ArraySource",
    "ConnectFailed",
    "ConnectionState",
    "ErrorKind",
    "ErrorOccurred",
    "Event",
    "FileSource",
    "Frame",
    "GenerationStopped",
    "GenerationTicked",
    "ImageError",
    "InitialStateAcked",
    "InvalidArgument",
    "LeanJoinError",
    "MediaOptions",
    "Milestone",
    "ModelDefinition",
    "ModelDeprecationWarning",
    "NotConnectedError",
    "QueuePositionChanged",
    "RemoteStream",
    "RequestAcked",
    "RequestError",
    "RequestFailed",
    "RequestRejected",
    "RequestTimedOut",
    "RetryPolicy",
    "RetryScheduled",
    "Session",
    "SessionClosed",
    "SessionStarted",
    "SocketOptions",
    "StateChanged",
    "TestPattern",
    "Timeouts",
    "UnknownModelError",
    "UnsupportedImageSource",
    "UsageError",
    "VideoSource",
    "connect",
    "image_to_base64",
    "is_realtime_model",
    "list_models",
]
