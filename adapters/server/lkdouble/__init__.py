"""A local LiveKit server double that the real ``livekit.rtc.Room`` client joins.

It verifies real access tokens, serves LiveKit's dual peer connection signal path
over a WebSocket, decodes the client's video with aiortc and publishes a model
track (participant ``inference-server-echo`` by default) whose frames come from a
per-room transform. All ICE traffic stays on this machine (127.0.0.1 candidates).
"""

from .room import RoomHandle, Transform
from .server import LiveKitDouble

__all__ = ["LiveKitDouble", "RoomHandle", "Transform"]
