"""How live outcomes change a twin: idempotent, order-independent, bounded, exact."""

from __future__ import annotations

import decimal
import itertools
import math
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import strategies as cst
from corepay.backends.memory import MemoryTwinStore
from corepay.models import Decision, Outcome, Path, Timings, Transaction, Twin
from corepay.services.twin import update_twin
from corepay.twin import TwinPolicy, apply_outcome, apply_outcomes, live_decision, project
from corepay.wire import parse_transaction

STATS = (
    "customer_id",
    "count",
    "amount_sum",
    "amount_sumsq",
    "amount_min",
    "amount_max",
    "amount_mean",
    "amount_variance",
    "approvals",
    "declines",
    "reviews",
    "merchants",
    "countries",
    "channels",
    "first_seen",
    "last_seen",
    "history",
)


def stats(twin: Twin | None) -> dict[str, Any]:
    """What a twin says about its customer; leaves out ``version`` and ``applied``, which
    record how the twin was built rather than what it was built from."""
    assert twin is not None
    return {name: getattr(twin, name) for name in STATS}


def expected_stats(outcomes: Sequence[Outcome], policy: TwinPolicy) -> dict[str, Any]:
    """The statistics of the given (distinct) outcomes, computed from scratch."""
    txns = [o.transaction for o in outcomes]
    amounts = [Fraction(t.amount) for t in txns]
    n = len(amounts)
    total = sum(amounts, Fraction(0))
    total_sq = sum((a * a for a in amounts), Fraction(0))
    variance = total_sq / n - (total / n) ** 2
    decisions = Counter(o.decision for o in outcomes)
    newest = sorted(outcomes, key=lambda o: (o.transaction.timestamp, o.transaction_id))
    return {
        "customer_id": txns[0].customer_id,
        "count": n,
        "amount_sum": _decimal(total),
        "amount_sumsq": _decimal(total_sq),
        "amount_min": min(t.amount for t in txns),
        "amount_max": max(t.amount for t in txns),
        # Correctly rounded to the current decimal context, as a Decimal division would be.
        "amount_mean": Decimal(total.numerator) / Decimal(total.denominator * n),
        "amount_variance": Decimal(variance.numerator) / Decimal(variance.denominator),
        "approvals": decisions[Decision.APPROVE],
        "declines": decisions[Decision.DECLINE],
        "reviews": decisions[Decision.REVIEW],
        "merchants": dict(Counter(t.merchant_id for t in txns)),
        "countries": dict(Counter(t.country for t in txns)),
        "channels": dict(Counter(t.channel for t in txns)),
        "first_seen": min(t.timestamp for t in txns),
        "last_seen": max(t.timestamp for t in txns),
        "history": tuple(
            (o.transaction_id, o.transaction.timestamp, o.transaction.amount, o.decision)
            for o in newest[-policy.history_size :]
        ),
    }


def _decimal(value: Fraction) -> Decimal:
    # Sums of amounts with at most 4 (squares: 8) places are finite decimals; computed exactly.
    with decimal.localcontext(prec=100, traps=[decimal.Inexact]):
        return Decimal(value.numerator) / Decimal(value.denominator)


def history_view(twin: Twin) -> tuple[Any, ...]:
    return tuple((h.transaction_id, h.timestamp, h.amount, h.decision) for h in twin.history)


def live(txn: Transaction, decision: Decision = Decision.APPROVE) -> Outcome:
    return Outcome(
        transaction=txn,
        path=Path.LIVE,
        decision=decision,
        score=0.1,
        reasons=(),
        model_version="m1",
        timings=Timings(decided_at=datetime(2026, 1, 1, tzinfo=UTC), elapsed_ms=1.0),
    )


def txn(transaction_id: str, customer_id: str = "cust-1", **changes: Any) -> Transaction:
    base = Transaction(
        transaction_id=transaction_id,
        customer_id=customer_id,
        amount=Decimal("10.00"),
        currency="EUR",
        merchant_id="m-1",
        merchant_category="5411",
        country="DE",
        channel="pos",
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
    )
    return attrs.evolve(base, **changes)


@st.composite
def customer_outcomes(draw: st.DrawFn, max_size: int = 25) -> list[Outcome]:
    """Distinct live outcomes of one customer."""
    customer = draw(cst.identifiers())
    txns = draw(
        st.lists(
            cst.transactions(customer_id=customer),
            min_size=1,
            max_size=max_size,
            unique_by=lambda t: t.transaction_id,
        )
    )
    return [draw(cst.outcomes(path=Path.LIVE, transaction=t)) for t in txns]


@st.composite
def redeliveries(draw: st.DrawFn) -> tuple[list[Outcome], list[Outcome], TwinPolicy]:
    """Distinct outcomes; the same in any order with any duplicates; a policy whose dedup
    window holds them all."""
    unique = draw(customer_outcomes())
    extra = draw(st.lists(st.sampled_from(unique), max_size=2 * len(unique)))
    delivered = draw(st.permutations([*unique, *extra]))
    policy = TwinPolicy(
        history_size=draw(st.integers(1, 8)),
        dedup_window=draw(st.integers(len(unique), len(unique) + 10)),
    )
    return unique, delivered, policy


def apply_one_by_one(outcomes: Sequence[Outcome], policy: TwinPolicy) -> Twin | None:
    twin = None
    for outcome in outcomes:
        twin = apply_outcome(twin, outcome, policy)
    return twin


def apply_in_batches(
    outcomes: Sequence[Outcome], cuts: Sequence[int], policy: TwinPolicy
) -> Twin | None:
    twin = None
    bounds = [0, *sorted(cuts), len(outcomes)]
    for start, end in itertools.pairwise(bounds):
        twin = apply_outcomes(twin, outcomes[start:end], policy)
    return twin


@given(
    customer_outcomes(max_size=12),
    st.integers(0, 12),
    st.sampled_from(Decision),
    st.integers(1, 8),
    st.integers(1, 14),
)
def test_a_projected_twin_is_the_twin_its_payments_would_make(
    outcomes: list[Outcome], split: int, decision: Decision, history_size: int, window: int
) -> None:
    policy = TwinPolicy(history_size=history_size, dedup_window=window)
    twin = apply_outcomes(None, outcomes[:split], policy)
    ahead = [o.transaction for o in outcomes[split:]]

    projected = project(twin, ahead, decision, policy)

    expected = apply_outcomes(twin, [live_decision(t, decision, "any") for t in ahead], policy)
    assert projected == expected
    assert (projected is twin) == (not ahead)


# --- idempotence and order ----------------------------------------------------------------------


@given(cst.outcomes(path=Path.LIVE), st.integers(0, 5))
def test_applying_the_same_outcome_twice_changes_nothing(outcome: Outcome, others: int) -> None:
    twin = apply_outcome(None, outcome)
    for i in range(others):
        twin = apply_outcome(
            twin, live(attrs.evolve(outcome.transaction, transaction_id=f"other-{i}"))
        )

    assert apply_outcome(twin, outcome) is twin
    assert apply_outcomes(twin, [outcome, outcome]) is twin


@given(redeliveries(), st.data())
def test_any_order_with_duplicates_gives_the_statistics_of_the_distinct_outcomes(
    case: tuple[list[Outcome], list[Outcome], TwinPolicy], data: st.DataObject
) -> None:
    unique, delivered, policy = case
    cuts = data.draw(st.lists(st.integers(0, len(delivered)), max_size=4))

    in_order = apply_one_by_one(unique, policy)
    redelivered = apply_one_by_one(delivered, policy)
    batched = apply_in_batches(delivered, cuts, policy)

    assert stats(redelivered) == stats(in_order)
    assert stats(batched) == stats(in_order)
    expected = expected_stats(unique, policy)
    actual = stats(in_order)
    actual["history"] = history_view(in_order)  # type: ignore[arg-type]
    # Variance is checked on its own below, so a rounding error there does not hide the rest.
    del expected["amount_variance"], actual["amount_variance"]
    assert actual == expected
    assert in_order is not None and in_order.count == len(unique)


@given(st.lists(cst.amounts().map(lambda pair: pair[1]), min_size=1, max_size=25))
def test_variance_is_the_exact_population_variance_correctly_rounded(
    amounts: list[Decimal],
) -> None:
    outcomes = [live(txn(f"t{i}", amount=a)) for i, a in enumerate(amounts)]

    twin = apply_outcomes(None, outcomes)

    assert twin is not None
    assert twin.amount_variance == expected_stats(outcomes, TwinPolicy())["amount_variance"]


@given(st.lists(cst.amounts().map(lambda pair: pair[1]), min_size=1, max_size=25))
def test_float_moments_are_the_floats_nearest_the_exact_mean_and_variance(
    amounts: list[Decimal],
) -> None:
    twin = apply_outcomes(None, [live(txn(f"t{i}", amount=a)) for i, a in enumerate(amounts)])

    assert twin is not None
    n, exact = len(amounts), [Fraction(a) for a in amounts]
    mean = sum(exact) / n
    variance = sum((x - mean) ** 2 for x in exact) / n
    assert twin.amount_moments == (float(mean), float(variance))  # Fraction: nearest float
    assert attrs.evolve(twin, count=0).amount_moments == (0.0, 0.0)
    broken = attrs.evolve(twin, amount_sum=Decimal("NaN")).amount_moments  # as the decimals
    assert math.isnan(broken[0]) and math.isnan(broken[1])
    # Sums no amounts make (a corrupt document): as the decimals give them, not an error.
    huge = attrs.evolve(twin, amount_sum=Decimal("1E+400"), amount_sumsq=Decimal("1E+800"))
    assert huge.amount_moments == (float(huge.amount_mean), float(huge.amount_variance))


def test_variance_of_close_large_amounts_is_not_lost_to_rounding() -> None:
    amounts = ["100000000000.0001", "100000000000.0002"]
    twin = apply_outcomes(
        None, [live(txn(f"t{i}", amount=Decimal(a))) for i, a in enumerate(amounts)]
    )

    assert twin is not None
    assert twin.amount_variance == Decimal("2.5E-9")
    assert twin.amount_moments[1] == 2.5e-9


# --- history ------------------------------------------------------------------------------------


@given(customer_outcomes(max_size=30), st.integers(1, 10))
def test_history_holds_the_most_recent_by_timestamp_and_is_bounded(
    outcomes: list[Outcome], size: int
) -> None:
    policy = TwinPolicy(history_size=size)

    twin = apply_one_by_one(outcomes, policy)

    assert twin is not None
    assert len(twin.history) == min(size, len(outcomes))
    newest = sorted(outcomes, key=lambda o: (o.transaction.timestamp, o.transaction_id))[-size:]
    assert [h.transaction_id for h in twin.history] == [o.transaction_id for o in newest]


@given(customer_outcomes(max_size=16), st.integers(1, 20), st.lists(st.integers(0, 16)))
def test_a_twin_remembers_the_last_ids_of_its_window_and_only_those_apply_as_no_ops(
    outcomes: list[Outcome], window: int, cuts: list[int]
) -> None:
    policy = TwinPolicy(dedup_window=window)
    cuts = [c for c in cuts if c <= len(outcomes)]
    twin = apply_in_batches(outcomes, cuts, policy)

    ids = [o.transaction_id for o in outcomes]
    assert twin is not None and list(twin.applied) == ids[-window:]  # oldest first
    for outcome in outcomes:
        again = apply_outcome(twin, outcome, policy)
        # A redelivery the window still holds changes nothing; one past it is applied anew.
        assert (again is twin) == (outcome.transaction_id in ids[-window:])
        if again is not twin:
            assert again.count == twin.count + 1
            assert list(again.applied) == [*ids[-window:], outcome.transaction_id][-window:]


def test_a_twins_applied_ids_given_in_any_iterable_are_kept_in_their_order() -> None:
    twin = apply_outcome(None, live(txn("t-1")))
    # The order decides which id the window lets go first: twins differing in it differ.
    assert attrs.evolve(twin, applied=("a", "b")) != attrs.evolve(twin, applied=("b", "a"))
    for ids in (("b", "a", "c"), ["b", "a", "c"], iter(["b", "a", "c"])):
        assert list(attrs.evolve(twin, applied=ids).applied) == ["b", "a", "c"]
    assert apply_outcome(attrs.evolve(twin, applied=("b", "t-2")), live(txn("t-2"))).count == 1


def test_history_orders_timestamps_a_microsecond_apart() -> None:
    # Far in the future a float of epoch seconds cannot tell these apart; the wire accepts them.
    earlier = txn("b-earlier", timestamp=datetime(9999, 12, 30, 23, 59, 59, 999998, tzinfo=UTC))
    later = txn("a-later", timestamp=datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC))

    twin = apply_outcomes(None, [live(later), live(earlier)], TwinPolicy(history_size=1))

    assert twin is not None
    assert [h.transaction_id for h in twin.history] == ["a-later"]


# --- refusals -----------------------------------------------------------------------------------


@given(cst.outcomes(path=Path.SIMULATION))
def test_simulation_outcomes_are_refused(outcome: Outcome) -> None:
    twin = apply_outcome(None, live(attrs.evolve(outcome.transaction, transaction_id="x")))

    with pytest.raises(ValueError, match="live"):
        apply_outcome(None, outcome)
    with pytest.raises(ValueError, match="live"):
        apply_outcome(twin, outcome)


def test_outcomes_of_another_customer_are_refused() -> None:
    twin = apply_outcome(None, live(txn("t1", customer_id="alice")))

    with pytest.raises(ValueError, match="bob"):
        apply_outcome(twin, live(txn("t2", customer_id="bob")))
    with pytest.raises(ValueError):
        apply_outcomes(None, [live(txn("t1", customer_id="alice")), live(txn("t2", "bob"))])


def test_no_outcomes_and_no_twin_gives_no_twin() -> None:
    assert apply_outcomes(None, []) is None


# --- the twin service's compare-and-swap update -------------------------------------------------


@given(redeliveries())
def test_redelivered_batch_leaves_the_stored_twin_unchanged(
    case: tuple[list[Outcome], list[Outcome], TwinPolicy],
) -> None:
    unique, delivered, policy = case
    customer = unique[0].customer_id
    store = MemoryTwinStore()

    changed, conflicts = update_twin(store, customer, delivered, policy=policy)
    stored = store.get(customer)
    again, _ = update_twin(store, customer, delivered, policy=policy)
    reordered, _ = update_twin(store, customer, list(reversed(unique)), policy=policy)

    assert (changed, conflicts) == (True, 0)
    assert stored is not None and stored.version == 1
    assert (again, reordered) == (False, False)
    assert store.get(customer) == stored
    assert stats(stored) == stats(apply_one_by_one(unique, policy))


def _paid(tid: str, amount: str, stamp: str) -> Outcome:
    txn = parse_transaction(
        {
            "transaction_id": tid,
            "customer_id": "c1",
            "amount": amount,
            "currency": "EUR",
            "merchant_id": "m1",
            "merchant_category": "5411",
            "country": "DE",
            "channel": "pos",
            "timestamp": stamp,
        }
    )
    return live_decision(txn, Decision.APPROVE, "m1")


def test_of_equal_amounts_and_instants_the_first_written_is_kept() -> None:
    # 1.0, 1.00 and 1 are equal amounts, and one instant may be written in several offsets:
    # a twin's minimum and maximum, first and last seen keep the form first met, as min() and
    # max() do, with the batch's own before the twin's.
    twin = apply_outcomes(
        None,
        [
            _paid("t1", "1.0", "2026-11-24T10:00:00+00:00"),
            _paid("t2", "5.0", "2026-11-24T12:00:00Z"),
        ],
    )
    batch = [
        _paid("t3", "1.00", "2026-11-24T11:00:00+01:00"),
        _paid("t4", "1", "2026-11-24T12:00:00+01:00"),
        _paid("t5", "5", "2026-11-24T14:00:00+02:00"),
        _paid("t6", "5.00", "2026-11-24T13:00:00+01:00"),
        _paid("t7", "3", "2026-11-24T09:00:00-01:00"),
    ]

    def forms(t: Twin | None) -> list[str]:
        assert t is not None
        return [str(x) for x in (t.amount_min, t.amount_max, t.first_seen, t.last_seen)]

    assert forms(twin) == ["1.0", "5.0", "2026-11-24 10:00:00+00:00", "2026-11-24 12:00:00+00:00"]
    assert forms(apply_outcomes(twin, batch)) == [
        "1.0",
        "5.0",
        "2026-11-24 11:00:00+01:00",
        "2026-11-24 14:00:00+02:00",
    ]
    assert forms(apply_outcomes(None, batch)) == [
        "1.00",
        "5",
        "2026-11-24 11:00:00+01:00",
        "2026-11-24 14:00:00+02:00",
    ]
