"""What a hostile or broken HTTP client gets before any route runs: slow or silent
connections, oversized heads, bodies announced larger than a route takes, unparsable
requests, and paths whose encoded slashes or trailing slashes must not reach a route.

Raw sockets where an HTTP library would refuse to send the input.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.factories import make_commit
from tests.support import Backend, Key, Server, error, make_key, unique_name
from vers_orchestrator.settings import Settings

TOO_LARGE = "request header fields are too large (limit 65536 bytes)"
VALIDATE = b"POST /api/v1/keys/validate HTTP/1.1\r\nHost: x\r\n"


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with 1 s head and body timeouts (the defaults, 10 s and 30 s, would make
    these tests slow) and the default head limit."""
    directory = tmp_path_factory.mktemp("quick")
    backend = Backend.create(
        "sqlite", directory, HEADER_TIMEOUT_SECONDS="1", BODY_TIMEOUT_SECONDS="1"
    )
    running = Server(backend, directory / "server.log").start()
    yield running
    running.stop()
    backend.drop()


@pytest.fixture(scope="module")
def quick_key(quick: Server) -> Key:
    return make_key(quick.backend)


def connect(server: Server) -> socket.socket:
    address = urlsplit(server.base_url)
    assert address.hostname is not None
    assert address.port is not None
    return socket.create_connection((address.hostname, address.port), timeout=15)


def read_until_closed(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    reply = b""
    try:
        while chunk := connection.recv(65536):
            reply += chunk
    except ConnectionResetError:
        pass  # closed with our unread bytes in its buffer: what it sent before still counts
    return reply


def read_response(connection: socket.socket) -> bytes:
    """One response, by its Content-Length, leaving the connection open."""
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += connection.recv(65536)
    _, headers, _ = parse(reply.partition(b"\r\n\r\n")[0] + b"\r\n\r\n")
    size = reply.index(b"\r\n\r\n") + 4 + int(headers["content-length"])
    while len(reply) < size:
        reply += connection.recv(65536)
    return reply


def parse(reply: bytes) -> tuple[int, dict[str, str], object]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body) if body else None


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert (
        settings.header_timeout_seconds,
        settings.max_header_bytes,
        settings.body_timeout_seconds,
    ) == (10.0, 65536, 30.0)


class TestHeadTimeout:
    def test_a_head_sent_a_byte_at_a_time_is_cut_off_with_408(self, quick: Server) -> None:
        with connect(quick) as connection:
            started = time.monotonic()
            connection.sendall(b"GET /api/v1/whoami HTTP/1.1\r\n")
            for byte in b"Host: a-slow-client.example\r\n":
                try:
                    connection.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    break
                time.sleep(0.2)
            reply = read_until_closed(connection)
            elapsed = time.monotonic() - started
        status, headers, body = parse(reply)
        assert (status, headers["connection"]) == (408, "close")
        assert body == error("request header not received within 1 s")
        # The whole trickle would take 6 s; the server hung up at its 1 s deadline.
        assert elapsed < 5

    def test_a_silent_connection_is_closed_without_a_reply(self, quick: Server) -> None:
        with connect(quick) as connection:
            assert read_until_closed(connection) == b""

    def test_an_idle_keep_alive_connection_is_closed_after_its_response(
        self, quick: Server
    ) -> None:
        with connect(quick) as connection:
            connection.sendall(b"GET /api/v1/nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(connection).startswith(b"HTTP/1.1 404 ")
            assert read_until_closed(connection) == b""

    def test_part_of_a_next_head_gets_408_not_a_silent_close(self, quick: Server) -> None:
        with connect(quick) as connection:
            connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /hea")
            assert read_response(connection).startswith(b"HTTP/1.1 200 ")
            status, _, body = parse(read_until_closed(connection))
        assert (status, body) == (408, error("request header not received within 1 s"))

    def test_keep_alive_serves_requests_that_come_in_time(
        self, quick: Server, quick_key: Key
    ) -> None:
        request = (
            b"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + quick_key.token.encode() + b"\r\n\r\n"
        )
        with connect(quick) as connection:
            for _ in range(3):
                connection.sendall(request)
                assert read_response(connection).startswith(b"HTTP/1.1 200 ")
                time.sleep(0.5)


class TestBodyTimeout:
    def _head(self, key: Key, extra: bytes) -> bytes:
        return (
            b"POST /api/v1/repositories HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nAuthorization: Bearer "
            + key.token.encode()
            + b"\r\n"
            + extra
            + b"\r\n"
        )

    @pytest.mark.parametrize(
        ("extra", "sent"),
        [
            (b"Content-Length: 40\r\n", b"{"),
            (b"Content-Length: 12\r\nExpect: 100-continue\r\n", b""),
            (b"Transfer-Encoding: chunked\r\n", b"ffffffffffffffff\r\n{"),
        ],
    )
    def test_a_body_that_stops_coming_is_408(
        self, quick: Server, quick_key: Key, extra: bytes, sent: bytes
    ) -> None:
        with connect(quick) as connection:
            connection.sendall(self._head(quick_key, extra) + sent)
            reply = read_until_closed(connection)
        reply = reply.removeprefix(b"HTTP/1.1 100 Continue\r\n\r\n")
        status, headers, body = parse(reply)
        assert (status, headers["connection"], body) == (
            408,
            "close",
            error("request body stalled: no data for 1 s"),
        )
        with quick.client(quick_key.token) as client:
            assert client.get("/api/v1/repositories").json()["repositories"] == []

    def test_a_slow_body_that_keeps_coming_is_served(self, quick: Server, quick_key: Key) -> None:
        name = unique_name()
        body = b'{"name": "%s"}' % name.encode()
        with connect(quick) as connection:
            connection.sendall(self._head(quick_key, b"Content-Length: %d\r\n" % len(body)))
            for offset in range(0, len(body), 8):  # 8 bytes every 0.4 s: slower than 1 s total
                connection.sendall(body[offset : offset + 8])
                time.sleep(0.4)
            status, _, answer = parse(read_until_closed(connection))
        assert (status, answer) == (201, {"repo_id": answer["repo_id"], "name": name})  # type: ignore[index]


class TestHeadSize:
    def test_a_head_within_the_limit_is_served(self, quick: Server) -> None:
        with connect(quick) as connection:
            connection.sendall(
                b"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"X-Padding: " + b"a" * 60_000 + b"\r\n\r\n"
            )
            status, _, body = parse(read_until_closed(connection))
        assert (status, body) == (401, error("Missing or invalid Authorization header"))

    @pytest.mark.parametrize("size", [70_000, 1 << 20])
    def test_a_larger_header_is_431(self, quick: Server, size: int) -> None:
        with connect(quick) as connection:
            connection.sendall(
                b"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
            )
            status, headers, body = parse(read_until_closed(connection))
        assert (status, headers["connection"], body) == (431, "close", error(TOO_LARGE))

    def test_an_oversized_trailer_is_431(self, quick: Server) -> None:
        with connect(quick) as connection:
            connection.sendall(
                b"POST /api/v1/keys/validate HTTP/1.1\r\nHost: x\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-T: " + b"a" * 100_000 + b"\r\n\r\n"
            )
            status, _, body = parse(read_until_closed(connection))
        assert (status, body) == (431, error(TOO_LARGE))

    def test_many_small_headers_add_up(self, quick: Server) -> None:
        many = b"".join(b"X-H%d: %s\r\n" % (n, b"v" * 100) for n in range(1000))
        with connect(quick) as connection:
            connection.sendall(b"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
            status, _, body = parse(read_until_closed(connection))
        assert (status, body) == (431, error(TOO_LARGE))

    def test_an_8_mib_authorization_header_is_refused_before_it_all_came(
        self, quick: Server
    ) -> None:
        sent = 0
        value = b"Bearer " + b"a" * (8 << 20)
        with connect(quick) as connection:
            connection.sendall(b"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: ")
            try:
                for offset in range(0, len(value), 65536):
                    connection.sendall(value[offset : offset + 65536])
                    sent += 65536
            except (BrokenPipeError, ConnectionResetError):
                pass
            status, _, body = parse(read_until_closed(connection))
        assert (status, body) == (431, error(TOO_LARGE))
        assert sent < len(value)  # the server hung up instead of reading all of it


class TestParseErrors:
    @pytest.mark.parametrize(
        "request_bytes",
        [
            b"GARBAGE\r\n\r\n",
            b"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",
            b"GET /api/v1/whoami HTTP/1.1\r\nBad Header\r\n\r\n",
            # Rejected after the head, while a handler already runs for the request.
            VALIDATE + b"Transfer-Encoding: identity\r\n\r\n",
            VALIDATE + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        ],
    )
    def test_an_unparsable_request_is_a_json_400(self, quick: Server, request_bytes: bytes) -> None:
        with connect(quick) as connection:
            connection.sendall(request_bytes)
            status, headers, body = parse(read_until_closed(connection))
        assert (status, headers["connection"], body) == (
            400,
            "close",
            error("invalid HTTP request"),
        )


class TestDeclaredBodyLength:
    HUGE = b"1000000000000000"

    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("POST", "/api/v1/repositories"),
            ("POST", "/api/v1/vm/new_root"),
            ("PUT", f"/api/v1/vm/{uuid.uuid4()}/files"),  # the larger limit of file bodies
            ("POST", f"/api/v1/vm/{uuid.uuid4()}/exec"),
            ("GET", "/api/v1/whoami"),
        ],
    )
    def test_a_body_declared_past_the_limit_is_413_at_once(
        self, quick: Server, quick_key: Key, method: str, path: str
    ) -> None:
        with connect(quick) as connection:
            connection.sendall(
                f"{method} {path} HTTP/1.1\r\nHost: x\r\n".encode()
                + b"Authorization: Bearer "
                + quick_key.token.encode()
                + b"\r\nContent-Type: application/json\r\nContent-Length: "
                + self.HUGE
                + b"\r\n\r\n"
            )
            # No body follows: the reply comes from the header alone, and the connection
            # closes as the body was never read.
            status, headers, body = parse(read_until_closed(connection))
        assert (status, headers["connection"], body) == (
            413,
            "close",
            error("request body is too large"),
        )

    def test_a_refusal_before_the_body_closes_the_connection(self, quick: Server) -> None:
        with connect(quick) as connection:
            connection.sendall(
                b"POST /api/v1/repositories HTTP/1.1\r\nHost: x\r\nContent-Length: "
                + self.HUGE
                + b"\r\n\r\n"
            )
            connection.settimeout(0.5)  # well under the head timeout: closed, not timed out
            status, _, body = parse(read_until_closed(connection))
        assert (status, body) == (401, error("Missing or invalid Authorization header"))


class TestEncodedSlashes:
    """A segment is one name after decoding: `%2F` never splits it."""

    @pytest.fixture
    def tagged(self, server: Server, backend: Backend, key: Key) -> tuple[str, str]:
        repo, tag = unique_name(), "v2"
        commit = make_commit(backend, key)
        with server.client(key.token) as client:
            assert client.post("/api/v1/repositories", json={"name": repo}).status_code == 201
            created = client.post(
                f"/api/v1/repositories/{repo}/tags",
                json={"tag_name": tag, "commit_id": commit.commit_id},
            )
            assert created.status_code == 201
        return repo, tag

    def test_delete_through_an_encoded_slash_finds_no_repository(
        self, server: Server, key: Key, tagged: tuple[str, str]
    ) -> None:
        repo, tag = tagged
        with server.client(key.token) as client:
            for spelling in ("%2F", "%2f"):
                deleted = client.delete(f"/api/v1/repositories/{repo}{spelling}tags{spelling}{tag}")
                assert (deleted.status_code, deleted.json()) == (
                    404,
                    error("repository not found"),
                )
            assert client.get(f"/api/v1/repositories/{repo}/tags/{tag}").status_code == 200

    def test_patch_through_an_encoded_slash_reaches_no_patch_route(
        self, server: Server, key: Key, tagged: tuple[str, str]
    ) -> None:
        repo, _ = tagged
        with server.client(key.token) as client:
            patched = client.patch(
                f"/api/v1/repositories/{repo}%2Fvisibility", json={"is_public": True}
            )
            # `/repositories/{repo_name}` has GET and DELETE only, as on the hosted service.
            assert (patched.status_code, patched.json()) == (
                405,
                error("method PATCH not allowed here"),
            )
            assert client.get(f"/api/v1/repositories/{repo}").json()["is_public"] is False

    def test_public_route_with_an_encoded_slash_is_no_route(self, server: Server) -> None:
        with server.client() as client:
            response = client.get("/api/v1/public/repositories/org-a%2Fr1")
        assert (response.status_code, response.json()) == (
            404,
            error("no route for GET /api/v1/public/repositories/org-a%2Fr1"),
        )


class TestTrailingSlashes:
    def test_a_trailing_slash_is_another_path(
        self, server: Server, key: Key, tmp_path: Path
    ) -> None:
        repo = unique_name()
        with server.client(key.token) as client:
            assert client.post("/api/v1/repositories", json={"name": repo}).status_code == 201
            deleted = client.delete(f"/api/v1/repositories/{repo}/")
            assert (deleted.status_code, deleted.json()) == (
                404,
                error(f"no route for DELETE /api/v1/repositories/{repo}/"),
            )
            assert client.get(f"/api/v1/repositories/{repo}").status_code == 200
            doubled = client.get("/api/v1//repositories")
            assert (doubled.status_code, doubled.json()) == (
                404,
                error("no route for GET /api/v1//repositories"),
            )
