"""WebSocket compression shared by every connection (server/ws_deflate.py), through wsproto."""

from __future__ import annotations

import json
import zlib

from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import Message, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.handshake import server_extensions_handshake

from server.ws_deflate import SharedDeflate

BROWSER_OFFER = "permessage-deflate; client_max_window_bits"


def _pair() -> tuple[Connection, Connection]:
    """A server and a client connection that negotiated as a browser and Hypercorn do."""
    server_ext = SharedDeflate()
    answer = server_extensions_handshake([BROWSER_OFFER], [server_ext])
    assert answer is not None
    client_ext = PerMessageDeflate()
    client_ext.finalize(answer.decode())
    return (
        Connection(ConnectionType.SERVER, [server_ext]),
        Connection(ConnectionType.CLIENT, [client_ext]),
    )


def _event(seq: int) -> str:
    return json.dumps({"type": "bot_message", "seq": seq, "content": "Hello there. " * 20})


def test_the_server_announces_that_it_compresses_each_message_on_its_own() -> None:
    answer = server_extensions_handshake([BROWSER_OFFER], [SharedDeflate()])
    assert answer is not None
    assert b"server_no_context_takeover" in answer


def test_every_connection_gets_the_same_compressed_bytes_for_one_event() -> None:
    (first, _), (second, _) = _pair(), _pair()
    first.send(TextMessage(_event(1)))  # the connections' pasts differ
    frame = first.send(TextMessage(_event(2)))
    assert second.send(TextMessage(_event(2))) == frame
    assert frame[0] & 0x40  # RSV1: the message is compressed
    assert len(frame) < len(_event(2).encode())


def test_a_client_reads_every_message_with_its_one_decompressor() -> None:
    server, client = _pair()
    sent = [_event(seq) for seq in range(1, 6)] + ["{}", _event(1)]
    for text in sent:
        client.receive_data(server.send(TextMessage(text)))
    received = [e.data for e in client.events() if isinstance(e, Message)]
    assert received == sent


def test_a_fragmented_message_is_compressed_as_wsproto_does() -> None:
    server, client = _pair()
    text = _event(7)
    data = server.send(TextMessage(text[:50], message_finished=False))
    data += server.send(TextMessage(text[50:], message_finished=True))
    client.receive_data(data)
    assert "".join(e.data for e in client.events() if isinstance(e, Message)) == text


def test_what_the_server_sends_is_plain_raw_deflate() -> None:
    server, _ = _pair()
    frame = server.send(TextMessage(_event(3)))
    header = 4 if frame[1] & 0x7F == 126 else 2
    inflate = zlib.decompressobj(-zlib.MAX_WBITS)
    assert inflate.decompress(bytes(frame[header:]) + b"\x00\x00\xff\xff") == _event(3).encode()
