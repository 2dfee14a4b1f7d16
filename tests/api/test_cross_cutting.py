"""What every route shares: error bodies, request ids, idempotent replays, access log."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, TypeVar

import httpx
import pytest

from tests.factories import in_database
from tests.support import Backend, Key, Server, error, make_key, unique_name
from vers_orchestrator.services import idempotency
from vers_orchestrator.store.database import Database

T = TypeVar("T")

PATH = "/api/v1/repositories"


class TestFrameworkErrorsAreJson:
    def test_unknown_path_is_404(self, server: Server) -> None:
        with server.client() as client:
            response = client.get("/api/v1/no-such-thing")
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/json"
        assert response.json() == error("no route for GET /api/v1/no-such-thing")

    def test_an_empty_body_where_one_is_needed_is_400(self, server: Server, key: Key) -> None:
        headers = {"Content-Type": "application/json"}
        with server.client(key.token, **headers) as client:
            for body in (b"", b" "):
                response = client.post(PATH, content=body)
                assert (response.status_code, response.json()) == (
                    400,
                    error("Failed to parse the request body as JSON: input data was truncated"),
                )

    def test_wrong_method_is_405(self, server: Server, key: Key) -> None:
        with server.client(key.token) as client:
            response = client.put(PATH, json={"name": "x"})
        assert response.status_code == 405
        assert response.json() == error("method PUT not allowed here")


class TestRequestId:
    def test_generated_when_absent(self, server: Server) -> None:
        with server.client() as client:
            first = client.get("/nope").headers["x-request-id"]
            second = client.get("/nope").headers["x-request-id"]
        assert uuid.UUID(first).version == 4
        assert first != second

    @pytest.mark.parametrize("header", ["X-Request-Id", "X-Operation-Id"])
    def test_caller_value_is_echoed(self, server: Server, key: Key, header: str) -> None:
        with server.client(key.token, **{header: "trace-abc.123"}) as client:
            response = client.post(PATH, json={"name": unique_name()})
        assert response.status_code == 201
        assert response.headers["x-request-id"] == "trace-abc.123"

    @pytest.mark.parametrize("value", ["x" * 257, "has space", "tab\tinside"])
    def test_unusable_value_is_replaced(self, server: Server, value: str) -> None:
        with server.client(**{"X-Request-Id": value}) as client:
            returned = client.get("/nope").headers["x-request-id"]
        assert returned != value
        assert uuid.UUID(returned).version == 4

    def test_error_responses_carry_it_too(self, server: Server) -> None:
        with server.client(**{"X-Request-Id": "req-401"}) as client:
            response = client.post(PATH, json={"name": "x"})
        assert response.status_code == 401
        assert response.headers["x-request-id"] == "req-401"


def post_with_key(server: Server, key: Key, idempotency_key: str, body: object) -> httpx.Response:
    with server.client(key.token, **{"X-Idempotency-Key": idempotency_key}) as client:
        return client.post(PATH, json=body)


class TestIdempotentReplay:
    def test_retry_replays_the_first_response(self, server: Server, key: Key) -> None:
        idempotency_key = str(uuid.uuid4())
        body = {"name": unique_name()}
        first = post_with_key(server, key, idempotency_key, body)
        retry = post_with_key(server, key, idempotency_key, body)
        assert first.status_code == 201
        assert "idempotent-replayed" not in first.headers
        assert retry.status_code == 201
        assert retry.headers["idempotent-replayed"] == "true"
        assert retry.headers["content-type"] == "application/json"
        assert retry.json() == first.json()

    def test_replayed_errors_keep_their_status(self, server: Server, key: Key) -> None:
        name = unique_name()
        assert post_with_key(server, key, str(uuid.uuid4()), {"name": name}).status_code == 201
        idempotency_key = str(uuid.uuid4())
        first = post_with_key(server, key, idempotency_key, {"name": name})
        retry = post_with_key(server, key, idempotency_key, {"name": name})
        assert (first.status_code, retry.status_code) == (409, 409)
        assert retry.json() == error("repository already exists")
        assert retry.headers["idempotent-replayed"] == "true"

    def test_same_key_with_another_body_is_422(self, server: Server, key: Key) -> None:
        idempotency_key = str(uuid.uuid4())
        assert (
            post_with_key(server, key, idempotency_key, {"name": unique_name()}).status_code == 201
        )
        response = post_with_key(server, key, idempotency_key, {"name": unique_name()})
        assert response.status_code == 422
        assert response.json() == error(
            "X-Idempotency-Key was already used for a different request"
        )

    def test_keys_are_scoped_per_api_key(self, server: Server, backend: Backend, key: Key) -> None:
        colleague = make_key(backend, org=key.org_name)
        idempotency_key = str(uuid.uuid4())
        first = post_with_key(server, key, idempotency_key, {"name": unique_name()})
        other = post_with_key(server, colleague, idempotency_key, {"name": unique_name()})
        assert (first.status_code, other.status_code) == (201, 201)
        assert "idempotent-replayed" not in other.headers

    def test_concurrent_duplicates_run_once(self, server: Server, key: Key) -> None:
        idempotency_key = str(uuid.uuid4())
        body = {"name": unique_name()}
        with ThreadPoolExecutor(max_workers=8) as pool:
            responses = list(
                pool.map(lambda _: post_with_key(server, key, idempotency_key, body), range(8))
            )
        # The duplicates that came while the first ran waited for it and replay its answer.
        assert [r.status_code for r in responses] == [201] * 8
        assert len({r.json()["repo_id"] for r in responses}) == 1
        replayed = [r.headers.get("idempotent-replayed") for r in responses]
        assert sorted(replayed, key=str) == [None] + ["true"] * 7

    def test_overlong_key_is_400(self, server: Server, key: Key) -> None:
        response = post_with_key(server, key, "k" * 256, {"name": unique_name()})
        assert response.status_code == 400
        assert response.json() == error(
            "X-Idempotency-Key must be 1-255 printable ASCII characters"
        )

    def test_unauthenticated_requests_store_nothing(self, server: Server, key: Key) -> None:
        idempotency_key = str(uuid.uuid4())
        body = {"name": unique_name()}
        with server.client(**{"X-Idempotency-Key": idempotency_key}) as client:
            assert client.post(PATH, json=body).status_code == 401
        assert post_with_key(server, key, idempotency_key, body).status_code == 201


@pytest.fixture(scope="module")
def patient(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose retries wait for the first request up to 1 s (25 s by default)."""
    directory = tmp_path_factory.mktemp("patient")
    waiting = Backend.create(backend.kind, directory, IDEMPOTENCY_WAIT_SECONDS="1")
    running = Server(waiting, directory / "server.log").start()
    yield running
    running.stop()
    waiting.drop()


class TestRetryWhileTheFirstRuns:
    """A retry of a request still running waits for it (here up to 1 s), then replays its
    answer, runs itself if the first gave the key up, or answers 409 when the wait ends.
    The first request is a claim written in the server's database, held as long as the
    test likes."""

    def _claim(self, server: Server, key: Key, idempotency_key: str, body: bytes) -> None:
        request_hash = idempotency.fingerprint("POST", PATH, b"", body)
        claimed = self._in_database(
            server,
            lambda db: idempotency.begin(
                db, key.api_key_id, idempotency_key, request_hash, timedelta(hours=1)
            ),
        )
        assert claimed is None

    def _in_database(self, server: Server, work: Callable[[Database], Awaitable[T]]) -> T:
        return in_database(server.backend, work)

    def _retry(self, server: Server, key: Key, idempotency_key: str, body: bytes) -> Any:
        headers = {"X-Idempotency-Key": idempotency_key, "Content-Type": "application/json"}
        with server.client(key.token, **headers) as client:
            started = time.monotonic()
            response = client.post(PATH, content=body)
        return response, time.monotonic() - started

    def test_the_wait_ends_in_409(self, patient: Server) -> None:
        key = make_key(patient.backend)
        idempotency_key, body = str(uuid.uuid4()), b'{"name": "%s"}' % unique_name().encode()
        self._claim(patient, key, idempotency_key, body)
        response, waited = self._retry(patient, key, idempotency_key, body)
        assert (response.status_code, response.json()) == (
            409,
            error("a request with this X-Idempotency-Key is still in progress"),
        )
        assert waited >= 0.9

    def test_an_answer_that_comes_meanwhile_is_replayed(self, patient: Server) -> None:
        key = make_key(patient.backend)
        idempotency_key, body = str(uuid.uuid4()), b'{"name": "%s"}' % unique_name().encode()
        self._claim(patient, key, idempotency_key, body)

        def answer_later() -> None:
            time.sleep(0.3)
            stored = idempotency.StoredResponse(201, "application/json", b'{"first": true}')
            self._in_database(
                patient, lambda db: idempotency.finish(db, key.api_key_id, idempotency_key, stored)
            )

        with ThreadPoolExecutor(max_workers=1) as pool:
            answered = pool.submit(answer_later)
            response, _ = self._retry(patient, key, idempotency_key, body)
            answered.result()
        assert (response.status_code, response.json()) == (201, {"first": True})
        assert response.headers["idempotent-replayed"] == "true"

    def test_a_key_the_first_gave_up_runs_the_retry(self, patient: Server) -> None:
        key = make_key(patient.backend)
        idempotency_key, body = str(uuid.uuid4()), b'{"name": "%s"}' % unique_name().encode()
        self._claim(patient, key, idempotency_key, body)

        def give_up_later() -> None:
            time.sleep(0.3)
            self._in_database(
                patient, lambda db: idempotency.abandon(db, key.api_key_id, idempotency_key)
            )

        with ThreadPoolExecutor(max_workers=1) as pool:
            given_up = pool.submit(give_up_later)
            response, _ = self._retry(patient, key, idempotency_key, body)
            given_up.result()
        assert response.status_code == 201
        assert "idempotent-replayed" not in response.headers


def log_lines_of(server: Server, request_id: str) -> list[str]:
    """The log lines of one request; the line is written just after the response is sent."""
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in server.log_text().splitlines() if request_id in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.01)


class TestAccessLog:
    def test_one_line_per_request_without_the_key(self, server: Server, key: Key) -> None:
        request_id = f"log-{uuid.uuid4()}"
        with server.client(key.token, **{"X-Request-Id": request_id}) as client:
            assert client.post(PATH, json={"name": unique_name()}).status_code == 201
        lines = log_lines_of(server, request_id)
        assert len(lines) == 1
        assert re.search(
            rf"request_id={request_id} method=POST path=/api/v1/repositories status=201"
            rf" duration_ms=\d+\.\d\d key_id={key.api_key_id}$",
            lines[0],
        )
        assert key.token[36:] not in server.log_text()

    def test_unauthenticated_lines_have_no_key_id(self, server: Server) -> None:
        request_id = f"log-{uuid.uuid4()}"
        with server.client(**{"X-Request-Id": request_id}) as client:
            client.get("/nope")
        (line,) = log_lines_of(server, request_id)
        assert line.endswith(
            f"request_id={request_id} method=GET path=/nope status=404"
            f" duration_ms={line.split('duration_ms=')[1].split()[0]} key_id=-"
        )

    def test_a_path_cannot_write_lines_of_its_own(self, server: Server) -> None:
        request_id = f"log-{uuid.uuid4()}"
        marker = f"forged-{uuid.uuid4()}"
        with server.client(**{"X-Request-Id": request_id}) as client:
            client.get(f"/api/v1/repositories/x%0A{marker}%0D%00%20y%5C")
        (line,) = log_lines_of(server, request_id)
        assert f"path=/api/v1/repositories/x\\x0a{marker}\\x0d\\x00\\x20y\\x5c status=" in line
        assert [text for text in server.log_text().splitlines() if marker in text] == [line]


class TestIntegerQueryParameters:
    """Only an optional minus and digits, as the hosted service (serde) reads them."""

    @pytest.mark.parametrize(
        ("value", "reason"),
        [
            ("1e2", "invalid digit found in string"),
            ("1.0", "invalid digit found in string"),
            ("null", "invalid digit found in string"),
            ("0x10", "invalid digit found in string"),
            ("+2", "invalid digit found in string"),
            ("", "cannot parse integer from empty string"),
        ],
    )
    def test_anything_else_is_400_on_every_route(
        self, server: Server, key: Key, value: str, reason: str
    ) -> None:
        vm = str(uuid.uuid4())
        routes = [
            ("/api/v1/commits", "limit"),
            ("/api/v1/commits", "offset"),
            ("/api/v1/commits/public", "limit"),
            (f"/api/v1/vm/{vm}/logs", "offset"),
            (f"/api/v1/vm/{vm}/logs", "max_entries"),
        ]
        with server.client(key.token) as client:
            for path, name in routes:
                reply = client.get(path, params={name: value})
                expected = error(f"Failed to deserialize query string: {name}: {reason}")
                assert (reply.status_code, reply.json()) == (400, expected), (path, name)

    def test_digits_are_read(self, server: Server, key: Key) -> None:
        with server.client(key.token) as client:
            signed = client.get("/api/v1/commits", params={"limit": "2", "offset": "-0"})
            unknown_vm = client.get(f"/api/v1/vm/{uuid.uuid4()}/logs", params={"offset": "3"})
        assert (signed.status_code, signed.json()["limit"]) == (200, 2)
        assert unknown_vm.status_code == 404
