"""The edge: a reverse proxy from browsers to web servers inside VMs (issue 13).

aiohttp serves the edge's listener and is the client towards the guest: HTTP/1.1 with
keep-alive on both sides, bodies streamed both ways as they come (never held whole), and
WebSocket upgrades bridged message by message. `services.edge.EdgeRoutes` says where a Host
header leads; every refusal is the API's JSON error body. The edge runs in the server's
event loop beside the API, which never waits for it: every step is asynchronous.

What reaches the guest: the request as sent, less the hop-by-hop headers (RFC 9110 §7.6.1),
with `X-Forwarded-For` (the client's address appended), `X-Forwarded-Proto` and
`X-Forwarded-Host`; the `Host` header is the one the client sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict, MultiMapping
from yarl import URL

from vers_orchestrator.errors import GuestPortUnreachable, VersError
from vers_orchestrator.schemas.common import error_body
from vers_orchestrator.services.edge import EdgeRoutes, EdgeTarget

log = logging.getLogger("vers_orchestrator.edge")

# The hosted service's DNS-readiness check (`upstream-semantics-platform.md` §3): answered
# for any Host, so that a domain pointed at this edge passes `POST /domains`' probe.
DOMAIN_CHECK_PATH = "/.well-known/chelsea-domain-check"
DOMAIN_CHECK_ANSWER = b"chelsea-domain-ok"
HOP_BY_HOP = frozenset(
    {
        "connection",
        "expect",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Sent by each side's own WebSocket handshake, not copied across.
WEBSOCKET_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    }
)
CONNECT_TIMEOUT_SECONDS = 10.0
# A WebSocket message is assembled whole before it is passed on; bounded like a JSON body.
MAX_WEBSOCKET_MESSAGE_BYTES = 16 * 1024 * 1024
SHUTDOWN_TIMEOUT_SECONDS = 5.0
IDLE_CONNECTION_SECONDS = 75.0


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM certificate chain and private key; read at start and again on SIGHUP."""

    certificate: Path
    private_key: Path


class EdgeProxy:
    def __init__(
        self,
        routes: EdgeRoutes,
        *,
        tls: TlsFiles | None,
        max_header_bytes: int,
        head_timeout_seconds: float,
    ) -> None:
        self._routes = routes
        self._head_timeout = head_timeout_seconds
        self._tls = tls
        self._max_header_bytes = max_header_bytes
        self._ssl: ssl.SSLContext | None = None
        self._runner: web.ServerRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self, listener: socket.socket) -> None:
        """Serve on `listener` (bound and listening). Raises OSError or ssl.SSLError when
        the TLS files cannot be read."""
        if self._tls is not None:
            self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._ssl.load_cert_chain(self._tls.certificate, self._tls.private_key)
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload_tls)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=IDLE_CONNECTION_SECONDS),
            timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_SECONDS),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        soft_limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        server = _EdgeServer(
            self._handle,
            # Each client connection may hold one to a guest too: half the process's file
            # descriptors at most, the rest stay the API's.
            max_connections=max(soft_limit // 4, 64),
            # A client that leaves cancels its request: nothing waits on a guest for it.
            handler_cancellation=True,
            access_log=None,
            # aiohttp closes a connection that has not sent a whole request head this
            # long after it opened or after its previous response: the API's head timeout.
            keepalive_timeout=self._head_timeout,
            max_line_size=self._max_header_bytes,
            max_field_size=self._max_header_bytes,
            # Bodies pass through as they were sent, compressed or not.
            auto_decompress=False,
        )
        self._runner = web.ServerRunner(server, handle_signals=False)
        await self._runner.setup()
        site = web.SockSite(
            self._runner,
            listener,
            ssl_context=self._ssl,
            shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS,
        )
        await site.start()

    async def stop(self) -> None:
        if self._tls is not None:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def reload_tls(self) -> None:
        """Read the certificate and key again (SIGHUP): new connections get them; a
        failure keeps the ones in use and is logged."""
        if self._ssl is None or self._tls is None:
            return
        try:
            self._ssl.load_cert_chain(self._tls.certificate, self._tls.private_key)
        except (OSError, ssl.SSLError) as exc:
            log.error("edge: TLS files not reloaded, the previous ones stay: %s", exc)
        else:
            log.info("edge: TLS certificate reloaded from %s", self._tls.certificate)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if not request.raw_path.startswith("/"):
            # Only a path goes to a guest: an absolute-form or authority-form target
            # (`CONNECT @host:port`, `GET http://…`) would have named its own destination.
            return _error(400, "the request target must be a path")
        if request.method == "CONNECT":
            return _error(405, "CONNECT is not supported")
        if request.path == DOMAIN_CHECK_PATH and request.method in ("GET", "HEAD"):
            return web.Response(body=DOMAIN_CHECK_ANSWER, content_type="text/plain")
        try:
            target = await self._routes.resolve(request.headers.get("Host", ""))
            if _is_websocket_upgrade(request):
                return await self._bridge_websocket(request, target)
            return await self._forward(request, target)
        except VersError as exc:
            return _error(exc.status_code, exc.message)
        except Exception:
            # As the API does: the details go to the log, never to the client.
            log.exception("edge: %s %s failed", request.method, request.path)
            return _error(500, "internal server error")

    async def _forward(self, request: web.BaseRequest, target: EdgeTarget) -> web.StreamResponse:
        assert self._session is not None
        body = None
        if request.body_exists:
            if request.headers.get("Expect", "").lower() == "100-continue":
                # The client waits for this before it sends the body (RFC 9110 §10.1.1).
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = request.content.iter_any()
        try:
            upstream = await self._session.request(
                request.method,
                _guest_url(target, request),
                headers=self._forwarded_headers(request),
                data=body,
                allow_redirects=False,
                compress=None,
            )
        except (aiohttp.ClientError, OSError):
            raise GuestPortUnreachable(target.guest_port) from None
        try:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            hop_by_hop = _hop_by_hop(upstream.headers)
            for raw_name, raw_value in upstream.raw_headers:
                name = raw_name.decode("latin-1")
                if name.lower() not in hop_by_hop:
                    response.headers.add(name, raw_value.decode("latin-1"))
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
        except (aiohttp.ClientError, OSError) as exc:
            # Part of the answer went out: the client sees its connection end early.
            log.info(
                "edge: %s %s of VM %s cut short: %s",
                request.method,
                request.path,
                target.vm_id,
                exc,
            )
            if request.transport is not None:
                request.transport.close()
            return response
        finally:
            upstream.release()

    async def _bridge_websocket(
        self, request: web.BaseRequest, target: EdgeTarget
    ) -> web.StreamResponse:
        assert self._session is not None
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        headers = CIMultiDict(
            (name, value)
            for name, value in self._forwarded_headers(request).items()
            if name.lower() not in WEBSOCKET_HANDSHAKE
        )
        try:
            upstream = await self._session.ws_connect(
                _guest_url(target, request),
                headers=headers,
                protocols=[p for p in offered if p],
                autoclose=False,
                autoping=False,
                max_msg_size=MAX_WEBSOCKET_MESSAGE_BYTES,
            )
        except aiohttp.WSServerHandshakeError as exc:
            return _error(
                502, f"the VM's port {target.guest_port} refused the WebSocket ({exc.status})"
            )
        except (aiohttp.ClientError, OSError):
            raise GuestPortUnreachable(target.guest_port) from None
        async with upstream:
            client = web.WebSocketResponse(
                protocols=(upstream.protocol,) if upstream.protocol else (),
                autoclose=False,
                autoping=False,
                compress=False,
                max_msg_size=MAX_WEBSOCKET_MESSAGE_BYTES,
            )
            await client.prepare(request)
            await asyncio.gather(_pump(client, upstream), _pump(upstream, client))
        return client

    def _forwarded_headers(self, request: web.BaseRequest) -> CIMultiDict[str]:
        hop_by_hop = _hop_by_hop(request.headers)
        headers = CIMultiDict(
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in hop_by_hop
        )
        earlier = headers.popall("X-Forwarded-For", [])
        client = request.remote or "unknown"
        headers["X-Forwarded-For"] = ", ".join([*earlier, client])
        headers["X-Forwarded-Proto"] = "https" if self._ssl is not None else "http"
        headers["X-Forwarded-Host"] = request.headers.get("Host", "")
        return headers


WebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def _pump(source: WebSocket, sink: WebSocket) -> None:
    """Pass messages from `source` to `sink` until `source` closes. Its close (code and
    reason) goes to `sink`, and `sink`'s answer back to `source` (RFC 6455 §5.5.1); a
    side that fails or vanishes has the other closed with 1011 or 1001.

    Two pumps run, one each way, and neither is ever cancelled: aiohttp treats a cancelled
    `receive` as an abnormal closure (1006). A `close` while the other pump waits in
    `receive` hands that pump a CLOSING message, on which it ends."""
    while True:
        message = await source.receive()
        kind = message.type
        if kind is aiohttp.WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif kind is aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        elif kind is aiohttp.WSMsgType.PING:
            await sink.ping(message.data)
        elif kind is aiohttp.WSMsgType.PONG:
            await sink.pong(message.data)
        elif kind is aiohttp.WSMsgType.CLOSING:
            return
        elif kind is aiohttp.WSMsgType.CLOSE:
            reason = message.extra.encode() if isinstance(message.extra, str) else b""
            with contextlib.suppress(Exception):
                await sink.close(code=message.data, message=reason)
            with contextlib.suppress(Exception):
                await source.close(code=sink.close_code or message.data, message=reason)
            return
        else:  # CLOSED, ERROR: the connection went without a close
            code = (
                aiohttp.WSCloseCode.INTERNAL_ERROR
                if kind is aiohttp.WSMsgType.ERROR
                else aiohttp.WSCloseCode.GOING_AWAY
            )
            with contextlib.suppress(Exception):
                await sink.close(code=code)
            return


def _is_websocket_upgrade(request: web.BaseRequest) -> bool:
    upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
    return upgrade and "upgrade" in _connection_tokens(request.headers)


def _hop_by_hop(headers: MultiMapping[str]) -> frozenset[str]:
    """The hop-by-hop headers: the fixed ones and any a Connection header names."""
    return HOP_BY_HOP | _connection_tokens(headers)


def _connection_tokens(headers: MultiMapping[str]) -> frozenset[str]:
    """The names in every Connection header, lowercase."""
    return frozenset(
        token.strip().lower()
        for value in headers.getall("Connection", [])
        for token in value.split(",")
    )


def _guest_url(target: EdgeTarget, request: web.BaseRequest) -> URL:
    """The guest's address with the path and query exactly as the client sent them (a
    path: `_handle` refuses any other request target)."""
    path, _, query = request.raw_path.partition("?")
    return URL.build(
        scheme="http",
        host=target.host,
        port=target.port,
        path=path,
        query_string=query,
        encoded=True,
    )


class _EdgeConnection(RequestHandler):
    """aiohttp's connection, answering what its parser refuses in the API's JSON shape,
    without the request's bytes and without a traceback in the log for each."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            log.error("edge: %s %s failed", request.method, request.path, exc_info=exc)
        if request.writer.output_size > 0:
            raise ConnectionError("part of the response went out; the connection is closed")
        response = _error(status, "internal server error" if status >= 500 else "malformed request")
        response.force_close()
        return response


class _EdgeServer(web.Server):
    """aiohttp's server with a cap on open connections: past it a new one is closed at
    once, so that a flood of clients never takes the file descriptors the API needs."""

    def __init__(self, *args: Any, max_connections: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_connections = max_connections

    def __call__(self) -> RequestHandler:
        return _EdgeConnection(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        if len(self._connections) > self._max_connections:
            transport.close()


def _error(status: int, message: str) -> web.Response:
    return web.Response(body=error_body(message), status=status, content_type="application/json")
