"""One client's signal session: binary protobuf over the WebSocket of ``/rtc``.

Handled requests: publisher ``offer`` (answered), subscriber ``answer``, ``trickle``
(early candidates queued), ``add_track`` (``track_published``), ``ping_req``/``ping``
(``pong_resp``/``pong``) and ``leave``. Everything else is ignored.

Connection quality: a LiveKit server sends ``connection_quality`` updates on its
own schedule; the double sends the room's judgement (EXCELLENT unless a test set
another, :meth:`RoomHandle.set_connection_quality`) right after the first
``track_published``, and again whenever the room's judgement changes.

Test knobs (all in seconds): ``media_setup_delay`` holds the join before the
participant is attached to its room (a distant media server);
``join_answer_delay`` attaches it, then holds the join answer (the client's
connect is still running while the room already counts it, so a room loss can
hit it mid-connect); ``publish_delay`` holds the ``track_published`` answer to
``add_track`` (the client is publishing all that time). The room hears of every
``add_track`` at once (:meth:`RoomHandle.on_client_publishing`). A held answer
is dropped when the socket closes meanwhile (a leave, a room loss).

Viewers: a grant without ``can_publish`` (see ``LiveKitDouble.mint_viewer_token``)
makes a subscribe-only member. Its subscriber track carries every model output
frame of the room; its ``add_track`` is refused as a LiveKit server refuses it,
with a ``request_response`` ``NOT_ALLOWED`` and no ``track_published``.

Audio: a client's first audio ``add_track`` makes the model participant publish
its audio track: a ``participant_update`` announces it, then a new subscriber
offer carries it (once the subscriber connection is stable, else after the
client's answer). Without client audio the signalling is what it was.

VP9/AV1 refusal: aiortc decodes only VP8 and H264. ``add_track`` is always
answered (withholding ``track_published`` was seen to leave the client's
``publish_track`` hanging after the disconnect). When the client's next publisher
offer has a sending video m-line whose preferred codec is another one, the double
logs the reason at WARNING, sends no answer but ``leave`` with reason
``MEDIA_FAILURE`` (no reconnect) and closes: ``publish_track`` returns, then the
client's room disconnects instead of publishing a track that never carries media.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from . import ice, sdp
from .peer import ClientMedia
from .room import RoomHandle, new_sid
from .tokens import JoinGrant

log = logging.getLogger(__name__)

# Advertised to the client; protocol 16 is what the real client was seen to accept.
SERVER_VERSION = "1.9.0"
PROTOCOL_VERSION = 16
PING_INTERVAL_S = 5
PING_TIMEOUT_S = 15


class SignalSession:
    """One participant's signal connection (``/rtc``): serve the client its
    join grant admitted until it leaves, the socket drops or the double kicks it."""

    def __init__(
        self,
        ws: ServerConnection,
        grant: JoinGrant,
        room: RoomHandle,
        *,
        media_setup_delay: float,
        join_answer_delay: float = 0.0,
        publish_delay: float = 0.0,
    ) -> None:
        self._ws = ws
        self._grant = grant
        self._room = room
        self._delay = media_setup_delay
        self._join_answer_delay = join_answer_delay
        self._publish_delay = publish_delay
        self.sid = new_sid("PA")
        self._media: ClientMedia | None = None
        self._leaving = False
        self._audio_wanted = False  # the client publishes audio: offer the model's
        self._audio_offering = False
        self._background: set[asyncio.Task[None]] = set()
        self._publishing = False
        self._closed = asyncio.Event()

    def __repr__(self) -> str:
        return f"SignalSession(identity={self._grant.identity!r}, room={self._room.name!r})"

    async def run(self) -> None:
        ice.confine_to_loopback()
        try:
            if self._delay > 0 and await self._closed_within(self._delay):
                return
            self._media = ClientMedia(
                on_frame=self._room.on_client_frame,
                model_participant_sid=self._room.model_participant_sid,
                model_track_sid=self._room.model_track_sid,
                model_audio_track_sid=self._room.model_audio_track_sid,
                on_audio=self._room.on_client_audio,
            )
            self._room.attach(self)
            if not self._grant.can_publish:
                self._room.add_viewer(self._media.echo)
                # A viewer hears the model once it publishes audio (now, or later).
                self._audio_wanted = self._room.model_audio
                self._room.watch_model_audio(self._model_audio_started)
            held = self._join_answer_delay
            if held > 0 and await self._closed_within(held):
                return  # left (say, the room was lost) before it got its join answer
            await self._send(rtc.SignalResponse(join=self._join_response()))
            offer = await self._media.subscriber_offer()
            await self._send(
                rtc.SignalResponse(offer=rtc.SessionDescription(type="offer", sdp=offer))
            )
            async for raw in self._ws:
                if isinstance(raw, str):
                    continue
                if not await self._handle(rtc.SignalRequest.FromString(raw)):
                    break
        except ConnectionClosed:
            pass
        except DecodeError:
            log.warning("%r sent a frame that is no SignalRequest; closing", self._grant.identity)
        except Exception:
            # Keep the double serving others; the client sees its signal socket close.
            log.exception("signal session of %r failed", self._grant.identity)
        finally:
            for task in tuple(self._background):
                task.cancel()
            try:
                self._room.detach(self)
                if self._media is not None:
                    self._room.remove_viewer(self._media.echo)
                    self._room.remove_audio_viewer(
                        self._media.audio_echo, self._model_audio_started
                    )
                    await self._media.close()
                await self._ws.close()
            finally:
                self._closed.set()

    async def leave(self, reason: models.DisconnectReason, why: str) -> None:
        """Tell the client to leave for good, then close its socket (ends :meth:`run`)."""
        if self._leaving or self._ws.state is not State.OPEN:
            return
        self._leaving = True
        log.info("asking %r to leave: %s", self._grant.identity, why)
        await self._send(
            rtc.SignalResponse(
                leave=rtc.LeaveRequest(
                    can_reconnect=False, reason=reason, action=rtc.LeaveRequest.DISCONNECT
                )
            )
        )
        await self._ws.close()

    async def send_connection_quality(self, quality: models.ConnectionQuality) -> None:
        """Tell the client how good its connection is (once it publishes)."""
        if self._publishing:
            info = rtc.ConnectionQualityInfo(
                participant_sid=self.sid, quality=quality, score=_SCORES[quality]
            )
            await self._send(
                rtc.SignalResponse(connection_quality=rtc.ConnectionQualityUpdate(updates=[info]))
            )

    async def wait_closed(self) -> None:
        """Return once :meth:`run` has closed the peer connections and the socket."""
        await self._closed.wait()

    async def _closed_within(self, seconds: float) -> bool:
        # The test knobs' delays hold an answer back; a closed socket (a shutdown, a
        # leave, a room loss) must not wait for them.
        try:
            await asyncio.wait_for(self._ws.wait_closed(), seconds)
        except TimeoutError:
            return False
        return True

    async def _send(self, response: rtc.SignalResponse) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._ws.send(response.SerializeToString())

    async def _handle(self, req: rtc.SignalRequest) -> bool:
        """Act on one request; False ends the session."""
        media = self._media
        assert media is not None
        which = req.WhichOneof("message")
        if which == "offer":
            codec = sdp.unsupported_video_codec(req.offer.sdp)
            if codec is not None:
                return await self._refuse_codec(codec)
            answer = await media.publisher_answer(req.offer.sdp)
            description = rtc.SessionDescription(type="answer", sdp=answer, id=req.offer.id)
            await self._send(rtc.SignalResponse(answer=description))
        elif which == "answer":
            await media.subscriber_answered(req.answer.sdp)
            await self._offer_model_audio()
        elif which == "trickle":
            await media.add_candidate(req.trickle.target, req.trickle.candidateInit)
        elif which == "add_track":
            return await self._add_track(req.add_track)
        elif which == "ping_req":
            pong = rtc.Pong(last_ping_timestamp=req.ping_req.timestamp, timestamp=_now_ms())
            await self._send(rtc.SignalResponse(pong_resp=pong))
        elif which == "ping":
            await self._send(rtc.SignalResponse(pong=_now_ms()))
        elif which == "leave":
            log.info("%r left", self._grant.identity)
            return False
        return True

    async def _add_track(self, req: rtc.AddTrackRequest) -> bool:
        if not self._grant.can_publish:
            log.warning(
                "%r may not publish (a viewer's grant); track refused", self._grant.identity
            )
            refusal = rtc.RequestResponse(
                reason=rtc.RequestResponse.NOT_ALLOWED,
                message="does not have permission to publish",
                add_track=req,
            )
            await self._send(rtc.SignalResponse(request_response=refusal))
            return True
        self._room.on_client_publishing(_TRACK_KINDS.get(req.type, "data"))
        held = self._publish_delay
        if held > 0 and await self._closed_within(held):
            return False  # the socket closed while the answer was held
        track = models.TrackInfo(
            sid=new_sid("TR"),
            type=req.type,
            name=req.name,
            source=req.source,
            muted=req.muted,
            width=req.width,
            height=req.height,
            stream=req.stream,
            layers=list(req.layers),
        )
        await self._send(
            rtc.SignalResponse(track_published=rtc.TrackPublishedResponse(cid=req.cid, track=track))
        )
        if not self._publishing:
            self._publishing = True
            await self.send_connection_quality(self._room.connection_quality)
        if req.type == models.AUDIO:
            self._audio_wanted = True
            await self._offer_model_audio()
        return True

    async def _offer_model_audio(self) -> None:
        """Publish the model's audio to this client, once, when it can be offered."""
        media = self._media
        assert media is not None
        if not self._audio_wanted or media.audio_offered or self._audio_offering:
            return
        if media.subscriber.signalingState != "stable":
            return  # an offer is out: renegotiate after its answer
        self._audio_offering = True  # the room's news and an answer may both get here
        # The client must know the track before it arrives, or it cannot map it.
        update = rtc.ParticipantUpdate(participants=[self._room.model_participant(audio=True)])
        await self._send(rtc.SignalResponse(update=update))
        offer = await media.subscriber_audio_offer()
        await self._send(rtc.SignalResponse(offer=rtc.SessionDescription(type="offer", sdp=offer)))
        if self._grant.can_publish:
            self._room.on_model_audio_started()  # the room's viewers hear it too
        else:
            self._room.add_audio_viewer(media.audio_echo)

    async def _offer_model_audio_quietly(self) -> None:
        with contextlib.suppress(ConnectionClosed):  # the viewer left meanwhile
            await self._offer_model_audio()

    def _model_audio_started(self) -> None:
        # Called by the room (a publisher's renegotiation): offer it from this
        # session's own task context, after whatever it is sending now.
        self._audio_wanted = True
        task = asyncio.get_running_loop().create_task(self._offer_model_audio_quietly())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refuse_codec(self, codec: str) -> bool:
        why = (
            f"refusing the video publication of {self._grant.identity!r}: codec {codec} is "
            "not supported by this double (aiortc decodes VP8 and H264 only)"
        )
        log.warning("%s", why)
        await self.leave(models.MEDIA_FAILURE, f"unsupported video codec {codec}")
        return False

    def _join_response(self) -> rtc.JoinResponse:
        grant = self._grant
        me = models.ParticipantInfo(
            sid=self.sid,
            identity=grant.identity,
            name=grant.name,
            state=models.ParticipantInfo.JOINED,
            joined_at=int(time.time()),
            permission=models.ParticipantPermission(
                can_publish=grant.can_publish,
                can_subscribe=grant.can_subscribe,
                can_publish_data=grant.can_publish_data,
            ),
        )
        return rtc.JoinResponse(
            room=self._room.room_info(),
            participant=me,
            other_participants=[self._room.model_participant()],
            server_version=SERVER_VERSION,
            server_info=models.ServerInfo(
                edition=models.ServerInfo.Standard,
                version=SERVER_VERSION,
                protocol=PROTOCOL_VERSION,
                node_id="lkdouble",
            ),
            # What a real LiveKit server answers a two-peer-connection (/rtc) client
            # that may subscribe and publish: the subscriber connection is primary,
            # and the publisher may negotiate at once. Saves ~0.3 s to first frame.
            subscriber_primary=True,
            fast_publish=True,
            ping_interval=PING_INTERVAL_S,
            ping_timeout=PING_TIMEOUT_S,
        )


_TRACK_KINDS = {models.AUDIO: "audio", models.VIDEO: "video"}
# LiveKit's scores (1 to 5) behind each verdict; the client reads only the verdict.
_SCORES = {models.EXCELLENT: 4.5, models.GOOD: 3.5, models.POOR: 2.0, models.LOST: 0.0}


def _now_ms() -> int:
    return int(time.time() * 1000)
