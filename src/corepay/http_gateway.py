"""A client for a real payment gateway over HTTP, with retries and a circuit breaker.

:class:`HttpGateway` posts ``/v1/authorizations`` (the protocol
:mod:`corepay.services.gateway_api` serves for the simulated gateway) with an
``Idempotency-Key``, a timeout on each socket operation of an attempt, bounded retries with
backoff and jitter, and a :class:`CircuitBreaker` that fails fast while the gateway is down.
Build one from a URL with :func:`corepay.gateway.open_gateway`.
"""

from __future__ import annotations

import enum
import http.client
import json
import math
import random
import ssl
import threading
import time
from collections.abc import Callable
from types import TracebackType
from urllib.parse import SplitResult, urlsplit

from corepay.connections import ThreadConnections
from corepay.errors import (
    BackendTimeoutError,
    ConfigurationError,
    CorepayError,
    DecodeError,
    RejectedError,
    UnavailableError,
)
from corepay.gateway import GatewayResponse, PaymentGateway
from corepay.models import Transaction
from corepay.wire import encode_transaction

__all__ = ["CircuitBreaker", "CircuitState", "HttpGateway"]


class CircuitState(enum.StrEnum):
    """Where a :class:`CircuitBreaker` stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """Stops calling a backend that keeps failing, and tries it again now and then.

    Closed, it lets every call through. After ``failure_threshold`` consecutive failed calls it
    opens and lets none through. ``reset_timeout`` seconds later it is half-open: one trial call
    goes through, and its success closes the breaker while its failure opens it again.
    Thread-safe.

    Args:
        failure_threshold: consecutive failed calls that open the breaker.
        reset_timeout: seconds the breaker stays open before a trial call.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check("failure_threshold", failure_threshold, failure_threshold >= 1, "at least 1")
        _check("reset_timeout", reset_timeout, reset_timeout >= 0, "0 or more seconds")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None  # None while closed
        self._trial = False  # a half-open trial call is under way

    @property
    def state(self) -> CircuitState:
        with self._lock:
            if self._opened_at is None:
                return CircuitState.CLOSED
            if self._trial or self.clock() - self._opened_at >= self.reset_timeout:
                return CircuitState.HALF_OPEN
            return CircuitState.OPEN

    @property
    def failures(self) -> int:
        """Consecutive failed calls so far."""
        with self._lock:
            return self._failures

    @property
    def retry_in(self) -> float:
        """Seconds until a trial call is let through (0 unless open)."""
        with self._lock:
            if self._opened_at is None or self._trial:
                return 0.0
            return max(0.0, self._opened_at + self.reset_timeout - self.clock())

    def allow(self) -> bool:
        """Whether a call may go through now; a ``True`` must be followed by a ``record_*``."""
        with self._lock:
            if self._opened_at is None:
                return True
            if self._trial or self.clock() - self._opened_at < self.reset_timeout:
                return False
            self._trial = True
            return True

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._trial = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1  # a failed trial is past the threshold too: only success resets
            if self._failures >= self.failure_threshold:
                self._opened_at = self.clock()
            self._trial = False


#: Answers worth another attempt: the gateway is overloaded or restarting.
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Errors of a kept-alive connection the server closed while it was idle.
_STALE = (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)


class HttpGateway(PaymentGateway):
    """A payment gateway reached over HTTP(S): ``POST {base_url}/v1/authorizations``.

    The body is the transaction in the wire format; ``Idempotency-Key: <transaction id>``
    makes retries safe. One keep-alive connection per thread.

    A call is tried ``1 + retries`` times, with exponential backoff and jitter between tries,
    when the connection fails, an attempt times out, or the gateway answers 429, 502, 503 or
    504. Other answers are final. :attr:`latency_ms` of the response is the whole call's.

    Args:
        base_url: ``http://host:port[/prefix]`` or ``https://...``.
        timeout: seconds each attempt may take (per socket operation).
        retries: further attempts after the first.
        backoff: seconds before the first retry; doubled for each further one, with jitter.
        backoff_cap: longest wait between attempts, in seconds.
        failure_threshold: consecutive failed calls that open the circuit breaker.
        reset_timeout: seconds the breaker stays open before a trial call.
        breaker: a breaker to use instead (shared, or with an injected clock); then
            ``failure_threshold`` and ``reset_timeout`` must not be given.
        token: sent as ``Authorization: Bearer <token>``; never shown.
        context: TLS settings for ``https`` (default: system CAs, hostname checked).

    Raises:
        ConfigurationError: a bad URL or option.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 1.5,
        retries: int = 2,
        backoff: float = 0.05,
        backoff_cap: float = 1.0,
        failure_threshold: int | None = None,
        reset_timeout: float | None = None,
        breaker: CircuitBreaker | None = None,
        token: str | None = None,
        context: ssl.SSLContext | None = None,
    ) -> None:
        self._parts = _http_url(base_url)
        self.base_url = base_url.rstrip("/")  # no credentials, query or fragment: checked
        _check("timeout", timeout, math.isfinite(timeout) and timeout > 0, "positive seconds")
        _check("retries", retries, retries >= 0, "0 or more")
        _check("backoff", backoff, 0 <= backoff <= backoff_cap, "0 to backoff_cap seconds")
        if breaker is not None and (failure_threshold is not None or reset_timeout is not None):
            raise ConfigurationError(
                "give either breaker or failure_threshold/reset_timeout, not both"
            )
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        self.breaker = breaker or CircuitBreaker(
            5 if failure_threshold is None else failure_threshold,
            30.0 if reset_timeout is None else reset_timeout,
        )
        self._path = self._parts.path.rstrip("/") + "/v1/authorizations"
        self._token = token
        self._random = random.Random()
        self._connections = ThreadConnections(self._parts, timeout, context)

    def __repr__(self) -> str:
        return f"HttpGateway({self.base_url!r}, timeout={self.timeout:g}, retries={self.retries})"

    def __enter__(self) -> HttpGateway:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def authorize(self, txn: Transaction) -> GatewayResponse:
        """Ask the gateway; see :meth:`PaymentGateway.authorize`.

        Raises:
            UnavailableError: unreachable or 5xx after every attempt, or the circuit is open.
            BackendTimeoutError: every attempt timed out (or the last was answered 504).
            RejectedError: the gateway refused the request (a 4xx other than 429).
            DecodeError: the gateway's answer is not ``{"approved": bool, "code": str}``.
        """
        if not self.breaker.allow():
            raise UnavailableError(
                f"payment gateway circuit open for {self.base_url} after "
                f"{self.breaker.failures} consecutive failed calls; "
                f"next trial call in {self.breaker.retry_in:.1f} s"
            )
        try:
            answer = self._authorize(txn)
        except RejectedError:  # the gateway is up; the request was at fault
            self.breaker.record_success()
            raise
        except BaseException:
            self.breaker.record_failure()
            raise
        self.breaker.record_success()
        return answer

    def _authorize(self, txn: Transaction) -> GatewayResponse:
        started = time.perf_counter()
        body = encode_transaction(txn)
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Idempotency-Key": txn.transaction_id,
        }
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        attempts = 1 + self.retries
        failure: CorepayError = UnavailableError("no attempt made")
        cause: BaseException | None = None
        for attempt in range(attempts):
            if attempt:
                delay = min(self.backoff_cap, self.backoff * 2 ** (attempt - 1))
                time.sleep(delay * self._random.uniform(0.5, 1.0))
            tries = f"{attempt + 1} attempt{'s' if attempt else ''}"
            try:
                status, data = self._post(body, headers)
            except TimeoutError as exc:
                failure = BackendTimeoutError(
                    f"payment gateway at {self.base_url} gave no answer within "
                    f"{self.timeout:g} s ({tries})"
                )
                cause = exc
                continue
            except (OSError, http.client.HTTPException) as exc:
                failure = UnavailableError(
                    f"payment gateway at {self.base_url} is unreachable ({tries}): "
                    f"{type(exc).__name__}: {exc}"
                )
                cause = exc
                continue
            if status == 200:
                return self._answer(data, (time.perf_counter() - started) * 1000.0)
            said = f"payment gateway at {self.base_url} answered {status}: {data[:200]!r}"
            if 400 <= status < 500 and status != 429:
                raise RejectedError(said)
            cause = None
            # 504: the gateway's own upstream timed out, so the outcome is unknown as well.
            failure = (BackendTimeoutError if status == 504 else UnavailableError)(
                f"{said} ({tries})"
            )
            if status not in _RETRY_STATUSES:
                break
        raise failure from cause

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        for fresh in (False, True):
            conn = self._connections.get()
            reused = conn.sock is not None
            try:
                conn.request("POST", self._path, body=body, headers=headers)
                response = conn.getresponse()
                return response.status, response.read()
            except BaseException as exc:
                self._connections.reset()
                # A kept-alive connection the server closed while idle: try once more on a
                # fresh one, free of the retry budget (the idempotency key makes it safe).
                if reused and not fresh and isinstance(exc, _STALE):
                    continue
                raise
        raise AssertionError("unreachable")

    def _answer(self, data: bytes, latency_ms: float) -> GatewayResponse:
        try:
            doc = json.loads(data)
        except ValueError:
            doc = None
        if (
            not isinstance(doc, dict)
            or type(doc.get("approved")) is not bool
            or not isinstance(doc.get("code"), str)
            or not doc["code"]
        ):
            raise DecodeError(
                f"payment gateway at {self.base_url} sent a malformed answer "
                f'(expected {{"approved": bool, "code": str}}): {data[:200]!r}'
            )
        return GatewayResponse(approved=doc["approved"], code=doc["code"], latency_ms=latency_ms)

    def close(self) -> None:
        """Close every connection, whichever thread opened it."""
        self._connections.close()


def _check(name: str, value: object, ok: bool, rule: str) -> None:
    if not ok:
        raise ConfigurationError(f"gateway option {name} must be {rule}, not {value!r}")


def _http_url(url: str) -> SplitResult:
    # Never echo the URL: it may carry a password.
    shape = "http://host:port[/prefix] or https://host:port[/prefix]"
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ConfigurationError(f"payment gateway URL is malformed; must be {shape}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"payment gateway URL must be {shape}")
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError("payment gateway URL must not carry credentials; pass token=")
    if parts.query or parts.fragment:
        raise ConfigurationError(f"payment gateway URL must be {shape}, without ? or #")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigurationError(f"payment gateway URL has a bad port; must be {shape}") from None
    return parts
