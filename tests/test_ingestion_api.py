"""The ingestion service's HTTP API, driven through Flask's test client over a MemoryBus."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import strategies as cst
from corepay.backends.memory import MemoryBus
from corepay.bus import RAW_TRANSACTIONS, Bus, Consumer, Delivery, Message
from corepay.errors import UnavailableError
from corepay.ingest import INGESTED_AT_HEADER
from corepay.services.ingestion import create_app
from corepay.settings import Settings
from corepay.wire import decode_transaction

VALID = {
    "transaction_id": "txn-0001",
    "customer_id": "cust-42",
    "amount": "12.50",
    "currency": "EUR",
    "merchant_id": "m-7",
    "merchant_category": "5411",
    "country": "DE",
    "channel": "pos",
    "timestamp": "2026-11-24T09:30:00Z",
}

# Each example builds its own app and bus, so nothing leaks between examples.
per_example = settings(suppress_health_check=[HealthCheck.too_slow])


def client_for(bus: Bus, **limits: Any) -> FlaskClient:
    return create_app(Settings(**limits), bus=bus).test_client()


def post(client: FlaskClient, body: bytes, content_type: str = "application/json") -> Any:
    return client.post("/v1/transactions", data=body, content_type=content_type)


class RefusingBus(Bus):
    """A bus that is down until told otherwise, then behaves as the MemoryBus it wraps."""

    def __init__(self) -> None:
        self.inner = MemoryBus()
        self.available = False
        self.refused = 0

    def publish(
        self,
        topic: str,
        key: str,
        value: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        partition: int | None = None,
    ) -> Delivery:
        if not self.available:
            self.refused += 1
            raise UnavailableError("no broker reachable")
        return self.inner.publish(topic, key, value, headers, partition=partition)

    def consumer(self, group: str, topics: Sequence[str]) -> Consumer:
        return self.inner.consumer(group, topics)

    def replay(self, topic: str, partitions: Iterable[int]) -> list[Message]:
        return self.inner.replay(topic, partitions)


# --- accepted ---------------------------------------------------------------------------------


def test_valid_transaction_is_accepted_and_published_keyed_by_customer() -> None:
    bus = MemoryBus()
    client = client_for(bus)

    response = post(client, json.dumps(VALID).encode())

    assert response.status_code == 202
    assert response.get_json()["transaction_id"] == "txn-0001"
    [message] = bus.messages(RAW_TRANSACTIONS)
    assert message.key == "cust-42"
    assert decode_transaction(message.value).transaction_id == "txn-0001"
    stamped = datetime.fromisoformat(message.headers[INGESTED_AT_HEADER])
    assert stamped.utcoffset() is not None
    body = response.get_json()
    assert (body["partition"], body["offset"]) == (message.partition, message.offset)


@per_example
@given(cst.payload_cases())
def test_any_valid_payload_is_accepted_as_sent(case: tuple[dict[str, Any], Any]) -> None:
    payload, expected = case
    bus = MemoryBus()

    response = post(client_for(bus), json.dumps(payload).encode())

    assert response.status_code == 202, response.get_json()
    assert response.get_json()["transaction_id"] == expected.transaction_id
    [message] = bus.messages(RAW_TRANSACTIONS)
    assert message.key == expected.customer_id
    assert decode_transaction(message.value) == expected
    assert INGESTED_AT_HEADER in message.headers


# --- rejected ---------------------------------------------------------------------------------


@per_example
@given(cst.invalid_payloads())
def test_invalid_body_gets_400_listing_each_invalid_field(case: cst.Invalid) -> None:
    bus = MemoryBus()

    response = post(client_for(bus), json.dumps(case.payload).encode())

    assert response.status_code == 400, response.data
    fields = response.get_json()["fields"]
    assert sorted(f["field"] for f in fields) == sorted(case.fields)
    assert all(isinstance(f["message"], str) and f["message"] for f in fields)
    assert bus.messages(RAW_TRANSACTIONS) == []


@per_example
@given(
    cst.arbitrary_bodies(),
    st.sampled_from(
        ["application/json", "application/json; charset=utf-8", "application/problem+json"]
    ),
)
def test_arbitrary_json_typed_body_gets_400_not_500(body: bytes, content_type: str) -> None:
    bus = MemoryBus()

    response = post(client_for(bus), body, content_type)

    assert response.status_code == 400, response.data
    assert response.get_json()["error"] == "invalid_transaction"
    assert bus.messages(RAW_TRANSACTIONS) == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"amount": 1' + b"0" * 5000 + b"}",  # past Python's int conversion limit
        b"[" * 30_000 + b"]" * 30_000,  # under the 64 KiB limit, deeper than recursion allows
    ],
    ids=["5000-digit-number", "deeply-nested"],
)
def test_pathological_json_gets_400_not_500(body: bytes) -> None:
    bus = MemoryBus()

    response = post(client_for(bus), body)

    assert response.status_code == 400, response.data[:200]
    assert bus.messages(RAW_TRANSACTIONS) == []


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/xml", ""],
)
def test_non_json_content_type_gets_415(content_type: str) -> None:
    bus = MemoryBus()

    response = post(client_for(bus), json.dumps(VALID).encode(), content_type)

    assert response.status_code == 415
    assert response.get_json()["error"] == "unsupported_media_type"
    assert bus.messages(RAW_TRANSACTIONS) == []


def test_body_over_the_size_limit_gets_413_as_json() -> None:
    body = json.dumps(VALID).encode()
    bus = MemoryBus()

    at_limit = post(client_for(bus, max_request_bytes=len(body)), body)
    over_limit = post(client_for(bus, max_request_bytes=len(body) - 1), body)

    assert at_limit.status_code == 202
    assert over_limit.status_code == 413
    assert over_limit.is_json
    assert str(len(body) - 1) in over_limit.get_json()["message"]
    assert len(bus.messages(RAW_TRANSACTIONS)) == 1


def test_bus_refusing_gets_503_with_retry_after_and_nothing_accepted() -> None:
    bus = RefusingBus()
    client = client_for(bus)

    refused = post(client, json.dumps(VALID).encode())

    assert refused.status_code == 503
    assert int(refused.headers["Retry-After"]) > 0
    assert refused.get_json()["error"] == "bus_unavailable"
    assert bus.refused == 1
    assert bus.inner.messages(RAW_TRANSACTIONS) == []
    # The client's retry goes through once the bus is back, and is recorded exactly once.
    bus.available = True
    assert post(client, json.dumps(VALID).encode()).status_code == 202
    assert len(bus.inner.messages(RAW_TRANSACTIONS)) == 1


# --- other routes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("get", "/v1/nothing-here", 404), ("post", "/v2/transactions", 404)],
)
def test_unknown_route_gets_json_404(method: str, path: str, status: int) -> None:
    response = getattr(client_for(MemoryBus()), method)(path)

    assert response.status_code == status
    assert response.get_json()["error"] == "not_found"


def test_wrong_method_gets_json_405() -> None:
    response = client_for(MemoryBus()).get("/v1/transactions")

    assert response.status_code == 405
    assert response.is_json


def test_healthz() -> None:
    response = client_for(MemoryBus()).get("/healthz")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
