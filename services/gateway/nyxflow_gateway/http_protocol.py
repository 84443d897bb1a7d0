"""uvicorn's httptools protocol, with a request it cannot parse refused like every other one,
and the connection's transport offered to the SSE stream.

httptools writes a chunk in about half the time h11 takes, which is most of the gateway's work
when a thousand browsers follow runs. But it refuses a request with a byte HTTP does not allow
(a DEL in a header, say) before the application sees it, with a plain-text 400 that names
nothing. This subclass answers with the gateway's JSON error and names the header (or the
request line) that held the byte.
"""

from __future__ import annotations

import json
import re

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

TRANSPORT = "nyxflow.transport"  # scope["extensions"] key: the connection's transport
KEPT = 16 * 1024  # enough of the latest bytes to find the request's head in
# What RFC 9110 allows in a field value: visible ASCII, obs-text, space and tab.
BAD_VALUE = re.compile(rb"[^\t\x20-\x7e\x80-\xff]")
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def offending_field(head: bytes) -> str:
    """The header the parser choked on, by name; `request line` or `headers` otherwise."""
    lines = head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    if not lines or BAD_VALUE.search(lines[0]) or lines[0].count(b" ") < 2:
        return "request line"
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not TOKEN.fullmatch(name) or BAD_VALUE.search(value):
            printable = name if TOKEN.fullmatch(name) else b""
            return printable.decode("ascii") or "headers"
    return "headers"


class Protocol(HttpToolsProtocol):
    _head = b""  # the first bytes of the request being parsed
    _in_body = False

    def data_received(self, data: bytes) -> None:
        if len(self._head) < KEPT:
            self._head = (self._head + data)[:KEPT]
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._head, self._in_body = b"", True  # parsed: not kept for a long stream's life
        super().on_headers_complete()
        # The event stream writes its chunks here itself (see sse.py); the ASGI task that
        # reads the scope has not started yet.
        # `drain` returns once the transport's buffer is low again: history waits on it.
        self.scope.setdefault("extensions", {})[TRANSPORT] = {
            "transport": self.transport,
            "drain": self.flow.drain,
        }

    def on_message_complete(self) -> None:
        self._head, self._in_body = b"", False
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        field = "body" if self._in_body else offending_field(self._head)
        body = json.dumps(
            {
                "error": {
                    "code": "invalid_argument",
                    "message": "not a valid HTTP request: a character HTTP does not allow",
                    "field": field,
                }
            }
        ).encode()
        head = (
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body)
        )
        self.transport.write(head + body)
        self.transport.close()
