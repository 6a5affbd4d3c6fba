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
from collections.abc import Iterable, Mapping, Sequence

import attrs

from corepay.models import Decision, HistoryEntry, Outcome, Path, Timings, Transaction, Twin

__all__ = ["TwinPolicy", "apply_outcome", "apply_outcomes", "live_decision", "project"]

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
    applied: Mapping[str, None] = twin.applied if twin is not None else {}
    seen: set[str] = set()
    for outcome in outcomes:
        if outcome.path is not Path.LIVE:
            raise ValueError(f"only live outcomes update a twin, not {outcome.path.value}")
        if twin is not None and outcome.customer_id != twin.customer_id:
            raise ValueError(
                f"outcome for customer {outcome.customer_id!r} applied to twin of "
                f"{twin.customer_id!r}"
            )
        tid = outcome.transaction_id
        if tid not in seen and tid not in applied:
            seen.add(tid)
            fresh.append(outcome)
    if not fresh:
        return twin
    customers = {o.customer_id for o in fresh}
    if len(customers) > 1:
        raise ValueError(f"outcomes of several customers given at once: {sorted(customers)}")
    return _merge(twin, [(o.transaction, o.decision) for o in fresh], policy)


def apply_outcome(twin: Twin | None, outcome: Outcome, policy: TwinPolicy = TwinPolicy()) -> Twin:
    """Apply one live outcome; see :func:`apply_outcomes`."""
    updated = apply_outcomes(twin, (outcome,), policy)
    assert updated is not None  # one outcome given, so there is a twin afterwards
    return updated


def project(
    twin: Twin | None,
    txns: Sequence[Transaction],
    decision: Decision = Decision.APPROVE,
    policy: TwinPolicy = TwinPolicy(),
) -> Twin | None:
    """The twin as it will be once these payments of its customer are applied with
    ``decision``: what the simulation path scores a payment on when the twin it read does not
    show the customer's payments decided just before.

    The same twin as :func:`apply_outcomes` gives for their :func:`live_decision` outcomes,
    without building those: the payments must be distinct and not applied to ``twin`` yet
    (this is not checked). ``twin`` itself when there are none.
    """
    if not txns:
        return twin
    return _merge(twin, [(t, decision) for t in txns], policy)


def _merge(
    twin: Twin | None, fresh: list[tuple[Transaction, Decision]], policy: TwinPolicy
) -> Twin:
    # One pass over the payments: this runs for every live outcome (and for the simulation
    # path's fresher twins), so it keeps to plain loops over locals.
    if twin is None:
        version = count = approvals = declines = reviews = 0
        amount_sum = amount_sumsq = _ZERO
        merchants: dict[str, int] = {}
        countries: dict[str, int] = {}
        channels: dict[str, int] = {}
        kept: tuple[HistoryEntry, ...] = ()
        applied: dict[str, None] = {}
    else:
        version, count = twin.version, twin.count
        approvals, declines, reviews = twin.approvals, twin.declines, twin.reviews
        amount_sum, amount_sumsq = twin.amount_sum, twin.amount_sumsq
        merchants, countries = dict(twin.merchants), dict(twin.countries)
        channels = dict(twin.channels)
        kept, applied = twin.history, dict(twin.applied)
    add, multiply = _EXACT.add, _EXACT.multiply
    entries = []
    # min() and max() keep the first of equal values: so do these (a tie may differ in form,
    # 1.0 and 1.00, or an instant in two offsets).
    first = last = fresh[0][0].timestamp
    low = high = fresh[0][0].amount
    for t, decision in fresh:
        amount, stamp = t.amount, t.timestamp
        entries.append(
            HistoryEntry(
                t.transaction_id, stamp, amount, t.merchant_id, t.country, t.channel, decision
            )
        )
        if stamp < first:
            first = stamp
        if stamp > last:
            last = stamp
        if amount < low:
            low = amount
        if amount > high:
            high = amount
        amount_sum = add(amount_sum, amount)
        amount_sumsq = add(amount_sumsq, multiply(amount, amount))
        if decision == Decision.APPROVE:
            approvals += 1
        elif decision == Decision.DECLINE:
            declines += 1
        elif decision == Decision.REVIEW:
            reviews += 1
        merchants[t.merchant_id] = merchants.get(t.merchant_id, 0) + 1
        countries[t.country] = countries.get(t.country, 0) + 1
        channels[t.channel] = channels.get(t.channel, 0) + 1
    if len(entries) > 1:
        entries.sort(key=_history_key)
    if kept and _history_key(entries[0]) < _history_key(kept[-1]):
        history = sorted([*kept, *entries], key=_history_key)
    else:  # the usual case, payments arriving in time order: no need to sort it all again
        history = [*kept, *entries]
    for t, _ in fresh:
        applied[t.transaction_id] = None
    for _ in range(len(applied) - policy.dedup_window):
        del applied[next(iter(applied))]  # the oldest
    return Twin(
        fresh[0][0].customer_id,
        version + 1,
        first if twin is None else min(first, twin.first_seen),
        last if twin is None else max(last, twin.last_seen),
        count + len(fresh),
        amount_sum,
        amount_sumsq,
        low if twin is None else min(twin.amount_min, low),
        high if twin is None else max(twin.amount_max, high),
        approvals,
        declines,
        reviews,
        merchants,
        countries,
        channels,
        tuple(history[-policy.history_size :]),
        applied,
    )
