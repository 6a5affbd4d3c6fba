"""HttpGateway against real HTTP servers on 127.0.0.1, the gateway service, and open_gateway."""

from __future__ import annotations

import http.client
import json
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import pytest
from werkzeug.serving import make_server

from corepay.errors import (
    BackendTimeoutError,
    ConfigurationError,
    CorepayError,
    DecodeError,
    RejectedError,
    UnavailableError,
)
from corepay.gateway import (
    GatewayResponse,
    PaymentGateway,
    SimulatedGateway,
    open_gateway,
    uniforms,
)
from corepay.http_gateway import CircuitBreaker, CircuitState, HttpGateway
from corepay.models import Transaction
from corepay.services.gateway_api import create_gateway_app
from corepay.wire import parse_transaction

pytestmark = pytest.mark.timeout(5)

APPROVED = b'{"approved":true,"code":"APPROVED"}'
SECRET = "s3cr3t-t0ken-9f2c"


def _request(n: int, amount: str = "42.50") -> dict[str, Any]:
    return {
        "transaction_id": f"tx-gw-{n:05d}",
        "customer_id": "cust-00001",
        "amount": amount,
        "currency": "EUR",
        "merchant_id": "m-de-001",
        "merchant_category": "5411",
        "country": "DE",
        "channel": "pos",
        "timestamp": "2026-11-24T09:30:00+01:00",
    }


def _txn(n: int = 1, amount: str = "42.50") -> Transaction:
    return parse_transaction(_request(n, amount))


class Scripted:
    """A raw gateway endpoint: answers the i-th request with ``script[i]`` (the last one repeats),
    after ``delay`` seconds, and records every request it receives."""

    def __init__(self, *script: tuple[int, bytes], delay: float = 0.0) -> None:
        self.script = script
        self.delay = delay
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        headers = {
            k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")
        }
        with self._lock:
            self.requests.append((headers, body))
            status, answer = self.script[min(len(self.requests), len(self.script)) - 1]
        if self.delay:
            self.stop.wait(self.delay)
        start_response(
            f"{status} {HTTPStatus(status).phrase}",
            [("Content-Type", "application/json"), ("Content-Length", str(len(answer)))],
        )
        return [answer]


@contextmanager
def serving(app: Any) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        if isinstance(app, Scripted):
            app.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)


def _raw(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=3)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _outcome(gateway: PaymentGateway, txn: Transaction) -> tuple[Any, ...]:
    try:
        answer = gateway.authorize(txn)
    except CorepayError as exc:
        return (type(exc).__name__,)
    return (answer.approved, answer.code)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Counting(PaymentGateway):
    """Answers each call differently (approve, decline, approve...), counting the calls.

    With ``hold``, a call signals ``entered`` and then waits for ``hold``.
    """

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.calls = 0
        self.hold = hold
        self.entered = threading.Event()

    def authorize(self, txn: Transaction) -> GatewayResponse:
        self.entered.set()
        if self.hold is not None:
            self.hold.wait(3)
        self.calls += 1
        if self.calls % 2:
            return GatewayResponse(approved=True, code="APPROVED", latency_ms=1.0)
        return GatewayResponse(approved=False, code="DO_NOT_HONOR", latency_ms=1.0)


class Failing(PaymentGateway):
    def __init__(self, error: Exception) -> None:
        self.error = error

    def authorize(self, txn: Transaction) -> GatewayResponse:
        raise self.error


# --- the gateway service as the real endpoint ----------------------------------------------


def test_answers_over_http_match_the_simulated_gateway_approvals_and_declines() -> None:
    txns = [_txn(i, amount="250000.00") for i in range(40)]
    direct = [_outcome(SimulatedGateway(3, outage_rate=0.0), t) for t in txns]
    app = create_gateway_app(SimulatedGateway(3, outage_rate=0.0))
    with serving(app) as url, HttpGateway(url, retries=0) as gateway:
        over_http = [_outcome(gateway, t) for t in txns]
        answer = gateway.authorize(txns[0])
    assert over_http == direct
    assert (True, "APPROVED") in direct
    assert (False, "INSUFFICIENT_FUNDS") in direct
    assert answer.latency_ms > 0


def test_a_simulated_outage_is_a_whole_minute_drawn_from_the_seed_whatever_came_before() -> None:
    def at(n: int, minute: int) -> Transaction:
        stamp = f"2026-11-24T{9 + minute // 60:02d}:{minute % 60:02d}:{n % 60:02d}+01:00"
        return parse_transaction({**_request(n), "timestamp": stamp})

    txns = [at(n, minute) for minute in range(120) for n in range(3)]
    fresh = SimulatedGateway(5, outage_rate=0.5)
    busy = SimulatedGateway(5, outage_rate=0.5)
    later = datetime(2027, 1, 1, tzinfo=UTC)
    for n in range(10_050):  # other minutes first, past what a gateway keeps of them
        stamp = (later + timedelta(minutes=n)).isoformat()
        _outcome(busy, parse_transaction({**_request(n), "timestamp": stamp}))

    down = [_outcome(fresh, t) == ("UnavailableError",) for t in txns]

    assert [_outcome(busy, t) == ("UnavailableError",) for t in reversed(txns)] == down[::-1]
    minutes = [int(t.timestamp.timestamp() // 60) for t in txns]
    assert down == [uniforms(5, f"outage:{m}", 1)[0] < 0.5 for m in minutes]
    assert 20 < sum(down[::3]) < 100  # about half the minutes, each all down or all up
    assert all(down[i] == down[i + 1] == down[i + 2] for i in range(0, len(down), 3))


def test_a_simulated_gateway_follows_changes_to_its_seed_and_outage_rate() -> None:
    txns = [_txn(n) for n in range(5)]  # all in one minute
    gateway = SimulatedGateway(1, outage_rate=0.0)
    assert {_outcome(gateway, t) for t in txns} != {("UnavailableError",)}

    gateway.outage_rate = 1.0
    assert {_outcome(gateway, t) for t in txns} == {("UnavailableError",)}
    for seed in range(2, 40):  # some seed draws an outage for this minute at a rate of 0.2
        gateway.seed, gateway.outage_rate = seed, 0.2
        if _outcome(gateway, txns[0]) == ("UnavailableError",):
            break
    assert [_outcome(gateway, t) for t in txns] == [
        _outcome(SimulatedGateway(gateway.seed, outage_rate=0.2), t) for t in txns
    ]


def test_simulated_outage_and_timeout_come_back_as_the_same_errors() -> None:
    down = create_gateway_app(SimulatedGateway(0, outage_rate=1.0))
    with (
        serving(down) as url,
        HttpGateway(url, retries=0) as gateway,
        pytest.raises(UnavailableError, match="503"),
    ):
        gateway.authorize(_txn())
    slow = create_gateway_app(SimulatedGateway(0, outage_rate=0.0, timeout_ms=0.001))
    with (
        serving(slow) as url,
        HttpGateway(url, retries=0) as gateway,
        pytest.raises(BackendTimeoutError, match="504"),
    ):
        gateway.authorize(_txn())


def test_a_repeated_idempotency_key_gets_the_first_answer_again() -> None:
    backend = Counting()
    with serving(create_gateway_app(backend)) as url, HttpGateway(url) as gateway:
        first = gateway.authorize(_txn(1))
        again = gateway.authorize(_txn(1))
        other = gateway.authorize(_txn(2))
    assert (again.approved, again.code) == (first.approved, first.code) == (True, "APPROVED")
    assert (other.approved, other.code) == (False, "DO_NOT_HONOR")  # a fresh key is asked anew
    assert backend.calls == 2


def test_a_duplicate_arriving_mid_answer_waits_for_the_first_answer() -> None:
    hold = threading.Event()
    backend = Counting(hold)
    body = json.dumps(_request(1)).encode()
    headers = {"Idempotency-Key": "key-1"}
    with serving(create_gateway_app(backend)) as url:
        answers: list[tuple[int, Any]] = []
        threads = [
            threading.Thread(
                target=lambda: answers.append(
                    _raw(url, "POST", "/v1/authorizations", body, headers)
                )
            )
            for _ in range(2)
        ]
        threads[0].start()
        assert backend.entered.wait(2)
        threads[1].start()
        threads[1].join(timeout=0.3)  # the duplicate arrives while the first is held
        hold.set()
        for t in threads:
            t.join(timeout=4)
    assert len(answers) == 2
    assert answers[0] == answers[1]
    assert backend.calls == 1


def test_idempotency_keys_are_remembered_up_to_the_bound() -> None:
    backend = Counting()
    app = create_gateway_app(backend, remember=2)
    with serving(app) as url:
        for n in (1, 2, 3, 1):
            status, _ = _raw(
                url,
                "POST",
                "/v1/authorizations",
                json.dumps(_request(n)).encode(),
                {"Idempotency-Key": f"k{n}"},
            )
            assert status == 200
    assert backend.calls == 4  # k1 was forgotten when k3 came


def test_a_key_reused_for_another_transaction_is_refused() -> None:
    with serving(create_gateway_app(Counting())) as url:
        key = {"Idempotency-Key": "same"}
        first, _ = _raw(url, "POST", "/v1/authorizations", json.dumps(_request(1)).encode(), key)
        status, body = _raw(
            url, "POST", "/v1/authorizations", json.dumps(_request(2)).encode(), key
        )
    assert first == 200
    assert status == 422
    assert body["error"] == "idempotency_key_reused"


@pytest.mark.parametrize(
    ("body", "error", "named"),
    [
        (b"{not json", "invalid_json", "body"),
        (json.dumps({**_request(1), "amount": "-3"}).encode(), "invalid_transaction", "amount"),
        (json.dumps({**_request(1), "channel": None}).encode(), "invalid_transaction", "channel"),
    ],
)
def test_the_service_answers_400_naming_the_problem(body: bytes, error: str, named: str) -> None:
    with serving(create_gateway_app(Counting())) as url:
        status, answer = _raw(url, "POST", "/v1/authorizations", body)
    assert status == 400
    assert answer["error"] == error
    assert named in answer["message"]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (UnavailableError("down for maintenance"), 503),
        (BackendTimeoutError("no answer in 1500 ms"), 504),
    ],
)
def test_the_service_maps_gateway_errors_to_statuses(error: Exception, status: int) -> None:
    with serving(create_gateway_app(Failing(error))) as url:
        got, answer = _raw(url, "POST", "/v1/authorizations", json.dumps(_request(1)).encode())
        health = _raw(url, "GET", "/healthz")
    assert got == status
    assert str(error) in answer["message"]
    assert health == (200, {"status": "ok"})


# --- HttpGateway against scripted endpoints --------------------------------------------------


def test_the_request_carries_the_transaction_and_its_idempotency_key_on_every_attempt() -> None:
    raw = Scripted((503, b"{}"), (200, APPROVED))
    with serving(raw) as url, HttpGateway(url + "/pay", retries=2, backoff=0.01) as gateway:
        answer = gateway.authorize(_txn(7))
    assert (answer.approved, answer.code) == (True, "APPROVED")
    assert raw.count == 2
    for headers, body in raw.requests:
        assert headers["Idempotency-Key"] == "tx-gw-00007"
        assert "Authorization" not in headers
        assert parse_transaction(json.loads(body)) == _txn(7)
        assert json.loads(body)["amount"] == "42.50"


def test_a_gateway_that_never_answers_times_out_after_every_attempt() -> None:
    raw = Scripted((200, APPROVED), delay=3.0)
    with (
        serving(raw) as url,
        HttpGateway(url, timeout=0.2, retries=2, backoff=0.01) as gateway,
        pytest.raises(BackendTimeoutError) as info,
    ):
        gateway.authorize(_txn())
    assert raw.count == 3
    assert url in str(info.value)
    assert "0.2 s" in str(info.value)


@pytest.mark.parametrize(
    ("status", "error", "attempts"),
    [
        (400, RejectedError, 1),
        (404, RejectedError, 1),
        (500, UnavailableError, 1),
        (429, UnavailableError, 3),
        (503, UnavailableError, 3),
        (504, BackendTimeoutError, 3),
    ],
)
def test_only_overload_answers_are_retried(
    status: int, error: type[Exception], attempts: int
) -> None:
    raw = Scripted((status, b'{"error":"scripted"}'))
    with (
        serving(raw) as url,
        HttpGateway(url, retries=2, backoff=0.01) as gateway,
        pytest.raises(error) as info,
    ):
        gateway.authorize(_txn())
    assert raw.count == attempts
    assert str(status) in str(info.value)
    assert url in str(info.value)


@pytest.mark.parametrize(
    "answer",
    [b"not json", b"[]", b'{"approved":"yes","code":"APPROVED"}', b'{"approved":true}'],
)
def test_a_malformed_answer_is_a_decode_error_and_not_retried(answer: bytes) -> None:
    raw = Scripted((200, answer))
    with (
        serving(raw) as url,
        HttpGateway(url, retries=2, backoff=0.01) as gateway,
        pytest.raises(DecodeError, match="malformed"),
    ):
        gateway.authorize(_txn())
    assert raw.count == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_a_refused_connection_is_unavailable_not_a_timeout() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    with (
        HttpGateway(url, timeout=3.0, retries=2, backoff=0.01) as gateway,
        pytest.raises(UnavailableError, match="unreachable") as info,
    ):
        gateway.authorize(_txn())
    assert url in str(info.value)
    assert "3 attempts" in str(info.value)


def test_a_kept_alive_connection_is_reused_across_calls() -> None:
    raw = Scripted((200, APPROVED))
    with serving(raw) as url, HttpGateway(url) as gateway:
        for n in range(3):
            gateway.authorize(_txn(n))
        assert len(gateway._connections._all) == 1
    assert raw.count == 3


class _AnswerOnceThenHangUp(socketserver.StreamRequestHandler):
    """Answers one request as if keeping the connection alive, then closes it."""

    def handle(self) -> None:
        length = 0
        while (line := self.rfile.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        self.rfile.read(length)
        self.server.requests += 1  # type: ignore[attr-defined]
        self.wfile.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(APPROVED), APPROVED)
        )


def test_a_kept_alive_connection_the_server_closed_is_retried_on_a_fresh_one() -> None:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _AnswerOnceThenHangUp)
    server.daemon_threads = True
    server.requests = 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with HttpGateway(url, retries=0) as gateway:
            for n in range(3):
                assert gateway.authorize(_txn(n)).approved
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)
    assert server.requests == 3  # type: ignore[attr-defined]


# --- circuit breaker -------------------------------------------------------------------------


def test_the_breaker_opens_fails_fast_then_a_good_trial_closes_it() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=30.0, clock=clock)
    raw = Scripted((503, b"{}"), (503, b"{}"), (503, b"{}"), (200, APPROVED))
    with serving(raw) as url, HttpGateway(url, retries=0, breaker=breaker) as gateway:
        for expected in (CircuitState.CLOSED, CircuitState.CLOSED, CircuitState.OPEN):
            with pytest.raises(UnavailableError, match="503"):
                gateway.authorize(_txn())
            assert breaker.state == expected
        for _ in range(2):
            with pytest.raises(UnavailableError, match="circuit open"):
                gateway.authorize(_txn())
        clock.now += 29.9
        with pytest.raises(UnavailableError, match="circuit open"):
            gateway.authorize(_txn())
        assert raw.count == 3  # nothing reached the server while open
        clock.now += 0.1
        assert breaker.state == CircuitState.HALF_OPEN
        assert gateway.authorize(_txn()).approved
        assert breaker.state == CircuitState.CLOSED
        assert raw.count == 4


def test_a_failed_trial_reopens_the_breaker() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=10.0, clock=clock)
    raw = Scripted((503, b"{}"))
    with serving(raw) as url, HttpGateway(url, retries=0, breaker=breaker) as gateway:
        for _ in range(2):
            with pytest.raises(UnavailableError, match="503"):
                gateway.authorize(_txn())
        clock.now += 10.0
        with pytest.raises(UnavailableError, match="503"):  # the trial reached the server
            gateway.authorize(_txn())
        assert raw.count == 3
        assert breaker.state == CircuitState.OPEN
        with pytest.raises(UnavailableError, match="circuit open"):
            gateway.authorize(_txn())
        assert raw.count == 3
        clock.now += 10.0
        with pytest.raises(UnavailableError, match="503"):
            gateway.authorize(_txn())
        assert raw.count == 4


def test_refused_requests_do_not_open_the_breaker() -> None:
    raw = Scripted((400, b'{"error":"bad"}'))
    with serving(raw) as url, HttpGateway(url, failure_threshold=1) as gateway:
        for _ in range(3):
            with pytest.raises(RejectedError):
                gateway.authorize(_txn())
        assert gateway.breaker.state == CircuitState.CLOSED
    assert raw.count == 3


def test_half_open_lets_exactly_one_trial_through() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=5.0, clock=clock)
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == CircuitState.CLOSED  # failures must be consecutive
    breaker.record_failure()
    assert breaker.state == CircuitState.OPEN
    assert breaker.retry_in == 5.0
    assert not breaker.allow()
    clock.now += 5.0
    assert breaker.allow()
    assert not breaker.allow()  # the trial is still under way
    assert breaker.state == CircuitState.HALF_OPEN
    breaker.record_failure()
    assert breaker.state == CircuitState.OPEN
    assert not breaker.allow()


# --- open_gateway and secrets ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"timeout": 0.0}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"retries": -1}, "retries"),
        ({"backoff": 2.0}, "backoff"),
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"reset_timeout": -1.0}, "reset_timeout"),
        ({"breaker": CircuitBreaker(), "failure_threshold": 3}, "breaker"),
    ],
)
def test_http_gateway_names_a_bad_option(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        HttpGateway("http://127.0.0.1:8080", **options)


def test_open_gateway_builds_a_simulated_gateway_from_its_options() -> None:
    gateway = open_gateway(
        "simulated://?seed=7&timeout_ms=900&median_latency_ms=80&outage_rate=0.5&realtime=true"
    )
    assert isinstance(gateway, SimulatedGateway)
    assert (gateway.seed, gateway.timeout_ms, gateway.median_latency_ms) == (7, 900.0, 80.0)
    assert (gateway.outage_rate, gateway.realtime) == (0.5, True)
    default = open_gateway("simulated://")
    assert isinstance(default, SimulatedGateway)
    assert _settings(default) == _settings(SimulatedGateway())


def _settings(gateway: SimulatedGateway) -> dict[str, Any]:
    return {k: v for k, v in vars(gateway).items() if not k.startswith("_")}


def test_open_gateway_builds_an_http_gateway_without_its_options_in_the_url() -> None:
    gateway = open_gateway(
        "https://gw.example:8443/pay?timeout=0.5&retries=1&failure_threshold=2&reset_timeout=3"
    )
    assert isinstance(gateway, HttpGateway)
    with gateway:
        assert gateway.base_url == "https://gw.example:8443/pay"
        assert (gateway.timeout, gateway.retries) == (0.5, 1)
        assert (gateway.breaker.failure_threshold, gateway.breaker.reset_timeout) == (2, 3.0)


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("simulated://?seed=x", "seed"),
        ("simulated://?outage_rate=2", "outage_rate"),
        ("simulated://?timeout_ms=nan", "timeout_ms"),
        ("simulated://?realtime=maybe", "realtime"),
        ("simulated://?speed=3&colour=red", "colour, speed"),
        ("simulated://somehost", "no host"),
        ("http://127.0.0.1:8080?retries=-1", "retries"),
        ("http://127.0.0.1:8080?timeout=0", "timeout"),
        ("http://127.0.0.1:8080?failure_threshold=0", "failure_threshold"),
        ("http://127.0.0.1:8080?retries=1&retries=2", "more than once"),
        ("http://127.0.0.1:8080?verbose=1", "verbose"),
        ("http://127.0.0.1:notaport", "port"),
        ("http://", "http://host:port"),
        ("ftp://gw.example", "scheme"),
    ],
)
def test_open_gateway_names_what_is_wrong(url: str, named: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        open_gateway(url)
    assert named in str(info.value)


@pytest.mark.parametrize(
    "url", [f"http://user:{SECRET}@127.0.0.1:8080", f"http://127.0.0.1:8080?token={SECRET}"]
)
def test_a_secret_in_a_url_is_refused_without_being_shown(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        open_gateway(url)
    assert SECRET not in str(info.value)


def test_the_token_is_sent_but_never_shown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=60.0, clock=clock)
    raw = Scripted((200, APPROVED), (400, b'{"error":"bad"}'), (503, b"{}"))
    with (
        serving(raw) as url,
        HttpGateway(url, retries=0, token=SECRET, breaker=breaker) as gateway,
    ):
        assert SECRET not in repr(gateway)
        gateway.authorize(_txn())
        messages = []
        for _ in range(3):  # 400, 503, then circuit open
            with pytest.raises(CorepayError) as info:
                gateway.authorize(_txn())
            messages.append(repr(info.value) + str(info.value))
    assert raw.requests[0][0]["Authorization"] == f"Bearer {SECRET}"
    assert "circuit open" in messages[-1]
    assert all(SECRET not in m for m in messages)
    with (
        HttpGateway(f"http://127.0.0.1:{_free_port()}", retries=0, token=SECRET) as down,
        pytest.raises(UnavailableError) as refused,
    ):
        down.authorize(_txn())
    assert SECRET not in str(refused.value)


@pytest.mark.parametrize("count", range(9))
def test_uniforms_are_the_digest_words_scaled_into_the_open_unit_interval(count: int) -> None:
    import hashlib

    for key in ("tx-1", "outage:29351520", "é"):
        digest = hashlib.blake2b(f"7\x00{key}".encode(), digest_size=64).digest()
        words = [int.from_bytes(digest[i * 8 : i * 8 + 8], "big") for i in range(count)]
        assert uniforms(7, key, count) == [(w + 0.5) / 2.0**64 for w in words]
        assert all(0.0 < u < 1.0 for u in uniforms(7, key, count))


def test_uniforms_refuses_more_draws_than_the_digest_holds() -> None:
    with pytest.raises(ValueError, match="count must be 0 to 8, not 9"):
        uniforms(0, "tx-1", 9)
