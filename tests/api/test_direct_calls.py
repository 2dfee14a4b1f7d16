"""Handlers called directly (api/direct.py) answer exactly as through Litestar's pipeline.

Two servers with databases of their own, one with direct calls turned off, get the same
requests in the same order; every reply must be the same, byte for byte, once ids and
timestamps (which differ between two databases) are masked.
"""

from __future__ import annotations

import re
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.exceptions import LitestarDeprecationWarning
from litestar.handlers import HTTPRouteHandler

from tests.support import Backend, Key, Server, error, make_key, unique_name
from vers_orchestrator.api.direct import direct_call
from vers_orchestrator.app import create_app
from vers_orchestrator.settings import Settings

R = "/api/v1/repositories"
JSON = {"Content-Type": "application/json"}
UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIMESTAMP = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
Reply = tuple[int, list[tuple[str, str]], bytes]


@pytest.fixture(scope="module")
def twin_servers(
    backend: Backend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[tuple[Server, Key], tuple[Server, Key]]]:
    """(direct calls on, direct calls off): same organization and user names."""
    org, user = unique_name("org"), unique_name("user")
    twins = []
    for direct in ("true", "false"):
        directory = tmp_path_factory.mktemp(f"direct-{direct}")
        twin = Backend.create(backend.kind, directory, DIRECT_HANDLER_CALLS=direct)
        twins.append((twin, Server(twin, directory / "server.log").start()))
    try:
        keys = [make_key(twin, org=org, user=user) for twin, _ in twins]
        yield (twins[0][1], keys[0]), (twins[1][1], keys[1])
    finally:
        for twin, server in twins:
            server.stop()
            twin.drop()


def _requests(names: list[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, httpx options): successes, every kind of bad body, errors of the
    handlers, on routes of each kind that is called directly."""
    first, second, third = names
    unknown = str(uuid.UUID(int=7))
    too_large = b'{"name": "' + b"x" * (1024 * 1024) + b'"}'
    return [
        ("POST", R, {"json": {"name": first}}),
        ("POST", R, {"json": {"name": first}}),
        ("POST", R, {"json": {"name": second, "description": "two"}}),
        ("POST", R, {"json": {"name": "bad/name"}}),
        ("POST", R, {"json": {"name": "x" * 65}}),
        ("POST", R, {"content": b'{"name": ', "headers": {"Content-Type": "application/json"}}),
        ("POST", R, {"content": b"", "headers": {"Content-Type": "application/json"}}),
        (
            "POST",
            R,
            {"content": b'{"name": "a"} x', "headers": {"Content-Type": "application/json"}},
        ),
        ("POST", R, {"json": {"name": 5}}),
        ("POST", R, {"json": {"description": "no name"}}),
        ("POST", R, {"json": ["a", "list"]}),
        ("POST", R, {"json": {"name": third, "unknown": 1}}),
        ("POST", R, {"content": too_large, "headers": JSON}),
        ("GET", R, {}),
        ("GET", f"{R}/{first}", {}),
        ("GET", f"{R}/no-such-repository", {}),
        ("GET", f"{R}/bad%2Fname", {}),
        ("PATCH", f"{R}/{first}/visibility", {"json": {"is_public": "true"}}),
        ("PATCH", f"{R}/{first}/visibility", {"json": {"is_public": "maybe"}}),
        ("GET", "/api/v1/public/repositories", {}),
        ("POST", f"{R}/{first}/tags", {"json": {"tag_name": "t", "commit_id": "not-a-uuid"}}),
        ("POST", f"{R}/{first}/tags", {"json": {"tag_name": "t", "commit_id": unknown}}),
        ("GET", f"{R}/{first}/tags", {}),
        ("POST", "/api/v1/commit_tags", {"json": {"tag_name": "t", "commit_id": unknown}}),
        ("GET", "/api/v1/commit_tags", {}),
        ("DELETE", f"{R}/{second}", {}),
        ("DELETE", f"{R}/{second}", {}),
        ("GET", "/api/v1/whoami", {}),
        ("GET", "/health", {}),
        ("POST", f"/api/v1/vm/{unknown}/exec", {"json": {"command": ["true"]}}),
        ("POST", f"/api/v1/vm/{unknown}/exec", {"json": {"command": "true"}}),
        ("PUT", "/api/v1/vm/not-a-vm/labels", {"json": {"labels": {"a": "b"}}}),
        ("GET", "/api/v1/vm", {}),
    ]


def _replies(server: Server, key: Key, names: list[str]) -> list[Reply]:
    replies = []
    with server.client(key.token) as client:
        for method, path, options in _requests(names):
            response = client.request(method, path, **options)
            replies.append(_masked(response))
        # Idempotent replays of a direct call, and of a body that goes to Litestar.
        replayed = [("twin-1", b'{"name": "%s-x"}' % names[0].encode()), ("twin-2", b'{"name": ')]
        for idempotency_key, body in replayed:
            for _ in range(2):
                response = client.post(
                    R, content=body, headers={**JSON, "X-Idempotency-Key": idempotency_key}
                )
                replies.append(_masked(response))
    return replies


def _masked(response: httpx.Response) -> Reply:
    headers = [
        (name, value)
        for name, value in response.headers.multi_items()
        if name not in ("date", "x-request-id")
    ]
    return (
        response.status_code,
        headers,
        TIMESTAMP.sub(b"<time>", UUID.sub(b"<id>", response.content)),
    )


def test_both_paths_give_the_same_replies(
    twin_servers: tuple[tuple[Server, Key], tuple[Server, Key]],
) -> None:
    (direct, direct_key), (litestar, litestar_key) = twin_servers
    names = [unique_name() for _ in range(3)]
    through_direct = _replies(direct, direct_key, names)
    through_litestar = _replies(litestar, litestar_key, names)
    for request, one, other in zip(
        _requests(names), through_direct, through_litestar, strict=False
    ):
        assert one == other, request[:2]
    assert through_direct[-4:] == through_litestar[-4:]
    assert [status for status, _, _ in through_direct[-4:]] == [201, 201, 400, 400]
    # The cases cover what they mean to: each kind of answer came up.
    statuses = {status for status, _, _ in through_direct}
    assert statuses == {200, 201, 204, 400, 404, 409, 413, 422}


def _handler(name: str, tmp_path: Path) -> HTTPRouteHandler:
    with warnings.catch_warnings():
        # Litestar 2.25 asks for `data: JSONBody[...]` ahead of 3.0; the server, like any
        # program, does not show DeprecationWarnings, and the handlers keep `data: T`.
        warnings.simplefilter("ignore", LitestarDeprecationWarning)
        app = create_app(Settings(data_dir=tmp_path))
    for route in app.app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if handler.handler_name.endswith(f".{name}") or handler.handler_name == name:
                found: HTTPRouteHandler = handler
                return found
    raise AssertionError(f"no handler {name}")


@pytest.mark.parametrize(
    ("handler_name", "direct"),
    [
        ("create_repository", True),
        ("get_repository", True),
        ("exec_vm", True),
        ("list_commits", False),  # query parameters
        ("exec_vm_stream", False),  # returns a stream
        ("create_new_root_vm", False),  # a query parameter
        ("openapi_document", False),  # not JSON of a Struct
    ],
)
def test_which_handlers_are_called_directly(
    handler_name: str, direct: bool, tmp_path: Path
) -> None:
    handler = _handler(handler_name, tmp_path)
    assert (direct_call(handler, litestar_app=_unused) is not None) is direct


async def _unused(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not called")


def _json_body_routes(server: Server, key: Key) -> list[tuple[str, str]]:
    """(method, path) of every route that takes a JSON body, ids filled in."""
    with server.client(key.token) as client:
        document = client.get("/openapi.json").json()
    routes = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                filled = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)
                routes.append((method.upper(), filled))
    return routes


def test_bodies_nested_too_deeply_are_400_on_every_route(
    twin_servers: tuple[tuple[Server, Key], tuple[Server, Key]],
) -> None:
    expected = error("Failed to parse the request body as JSON: nested too deeply")
    for server, key in twin_servers:
        routes = _json_body_routes(server, key)
        assert len(routes) >= 15
        with server.client(key.token) as client:
            for method, path in routes:
                body = b"[" * 1000 + b"]" * 1000
                reply = client.request(method, path, content=body, headers=JSON)
                assert (reply.status_code, reply.json()) == (400, expected), (method, path)


def test_strings_that_are_not_utf8_are_400(
    twin_servers: tuple[tuple[Server, Key], tuple[Server, Key]],
) -> None:
    """Wherever a string the route reads is not UTF-8. (msgspec skips the values of fields a
    route does not know without reading them.)"""
    vm = str(uuid.uuid4())
    bodies = [
        ("POST", R, b'{"name": "\xff"}'),
        ("POST", "/api/v1/commit_tags", b'{"tag_name": "\xff", "commit_id": "x"}'),
        ("POST", f"/api/v1/vm/{vm}/exec", b'{"command": ["\xfe"]}'),
        ("PUT", f"/api/v1/vm/{vm}/files", b'{"path": "/root/\xff", "content_b64": ""}'),
        ("PUT", f"/api/v1/vm/{vm}/labels", b'{"labels": {"a": "\xc3"}}'),
    ]
    expected = error("Failed to parse the request body as JSON: invalid UTF-8 encoded string")
    for server, key in twin_servers:
        with server.client(key.token) as client:
            for method, path, body in bodies:
                reply = client.request(method, path, content=body, headers=JSON)
                assert (reply.status_code, reply.json()) == (400, expected), (method, path)
