"""Hostile HTTP against a live daemon: every answer is a 4xx (or a success), never a 5xx, never a traceback.

A daemon serves on a real port against a simulator. Requests are written as raw bytes on a plain
socket, so anything can be sent: bodies nested 100,000 deep, 5,000-digit numbers, invalid UTF-8,
latin-1 bytes in the ``Authorization`` header, 10 KB paths. Answers the application produced are
JSON; only aiohttp's own parser answers in text (a 400), and then the log says
``daemon.request_refused``. Nothing in the log carries a traceback.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import socket
import string
from collections.abc import AsyncIterator, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from structlog.testing import capture_logs

from orchestrator.daemon.api import MAX_HEADER_BYTES, MAX_JSON_DEPTH, MAX_TARGET_BYTES, create_app
from orchestrator.daemon.manager import RolloutManager
from orchestrator.daemon.server import MAX_HEADERS, MAX_REQUEST_LINE_BYTES, Daemon
from orchestrator.rollouts.journaled import open_store
from orchestrator.settings import CphSettings, DaemonSettings, RolloutSettings, Settings
from orchestrator.simulator import SimulatorServer
from tests.conftest import SimulatorFactory
from tests.e2e_support import fast_profile, start_simulator

CPH_TOKEN = "hostile-cph-token"
DAEMON_TOKEN = "hostile-daemon-token"
SOCKET_TIMEOUT_S = 30.0
"""Guards against a hung connection only; every exchange here ends in milliseconds."""


# -- a raw HTTP/1.1 exchange over a plain socket -------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One HTTP answer as read off the socket."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()

    def json(self) -> Any:
        assert self.content_type == "application/json", (self.status, self.headers, self.body)
        return json.loads(self.body)


def request_bytes(
    method: str,
    target: bytes,
    *,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    authorization: bytes | None = DAEMON_TOKEN.encode(),
) -> bytes:
    """A request with ``Connection: close`` and a correct Content-Length, whatever else it holds."""
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    if authorization is not None:
        lines.append(b"Authorization: Bearer " + authorization)
    lines += [name + b": " + value for name, value in headers or []]
    lines += [b"Connection: close", b"Content-Length: " + str(len(body)).encode()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def exchange(port: int, raw: bytes) -> Answer | None:
    """Send ``raw`` and read the answer until the daemon closes the connection.

    None when the connection was reset: a daemon that refuses a request before reading its body
    closes with bytes unread, and the peer's reset may then discard the answer on the way.
    """
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S) as sock:
        try:
            sock.sendall(raw)
            while chunk := sock.recv(65536):
                received += chunk
        except (ConnectionResetError, BrokenPipeError):
            return None
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 1"):  # an interim answer (100 Continue) precedes the answer
        head, _, body = body.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    assert status_line.startswith("HTTP/1."), received[:200]
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split()[1]), headers, body)


# -- the daemon and its log ----------------------------------------------------------------------


@dataclass
class Logs:
    """What the daemon logged: structlog events and stdlib records (aiohttp's own logger)."""

    events: list[MutableMapping[str, Any]]
    records: list[logging.LogRecord] = field(default_factory=list)

    def named(self, event: str) -> list[MutableMapping[str, Any]]:
        return [entry for entry in self.events if entry["event"] == event]

    def assert_no_traceback(self) -> None:
        for entry in self.events:
            assert "exc_info" not in entry, entry
            assert "exception" not in entry, entry
            assert "Traceback" not in repr(entry), entry
        for record in self.records:
            assert record.exc_info is None, record.getMessage()
            assert record.levelno < logging.ERROR, record.getMessage()


class _Collect(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


@pytest.fixture
def logs() -> Iterator[Logs]:
    """Capture the daemon's structlog events and every stdlib record that reaches the root."""
    records: list[logging.LogRecord] = []
    handler = _Collect(records)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with capture_logs() as events:
            yield Logs(events, records)
    finally:
        root.removeHandler(handler)


@pytest.fixture
async def sim(simulator: SimulatorFactory) -> SimulatorServer:
    """A small simulator with short jobs: a random plan that happens to be valid just runs."""
    profile = fast_profile("none", job_duration="uniform:0.05:0.1")
    return await start_simulator(simulator, phones=20, profile=profile, token=SecretStr(CPH_TOKEN))


def _settings(sim: SimulatorServer) -> Settings:
    return Settings(
        cph=CphSettings(
            endpoint=sim.url, project_id="proj123", auth="token", auth_token=SecretStr(CPH_TOKEN)
        ),
        rollout=RolloutSettings(first_poll_s=0.05, stop_grace_s=0.2),
        daemon=DaemonSettings(token=SecretStr(DAEMON_TOKEN)),
    )


@pytest.fixture
async def port(sim: SimulatorServer, tmp_path: Path, logs: Logs) -> AsyncIterator[int]:
    """A running daemon's port (its log is captured from before it starts)."""
    daemon = Daemon(
        settings=_settings(sim), state_path=tmp_path / "journal.sqlite", host="127.0.0.1", port=0
    )
    await daemon.start()
    try:
        yield int(daemon.url.rsplit(":", 1)[1])
    finally:
        await daemon.stop()


async def _send(port: int, raw: bytes) -> Answer:
    answer = await asyncio.to_thread(exchange, port, raw)
    assert answer is not None, "the connection was reset"
    return answer


# -- one regression test per finding -------------------------------------------------------------


async def test_a_body_nested_100000_deep_is_a_json_400(port: int, logs: Logs) -> None:
    answer = await _send(port, request_bytes("POST", b"/v1/rollouts", body=b"[" * 100_000))
    assert answer.status == 400
    assert "depth" in answer.json()["error"]
    deepest_allowed = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    answer = await _send(port, request_bytes("POST", b"/v1/rollouts", body=deepest_allowed))
    assert answer.json()["error"] == "the body must be a JSON object (a plan)"
    one_too_deep = b"[" + deepest_allowed + b"]"
    answer = await _send(port, request_bytes("POST", b"/v1/rollouts", body=one_too_deep))
    assert "depth" in answer.json()["error"]
    logs.assert_no_traceback()


async def test_a_5000_digit_number_is_a_json_400(port: int, logs: Logs) -> None:
    for digits in (b"9" * 5000, b"-" + b"1" * 5000, b"18446744073709551615"):
        body = (
            b'{"name": "n", "fleet": {"phones": []}, "policy": {"max_attempts": ' + digits + b"}}"
        )
        answer = await _send(port, request_bytes("POST", b"/v1/rollouts", body=body))
        assert answer.status == 400, answer
        assert "number" in answer.json()["error"] or "integer" in answer.json()["error"]
    answer = await _send(port, request_bytes("GET", b"/v1/rollouts/x/phones?offset=" + b"9" * 4000))
    assert answer.status == 400
    assert "offset" in answer.json()["error"]
    logs.assert_no_traceback()


async def test_a_bearer_token_that_is_not_utf8_is_a_json_401(port: int, logs: Logs) -> None:
    token = DAEMON_TOKEN.encode()
    for authorization in (
        "tök".encode("latin-1"),
        token + b"\xe9",
        b"\xff\xfe\xfd",
        "tök".encode(),
        b"",
    ):
        answer = await _send(
            port, request_bytes("GET", b"/v1/rollouts", authorization=authorization)
        )
        assert answer.status == 401, authorization
        assert answer.json() == {"error": "a valid bearer token is required"}
        assert answer.headers["www-authenticate"] == "Bearer"
    for value in (b"Basic " + token, token, b"Bearer", "Bearer\tté".encode("latin-1")):
        raw = request_bytes(
            "GET", b"/v1/rollouts", headers=[(b"Authorization", value)], authorization=None
        )
        assert (await _send(port, raw)).status == 401, value
    assert (await _send(port, request_bytes("GET", b"/v1/rollouts"))).status == 200
    logs.assert_no_traceback()


async def test_paths_and_headers_beyond_the_api_limits_are_json_414_and_431(
    port: int, logs: Logs
) -> None:
    over_the_api_limit = b"/v1/rollouts/" + b"a" * MAX_TARGET_BYTES
    answer = await _send(port, request_bytes("GET", over_the_api_limit))
    assert answer.status == 414
    assert str(MAX_TARGET_BYTES) in answer.json()["error"]
    many_long_headers = [
        (b"X-Pad-%d" % n, b"p" * 1000) for n in range(MAX_HEADER_BYTES // 1000 + 1)
    ]
    answer = await _send(port, request_bytes("GET", b"/healthz", headers=many_long_headers))
    assert answer.status == 431
    assert str(MAX_HEADER_BYTES) in answer.json()["error"]
    assert not logs.named("daemon.request_refused")
    logs.assert_no_traceback()


async def test_a_10kb_path_or_header_is_a_400_logged_without_a_traceback(
    port: int, logs: Logs
) -> None:
    # beyond the HTTP parser's own limits aiohttp answers (400 text) before the application can
    ten_kb_path = b"/v1/rollouts/" + b"a" * 10_000
    assert len(ten_kb_path) > MAX_REQUEST_LINE_BYTES
    too_many = [(b"X-N-%d" % n, b"1") for n in range(MAX_HEADERS + 1)]
    for raw in (
        request_bytes("GET", ten_kb_path),
        request_bytes("GET", b"/healthz", headers=[(b"X-Long", b"v" * 10_000)]),
        request_bytes("GET", b"/healthz", headers=too_many),
    ):
        answer = await _send(port, raw)
        assert answer.status == 400
    logs.assert_no_traceback()
    refused = logs.named("daemon.request_refused")
    assert [entry["error_class"] for entry in refused] == [
        "LineTooLong",
        "LineTooLong",
        "BadHttpMessage",
    ]
    assert all(entry["log_level"] == "warning" for entry in refused)


async def test_an_encoded_or_chunked_body_is_refused_before_it_is_read(
    port: int, logs: Logs
) -> None:
    bomb = gzip.compress(b"[" * 3_000_000)
    for encoding, body in ((b"gzip", b"not gzip"), (b"deflate", b"[" * 300_000), (b"gzip", bomb)):
        headers = [(b"Content-Encoding", encoding)]
        answer = await _send(
            port, request_bytes("POST", b"/v1/rollouts", body=body, headers=headers)
        )
        assert answer.status == 415, encoding
        assert "Content-Encoding" in answer.json()["error"]
    chunked = (
        b"POST /v1/rollouts HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Authorization: Bearer " + DAEMON_TOKEN.encode() + b"\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    )
    answer = await _send(port, chunked)
    assert answer.status == 411
    assert "Content-Length" in answer.json()["error"]
    logs.assert_no_traceback()


async def test_an_unexpected_error_is_a_json_500_logged_once_without_its_text(
    sim: SimulatorServer, tmp_path: Path, logs: Logs
) -> None:
    store = await open_store(tmp_path / "journal.sqlite")
    app = create_app(RolloutManager(store=store, settings=_settings(sim)), token=None)

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("secret-looking detail sk-123")

    app.router.add_get("/v1/broken/{part}", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        answer = await _send(runner.addresses[0][1], request_bytes("GET", b"/v1/broken/x"))
    finally:
        await runner.cleanup()
        await store.close()
    assert answer.status == 500
    assert answer.json() == {"error": "internal error"}
    failed = logs.named("daemon.request_failed")
    assert failed == [
        {
            "event": "daemon.request_failed",
            "log_level": "error",
            "method": "GET",
            "route": "/v1/broken/{part}",
            "error_class": "RuntimeError",
        }
    ]
    assert "sk-123" not in repr(logs.events)
    logs.assert_no_traceback()


# -- anything at all -----------------------------------------------------------------------------

TOKEN_CHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
plan_like = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values | st.text(alphabet="ab-_.19", min_size=1, max_size=70),
        "name": json_values,
        "fleet": st.fixed_dictionaries(
            {}, optional={"phones": st.lists(st.text(max_size=40), max_size=3) | json_values}
        )
        | json_values,
        "properties": st.dictionaries(st.text(max_size=20), json_values, max_size=3),
        "policy": st.dictionaries(
            st.sampled_from(["batch_size", "max_attempts", "waves", "bake_s", "job_timeout_s"]),
            json_values,
            max_size=3,
        ),
    },
)


def _nested(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


bodies = st.one_of(
    st.just(b""),
    json_values.map(lambda v: json.dumps(v).encode()),
    plan_like.map(lambda v: json.dumps(v).encode()),
    st.tuples(st.integers(1, 150_000), st.sampled_from(["array", "object"])).map(
        lambda t: _nested(*t)
    ),
    st.integers(1, 10_000).map(lambda n: b'{"name": ' + b"7" * n + b"}"),
    st.binary(max_size=200),
    st.text(max_size=50).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
path_parts = st.one_of(
    st.text(max_size=30).map(lambda t: quote(t.encode("utf-8", "surrogatepass"), safe="")),
    st.text(alphabet="%0123456789ABCDEFzZ/.", max_size=20),
    st.integers(0, 12).map(lambda n: "a" * 2**n),
)
paths = st.one_of(
    st.sampled_from(["/healthz", "/readyz", "/metrics", "/v1/rollouts", "/", "/v1/"]),
    st.tuples(
        path_parts, st.sampled_from(["", "/phones", "/pause", "/resume", "/cancel", "/x/y"])
    ).map(lambda t: f"/v1/rollouts/{t[0]}{t[1]}"),
    st.lists(path_parts, max_size=4).map(lambda parts: "/" + "/".join(parts)),
)
query_values = st.one_of(
    st.integers().map(str),
    st.integers(0, 6000).map(lambda n: "9" * n),
    st.text(max_size=20).map(lambda t: quote(t.encode("utf-8", "surrogatepass"), safe="")),
    st.text(alphabet="%0123456789ABCDEF&=+", max_size=12),
)
queries = st.dictionaries(
    st.sampled_from(["offset", "limit", "state", "error_code", "x"]), query_values, max_size=3
).map(lambda q: "&".join(f"{k}={v}" for k, v in q.items()))
header_bytes = st.binary(max_size=40).map(
    lambda b: bytes(c for c in b if c == 9 or 32 <= c < 127 or c >= 128)
)
authorizations = st.one_of(
    st.none(),
    st.just(DAEMON_TOKEN.encode()),
    header_bytes,
    st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.text(max_size=20).map(lambda t: t.encode("latin-1", "replace")),
)
extra_headers = st.lists(
    st.tuples(st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=20).map(str.encode), header_bytes)
    | st.sampled_from(
        [
            (b"Content-Type", b"application/json; charset=nope"),
            (b"Content-Type", b"text/plain"),
            (b"Content-Encoding", b"gzip"),
            (b"Content-Encoding", b"deflate"),
            (b"Content-Encoding", b"zstd"),
            (b"Expect", b"100-continue"),
            (b"Authorization", b"Bearer \xff"),
            (b"X-Long", b"h" * 9000),
        ]
    ),
    max_size=4,
)


@dataclass(frozen=True, repr=False)
class Hostile:
    """One request made of random parts."""

    method: str
    target: bytes
    body: bytes
    headers: list[tuple[bytes, bytes]]
    authorization: bytes | None

    def __repr__(self) -> str:
        def short(data: bytes) -> str:
            return repr(data) if len(data) <= 200 else f"{data[:100]!r}…({len(data)} bytes)"

        headers = [(name, short(value)) for name, value in self.headers]
        return (
            f"Hostile({self.method} {short(self.target)} headers={headers}"
            f" authorization={short(self.authorization or b'')} body={short(self.body)})"
        )

    def raw(self) -> bytes:
        return request_bytes(
            self.method,
            self.target,
            body=self.body,
            headers=self.headers,
            authorization=self.authorization,
        )


anything = st.builds(
    Hostile,
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    target=st.tuples(paths, queries).map(
        lambda t: (t[0] + ("?" + t[1] if t[1] else "")).encode("ascii")
    ),
    body=bodies,
    headers=extra_headers,
    authorization=authorizations,
)
submits = st.builds(
    Hostile,
    method=st.just("POST"),
    target=st.just(b"/v1/rollouts"),
    body=bodies,
    headers=extra_headers,
    authorization=st.just(DAEMON_TOKEN.encode()),
)
"""Bodies that get past the token check, to the JSON parser and the plan's validation."""
reads = st.builds(
    Hostile,
    method=st.sampled_from(["GET", "POST"]),
    target=st.tuples(paths, queries).map(
        lambda t: (t[0] + ("?" + t[1] if t[1] else "")).encode("ascii")
    ),
    body=st.just(b""),
    headers=st.just([]),
    authorization=st.just(DAEMON_TOKEN.encode()),
)
"""Paths and query strings with the token, to the routes and their parameters."""
hostile_requests = st.one_of(anything, submits, reads)


async def test_random_hostile_requests_get_no_5xx_and_app_answers_are_json(
    port: int, logs: Logs
) -> None:
    app_answers: list[int] = []

    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(request=hostile_requests)
    def throw(request: Hostile) -> None:
        refused_before = len(logs.named("daemon.request_refused"))
        answer = exchange(port, request.raw())
        refused = len(logs.named("daemon.request_refused")) > refused_before
        if answer is None:  # reset: only after aiohttp's parser refused it, with the body unread
            assert refused, request
        elif answer.content_type == "application/json":
            answer.json()
            app_answers.append(answer.status)
        elif answer.status == 200 and request.target.startswith(b"/metrics"):
            assert answer.content_type == "text/plain"  # Prometheus exposition format
        else:  # only aiohttp's parser answers otherwise, and it says so in the log
            assert answer.status == 400, (request, answer)
            assert refused, (request, answer)
        assert answer is None or answer.status < 500, (request, answer)
        logs.assert_no_traceback()

    await asyncio.to_thread(throw)
    assert len(app_answers) > 50, "most random requests should reach the application"
    print(
        "STATS",
        sorted(__import__("collections").Counter(app_answers).items()),
        len(logs.named("daemon.request_refused")),
    )
