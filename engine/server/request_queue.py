"""What the server makes of a ``set_image`` or ``prompt``: checked on arrival,
then handled one at a time by :mod:`.server`.

An image is refused here, before anything is decoded, when it is not bare
base64 or is over the size limit; only the adapter can tell whether the bytes
are a picture, and whether an ``image_ref`` names a file it stores. Refusal texts name the problem and the limits, never content.
"""

from __future__ import annotations

import binascii
import enum
from typing import Final

import attrs

from ..codec import decode_base64
from ..messages import ABSENT, InitialStateBody, Prompt, PromptAck, SetImage, SetImageAck
from .events import RequestNumber

MAX_FILE_ID_CHARS: Final = 128


class Stage(enum.Enum):
    WAITING = "waiting"
    DECODING = "decoding"  # DecodeReference or LoadReference issued
    PROCESSING = "processing"  # decoded; the processing time runs


@attrs.define(slots=True)
class Request:
    """A ``set_image``/``prompt`` in the one-at-a-time pipeline."""

    id: RequestNumber
    message: SetImage | Prompt
    initial: bool
    data: bytes | None = attrs.field(default=None, repr=False)  # image bytes to decode
    file_id: str | None = None  # an uploaded file to load and decode (image_ref)
    rejection: str | None = None  # set: answered with this error, nothing applied
    stage: Stage = Stage.WAITING

    @classmethod
    def judge(
        cls,
        id: RequestNumber,
        message: SetImage | Prompt,
        *,
        initial: bool,
        max_bytes: int,
        reject_images: bool,
    ) -> Request:
        """The request, with its image bytes or the reason it is refused."""
        request = cls(id, message, initial)
        if not isinstance(message, SetImage) or request.no_state:
            return request
        if reject_images and (
            message.image_ref is not ABSENT or isinstance(message.image_data, str)
        ):
            request.rejection = "reference image rejected (reject_reference fault)"
        elif isinstance(message.image_ref, str):
            request.file_id, request.rejection = file_id(message.image_ref)
        elif isinstance(message.image_data, str):
            request.data, request.rejection = image_bytes(message.image_data, max_bytes)
        return request

    @property
    def no_state(self) -> bool:
        """A ``set_image`` with neither an image nor a prompt (the null
        bootstrap of a passthrough session, or a client clearing its
        reference): applied, it clears, but it is no state to start from."""
        return isinstance(self.message, SetImage) and self.message.is_null_bootstrap


def image_bytes(text: str, limit: int) -> tuple[bytes | None, str | None]:
    """The bytes of a base64 ``image_data``, or why they are refused."""
    if text.startswith("data:"):
        return None, "reference image must be bare base64, without a data: URL prefix"
    # Every 4 base64 characters carry 3 bytes: refuse a huge image unread.
    approx = (len(text) // 4) * 3
    if approx > limit + 2:
        return None, f"reference image is about {approx} bytes, over the limit of {limit} bytes"
    try:
        data = decode_base64(text)
    except (binascii.Error, ValueError):
        return None, "reference image is not valid base64"
    if not data:
        return None, "reference image is empty"
    if len(data) > limit:
        return None, f"reference image is {len(data)} bytes, over the limit of {limit} bytes"
    return data, None


def file_id(ref: str) -> tuple[str | None, str | None]:
    """The uploaded file an ``image_ref`` names, or why it is refused (an id
    is short: a long one is quoted in no reply)."""
    if not ref:
        return None, "image_ref is empty: send an uploaded file's id (file_...)"
    if len(ref) > MAX_FILE_ID_CHARS:
        return None, f"image_ref is {len(ref)} characters, over the limit of {MAX_FILE_ID_CHARS}"
    return ref, None


def bundled_initial(body: InitialStateBody) -> SetImage | Prompt | None:
    """The initial state nested in a legacy bundled join, as the frame it stands for."""
    if isinstance(body.image_data, str):
        return SetImage(
            image_data=body.image_data, prompt=body.prompt, enhance_prompt=body.enhance_prompt
        )
    if isinstance(body.prompt, str):
        enhance = body.enhance_prompt
        return Prompt(body.prompt, True if enhance is ABSENT else enhance)
    return None


def ack_for(message: SetImage | Prompt, error: str | None) -> SetImageAck | PromptAck:
    """The ack answering ``message``: success, or the error it was refused with."""
    text = ABSENT if error is None else error
    if isinstance(message, Prompt):
        return PromptAck(prompt=message.prompt, success=error is None, error=text)
    return SetImageAck(success=error is None, error=text)
