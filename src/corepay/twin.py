"""How a live outcome changes a customer's twin. Pure: no I/O.

The rules make updates safe under Kafka's at-least-once delivery:

- idempotent: an outcome whose transaction is among the twin's last ``dedup_window`` applied
  transactions changes nothing (the same object is returned);
- order-independent: counts and decimal sums commute, ``last_seen`` is a maximum, and the
  history keeps the most recent ``history_size`` entries by timestamp, so any interleaving of
  the same outcomes gives the same statistics and history.
"""

from __future__ import annotations

import decimal
from collections import Counter
from collections.abc import Iterable
from datetime import datetime

import attrs

from corepay.models import Decision, HistoryEntry, Outcome, Path, Timings, Transaction, Twin

__all__ = ["TwinPolicy", "apply_outcome", "apply_outcomes", "live_decision"]

# Wide enough that sums of squares of the largest amounts (15 integer digits, 4 places) over
# billions of transactions stay exact, so statistics never depend on the order of updates.
_EXACT = decimal.Context(prec=80, traps=[decimal.Inexact, decimal.InvalidOperation])


@attrs.frozen
class TwinPolicy:
    """Bounds of a twin document.

    Attributes:
        history_size: recent transactions kept in the twin, newest by timestamp.
        dedup_window: ids of the most recently applied transactions kept to drop redeliveries.
            Kafka redelivers at most what was polled since the last commit, so this only needs
            to exceed one customer's share of a poll batch.
    """

    history_size: int = attrs.field(default=20, validator=attrs.validators.ge(1))
    dedup_window: int = attrs.field(default=1000, validator=attrs.validators.ge(1))


def live_decision(txn: Transaction, decision: Decision, model_version: str) -> Outcome:
    """A live outcome that records only the decision (what a twin learns from a payment), for
    replaying or projecting a customer's history outside the pipeline."""
    return Outcome(
        transaction=txn,
        path=Path.LIVE,
        decision=decision,
        score=None,
        reasons=(),
        model_version=model_version,
        timings=Timings(decided_at=txn.timestamp, elapsed_ms=0.0),
    )


def _history_key(entry: HistoryEntry) -> tuple[datetime, str]:
    return (entry.timestamp, entry.transaction_id)


def apply_outcomes(
    twin: Twin | None, outcomes: Iterable[Outcome], policy: TwinPolicy = TwinPolicy()
) -> Twin | None:
    """Apply live outcomes of one customer to their twin (``None``: no twin yet).

    Returns the new twin with ``version`` one higher, or the very same ``twin`` object when
    every outcome was already applied.

    Raises:
        ValueError: an outcome is not from the live path, or is for another customer.
    """
    fresh: list[Outcome] = []
    seen = set(twin.applied) if twin is not None else set()
    for outcome in outcomes:
        if outcome.path is not Path.LIVE:
            raise ValueError(f"only live outcomes update a twin, not {outcome.path.value}")
        if twin is not None and outcome.customer_id != twin.customer_id:
            raise ValueError(
                f"outcome for customer {outcome.customer_id!r} applied to twin of "
                f"{twin.customer_id!r}"
            )
        if outcome.transaction_id not in seen:
            seen.add(outcome.transaction_id)
            fresh.append(outcome)
    if not fresh:
        return twin
    customers = {o.customer_id for o in fresh}
    if len(customers) > 1:
        raise ValueError(f"outcomes of several customers given at once: {sorted(customers)}")
    return _merge(twin, fresh, policy)


def apply_outcome(twin: Twin | None, outcome: Outcome, policy: TwinPolicy = TwinPolicy()) -> Twin:
    """Apply one live outcome; see :func:`apply_outcomes`."""
    updated = apply_outcomes(twin, (outcome,), policy)
    assert updated is not None  # one outcome given, so there is a twin afterwards
    return updated


def _merge(twin: Twin | None, fresh: list[Outcome], policy: TwinPolicy) -> Twin:
    txns = [o.transaction for o in fresh]
    decisions = Counter(o.decision for o in fresh)
    amounts = [t.amount for t in txns]
    merchants = Counter(twin.merchants if twin else {})
    merchants.update(t.merchant_id for t in txns)
    countries = Counter(twin.countries if twin else {})
    countries.update(t.country for t in txns)
    channels = Counter(twin.channels if twin else {})
    channels.update(t.channel for t in txns)
    entries = [
        HistoryEntry(
            transaction_id=o.transaction_id,
            timestamp=o.transaction.timestamp,
            amount=o.transaction.amount,
            merchant_id=o.transaction.merchant_id,
            country=o.transaction.country,
            channel=o.transaction.channel,
            decision=o.decision,
        )
        for o in fresh
    ]
    history = sorted([*(twin.history if twin else ()), *entries], key=_history_key)
    applied = (*(twin.applied if twin else ()), *(o.transaction_id for o in fresh))
    first = min(t.timestamp for t in txns)
    last = max(t.timestamp for t in txns)
    with decimal.localcontext(_EXACT):
        amount_sum = sum(amounts, twin.amount_sum if twin else decimal.Decimal(0))
        amount_sumsq = sum(
            (a * a for a in amounts), twin.amount_sumsq if twin else decimal.Decimal(0)
        )
    return Twin(
        customer_id=fresh[0].customer_id,
        version=(twin.version if twin else 0) + 1,
        first_seen=min(first, twin.first_seen) if twin else first,
        last_seen=max(last, twin.last_seen) if twin else last,
        count=(twin.count if twin else 0) + len(fresh),
        amount_sum=amount_sum,
        amount_sumsq=amount_sumsq,
        amount_min=min([*amounts, *((twin.amount_min,) if twin else ())]),
        amount_max=max([*amounts, *((twin.amount_max,) if twin else ())]),
        approvals=(twin.approvals if twin else 0) + decisions[Decision.APPROVE],
        declines=(twin.declines if twin else 0) + decisions[Decision.DECLINE],
        reviews=(twin.reviews if twin else 0) + decisions[Decision.REVIEW],
        merchants=dict(merchants),
        countries=dict(countries),
        channels=dict(channels),
        history=tuple(history[-policy.history_size :]),
        applied=applied[-policy.dedup_window :],
    )
