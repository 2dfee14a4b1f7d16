"""The HTTP/1.1 connection: uvicorn's httptools protocol, with the bounds a server facing
untrusted clients needs on the part of a request that comes before any route runs.

uvicorn reads a request head for as long as a client takes to send it and of any size,
and answers a connection that never sends anything by never closing it. Here:
- a connection must send a whole head within `header_timeout_seconds` of opening or of
  its previous response (slowloris); when part of a head came it gets 408, when nothing
  came it is closed without a word, as an idle keep-alive connection is;
- a head (request line and header fields) longer than `max_header_bytes` gets 431,
  found while it arrives, not after buffering all of it;
- a request body may not stall: no byte for `body_timeout_seconds` while the server is
  ready to read gets 408 (a slow body is fine, a stopped one is not);
- what the parser rejects, in a head or after it (a bad chunk, an oversized trailer),
  gets 400 (431) in the JSON error shape of every other error; the handler already
  running for that request is told the client left, and its reply is dropped.
Each of these replies closes the connection: what follows on it cannot be trusted to be
at a request boundary. So does any response sent before its request's body has all come.
"""

from __future__ import annotations

import asyncio
import functools
import http
import logging
from dataclasses import dataclass
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from vers_orchestrator.schemas.common import error_body

log = logging.getLogger("vers_orchestrator.http")


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """Settings `header_timeout_seconds`, `max_header_bytes` and `body_timeout_seconds`."""

    timeout_seconds: float
    max_bytes: int
    body_timeout_seconds: float


class _HeadRefused(Exception):
    """Raised inside a parser callback to stop parsing; the reply is already chosen."""


class BoundedHttpProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` with the bounds of the module's docstring: head timeout, head
    size limit, body idle timeout, JSON replies for what the parser rejects."""

    def __init__(self, *args: Any, head_limits: HeadLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = head_limits
        # Loop time by which the awaited head must be whole; None while none is awaited.
        # Per request only this moves: the timer is one per connection, re-armed when it
        # fires (arming and cancelling one per request cost ~2 µs of ~85; bench/README.md).
        self._head_deadline: float | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        # From a head's first byte to its end (the parser's message-begin to headers-complete).
        self._head_open = False
        # The head's size as the parser reports it (URL, names, values, separators), and the
        # bytes of chunks wholly inside a head: the parser buffers an unfinished field
        # without telling us, so the second bounds what it holds.
        self._head_fields = 0
        self._head_buffered = 0
        self._refusal: tuple[int, str] | None = None
        # While a body is expected: a timer, and when its last bytes came (loop time).
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_seen = 0.0

    # Connection events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        self._disarm_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        inside_head = self._head_open
        super().data_received(data)
        if self.transport.is_closing():
            return
        if inside_head and self._head_open:
            self._head_buffered += len(data)
            if self._head_buffered > self._limits.max_bytes:
                self._refuse(*self._too_large())
                return
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.response_complete:
            self._body_seen = self.loop.time()
            if self._body_timer is None:
                self._arm_body_timer(self._limits.body_timeout_seconds)

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to anything the parser raises, our refusals included.
        status, message = self._refusal or (400, "invalid HTTP request")
        self._refuse(status, message)

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open = True
        self._head_fields = 0
        self._head_buffered = 0

    def on_url(self, url: bytes) -> None:
        self._head_fields += len(url)
        if self._head_fields > self._limits.max_bytes:
            self._head_too_large()
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_fields += len(name) + len(value) + 4  # ": " and CRLF
        if self._head_fields > self._limits.max_bytes:
            self._head_too_large()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._head_deadline = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm_body_timer()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing() or not (self.cycle is None or self.cycle.response_complete):
            return  # closed, or a pipelined request is running already
        if self.cycle is not None and self.cycle.more_body:
            # Answered before its body came (401, 413, ...): the rest of the body would be
            # read only to be dropped, for as long as the client cares to send it.
            self.transport.close()
            return
        # The next head's clock starts now; part of it may be here already, and uvicorn's
        # keep-alive timer (for idle connections) must not cut that one off silently.
        if self._head_open:
            self._unset_keepalive_if_required()
        self._await_head()

    # Bounds

    def _head_too_large(self) -> None:
        self._refusal = self._too_large()
        raise _HeadRefused()

    def _too_large(self) -> tuple[int, str]:
        return 431, f"request header fields are too large (limit {self._limits.max_bytes} bytes)"

    def _await_head(self) -> None:
        timeout = self._limits.timeout_seconds
        self._head_deadline = self.loop.time() + timeout
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(timeout, self._head_check)

    def _disarm_head_timer(self) -> None:
        self._head_deadline = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_check(self) -> None:
        self._head_timer = None
        deadline = self._head_deadline
        if deadline is None or self.transport.is_closing():
            return  # no head awaited now: the next wait arms the timer again
        remaining = deadline - self.loop.time()
        if remaining > 0:
            self._head_timer = self.loop.call_later(remaining, self._head_check)
            return
        if self._head_open:
            self._refuse(
                408, f"request header not received within {self._limits.timeout_seconds:g} s"
            )
        else:
            self.transport.close()

    def _arm_body_timer(self, delay: float) -> None:
        self._body_timer = self.loop.call_later(delay, self._body_check)

    def _disarm_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_check(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None or not cycle.more_body:
            return
        now = self.loop.time()
        if self.flow.read_paused:
            # The handler has not taken what came: the client could not send, not its fault.
            self._body_seen = now
        idle = now - self._body_seen
        timeout = self._limits.body_timeout_seconds
        if idle < timeout:
            self._arm_body_timer(timeout - idle)
            return
        self._refuse(408, f"request body stalled: no data for {timeout:g} s")

    def _refuse(self, status: int, message: str) -> None:
        """Reply `status` with `message` as a JSON error, then close the connection. A
        handler still waiting for this request's body is told the client left (its reply
        is dropped); once a response has begun, closing is all that is left."""
        self._disarm_head_timer()
        self._disarm_body_timer()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started:
                self.transport.close()
                return
            cycle.disconnected = True
            cycle.message_event.set()
        body = error_body(message)
        head = (
            f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        )
        self.transport.write(head.encode("ascii") + body)
        log.info("refused a request: %d %s", status, message)
        self.transport.close()


def bounded_http_protocol(limits: HeadLimits) -> type[asyncio.Protocol]:
    """The protocol factory to give `uvicorn.Config(http=...)`; uvicorn only calls it."""
    return cast(type[asyncio.Protocol], functools.partial(BoundedHttpProtocol, head_limits=limits))
