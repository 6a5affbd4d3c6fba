"""Idempotent ingestion: the same transaction posted again is acknowledged, not published again.

The ingestion service remembers, for ``window`` seconds, each transaction id it accepted with a
fingerprint of the transaction and the answer it gave. Posting the same transaction again in
that window gets the same answer without a second publish; posting another transaction under
the same id gets a conflict. Two requests for one id at the same moment: the second waits for
the first's outcome (and publishes itself only if the first failed).

The memory is per process and bounded (``max_entries``: past it the oldest entries are
forgotten early). Downstream, every consumer is idempotent by transaction id as well, so a
duplicate that gets past this (another ingestion process, a restart) is still decided once
per path and counted once in the twin, and alerted once.
"""

from __future__ import annotations

import enum
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import attrs

from corepay.models import Transaction

__all__ = ["Claim", "IdempotencyCache", "fingerprint"]


def fingerprint(txn: Transaction) -> str:
    """What makes two postings the same transaction: every field, the amount by value."""
    fields = (
        txn.transaction_id,
        txn.customer_id,
        str(txn.amount.normalize()),
        txn.currency,
        txn.merchant_id,
        txn.merchant_category,
        txn.country,
        txn.channel,
        txn.timestamp.isoformat(),
    )
    return hashlib.sha256("\x1f".join(fields).encode()).hexdigest()


class Claim(enum.Enum):
    NEW = "new"  # publish it, then call complete() or abort()
    REPLAY = "replay"  # already accepted: answer as before
    CONFLICT = "conflict"  # another transaction under this id


@attrs.define
class _Entry:
    fingerprint: str
    expires: float
    answer: dict[str, Any] | None = None


class IdempotencyCache:
    """Accepted transaction ids with their fingerprint and answer, for ``window`` seconds."""

    def __init__(
        self,
        window: float = 600.0,
        *,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        wait: float = 30.0,
    ) -> None:
        if window <= 0 or max_entries < 1:
            raise ValueError("window and max_entries must be positive")
        self.window = window
        self.max_entries = max_entries
        self.clock = clock
        self.wait = wait
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._changed = threading.Condition()

    def __len__(self) -> int:
        return len(self._entries)

    def claim(self, txn: Transaction) -> tuple[Claim, dict[str, Any] | None]:
        """Claim ``txn``'s id: ``NEW`` (caller publishes), ``REPLAY`` (with the answer given
        before) or ``CONFLICT``. Waits while another request for the same id is publishing."""
        mark = fingerprint(txn)
        deadline = self.clock() + self.wait
        with self._changed:
            while True:
                self._expire()
                entry = self._entries.get(txn.transaction_id)
                if entry is None:
                    self._entries[txn.transaction_id] = _Entry(mark, self.clock() + self.window)
                    self._bound()
                    return Claim.NEW, None
                if entry.fingerprint != mark:
                    return Claim.CONFLICT, None
                if entry.answer is not None:
                    return Claim.REPLAY, entry.answer
                remaining = deadline - self.clock()
                if remaining <= 0:
                    # The first request is stuck publishing: let this one try (the bus and
                    # every consumer tolerate a duplicate; losing the payment is worse).
                    return Claim.NEW, None
                self._changed.wait(min(remaining, 1.0))

    def complete(self, transaction_id: str, answer: dict[str, Any]) -> None:
        """Record the answer given for a claimed id; later postings replay it."""
        with self._changed:
            entry = self._entries.get(transaction_id)
            if entry is not None:
                entry.answer = answer
                entry.expires = self.clock() + self.window
            self._changed.notify_all()

    def abort(self, transaction_id: str) -> None:
        """Forget a claimed id whose publish failed, so a retry publishes it."""
        with self._changed:
            entry = self._entries.get(transaction_id)
            if entry is not None and entry.answer is None:
                del self._entries[transaction_id]
            self._changed.notify_all()

    def _expire(self) -> None:
        now = self.clock()
        while self._entries:
            tid, oldest = next(iter(self._entries.items()))
            if oldest.expires > now or oldest.answer is None:
                break
            del self._entries[tid]

    def _bound(self) -> None:
        excess = len(self._entries) - self.max_entries
        if excess <= 0:
            return
        oldest_done = []
        for tid, entry in self._entries.items():  # oldest first; in-flight entries are kept
            if entry.answer is not None:
                oldest_done.append(tid)
                if len(oldest_done) == excess:
                    break
        for tid in oldest_done:
            del self._entries[tid]
