"""The whole pipeline in one process: every invariant a user relies on, end to end."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from decimal import Decimal
from typing import Any

import pytest

from corepay import (
    DIVERGENCE_ALERT,
    LIVE_OUTCOME,
    RAW_TRANSACTIONS,
    SIMULATION_OUTCOME,
    AlertKind,
    BackendTimeoutError,
    MemoryBus,
    MemoryTwinStore,
    Pairing,
    PaymentGateway,
    Pipeline,
    TrafficGenerator,
    UnavailableError,
    ValidationError,
    wire,
)
from corepay.models import Transaction, Twin
from corepay.store import TwinStore


def _values(bus: MemoryBus, topic: str) -> list[dict]:
    return [json.loads(m.value) for m in bus.messages(topic)]


def _run(pipeline: Pipeline, count: int, customers: int, seed: int = 7) -> list[dict]:
    requests = list(TrafficGenerator(customers=customers, seed=seed).requests(count))
    for start in range(0, count, 200):
        pipeline.submit_many(requests[start : start + 200])
        pipeline.drain()
    return requests


def test_submit_many_puts_the_requests_before_an_invalid_one_on_the_bus_and_names_its_fault() -> (
    None
):
    requests = list(TrafficGenerator(customers=5, seed=1).requests(6))
    requests[3] = {**requests[3], "currency": "euro"}
    bus = MemoryBus()
    with Pipeline(bus) as pipeline:
        with pytest.raises(ValidationError) as info:
            pipeline.submit_many(requests)
        pipeline.drain()

        assert [e.field for e in info.value.errors] == ["currency"]
        assert [json.loads(m.value)["transaction_id"] for m in bus.messages(RAW_TRANSACTIONS)] == [
            r["transaction_id"] for r in requests[:3]
        ]
        assert pipeline.submitted == 3
        assert sum(pipeline.decisions["live"].values()) == 3


def test_every_transaction_is_decided_on_both_paths_and_divergences_alerted_exactly() -> None:
    bus, store = MemoryBus(partitions=4), MemoryTwinStore()
    pairings: list[Pairing] = []
    with Pipeline(bus, store, seed=3, batch_size=150, on_pairing=pairings.append) as pipeline:
        requests = _run(pipeline, 1500, customers=60)

    ids = [r["transaction_id"] for r in requests]
    assert len(set(ids)) == len(ids) == 1500
    live = _values(bus, LIVE_OUTCOME)
    simulation = _values(bus, SIMULATION_OUTCOME)
    # One outcome per path per transaction, nothing lost, nothing doubled.
    assert sorted(o["transaction_id"] for o in live) == sorted(ids)
    assert sorted(o["transaction_id"] for o in simulation) == sorted(ids)
    assert {o["path"] for o in live} == {"live"}
    assert {o["path"] for o in simulation} == {"simulation"}

    # Alerts exactly for the transactions whose paths disagree or failed, one each.
    by_id_live = {o["transaction_id"]: o for o in live}
    expected = {}
    for sim in simulation:
        tid = sim["transaction_id"]
        liv = by_id_live[tid]
        if liv["error"] or sim["error"]:
            expected[tid] = AlertKind.PATH_ERROR.value
        elif liv["decision"] != sim["decision"]:
            stale = sim["twin_lag"] > 0 and sim["fresh_decision"] == liv["decision"]
            expected[tid] = (AlertKind.STALE_TWIN if stale else AlertKind.DECISION_MISMATCH).value
    alerts = _values(bus, DIVERGENCE_ALERT)
    assert {a["transaction_id"]: a["kind"] for a in alerts} == expected
    assert len(alerts) == len(expected) > 0
    assert {AlertKind.STALE_TWIN.value, AlertKind.DECISION_MISMATCH.value} <= set(expected.values())
    assert len({a["alert_id"] for a in alerts}) == len(alerts)
    assert len(pairings) == 1500 and pipeline.detector.pending == 0

    # Each customer's twin counts exactly their live outcomes, with the right statistics.
    per_customer: dict[str, list[dict]] = defaultdict(list)
    for o in live:
        per_customer[o["customer_id"]].append(o)
    assert len(store) == len(per_customer)
    for customer_id, outcomes in per_customer.items():
        twin = store.get(customer_id)
        assert isinstance(twin, Twin)
        decisions = Counter(o["decision"] for o in outcomes)
        amounts = [Decimal(o["transaction"]["amount"]) for o in outcomes]
        assert twin.count == len(outcomes)
        assert twin.amount_sum == sum(amounts)
        assert (twin.approvals, twin.declines, twin.reviews) == (
            decisions["APPROVE"],
            decisions["DECLINE"],
            decisions["REVIEW"],
        )
        assert twin.merchants == dict(Counter(o["transaction"]["merchant_id"] for o in outcomes))


def test_every_message_is_keyed_by_customer_and_outcome_topics_are_co_partitioned() -> None:
    bus = MemoryBus(partitions=6)
    with Pipeline(bus, seed=1) as pipeline:
        _run(pipeline, 300, customers=25)
    partitions: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for topic in (RAW_TRANSACTIONS, LIVE_OUTCOME, SIMULATION_OUTCOME, DIVERGENCE_ALERT):
        for message in bus.messages(topic):
            assert message.key == json.loads(message.value)["customer_id"]
            partitions[message.key].add((topic, message.partition))
    for customer, placed in partitions.items():
        assert len({p for _, p in placed}) == 1, f"{customer} spread over {placed}"


class _ElsewhereBus(MemoryBus):
    """A memory bus that says its readers may be in other processes, as Kafka's may."""

    in_process = False


def test_in_one_process_messages_are_carried_with_the_same_results_as_decoding_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: Counter[str] = Counter()
    for name in ("_outcome_from", "_message_json", "transaction_to_wire", "_outcome_document"):
        original = getattr(wire, name)
        monkeypatch.setattr(wire, name, _counting(calls, name, original))
    results = []
    for bus in (MemoryBus(), _ElsewhereBus()):
        for kept in (wire._KNOWN_TRANSACTIONS, wire._VALIDATED):
            kept.clear()  # nothing from the run before, nothing let go during this one
        calls.clear()
        store, pairings = MemoryTwinStore(), []
        with Pipeline(bus, store, seed=5, on_pairing=pairings.append, clock=lambda: 1.8e9) as p:
            _run(p, 1200, customers=40)
        results.append(
            (
                sorted((x.transaction_id, x.alert and x.alert.kind) for x in pairings),
                {t.customer_id: t for t in store},
                p.decisions,
                dict(calls),
            )
        )
    (carried, *same), (elsewhere, *again) = results

    assert same[:-1] == again[:-1] and len(carried) == len(elsewhere) == 1200
    alerts = sum(1 for _, kind in carried if kind)
    assert alerts
    # Over the memory bus the services handed each other transactions and outcomes as they
    # are: nothing was decoded, and only the alerts were encoded (each with its transaction
    # and its two outcomes). Over the other, ingestion encoded every transaction, the engine
    # decoded it and encoded it again into its outcomes, and the detector into its alerts;
    # all three reads of every payment's outcomes were decoded (and more: the twin service,
    # starting on a store that does not outlive it, replays live_outcome).
    assert same[-1] == {"transaction_to_wire": alerts, "_outcome_document": 2 * alerts}
    assert again[-1]["_message_json"] == 1200
    assert again[-1]["transaction_to_wire"] == 2 * 1200 + alerts
    assert again[-1]["_outcome_document"] == 2 * 1200 + 2 * alerts
    assert again[-1]["_outcome_from"] >= 3 * 1200


def _counting(calls: Counter[str], name: str, function: Any) -> Any:
    def counted(*args: Any) -> Any:
        calls[name] += 1
        return function(*args)

    return counted


class _DownGateway(PaymentGateway):
    """A gateway that never answers, the way a real one fails: timeouts and refusals."""

    def __init__(self) -> None:
        self.calls = 0

    def authorize(self, txn: Transaction):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls % 2:
            raise BackendTimeoutError("no answer within 1500 ms")
        raise UnavailableError("connection refused")


def test_a_failing_gateway_yields_live_outcomes_with_a_reason_never_a_lost_transaction() -> None:
    bus = MemoryBus()
    gateway = _DownGateway()
    with Pipeline(bus, gateway=gateway) as pipeline:
        _run(pipeline, 200, customers=10)
    live = _values(bus, LIVE_OUTCOME)
    assert len(live) == 200 and gateway.calls > 0
    errors = Counter(o["error"] for o in live)
    assert errors["GATEWAY_TIMEOUT"] > 0 and errors["GATEWAY_UNAVAILABLE"] > 0
    # Transactions the risk policy stopped never reached the gateway, so carry no error.
    assert errors["GATEWAY_TIMEOUT"] + errors["GATEWAY_UNAVAILABLE"] == gateway.calls
    assert len(_values(bus, SIMULATION_OUTCOME)) == 200
    kinds = Counter(a["kind"] for a in _values(bus, DIVERGENCE_ALERT))
    assert kinds[AlertKind.PATH_ERROR.value] == gateway.calls


class _FlakyStore(TwinStore):
    """A real store in front of a memory one that refuses every ``fail_every``-th call."""

    def __init__(self, fail_every: int) -> None:
        self.inner = MemoryTwinStore()
        self.fail_every = fail_every
        self.calls = 0
        self.refused = 0

    def _maybe_refuse(self) -> None:
        self.calls += 1
        if self.calls % self.fail_every == 0:
            self.refused += 1
            raise UnavailableError("store unreachable")

    def get(self, customer_id: str) -> Twin | None:
        self._maybe_refuse()
        return self.inner.get(customer_id)

    def compare_and_set(self, twin: Twin, *, expected_version: int | None) -> None:
        self._maybe_refuse()
        self.inner.compare_and_set(twin, expected_version=expected_version)


def test_a_flaky_twin_store_loses_nothing_and_applies_nothing_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("corepay.services.runner.time.sleep", lambda s: None)
    monkeypatch.setattr("corepay.services.twin.time.sleep", lambda s: None)
    bus, store = MemoryBus(), _FlakyStore(fail_every=7)
    with Pipeline(bus, store) as pipeline:
        _run(pipeline, 400, customers=20)
        for _ in range(50):  # a retried batch waits for the next step
            pipeline.drain()
    assert store.refused > 0
    live = _values(bus, LIVE_OUTCOME)
    assert len(live) == 400
    # Simulation reads that hit the refusals became error outcomes, not losses.
    simulation = _values(bus, SIMULATION_OUTCOME)
    assert len(simulation) == 400
    assert {o["error"] for o in simulation} <= {None, "TWIN_UNAVAILABLE"}
    counts = Counter(o["customer_id"] for o in live)
    for customer_id, n in counts.items():
        twin = store.inner.get(customer_id)
        assert twin is not None and twin.count == n
