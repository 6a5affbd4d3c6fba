"""A Kafka bus whose broker is down: clear CorePay errors within the timeout, and a 503."""

from __future__ import annotations

import socket

import pytest

from corepay.backends import open_bus
from corepay.errors import BackendError, ConfigurationError
from corepay.services.ingestion import create_app

VALID = {
    "transaction_id": "tx-down-1",
    "customer_id": "cust-1",
    "amount": "12.50",
    "currency": "EUR",
    "merchant_id": "m-1",
    "merchant_category": "5411",
    "country": "DE",
    "channel": "pos",
    "timestamp": "2026-11-24T09:30:00+01:00",
}


@pytest.fixture
def dead_address() -> str:
    with socket.socket() as s:  # a port nothing listens on once this closes
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    return address


def test_publishing_to_a_dead_broker_raises_a_corepay_error_naming_it(dead_address: str) -> None:
    with (
        open_bus(f"kafka://{dead_address}?publish_timeout=1") as bus,
        pytest.raises(BackendError, match=dead_address),
    ):
        bus.publish("raw_transactions", "cust-1", b"{}")


def test_ingestion_answers_503_when_kafka_is_down_and_accepts_nothing(dead_address: str) -> None:
    bus = open_bus(f"kafka://{dead_address}?publish_timeout=1")
    client = create_app(bus=bus).test_client()
    for _ in range(2):  # the second try fails the same way, not with a stale client
        response = client.post("/v1/transactions", json=VALID)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert response.json is not None and response.json["error"].startswith("bus_")
    bus.close()


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("kafka://127.0.0.1:9092?partitions=x", "partitions"),
        ("kafka://127.0.0.1:9092?acks=1", "acks"),
        ("kafka://?partitions=4", "bootstrap"),
    ],
)
def test_bad_kafka_urls_are_configuration_errors_naming_the_problem(url: str, named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        open_bus(url)
