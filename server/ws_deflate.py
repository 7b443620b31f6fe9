"""WebSocket compression that costs one compression per event, not one per observer.

Browsers ask for `permessage-deflate` (RFC 7692), and Hypercorn accepts it with
wsproto's `PerMessageDeflate`, which by default keeps one compressor per connection
whose state carries over from message to message. Every observer's bytes then
differ, and an event sent to N observers is compressed N times.

`SharedDeflate` is that extension with `server_no_context_takeover` negotiated: the
server starts every message from a fresh compressor (RFC 7692 §7.1.1.1 lets a server
announce this whether or not the client offered it, and every browser accepts it),
so a message's compressed bytes depend on the message alone. They are kept in a
small cache shared by all connections, and the second observer of an event gets the
first one's bytes. Messages the client sends are still decompressed per connection,
with whatever the client negotiated.

Hypercorn has no setting for its WebSocket extensions: it builds `PerMessageDeflate()`
by that name in `hypercorn.protocol.ws_stream` for every handshake. `install` points
that name at `SharedDeflate`; a Hypercorn that no longer has it keeps its own
compression (slower, still correct), and a warning says so.
"""

from __future__ import annotations

import logging
import zlib
from collections import OrderedDict
from typing import Final

from hypercorn.protocol import ws_stream
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameDecoder, FrameProtocol, Opcode, RsvBits

log = logging.getLogger("fellowship.ws")

SHARED_MESSAGES: Final = 256
"""Compressed messages kept for reuse: many times the events a burst brings."""
SHARED_MAX_BYTES: Final = 16 * 1024
"""Larger messages (a long `history`, one per member anyway) are not kept: the cache
holds at most SHARED_MESSAGES times 16 KiB of events and their compressed bytes."""
_SYNC_TAIL: Final = 4  # the 00 00 ff ff a sync flush ends with; RFC 7692 drops it


class _Compressed:
    """The compressed bytes of recent messages, shared by every connection."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._kept: OrderedDict[bytes, bytes] = OrderedDict()

    def get(self, data: bytes) -> bytes:
        """`data` compressed as one message from a fresh compressor (no trailing sync)."""
        if len(data) > SHARED_MAX_BYTES:
            return _deflate(data)
        found = self._kept.get(data)
        if found is None:
            found = self._kept[data] = _deflate(data)
            if len(self._kept) > self._size:
                self._kept.popitem(last=False)
        return found

    def clear(self) -> None:
        """Drop every kept message."""
        self._kept.clear()


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(
        zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -PerMessageDeflate.DEFAULT_SERVER_MAX_WINDOW_BITS
    )
    return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-_SYNC_TAIL]


_shared = _Compressed(SHARED_MESSAGES)


def forget_shared() -> None:
    """Drop the compressed messages kept for reuse (a leak check counts what is left:
    the cache is bounded, and its filling up is not a leak)."""
    _shared.clear()


class SharedDeflate(PerMessageDeflate):
    """`permessage-deflate` with `server_no_context_takeover`, compressing each message once.

    The shared bytes are those of the default (largest) window. A client that asks for
    a smaller `server_max_window_bits` (browsers do not) gets wsproto's compression,
    one per message on its connection.
    """

    def __init__(self) -> None:
        super().__init__(server_no_context_takeover=True)

    def frame_outbound(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        data: bytes,
        fin: bool,
    ) -> tuple[RsvBits, bytes]:
        """Compress a whole server message from the shared cache; anything else as wsproto."""
        shareable = (
            not proto.client
            and fin
            and opcode in (Opcode.TEXT, Opcode.BINARY)
            and self.server_max_window_bits == self.DEFAULT_SERVER_MAX_WINDOW_BITS
        )
        if not shareable:
            return super().frame_outbound(proto, opcode, rsv, data, fin)
        return RsvBits(True, rsv.rsv2, rsv.rsv3), _shared.get(data)


def install() -> bool:
    """Make Hypercorn negotiate `SharedDeflate` for new WebSocket connections.

    Returns whether it could (False, with a warning, if Hypercorn no longer builds its
    extension from `ws_stream.PerMessageDeflate`).
    """
    current = getattr(ws_stream, "PerMessageDeflate", None)
    if current is SharedDeflate:
        return True
    if current is not PerMessageDeflate:
        log.warning(
            "hypercorn no longer builds wsproto's PerMessageDeflate by name: WebSocket "
            "events are compressed once per connection instead of once per event"
        )
        return False
    setattr(ws_stream, "PerMessageDeflate", SharedDeflate)  # noqa: B010 (no typed hook)
    return True
