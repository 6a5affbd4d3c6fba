"""Ingestion's core: validate a payment request and put it on ``raw_transactions``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs

from corepay.bus import RAW_TRANSACTIONS, Bus, Delivery, Record
from corepay.models import Transaction
from corepay.wire import encode_transaction, parse_transaction

__all__ = ["INGESTED_AT_HEADER", "Accepted", "Ingestor"]

#: Header the ingestion service stamps on each message: when it put it on the bus (RFC 3339).
INGESTED_AT_HEADER = "corepay-ingested-at"


@attrs.frozen
class Accepted:
    """A transaction the bus has durably taken."""

    transaction: Transaction
    delivery: Delivery
    ingested_at: datetime


class Ingestor:
    """Validates payment requests and publishes them, keyed by customer id."""

    def __init__(self, bus: Bus, *, clock: Callable[[], float] = time.time) -> None:
        self.bus = bus
        self.clock = clock

    def submit(self, payload: Any) -> Accepted:
        """Validate ``payload`` (a parsed JSON object) and publish it.

        Returns only once the bus acknowledged the message.

        Raises:
            ValidationError: the payload breaks the wire format; nothing was published.
            UnavailableError, BackendTimeoutError: the bus did not take it.
        """
        return self.submit_transaction(parse_transaction(payload))

    def submit_transactions(self, txns: Sequence[Transaction]) -> list[Accepted]:
        """Publish already validated transactions together; returns once the bus took all.

        Raises:
            UnavailableError, BackendTimeoutError: the bus did not take them all (some may
                have been taken: retrying with the same transaction ids is safe).
        """
        now = datetime.fromtimestamp(self.clock(), UTC)
        stamp = {INGESTED_AT_HEADER: now.isoformat()}
        deliveries = self.bus.publish_many(
            Record(
                RAW_TRANSACTIONS,
                t.customer_id,
                encode_transaction(t, in_process=self.bus.in_process),
                stamp,
            )
            for t in txns
        )
        return [Accepted(t, d, now) for t, d in zip(txns, deliveries, strict=True)]

    def submit_transaction(self, txn: Transaction) -> Accepted:
        """Publish an already validated transaction."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        delivery = self.bus.publish(
            RAW_TRANSACTIONS,
            txn.customer_id,
            encode_transaction(txn, in_process=self.bus.in_process),
            {INGESTED_AT_HEADER: now.isoformat()},
        )
        return Accepted(txn, delivery, now)
