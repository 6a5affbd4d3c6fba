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
import operator
from collections.abc import Iterable, Mapping

import attrs

from corepay.models import Decision, HistoryEntry, Outcome, Path, Timings, Transaction, Twin

__all__ = ["TwinPolicy", "apply_outcome", "apply_outcomes", "live_decision"]

# Wide enough that sums of squares of the largest amounts (15 integer digits, 4 places) over
# billions of transactions stay exact, so statistics never depend on the order of updates.
_EXACT = decimal.Context(prec=80, traps=[decimal.Inexact, decimal.InvalidOperation])
_ZERO = decimal.Decimal(0)


@attrs.frozen
class TwinPolicy:
    """Bounds of a twin document.

    Attributes:
        history_size: recent transactions kept in the twin, newest by timestamp.
        dedup_window: ids of the most recently applied transactions kept to drop redeliveries.
            Kafka redelivers what was handled since the last commit that landed, and the twin
            service waits for a commit to land before that could exceed this many outcomes,
            so it only needs to be at least a poll batch.
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


_history_key = operator.attrgetter("timestamp", "transaction_id")


def _counted(counts: Mapping[str, int] | None, keys: Iterable[str]) -> dict[str, int]:
    out = dict(counts) if counts else {}
    for key in keys:
        out[key] = out.get(key, 0) + 1
    return out


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
    decisions = [o.decision for o in fresh]
    amounts = [t.amount for t in txns]
    entries = [
        HistoryEntry(
            transaction_id=t.transaction_id,
            timestamp=t.timestamp,
            amount=t.amount,
            merchant_id=t.merchant_id,
            country=t.country,
            channel=t.channel,
            decision=o.decision,
        )
        for o, t in zip(fresh, txns, strict=True)
    ]
    entries.sort(key=_history_key)
    kept = twin.history if twin else ()
    if kept and _history_key(entries[0]) < _history_key(kept[-1]):
        history = sorted([*kept, *entries], key=_history_key)
    else:  # the usual case, payments arriving in time order: no need to sort it all again
        history = [*kept, *entries]
    applied = (*(twin.applied if twin else ()), *(o.transaction_id for o in fresh))
    first = min(t.timestamp for t in txns)
    last = max(t.timestamp for t in txns)
    amount_sum = twin.amount_sum if twin else _ZERO
    amount_sumsq = twin.amount_sumsq if twin else _ZERO
    for a in amounts:
        amount_sum = _EXACT.add(amount_sum, a)
        amount_sumsq = _EXACT.add(amount_sumsq, _EXACT.multiply(a, a))
    return Twin(
        customer_id=fresh[0].customer_id,
        version=(twin.version if twin else 0) + 1,
        first_seen=min(first, twin.first_seen) if twin else first,
        last_seen=max(last, twin.last_seen) if twin else last,
        count=(twin.count if twin else 0) + len(fresh),
        amount_sum=amount_sum,
        amount_sumsq=amount_sumsq,
        amount_min=min(amounts) if twin is None else min(twin.amount_min, *amounts),
        amount_max=max(amounts) if twin is None else max(twin.amount_max, *amounts),
        approvals=(twin.approvals if twin else 0) + decisions.count(Decision.APPROVE),
        declines=(twin.declines if twin else 0) + decisions.count(Decision.DECLINE),
        reviews=(twin.reviews if twin else 0) + decisions.count(Decision.REVIEW),
        merchants=_counted(twin.merchants if twin else None, (t.merchant_id for t in txns)),
        countries=_counted(twin.countries if twin else None, (t.country for t in txns)),
        channels=_counted(twin.channels if twin else None, (t.channel for t in txns)),
        history=tuple(history[-policy.history_size :]),
        applied=applied[-policy.dedup_window :],
    )
