"""anyio I/O around the sans-IO engine: ``async with leanjoin.adapters.connect(...)``.

The anyio client (``connect``, ``Session``, the socket, room and video
classes) loads on first use (PEP 562), so a package beside it that does not
use it imports none of it: ``leanjoin.adapters.load``, the gevent adapter
Locust runs, loads this file first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final

from leanjoin.adapters.client.errors import (
    CameraError,
    ConnectFailed,
    ImageError,
    InvalidArgument,
    LeanJoinError,
    MicrophoneUnavailable,
    RequestError,
    RequestRejected,
    RequestTimedOut,
    SessionClosed,
    UnsupportedImageSource,
    WatchFailed,
)
from leanjoin.adapters.client.models import (
    ModelDefinition,
    ModelDeprecationWarning,
    UnknownModelError,
    is_realtime_model,
    list_models,
)
from leanjoin.adapters.client.observability import (
    ConnectBreakdown,
    ConnectionQuality,
    ConnectionQualityChanged,
    InboundVideoStats,
    ObservabilityEvent,
    OutboundVideoStats,
    Reconnected,
    SessionEvent,
    VideoStall,
    VideoStallEnded,
    WebRtcStats,
)
from leanjoin.engine.client.config import RetryPolicy, Timeouts
from leanjoin.engine.client.outputs import (
    ConnectionState,
    ErrorKind,
    ErrorOccurred,
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

# What a session delivers (``Session.events()``, ``on_event``): the engine's
# events and the adapters' observability events.
Event = SessionEvent

if TYPE_CHECKING:
    from leanjoin.adapters.client.api import Milestone, Session, connect
    from leanjoin.adapters.client.audio_sources import (
        AudioFrame,
        AudioSource,
        Microphone,
        Tone,
        WavSource,
    )
    from leanjoin.adapters.client.camera import Camera, open_camera
    from leanjoin.adapters.client.files import (
        FileNotFound,
        FileReference,
        FilesClient,
        HttpApiError,
        WatchCredentials,
        watch_credentials,
    )
    from leanjoin.adapters.client.images import image_to_base64
    from leanjoin.adapters.client.preflight import ConnectivityReport, check_connectivity
    from leanjoin.adapters.client.room_transport import CameraInput, MediaOptions
    from leanjoin.adapters.client.session_probe import SessionProbeReport, probe_session
    from leanjoin.adapters.client.video_sources import (
        ArraySource,
        FileSource,
        Frame,
        StillImage,
        TestPattern,
        VideoSource,
    )
    from leanjoin.adapters.client.viewer import Viewer, ViewerStateChanged, watch, watch_room
    from leanjoin.adapters.client.ws_transport import SocketOptions

# Where each name of the anyio client lives (the imports above, at run time).
_LAZY: Final = {
    "Milestone": "api",
    "Session": "api",
    "connect": "api",
    "FileNotFound": "files",
    "FileReference": "files",
    "FilesClient": "files",
    "HttpApiError": "files",
    "WatchCredentials": "files",
    "watch_credentials": "files",
    "AudioFrame": "audio_sources",
    "AudioSource": "audio_sources",
    "Microphone": "audio_sources",
    "Tone": "audio_sources",
    "WavSource": "audio_sources",
    "image_to_base64": "images",
    "ConnectivityReport": "preflight",
    "check_connectivity": "preflight",
    "SessionProbeReport": "session_probe",
    "probe_session": "session_probe",
    "Camera": "camera",
    "open_camera": "camera",
    "CameraInput": "room_transport",
    "MediaOptions": "room_transport",
    "ArraySource": "video_sources",
    "FileSource": "video_sources",
    "Frame": "video_sources",
    "StillImage": "video_sources",
    "TestPattern": "video_sources",
    "VideoSource": "video_sources",
    "SocketOptions": "ws_transport",
    "Viewer": "viewer",
    "ViewerStateChanged": "viewer",
    "watch": "viewer",
    "watch_room": "viewer",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"leanjoin.adapters.client.{module}"), name)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "ArraySource",
    "AudioFrame",
    "AudioSource",
    "Camera",
    "CameraError",
    "CameraInput",
    "ConnectBreakdown",
    "ConnectFailed",
    "ConnectionQuality",
    "ConnectionQualityChanged",
    "ConnectionState",
    "ConnectivityReport",
    "ErrorKind",
    "ErrorOccurred",
    "Event",
    "FileNotFound",
    "FileReference",
    "FileSource",
    "FilesClient",
    "Frame",
    "GenerationStopped",
    "GenerationTicked",
    "HttpApiError",
    "ImageError",
    "InboundVideoStats",
    "InitialStateAcked",
    "InvalidArgument",
    "LeanJoinError",
    "MediaOptions",
    "Microphone",
    "MicrophoneUnavailable",
    "Milestone",
    "ModelDefinition",
    "ModelDeprecationWarning",
    "NotConnectedError",
    "ObservabilityEvent",
    "OutboundVideoStats",
    "QueuePositionChanged",
    "Reconnected",
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
    "SessionEvent",
    "SessionProbeReport",
    "SessionStarted",
    "SocketOptions",
    "StateChanged",
    "StillImage",
    "TestPattern",
    "Timeouts",
    "Tone",
    "UnknownModelError",
    "UnsupportedImageSource",
    "UsageError",
    "VideoSource",
    "VideoStall",
    "VideoStallEnded",
    "Viewer",
    "ViewerStateChanged",
    "WatchCredentials",
    "WatchFailed",
    "WavSource",
    "WebRtcStats",
    "check_connectivity",
    "connect",
    "image_to_base64",
    "is_realtime_model",
    "list_models",
    "open_camera",
    "probe_session",
    "watch",
    "watch_credentials",
    "watch_room",
]
