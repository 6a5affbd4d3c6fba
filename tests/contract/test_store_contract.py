"""The TwinStore contract: reads, creation and compare-and-swap updates, on every backend."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import attrs
import pytest

from corepay.errors import ConflictError
from corepay.models import Decision, Outcome, Path, Timings, Transaction, Twin
from corepay.store import TwinStore
from corepay.twin import TwinPolicy, apply_outcome
from corepay.wire import twin_to_wire

from .conftest import StoreFactory

Names = Callable[[str], str]

T0 = datetime(2026, 11, 24, 9, 30, tzinfo=timezone(timedelta(hours=1)))


def outcome(
    customer_id: str,
    n: int,
    *,
    amount: str = "12.50",
    decision: Decision = Decision.APPROVE,
    country: str = "DE",
    channel: str = "pos",
    merchant_id: str = "merchant-1",
    at: datetime = T0,
) -> Outcome:
    """The live outcome of the customer's ``n``-th payment."""
    txn = Transaction(
        transaction_id=f"{customer_id}-t{n}",
        customer_id=customer_id,
        amount=Decimal(amount),
        currency="EUR",
        merchant_id=merchant_id,
        merchant_category="5411",
        country=country,
        channel=channel,
        timestamp=at + timedelta(minutes=n),
    )
    return Outcome(
        transaction=txn,
        path=Path.LIVE,
        decision=decision,
        score=0.25,
        reasons=("amount_zscore",),
        model_version="test-1",
        timings=Timings(decided_at=txn.timestamp, elapsed_ms=1.5, gateway_ms=3.25),
    )


def varied_twin(customer_id: str) -> Twin:
    """A version-3 twin touching every field: decisions, countries, channels, odd amounts."""
    twin = apply_outcome(None, outcome(customer_id, 1, amount="0.0001"))
    twin = apply_outcome(
        twin,
        outcome(
            customer_id,
            2,
            amount="999999999999.9999",
            decision=Decision.DECLINE,
            country="FR",
            channel="ecommerce",
            merchant_id="merchant-2",
        ),
    )
    return apply_outcome(
        twin,
        outcome(
            customer_id,
            3,
            amount="12.50",
            decision=Decision.REVIEW,
            channel="atm",
            at=datetime(2026, 11, 24, 2, 0, tzinfo=timezone(timedelta(hours=-5))),
        ),
    )


def assert_same_twin(got: Twin | None, want: Twin) -> None:
    assert got is not None, f"twin {want.customer_id} is missing"
    assert attrs.asdict(got, recurse=False) == attrs.asdict(want, recurse=False)
    # What a client of the twin API sees, down to "12.50" staying "12.50".
    assert twin_to_wire(got) == twin_to_wire(want)


@pytest.fixture
def store(store_factory: StoreFactory) -> TwinStore:
    return store_factory()


def test_get_of_an_unknown_customer_is_none(store: TwinStore, fresh_name: Names):
    assert store.get(fresh_name("customer")) is None


def test_create_then_get_returns_an_equal_twin(store: TwinStore, fresh_name: Names):
    twin = varied_twin(fresh_name("customer"))
    store.compare_and_set(twin, expected_version=None)
    assert_same_twin(store.get(twin.customer_id), twin)


def test_a_second_create_conflicts_and_keeps_the_first(store: TwinStore, fresh_name: Names):
    customer_id = fresh_name("customer")
    first = apply_outcome(None, outcome(customer_id, 1, amount="10"))
    store.compare_and_set(first, expected_version=None)

    other = apply_outcome(None, outcome(customer_id, 2, amount="99"))
    with pytest.raises(ConflictError):
        store.compare_and_set(other, expected_version=None)
    assert_same_twin(store.get(customer_id), first)


def test_an_update_at_the_expected_version_replaces_the_twin(store: TwinStore, fresh_name: Names):
    customer_id = fresh_name("customer")
    created = apply_outcome(None, outcome(customer_id, 1))
    store.compare_and_set(created, expected_version=None)

    updated = apply_outcome(
        created, outcome(customer_id, 2, amount="40.01", decision=Decision.DECLINE)
    )
    store.compare_and_set(updated, expected_version=created.version)

    got = store.get(customer_id)
    assert_same_twin(got, updated)
    assert got is not None
    assert (got.version, got.count, got.declines) == (2, 2, 1)


@pytest.mark.parametrize("offset", [-1, 1], ids=["stale", "ahead"])
def test_a_wrong_expected_version_conflicts_and_changes_nothing(
    store: TwinStore, fresh_name: Names, offset: int
):
    customer_id = fresh_name("customer")
    v1 = apply_outcome(None, outcome(customer_id, 1))
    store.compare_and_set(v1, expected_version=None)
    v2 = apply_outcome(v1, outcome(customer_id, 2))
    store.compare_and_set(v2, expected_version=1)

    rival = apply_outcome(v1, outcome(customer_id, 3, amount="500"))
    with pytest.raises(ConflictError):
        store.compare_and_set(rival, expected_version=v2.version + offset)
    assert_same_twin(store.get(customer_id), v2)


def test_an_expected_version_for_a_customer_without_twin_conflicts(
    store: TwinStore, fresh_name: Names
):
    customer_id = fresh_name("customer")
    twin = apply_outcome(None, outcome(customer_id, 1))
    with pytest.raises(ConflictError):
        store.compare_and_set(twin, expected_version=1)
    assert store.get(customer_id) is None


def test_get_many_returns_only_the_twins_that_exist(store: TwinStore, fresh_name: Names):
    a, b, missing = fresh_name("customer"), fresh_name("customer"), fresh_name("customer")
    twins = {c: varied_twin(c) for c in (a, b)}
    for twin in twins.values():
        store.compare_and_set(twin, expected_version=None)

    got = store.get_many([a, missing, b, a])

    assert set(got) == {a, b}
    for customer_id, twin in twins.items():
        assert_same_twin(got[customer_id], twin)
    assert store.get_many([missing]) == {}
    assert store.get_many([]) == {}


def test_twins_of_different_customers_are_independent(store: TwinStore, fresh_name: Names):
    a, b = fresh_name("customer"), fresh_name("customer")
    twin_a = apply_outcome(None, outcome(a, 1, amount="1"))
    store.compare_and_set(twin_a, expected_version=None)
    twin_b = apply_outcome(None, outcome(b, 1, amount="2"))
    store.compare_and_set(twin_b, expected_version=None)  # not a conflict with a's twin
    store.compare_and_set(apply_outcome(twin_b, outcome(b, 2)), expected_version=1)
    assert_same_twin(store.get(a), twin_a)


WRITERS = 4
INCREMENTS = 50
MAX_ATTEMPTS = 1_000


def apply_with_retries(
    store: TwinStore, customer_id: str, numbers: Sequence[int], start: threading.Barrier
) -> int:
    """Apply one outcome per number through a read / apply / compare-and-set loop.

    Returns the conflicts met on the way.
    """
    policy = TwinPolicy(dedup_window=WRITERS * INCREMENTS)
    conflicts = 0
    start.wait(timeout=30)
    for n in numbers:
        for _ in range(MAX_ATTEMPTS):
            current = store.get(customer_id)
            updated = apply_outcome(current, outcome(customer_id, n), policy)
            expected = None if current is None else current.version
            try:
                store.compare_and_set(updated, expected_version=expected)
            except ConflictError:
                conflicts += 1
                continue
            break
        else:
            raise AssertionError(f"outcome {n} still conflicting after {MAX_ATTEMPTS} attempts")
    return conflicts


def test_concurrent_writers_lose_no_update(store: TwinStore, fresh_name: Names):
    customer_id = fresh_name("customer")
    start = threading.Barrier(WRITERS)
    shares = [range(w * INCREMENTS, (w + 1) * INCREMENTS) for w in range(WRITERS)]
    # Switch threads often, so that writers really interleave between get and compare_and_set.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        with ThreadPoolExecutor(WRITERS) as pool:
            futures = [
                pool.submit(apply_with_retries, store, customer_id, share, start)
                for share in shares
            ]
            for future in futures:
                future.result(timeout=120)
    finally:
        sys.setswitchinterval(switch_interval)

    twin = store.get(customer_id)
    assert twin is not None
    total = WRITERS * INCREMENTS
    assert (twin.count, twin.version, twin.approvals) == (total, total, total)
    assert sorted(twin.applied) == sorted(f"{customer_id}-t{n}" for n in range(total))
    assert twin.amount_sum == Decimal("12.50") * total


def test_a_store_is_a_context_manager(store_factory: StoreFactory, fresh_name: Names):
    with store_factory() as store:
        assert isinstance(store, TwinStore)
        assert store.get(fresh_name("customer")) is None
