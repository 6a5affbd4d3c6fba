"""``corepay generate``: write a synthetic payments world, and send it where it is wanted.

Payments go to a JSON Lines file (each line a wire-format transaction), their labels to
another, and the payments themselves, when asked, to the ingestion API over HTTP or straight
onto a bus's ``raw_transactions`` (validated and stamped as the ingestion service does).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from corepay.bus import ALL_TOPICS, RAW_TRANSACTIONS, Bus, Record
from corepay.errors import ConfigurationError, UnavailableError
from corepay.ingest import INGESTED_AT_HEADER
from corepay.traffic import TrafficGenerator
from corepay.wire import encode_transaction, parse_transaction

__all__ = ["HttpSender", "generate"]

_CHUNK = 500


class HttpSender:
    """Posts transactions to the ingestion API (``POST /v1/transactions``) on one connection.

    A 202 counts as sent and a 4xx as rejected (the first error is kept); a 5xx or a lost
    connection is retried a few times and then stops the run with :class:`UnavailableError`.
    """

    def __init__(
        self, url: str, *, timeout: float = 10.0, attempts: int = 4, api_key: str | None = None
    ) -> None:
        try:
            parts = urlsplit(url)
        except ValueError:
            parts = urlsplit("")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"ingestion URL must be http(s)://host:port, not {url!r}")
        self.url = url.rstrip("/")
        self._path = parts.path.rstrip("/") + "/v1/transactions"
        factory = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        self._connection = factory(parts.hostname, parts.port, timeout=timeout)
        self.attempts = attempts
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.sent = 0
        self.rejected = 0
        self.first_rejection: str | None = None

    def send(self, request: dict[str, Any]) -> None:
        body = json.dumps(request).encode()
        headers = self._headers
        for attempt in range(1, self.attempts + 1):
            try:
                self._connection.request("POST", self._path, body, headers)
                response = self._connection.getresponse()
                answer = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self._connection.close()
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status == 202:
                    self.sent += 1
                    return
                if response.status == 401:
                    raise ConfigurationError(
                        f"ingestion API at {self.url} refused the API key (401): give a key "
                        "from its COREPAY_API_KEYS with --api-key or COREPAY_API_KEY"
                    )
                if 400 <= response.status < 500:
                    self.rejected += 1
                    if self.first_rejection is None:
                        text = answer.decode(errors="replace")
                        self.first_rejection = f"{response.status} {text}"
                    return
                problem = f"HTTP {response.status} {answer.decode(errors='replace')[:200]}"
            if attempt < self.attempts:
                time.sleep(0.2 * 2 ** (attempt - 1))
        raise UnavailableError(
            f"ingestion API at {self.url} did not take transaction "
            f"{request.get('transaction_id')!r} after {self.attempts} attempts ({problem}); "
            f"{self.sent} were sent before it"
        )

    def close(self) -> None:
        self._connection.close()


def _publish(bus: Bus, requests: list[dict[str, Any]]) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    bus.publish_many(
        Record(RAW_TRANSACTIONS, t.customer_id, encode_transaction(t), {INGESTED_AT_HEADER: stamp})
        for t in (parse_transaction(r) for r in requests)
    )


@contextlib.contextmanager
def _lines(path: str | Path | None) -> Iterator[IO[bytes] | None]:
    if path is None:
        yield None
    elif str(path) == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
    else:
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            f = open(path, "wb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise ConfigurationError(f"could not write {path}: {exc.strerror or exc}") from None
        with f:
            yield f


def generate(
    *,
    count: int,
    customers: int = 200,
    seed: int = 0,
    out: str | Path | None = None,
    labels: str | Path | None = None,
    target: str | None = None,
    progress: Callable[[int], None] | None = None,
    api_key: str | None = None,
) -> str:
    """Generate ``count`` labelled payments; write and send them. Returns a one-line report.

    Raises:
        ConfigurationError: ``target`` is not a URL CorePay can send to.
        UnavailableError, BackendTimeoutError: the target stopped taking payments.
    """
    from corepay.backends import open_bus

    sender: HttpSender | None = None
    bus: Bus | None = None
    if target is not None:
        if target.split("://", 1)[0] in ("http", "https"):
            sender = HttpSender(target, api_key=api_key)
        else:
            bus = open_bus(target)
            bus.ensure_topics(ALL_TOPICS)
    frauds = 0
    chunk: list[dict[str, Any]] = []
    try:
        with _lines(out) as payments, _lines(labels) as truths:
            for request, label in TrafficGenerator(customers=customers, seed=seed).labelled(count):
                frauds += label.is_fraud
                if payments is not None:
                    payments.write(json.dumps(request).encode() + b"\n")
                if truths is not None:
                    truths.write(json.dumps(label.to_json()).encode() + b"\n")
                chunk.append(request)
                if len(chunk) == _CHUNK:
                    _deliver(chunk, sender, bus, progress)
            _deliver(chunk, sender, bus, progress)
    finally:
        if sender is not None:
            sender.close()
        if bus is not None:
            bus.close()
    report = f"{count:,} payments ({frauds:,} fraud) from {customers:,} customers, seed {seed}"
    if sender is not None:
        report += f"; sent {sender.sent:,} to {sender.url}"
        if sender.rejected:
            report += f", {sender.rejected:,} rejected (first: {sender.first_rejection})"
    elif bus is not None:
        report += f"; published {count:,} to {RAW_TRANSACTIONS} on {target}"
    return report


def _deliver(
    chunk: list[dict[str, Any]],
    sender: HttpSender | None,
    bus: Bus | None,
    progress: Callable[[int], None] | None,
) -> None:
    if sender is not None:
        for request in chunk:
            sender.send(request)
    elif bus is not None:
        _publish(bus, chunk)
    if progress is not None and chunk:
        progress(len(chunk))
    chunk.clear()
