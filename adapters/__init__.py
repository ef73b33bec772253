"""anyio I/O around the sans-IO engine: ``async with leanjoin.adapters.connect(...)``."""

from leanjoin.engine.client import NotConnectedError, UsageError
from leanjoin.engine.config import RetryPolicy, Timeouts
from leanjoin.engine.outputs import (
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

from .api import Milestone, Session, connect
from .errors import (
    ConnectFailed,
    ImageError,
    LeanJoinError,
    RequestError,
    RequestRejected,
    RequestTimedOut,
    SessionClosed,
    UnsupportedImageSource,
)
from .images import image_to_base64
from .room_transport import MediaOptions
from .video_sources import ArraySource, FileSource, Frame, TestPattern, VideoSource
from .ws_transport import SocketOptions

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
    "LeanJoinError",
    "MediaOptions",
    "Milestone",
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
    "UnsupportedImageSource",
    "UsageError",
    "VideoSource",
    "connect",
    "image_to_base64",
]
