"""Pairing live and simulation outcomes: the pure detector, then the service over a MemoryBus."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import strategies as cst
from corepay.backends.memory import MemoryBus, partition_for
from corepay.bus import (
    DIVERGENCE_ALERT,
    LIVE_OUTCOME,
    SIMULATION_OUTCOME,
    Delivery,
    Record,
    TopicPartition,
    dead_letter_topic,
)
from corepay.divergence import DivergenceDetector, Pairing, alert_id_for
from corepay.errors import UnavailableError
from corepay.models import AlertKind, Decision, DivergenceAlert, Outcome, Path, Timings, Transaction
from corepay.services import detector as detector_module
from corepay.services.detector import DETECTOR_CHANGELOG, DetectorService
from corepay.wire import decode_alert, encode_outcome

GROUP = "corepay-detector"


@attrs.frozen
class Case:
    """One transaction with both its outcomes, and the alert it deserves (``None``: none)."""

    live: Outcome
    simulation: Outcome

    @property
    def transaction_id(self) -> str:
        return self.live.transaction_id

    @property
    def expected(self) -> AlertKind | None:
        if self.live.error is not None or self.simulation.error is not None:
            return AlertKind.PATH_ERROR
        if self.live.decision is not self.simulation.decision:
            return AlertKind.DECISION_MISMATCH
        return None


_ERRORS = st.one_of(st.none(), st.none(), st.sampled_from(["GATEWAY_TIMEOUT", "TWIN_DOWN"]))


@st.composite
def cases(draw: st.DrawFn, transaction: Transaction | None = None) -> Case:
    txn = transaction or draw(cst.transactions())
    decision = draw(st.sampled_from(Decision))
    # Half the time both paths agree, so matching pairs are as common as divergent ones.
    other = decision if draw(st.booleans()) else draw(st.sampled_from(Decision))
    return Case(
        live=draw(cst.outcomes(path=Path.LIVE, transaction=txn, decision=decision, error=_ERRORS)),
        simulation=draw(
            cst.outcomes(path=Path.SIMULATION, transaction=txn, decision=other, error=_ERRORS)
        ),
    )


@st.composite
def case_sets(draw: st.DrawFn, max_size: int = 12) -> list[Case]:
    customers = draw(st.lists(cst.identifiers(), min_size=1, max_size=4, unique=True))
    txns = draw(
        st.lists(
            cst.transactions(customer_id=st.sampled_from(customers)),
            min_size=1,
            max_size=max_size,
            unique_by=lambda t: t.transaction_id,
        )
    )
    return [draw(cases(t)) for t in txns]


@st.composite
def deliveries(draw: st.DrawFn, items: Sequence[Case]) -> list[Outcome]:
    """Both outcomes of every case, interleaved in any order, some delivered more than once."""
    halves = [o for c in items for o in (c.live, c.simulation)]
    copies = draw(st.lists(st.sampled_from(halves), max_size=len(halves)))
    return draw(st.permutations([*halves, *copies]))


def alerts_by_transaction(alerts: Sequence[DivergenceAlert]) -> dict[str, DivergenceAlert]:
    counts = Counter(a.transaction_id for a in alerts)
    assert all(n == 1 for n in counts.values()), f"several alerts for one transaction: {counts}"
    return {a.transaction_id: a for a in alerts}


def check_alerts(items: Sequence[Case], alerts: Sequence[DivergenceAlert]) -> None:
    """Exactly one alert per divergent case, of the right kind and id; none for the others."""
    found = alerts_by_transaction(alerts)
    expected = {c.transaction_id: c for c in items if c.expected is not None}
    assert set(found) == set(expected)
    for tid, alert in found.items():
        case = expected[tid]
        assert alert.kind is case.expected
        assert alert.alert_id == alert_id_for(tid)
        assert alert.customer_id == case.live.customer_id
        assert (alert.live, alert.simulation) == (case.live, case.simulation)


def live(tid: str, customer: str = "cust-1", decision: Decision = Decision.APPROVE) -> Outcome:
    return _outcome(tid, customer, Path.LIVE, decision)


def simulation(
    tid: str, customer: str = "cust-1", decision: Decision = Decision.APPROVE
) -> Outcome:
    return _outcome(tid, customer, Path.SIMULATION, decision)


def _outcome(tid: str, customer: str, path: Path, decision: Decision) -> Outcome:
    txn = Transaction(
        transaction_id=tid,
        customer_id=customer,
        amount=Decimal("10.00"),
        currency="EUR",
        merchant_id="m-1",
        merchant_category="5411",
        country="DE",
        channel="pos",
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
    )
    return Outcome(
        transaction=txn,
        path=path,
        decision=decision,
        score=0.5,
        reasons=(),
        model_version="m1",
        timings=Timings(decided_at=datetime(2026, 1, 1, tzinfo=UTC), elapsed_ms=1.0),
    )


# --- the pure detector ------------------------------------------------------------------------


@given(case_sets(), st.data())
def test_any_interleaving_and_duplication_gives_one_alert_per_divergent_transaction(
    items: list[Case], data: st.DataObject
) -> None:
    detector = DivergenceDetector(timeout=30.0)
    resolved: list[Pairing] = []

    for i, outcome in enumerate(data.draw(deliveries(items))):
        resolved.extend(detector.observe(outcome, now=1000.0 + i * 0.01))
    resolved.extend(detector.expire(now=1010.0))

    check_alerts(items, [p.alert for p in resolved if p.alert is not None])
    assert sorted(p.transaction_id for p in resolved) == sorted(c.transaction_id for c in items)
    assert detector.pending == 0


@given(
    cases(),
    st.sampled_from(Path),
    st.integers(0, 2_000_000_000),
    st.integers(1, 3600),
    st.data(),
)
def test_lone_half_is_missing_after_the_timeout_and_not_before(
    case: Case, path: Path, start: int, timeout: int, data: st.DataObject
) -> None:
    first, partner = (
        (case.live, case.simulation) if path is Path.LIVE else (case.simulation, case.live)
    )
    detector = DivergenceDetector(timeout=float(timeout))
    early = data.draw(st.integers(start, start + timeout - 1))

    assert detector.observe(first, float(start)) == []
    assert detector.expire(float(early)) == []
    [pairing] = detector.expire(float(start + timeout))

    alert = pairing.alert
    assert alert is not None
    kind = AlertKind.MISSING_SIMULATION if path is Path.LIVE else AlertKind.MISSING_LIVE
    assert alert.kind is kind
    assert alert.alert_id == alert_id_for(case.transaction_id)
    assert (alert.live if path is Path.LIVE else alert.simulation) == first
    # The partner turning up late, or again, raises nothing more.
    assert detector.observe(partner, float(start + timeout + 1)) == []
    assert detector.observe(first, float(start + timeout + 2)) == []
    assert detector.expire(float(start + 10 * timeout)) == []
    assert detector.pending == 0


def test_the_last_remember_resolved_transactions_are_remembered_and_no_more() -> None:
    detector = DivergenceDetector(remember=3)
    for i in range(4):
        for path in Path:
            detector.observe(_outcome(f"t{i}", "c", path, Decision.APPROVE), now=1.0)
    detector.mark_resolved(["t4"])

    # t0 and t1 were forgotten: a late copy of theirs waits for a partner again.
    for i in range(5):
        assert detector.observe(_outcome(f"t{i}", "c", Path.LIVE, Decision.APPROVE), now=2.0) == []
    assert (detector.pending, detector.duplicates) == (2, 3)
    assert not detector.is_pending("t2") and detector.is_pending("t1")


@given(
    st.lists(cst.transactions(), min_size=1, max_size=20, unique_by=lambda t: t.transaction_id),
    st.integers(1, 8),
    st.data(),
)
def test_pending_is_bounded_and_the_oldest_are_evicted_as_missing(
    txns: list[Transaction], max_pending: int, data: st.DataObject
) -> None:
    paths = [data.draw(st.sampled_from(Path)) for _ in txns]
    halves = [
        data.draw(cst.outcomes(path=p, transaction=t)) for p, t in zip(paths, txns, strict=True)
    ]
    detector = DivergenceDetector(timeout=30.0, max_pending=max_pending)
    evicted: list[Pairing] = []

    for i, half in enumerate(halves):
        evicted.extend(detector.observe(half, now=100.0 + i))
        assert detector.pending <= max_pending

    overflow = max(0, len(halves) - max_pending)
    assert [p.transaction_id for p in evicted] == [t.transaction_id for t in txns[:overflow]]
    for pairing, path in zip(evicted, paths, strict=False):
        assert pairing.alert is not None
        assert pairing.alert.kind is (
            AlertKind.MISSING_SIMULATION if path is Path.LIVE else AlertKind.MISSING_LIVE
        )
    assert detector.pending == len(halves) - overflow
    # An evicted half's partner, arriving later, raises no second alert.
    for half in halves[:overflow]:
        partner = attrs.evolve(half, path=Path.SIMULATION if half.path is Path.LIVE else Path.LIVE)
        assert detector.observe(partner, now=200.0) == []


# --- the detector service over a MemoryBus --------------------------------------------------


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def publish(bus: MemoryBus, outcome: Outcome) -> Delivery:
    topic = LIVE_OUTCOME if outcome.path is Path.LIVE else SIMULATION_OUTCOME
    return bus.publish(topic, outcome.customer_id, encode_outcome(outcome))


def drain(service: DetectorService) -> None:
    """Poll until idle. A failed batch also returns 0 and is retried by the next polls, so
    idle means nothing handled for more polls than a batch is attempted."""
    idle = 0
    while idle <= service.max_attempts:
        idle = 0 if service.poll_once(timeout=0) else idle + 1


def published_alerts(bus: MemoryBus) -> list[DivergenceAlert]:
    messages = bus.messages(DIVERGENCE_ALERT)
    alerts = [decode_alert(m.value) for m in messages]
    assert [m.key for m in messages] == [a.customer_id for a in alerts]
    return alerts


def detector_service(bus: MemoryBus, clock: Clock, **kwargs: Any) -> DetectorService:
    return DetectorService(bus, DivergenceDetector(timeout=30.0), clock=clock, **kwargs)


@settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow])
@given(case_sets(), st.integers(1, 4), st.integers(1, 6), st.data())
def test_service_publishes_one_alert_per_divergent_transaction(
    items: list[Case], partitions: int, max_records: int, data: st.DataObject
) -> None:
    bus = MemoryBus(partitions=partitions)
    service = detector_service(bus, Clock(), max_records=max_records)
    delivered = data.draw(deliveries(items))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(delivered)), max_size=3)))

    for start, end in zip([0, *cuts], [*cuts, len(delivered)], strict=True):
        for outcome in delivered[start:end]:
            publish(bus, outcome)
        drain(service)

    check_alerts(items, published_alerts(bus))
    # Everything was resolved, so everything read was committed.
    assert bus.lag(GROUP, LIVE_OUTCOME) == bus.lag(GROUP, SIMULATION_OUTCOME) == 0
    service.close()


@settings(max_examples=20, suppress_health_check=[HealthCheck.too_slow])
@given(case_sets(), st.data())
def test_held_half_is_not_committed_and_a_restarted_detector_still_pairs_it(
    items: list[Case], data: st.DataObject
) -> None:
    late = data.draw(st.sets(st.sampled_from([c.transaction_id for c in items]), min_size=1))
    bus = MemoryBus()
    clock = Clock()
    first = detector_service(bus, clock, max_records=data.draw(st.integers(1, 5)))
    held: dict[str, Delivery] = {}
    for case in items:
        held_back = case.transaction_id in late
        delivery = publish(bus, case.live)
        if held_back:
            held[case.transaction_id] = delivery
        else:
            publish(bus, case.simulation)
        drain(first)

    committed = bus.committed(GROUP)
    for delivery in held.values():
        tp = TopicPartition(delivery.topic, delivery.partition)
        assert committed.get(tp, 0) <= delivery.offset
    first.close()

    pairings: list[Pairing] = []
    second = detector_service(bus, clock, on_pairing=pairings.append)
    drain(second)
    for case in items:
        if case.transaction_id in late:
            publish(bus, case.simulation)
    drain(second)

    paired = {p.transaction_id: p for p in pairings if p.live and p.simulation}
    assert late <= set(paired)
    for tid in late:
        assert paired[tid].simulation is not None
        assert paired[tid].simulation.path is Path.SIMULATION
    second.close()


def test_commit_stops_before_the_held_live_half() -> None:
    bus = MemoryBus(partitions=1)
    service = detector_service(bus, Clock())
    publish(bus, live("before"))
    publish(bus, simulation("before"))
    held = publish(bus, live("held", decision=Decision.DECLINE))
    publish(bus, live("after"))
    publish(bus, simulation("after"))

    drain(service)

    committed = bus.committed(GROUP)
    assert committed[TopicPartition(LIVE_OUTCOME, 0)] == held.offset
    # "after" is paired, but its live half lies past the held one and will be read again, so
    # its simulation half (offset 1) must be read again too: no pair is cut in two.
    assert committed[TopicPartition(SIMULATION_OUTCOME, 0)] == 1
    service.close()

    restarted = detector_service(bus, Clock())
    publish(bus, simulation("held"))
    drain(restarted)

    [alert] = published_alerts(bus)
    assert (alert.transaction_id, alert.kind) == ("held", AlertKind.DECISION_MISMATCH)
    restarted.close()


def test_restart_raises_no_false_alert_for_transactions_resolved_before_it() -> None:
    bus = MemoryBus(partitions=1)
    clock = Clock()
    service = detector_service(bus, clock)
    publish(bus, live("held", decision=Decision.DECLINE))
    publish(bus, live("agreed"))  # after the held half in the same partition
    publish(bus, simulation("agreed"))
    drain(service)
    assert published_alerts(bus) == []
    service.close()

    restarted = detector_service(bus, clock)
    publish(bus, simulation("held"))
    drain(restarted)
    clock.now += 60  # past the pairing timeout
    restarted.poll_once(timeout=0)

    # "agreed" was paired and matched before the restart: no alert may name it.
    assert [(a.transaction_id, a.kind) for a in published_alerts(bus)] == [
        ("held", AlertKind.DECISION_MISMATCH)
    ]
    restarted.close()


def test_a_batch_writes_one_changelog_entry_per_partition_and_claim(monkeypatch) -> None:
    # One entry per partition of the batch and per claim (alerted or not), in that partition,
    # each at most CHANGELOG_ENTRY_IDS long: not one message per transaction.
    monkeypatch.setattr(detector_module, "CHANGELOG_ENTRY_IDS", 3)
    bus = MemoryBus(partitions=2)
    service = detector_service(bus, Clock(), max_records=100)
    decisions = {}
    for i in range(12):
        tid, customer = f"t{i}", f"cust-{i % 5}"
        decisions[tid] = Decision.DECLINE if i % 4 == 0 else Decision.APPROVE
        publish(bus, live(tid, customer, decision=decisions[tid]))
        publish(bus, simulation(tid, customer))
    drain(service)

    entries = bus.messages(DETECTOR_CHANGELOG)
    logged: dict[str, bool] = {}
    for message in entries:
        entry = json.loads(message.value)
        assert 1 <= len(entry["transaction_ids"]) <= 3
        for tid in entry["transaction_ids"]:
            assert tid not in logged
            logged[tid] = entry["alerted"]
            customer = f"cust-{int(tid[1:]) % 5}"
            assert partition_for(customer, 2) == message.partition
    assert logged == {tid: d is Decision.DECLINE for tid, d in decisions.items()}
    # 9 agreed and 3 alerted in at most 2 partitions, in entries of at most 3.
    assert len(entries) <= 2 * (3 + 1)
    service.close()


def test_changelog_entries_go_where_the_outcomes_were_read_whatever_their_keys() -> None:
    # A detector that takes over a partition replays only that partition of the changelog,
    # so an entry must be where the outcomes it names are, even when a producer keyed them
    # by something else than their customer: and it must not take others along elsewhere.
    bus = MemoryBus(partitions=2)
    customers = [f"cust-{i}" for i in range(10)]
    first = next(c for c in customers if partition_for(c, 2) == 0)
    second = next(c for c in customers if partition_for(c, 2) == 1)
    for outcome in (live("odd", first, decision=Decision.DECLINE), simulation("odd", first)):
        topic = LIVE_OUTCOME if outcome.path is Path.LIVE else SIMULATION_OUTCOME
        bus.publish(topic, second, encode_outcome(outcome))  # in partition 1, not 0
    publish(bus, live("usual", second, decision=Decision.DECLINE))
    publish(bus, simulation("usual", second))
    service = detector_service(bus, Clock())
    drain(service)

    where = {
        tid: message.partition
        for message in bus.messages(DETECTOR_CHANGELOG)
        for tid in json.loads(message.value)["transaction_ids"]
    }
    assert where == {"odd": 1, "usual": 1}
    service.close()


def test_a_pair_whose_halves_were_read_from_two_partitions_is_logged_in_both() -> None:
    # A detector taking over either partition may meet a redelivered copy of its half there.
    bus = MemoryBus(partitions=2)
    customers = [f"cust-{i}" for i in range(10)]
    first = next(c for c in customers if partition_for(c, 2) == 0)
    second = next(c for c in customers if partition_for(c, 2) == 1)
    publish(bus, live("split", first))
    bus.publish(SIMULATION_OUTCOME, second, encode_outcome(simulation("split", first)))
    service = detector_service(bus, Clock())
    drain(service)

    where = sorted(
        message.partition
        for message in bus.messages(DETECTOR_CHANGELOG)
        if "split" in json.loads(message.value)["transaction_ids"]
    )
    assert where == [0, 1]
    service.close()


def test_halves_that_expire_together_share_a_changelog_entry() -> None:
    bus = MemoryBus(partitions=1)
    clock = Clock()
    service = detector_service(bus, clock)
    for i in range(4):
        publish(bus, live(f"lone{i}", f"cust-{i}"))
    drain(service)
    clock.now += 60
    service.poll_once(timeout=0)

    assert [a.kind for a in published_alerts(bus)] == [AlertKind.MISSING_SIMULATION] * 4
    [entry] = [json.loads(m.value) for m in bus.messages(DETECTOR_CHANGELOG)]
    assert entry["transaction_ids"] == [f"lone{i}" for i in range(4)] and entry["alerted"]
    service.close()


@pytest.mark.parametrize(
    "entry",
    [
        {"schema_version": 1, "transaction_ids": ["other", "resolved"], "alerted": True},
        {"schema_version": 1, "transaction_id": "resolved", "alerted": True},  # one per entry
    ],
)
def test_a_detector_that_takes_over_reads_what_the_changelog_says_was_resolved(
    entry: dict[str, Any],
) -> None:
    # Both halves of a divergent pair, not committed, and the changelog saying the pair was
    # resolved (its alert published) before a crash: no second alert.
    bus = MemoryBus(partitions=1)
    clock = Clock()
    publish(bus, live("resolved", decision=Decision.DECLINE))
    publish(bus, simulation("resolved"))
    bus.publish(DETECTOR_CHANGELOG, "cust-1", json.dumps(entry).encode())
    publish(bus, live("fresh", decision=Decision.DECLINE))
    publish(bus, simulation("fresh"))

    service = detector_service(bus, clock)
    drain(service)
    clock.now += 60
    service.poll_once(timeout=0)

    assert [(a.transaction_id, a.kind) for a in published_alerts(bus)] == [
        ("fresh", AlertKind.DECISION_MISMATCH)
    ]
    service.close()


@pytest.mark.parametrize("other_crashes_before_committing", [False, True])
def test_a_partition_taken_and_given_back_between_two_polls_is_read_as_a_new_owner_would(
    other_crashes_before_committing: bool,
) -> None:
    bus, clock = MemoryBus(partitions=2), Clock()
    customer = next(c for c in (f"cust-{i}" for i in range(100)) if partition_for(c, 2) == 1)
    first = detector_service(bus, clock)
    publish(bus, live("moved", customer, decision=Decision.DECLINE))
    drain(first)
    assert first.detector.is_pending("moved")

    # While the first does not poll, a second detector takes partition 1 over and pairs both
    # halves (alert and changelog written), then leaves, or crashes before its commit; the
    # partition comes back to the first. Kept, its half would end in a false MISSING_* (or,
    # read again with its partner, in a second alert).
    publish(bus, simulation("moved", customer))
    second = detector_service(bus, clock)
    if other_crashes_before_committing:
        second.consumer.commit = lambda *args, **kwargs: None  # type: ignore[method-assign]
        drain(second)
        second.consumer.close()
    else:
        drain(second)
        second.close()
    clock.now += 60  # past the pairing timeout
    drain(first)

    assert [(a.transaction_id, a.kind) for a in published_alerts(bus)] == [
        ("moved", AlertKind.DECISION_MISMATCH)
    ]
    assert first.detector.pending == 0
    first.close()


def test_lone_half_on_the_bus_gets_a_missing_alert_after_the_timeout() -> None:
    bus = MemoryBus()
    clock = Clock()
    service = detector_service(bus, clock)
    publish(bus, simulation("lonely"))

    drain(service)
    assert published_alerts(bus) == []
    clock.now += 30
    service.poll_once(timeout=0)

    [alert] = published_alerts(bus)
    assert (alert.transaction_id, alert.kind) == ("lonely", AlertKind.MISSING_LIVE)
    assert bus.lag(GROUP, SIMULATION_OUTCOME) == 0
    service.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"not json",
        b"[1, 2]",
        b'{"path": "live"}',
        b"",
        b'{"score": 1' + b"0" * 5000 + b"}",  # past Python's int conversion limit
    ],
    ids=["text", "array", "partial", "empty", "5000-digit-number"],
)
def test_malformed_live_outcome_is_dead_lettered_and_the_others_go_on(garbage: bytes) -> None:
    bus = MemoryBus(partitions=1)
    service = detector_service(bus, Clock())
    publish(bus, live("t1", decision=Decision.APPROVE))
    bad = bus.publish(LIVE_OUTCOME, "cust-1", garbage, {"trace": "abc"})
    publish(bus, simulation("t1", decision=Decision.DECLINE))
    publish(bus, live("t2"))
    publish(bus, simulation("t2", decision=Decision.REVIEW))

    drain(service)

    parked_messages = bus.messages(dead_letter_topic(LIVE_OUTCOME))
    assert [m.value for m in parked_messages] == [garbage]
    assert bus.messages(dead_letter_topic(SIMULATION_OUTCOME)) == []
    parked = parked_messages[0]
    assert parked.key == "cust-1"
    assert parked.headers["corepay-error"]
    assert parked.headers["corepay-source-offset"] == str(bad.offset)
    assert parked.headers["trace"] == "abc"
    assert sorted(a.transaction_id for a in published_alerts(bus)) == ["t1", "t2"]
    assert bus.lag(GROUP, LIVE_OUTCOME) == 0
    service.close()


class AlertsRefusedBus(MemoryBus):
    """A MemoryBus whose broker refuses the first ``failures`` publishes holding an alert
    (a batch is refused whole, as Kafka's buses do)."""

    def __init__(self, failures: int) -> None:
        super().__init__(partitions=1)
        self.failures = failures

    def publish_many(self, records: Iterable[Record]) -> list[Delivery]:
        records = list(records)
        if any(r.topic == DIVERGENCE_ALERT for r in records) and self.failures > 0:
            self.failures -= 1
            raise UnavailableError("broker not reachable")
        return super().publish_many(records)


def test_alert_refused_by_the_bus_is_published_on_retry() -> None:
    bus = AlertsRefusedBus(failures=1)
    service = detector_service(bus, Clock())
    publish(bus, live("t1", decision=Decision.APPROVE))
    publish(bus, simulation("t1", decision=Decision.DECLINE))

    for _ in range(4):  # the first attempt is refused; the retry must publish it
        service.poll_once(timeout=0)

    assert bus.failures == 0
    assert [a.transaction_id for a in published_alerts(bus)] == ["t1"]
    service.close()


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(case_sets(max_size=10), st.integers(1, 3), st.integers(1, 4), st.data())
def test_a_restart_at_any_point_misses_no_alert_and_invents_none(
    items: list[Case], partitions: int, max_records: int, data: st.DataObject
) -> None:
    """Stop the detector after any batch, start a new one on the same group, with redelivered
    copies anywhere in the stream: every divergent transaction gets exactly one alert of the
    right kind, and none gets a MISSING alert, since both its outcomes were published."""
    bus = MemoryBus(partitions=partitions)
    clock = Clock()
    order = data.draw(deliveries(items))
    cut = data.draw(st.integers(0, len(order)))
    for outcome in order[:cut]:
        publish(bus, outcome)
    first = detector_service(bus, clock, max_records=max_records)
    for _ in range(data.draw(st.integers(0, len(order)))):
        first.poll_once(timeout=0)
    first.close()  # what it polled but did not commit goes back to the group

    restarted = detector_service(bus, clock, max_records=max_records)
    for outcome in order[cut:]:
        publish(bus, outcome)
    drain(restarted)
    clock.now += 60
    drain(restarted)
    restarted.close()

    check_alerts(items, published_alerts(bus))


def test_a_copy_read_after_a_held_half_is_re_read_with_its_original_pair() -> None:
    # live: A, X (held, waiting for its partner), copy of A; simulation: A.
    bus = MemoryBus(partitions=1)
    clock = Clock()
    publish(bus, live("A"))
    publish(bus, live("X", decision=Decision.DECLINE))
    publish(bus, live("A"))
    publish(bus, simulation("A"))
    first = detector_service(bus, clock)
    drain(first)
    first.close()

    restarted = detector_service(bus, clock)
    publish(bus, simulation("X"))
    drain(restarted)
    clock.now += 60
    drain(restarted)
    restarted.close()

    # Re-read alone, the copy of A would wait for a partner already committed, and time out.
    assert [(a.transaction_id, a.kind) for a in published_alerts(bus)] == [
        ("X", AlertKind.DECISION_MISMATCH)
    ]


def test_a_copy_of_a_resolved_transaction_is_committed_with_its_uncommitted_halves() -> None:
    # live: H (held), A, Y (held), copy of A; simulation: A, then H. A is resolved when its
    # copy arrives, with both halves still uncommitted (H holds the live cut below them).
    # Once H resolves, Y holds the cut between A and its copy; re-read alone after a restart
    # the copy would wait for a partner that is not coming. Tied to A's halves, all three are
    # re-read together. The changelog is left out of reach (the restart is past its window),
    # so the tie alone has to do it.
    bus = MemoryBus(partitions=1)
    clock = Clock(time.time())
    publish(bus, live("H"))
    publish(bus, live("A"))
    publish(bus, simulation("A"))
    first = detector_service(bus, clock, replay_window=0.0)
    drain(first)
    publish(bus, live("Y"))
    publish(bus, live("A"))  # the copy
    drain(first)
    publish(bus, simulation("H"))
    drain(first)
    first.close()

    clock.now += 120  # past the pairing timeout: the changelog replay starts after A's entry
    restarted = detector_service(bus, clock, replay_window=0.0)
    publish(bus, simulation("Y"))
    drain(restarted)
    clock.now += 60
    drain(restarted)
    restarted.close()

    assert [(a.transaction_id, a.kind) for a in published_alerts(bus)] == []
