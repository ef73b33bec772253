"""SDP text helpers: candidate filtering, codec checks and simulcast fix-ups.

aiortc knows neither RID header extensions nor simulcast. The real client
publishes video with simulcast by default, and libwebrtc refuses to build a
simulcast offer once the bundle's answer left the RID extensions out. So every
publisher answer is patched (:func:`patch_publisher_answer`):

* each video m-section echoes the offer's RID / repaired-RID ``extmap`` lines;
* a sending video m-section that offers ``a=simulcast:send`` is answered with
  ``a=rid:<one> recv`` and ``a=simulcast:recv <one>``: the client then sends only
  that single layer, which aiortc decodes as a plain stream (the highest layer,
  ``f``, when offered).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

_RID_URIS = (
    "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
)
# LiveKit names its simulcast layers q(uarter), h(alf), f(ull): prefer the fullest.
_RID_PREFERENCE = ("f", "h", "q")
# Not codecs of their own: they ride along a real video codec in an m-line.
_ANCILLARY_CODECS = frozenset({"RTX", "RED", "ULPFEC", "FLEXFEC-03"})
SUPPORTED_VIDEO_CODECS = frozenset({"VP8", "H264"})


@dataclass
class _Section:
    lines: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.lines[0][2:].split(" ", 1)[0]

    @property
    def rejected(self) -> bool:
        fields = self.lines[0].split()
        return len(fields) < 2 or fields[1] == "0"

    def value(self, prefix: str) -> str | None:
        for line in self.lines:
            if line.startswith(prefix):
                return line[len(prefix) :]
        return None

    @property
    def sending(self) -> bool:
        return not any(line in ("a=recvonly", "a=inactive") for line in self.lines)


def _split(sdp: str) -> tuple[list[str], list[_Section]]:
    session: list[str] = []
    sections: list[_Section] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append(_Section([line]))
        elif sections:
            sections[-1].lines.append(line)
        elif line:
            session.append(line)
    return session, sections


def _join(session: list[str], sections: list[_Section]) -> str:
    lines = session + [line for s in sections for line in s.lines if line]
    return "\r\n".join(lines) + "\r\n"


def filter_candidates(sdp: str, keep: Callable[[str], bool]) -> str:
    """Drop every ``a=candidate`` line for which ``keep`` is false."""
    lines = [ln for ln in sdp.splitlines() if not ln.startswith("a=candidate:") or keep(ln)]
    return "\r\n".join(ln for ln in lines if ln) + "\r\n"


def unsupported_video_codec(sdp: str) -> str | None:
    """The preferred codec of a sending video m-section when aiortc cannot decode it."""
    for section in _split(sdp)[1]:
        if section.kind != "video" or section.rejected or not section.sending:
            continue
        names: dict[str, str] = {}
        for line in section.lines:
            if line.startswith("a=rtpmap:"):
                payload, _, rest = line[len("a=rtpmap:") :].partition(" ")
                names[payload] = rest.split("/", 1)[0].upper()
        for payload in section.lines[0].split()[3:]:
            name = names.get(payload, "")
            if name in _ANCILLARY_CODECS:
                continue
            if name not in SUPPORTED_VIDEO_CODECS:
                return name or f"payload type {payload}"
            break
    return None


def _chosen_rid(simulcast: str) -> str:
    # "send q;h;f" (alternatives after commas, paused layers prefixed with "~").
    rids = [r.split(",")[0].lstrip("~") for r in simulcast.split(" ", 1)[-1].split(";")]
    for preferred in _RID_PREFERENCE:
        if preferred in rids:
            return preferred
    return rids[0]


def patch_publisher_answer(offer_sdp: str, answer_sdp: str) -> str:
    """The answer with RID extensions and single-layer simulcast added (see module doc)."""
    offers = {s.value("a=mid:"): s for s in _split(offer_sdp)[1]}
    session, sections = _split(answer_sdp)
    for section in sections:
        offer = offers.get(section.value("a=mid:"))
        if section.kind != "video" or section.rejected or offer is None:
            continue
        extra = [
            line
            for line in offer.lines
            if line.startswith("a=extmap:") and line.split(" ", 1)[-1].strip() in _RID_URIS
        ]
        simulcast = offer.value("a=simulcast:")
        if simulcast is not None and simulcast.startswith("send") and offer.sending:
            rid = _chosen_rid(simulcast)
            extra += [f"a=rid:{rid} recv", f"a=simulcast:recv {rid}"]
        section.lines += [line for line in extra if line not in section.lines]
    return _join(session, sections)
