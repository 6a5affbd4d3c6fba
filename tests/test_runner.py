"""The consumer loop under failure: nothing skipped, nothing lost, nothing retried forever."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
import pytest

from corepay import MemoryBus, MemoryTwinStore, Pipeline, TrafficGenerator
from corepay.backends.memory import partition_for
from corepay.bus import (
    DIVERGENCE_ALERT,
    LIVE_OUTCOME,
    RAW_TRANSACTIONS,
    SIMULATION_OUTCOME,
    Delivery,
    Message,
    Record,
    dead_letter_topic,
)
from corepay.divergence import DivergenceDetector
from corepay.errors import (
    CommitFailedError,
    ConfigurationError,
    RejectedError,
    UnavailableError,
)
from corepay.models import Decision, Path
from corepay.services.detector import DETECTOR_CHANGELOG, DetectorService
from corepay.services.runner import ConsumerService, Handled
from corepay.services.twin import TwinService
from corepay.settings import Settings
from corepay.twin import TwinPolicy
from corepay.wire import decode_alert, encode_outcome, parse_transaction, transaction_to_wire
from test_divergence import _outcome


@pytest.fixture(autouse=True)
def _no_backoff_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("corepay.services.runner.time.sleep", lambda s: None)


def _publish(
    bus: MemoryBus,
    tid: str,
    path: Path,
    customer: str = "cust-1",
    decision: Decision = Decision.APPROVE,
) -> Delivery:
    topic = LIVE_OUTCOME if path is Path.LIVE else SIMULATION_OUTCOME
    return bus.publish(topic, customer, encode_outcome(_outcome(tid, customer, path, decision)))


def _alerts(bus: MemoryBus) -> list[tuple[str, str]]:
    return [
        (a.transaction_id, a.kind.value)
        for a in (decode_alert(m.value) for m in bus.messages(DIVERGENCE_ALERT))
    ]


class _RefusingBus(MemoryBus):
    """Refuses to publish to ``topic`` the next ``refusals`` times."""

    def __init__(self, topic: str, refusals: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.topic, self.refusals = topic, refusals

    def publish_many(self, records: Iterable[Record]) -> list[Delivery]:
        records = list(records)
        if self.refusals and any(r.topic == self.topic for r in records):
            self.refusals -= 1
            raise UnavailableError("broker unreachable")
        return super().publish_many(records)


class _Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_timer_alert_the_bus_refused_is_retried_before_anything_new_is_read() -> None:
    bus = _RefusingBus(DIVERGENCE_ALERT, refusals=2, partitions=1)
    clock = _Clock()
    service = DetectorService(bus, DivergenceDetector(timeout=30), clock=clock)
    _publish(bus, "lonely", Path.LIVE)
    service.poll_once(0)
    clock.now += 60  # the lone half expires on the next, empty, poll: its alert is refused
    assert service.poll_once(0) == 0
    _publish(bus, "later", Path.LIVE, decision=Decision.DECLINE)
    _publish(bus, "later", Path.SIMULATION)
    for _ in range(6):
        service.poll_once(0)
    assert sorted(_alerts(bus)) == [
        ("later", "DECISION_MISMATCH"),
        ("lonely", "MISSING_SIMULATION"),
    ]


class _PartlyRefusingBus(_RefusingBus):
    """As Kafka can: takes the rest of a publish and refuses only the records for ``topic``."""

    def publish_many(self, records: Iterable[Record]) -> list[Delivery]:
        records = list(records)
        if self.refusals and any(r.topic == self.topic for r in records):
            MemoryBus.publish_many(self, [r for r in records if r.topic != self.topic])
        return super().publish_many(records)


def test_the_detector_changelog_never_claims_an_alert_that_is_not_on_the_bus() -> None:
    # The changelog tells a restarted detector which pairs need no second look: an entry
    # written before its alert, then a crash, would lose the alert for good.
    bus = _PartlyRefusingBus(DIVERGENCE_ALERT, refusals=2, partitions=1)
    service = DetectorService(bus, DivergenceDetector(timeout=30), clock=_Clock())
    _publish(bus, "agreed", Path.LIVE)
    _publish(bus, "agreed", Path.SIMULATION)
    _publish(bus, "diverged", Path.LIVE, decision=Decision.DECLINE)
    _publish(bus, "diverged", Path.SIMULATION)

    def logged() -> list[tuple[str, bool]]:
        return [
            (tid, entry["alerted"])
            for entry in (json.loads(m.value) for m in bus.messages(DETECTOR_CHANGELOG))
            for tid in entry["transaction_ids"]
        ]

    service.poll_once(0)  # the alert is refused: nothing claims it
    assert _alerts(bus) == [] and ("diverged", True) not in logged()
    assert ("agreed", False) in logged()  # what claims no alert does not wait for alerts
    for _ in range(4):
        service.poll_once(0)
    assert _alerts(bus) == [("diverged", "DECISION_MISMATCH")]
    assert set(logged()) == {("agreed", False), ("diverged", True)}


class _Buggy(DetectorService):
    """A detector service whose handling breaks on a batch holding a 'poison' outcome."""

    def handle(self, messages: Sequence[Message]) -> Handled:
        handled = super().handle(messages)
        if any(b"poison" in m.value for m in messages):
            raise RuntimeError("bug")
        return handled


def test_a_dead_lettered_batch_does_not_commit_past_a_held_half() -> None:
    bus = MemoryBus(partitions=1)
    clock = _Clock()
    service = _Buggy(bus, DivergenceDetector(timeout=30), clock=clock)
    held = _publish(bus, "held", Path.LIVE, decision=Decision.DECLINE)
    _publish(bus, "poison", Path.LIVE)
    for _ in range(service.max_attempts):
        service.poll_once(0)
    assert len(bus.messages(dead_letter_topic(LIVE_OUTCOME))) >= 1
    assert bus.committed(service.group)[(LIVE_OUTCOME, 0)] <= held.offset
    service.close()
    restarted = DetectorService(bus, DivergenceDetector(timeout=30), clock=clock)
    _publish(bus, "held", Path.SIMULATION)
    for _ in range(3):
        restarted.poll_once(0)
    assert ("held", "DECISION_MISMATCH") in _alerts(bus)


def test_an_outcome_with_a_bad_embedded_transaction_is_dead_lettered_at_once() -> None:
    bus = MemoryBus(partitions=1)
    service = DetectorService(bus, DivergenceDetector(timeout=30), clock=_Clock())
    bad = json.loads(encode_outcome(_outcome("bad", "cust-1", Path.LIVE, Decision.APPROVE)))
    bad["transaction"]["customer_id"] = 5
    bus.publish(LIVE_OUTCOME, "cust-1", json.dumps(bad).encode())
    _publish(bus, "fine", Path.LIVE, decision=Decision.DECLINE)
    _publish(bus, "fine", Path.SIMULATION)
    assert service.poll_once(0) == 3
    [dead] = bus.messages(dead_letter_topic(LIVE_OUTCOME))
    assert "customer_id" in dead.headers["corepay-error"]
    assert _alerts(bus) == [("fine", "DECISION_MISMATCH")]


class _PollFailsOnce:
    def __init__(self, inner: Any) -> None:
        self.inner, self.failed = inner, False

    def poll(self, max_records: int = 500, timeout: float = 1.0) -> list[Message]:
        if not self.failed:
            self.failed = True
            raise UnavailableError("broker unreachable")
        return list(self.inner.poll(max_records, timeout))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_poll_that_fails_is_retried_and_the_loop_lives_on() -> None:
    bus = MemoryBus(partitions=1)
    service = DetectorService(bus, DivergenceDetector(timeout=30), clock=_Clock())
    service.consumer = _PollFailsOnce(service.consumer)  # type: ignore[assignment]
    _publish(bus, "t", Path.LIVE, decision=Decision.DECLINE)
    _publish(bus, "t", Path.SIMULATION)
    assert service.poll_once(0) == 0
    assert service.poll_once(0) == 2
    assert _alerts(bus) == [("t", "DECISION_MISMATCH")]


def test_a_detector_that_loses_a_partition_forgets_its_halves_there() -> None:
    bus = MemoryBus(partitions=2)
    clock = _Clock()
    first = DetectorService(bus, DivergenceDetector(timeout=30), clock=clock)
    customer = next(f"c{i}" for i in range(100) if partition_for(f"c{i}", 2) == 1)
    _publish(bus, "moving", Path.LIVE, customer=customer)
    first.poll_once(0)
    second = DetectorService(bus, DivergenceDetector(timeout=30), clock=clock)
    assert {tp.partition for tp in second.consumer.assignment()} == {1}
    _publish(bus, "moving", Path.SIMULATION, customer=customer, decision=Decision.REVIEW)
    for service in (first, second, first, second):
        service.poll_once(0)
    clock.now += 60
    for service in (first, second):
        service.poll_once(0)
    # The new owner pairs it; the old one must not also call it missing.
    assert _alerts(bus) == [("moving", "DECISION_MISMATCH")]


def test_a_twin_service_refuses_a_dedup_window_smaller_than_its_batch() -> None:
    with pytest.raises(ConfigurationError, match="dedup_window"):
        TwinService(
            MemoryBus(), MemoryTwinStore(), policy=TwinPolicy(dedup_window=100), max_records=500
        )


def test_a_redelivered_batch_of_one_customer_counts_once(monkeypatch: pytest.MonkeyPatch) -> None:
    bus, store = MemoryBus(partitions=1), MemoryTwinStore()
    for i in range(600):
        _publish(bus, f"t{i}", Path.LIVE)
    first = TwinService(bus, store, max_records=600, policy=TwinPolicy(dedup_window=600))
    first.handle(first.consumer.poll(600, 0))  # applied, then crashed before committing
    first.close()
    second = TwinService(bus, store, max_records=600, policy=TwinPolicy(dedup_window=600))
    assert second.poll_once(0) == 600
    twin = store.get("cust-1")
    assert twin is not None and twin.count == 600


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_a_pairing_timeout_must_be_a_positive_number(value: str) -> None:
    with pytest.raises(ConfigurationError, match=r"COREPAY_PAIRING_TIMEOUT|pairing_timeout"):
        Settings.from_env({"COREPAY_PAIRING_TIMEOUT": value})


def test_an_amount_sent_in_exponent_form_is_decided_like_any_other() -> None:
    bus = MemoryBus()
    request = next(TrafficGenerator(customers=1).requests(1))
    body = json.dumps({**request, "amount": 0}).replace('"amount": 0', '"amount": 1e2')
    from corepay.wire import parse_json

    with Pipeline(bus) as pipeline:
        accepted = pipeline.submit(parse_json(body))
        pipeline.drain()
    assert str(accepted.transaction.amount) == "100"
    [raw] = bus.messages(RAW_TRANSACTIONS)
    assert json.loads(raw.value)["amount"] == "100"
    assert len(bus.messages(LIVE_OUTCOME)) == 1
    assert not bus.messages(dead_letter_topic(RAW_TRANSACTIONS))


class _Echo(ConsumerService):
    """Copies each message to 'echoed'; fails on any message whose value is b'poison'."""

    group = "echo"
    topics = ("in",)

    def handle(self, messages: Sequence[Message]) -> Handled:
        if any(m.value == b"poison" for m in messages):
            raise ValueError("cannot digest poison")
        return Handled([Record("echoed", m.key, m.value) for m in messages])


def test_a_message_that_keeps_failing_is_dead_lettered_alone_with_where_it_came_from() -> None:
    bus = MemoryBus(partitions=1)
    for value in (b"a", b"poison", b"b"):
        bus.publish("in", "k", value)
    service = _Echo(bus)
    for _ in range(service.max_attempts):
        service.poll_once(0)
    assert [m.value for m in bus.messages("echoed")] == [b"a", b"b"]
    [dead] = bus.messages(dead_letter_topic("in"))
    assert dead.value == b"poison"
    assert dead.headers["corepay-source-topic"] == "in"
    assert dead.headers["corepay-source-partition"] == "0"
    assert dead.headers["corepay-source-offset"] == "1"
    assert "cannot digest poison" in dead.headers["corepay-error"]
    assert bus.committed("echo")[("in", 0)] == 3


@pytest.mark.parametrize("as_object", [False, True], ids=["as bytes", "as an object"])
def test_an_outcome_whose_bytes_do_not_decode_is_dead_lettered_however_published(
    as_object: bool,
) -> None:
    # JSON has no infinity: written as null, it does not decode as a number.
    bad = _outcome("t-inf", "cust-1", Path.LIVE, Decision.APPROVE)
    bad = attrs.evolve(
        bad,
        # Its transaction validated here, as the engine's are.
        transaction=parse_transaction(transaction_to_wire(bad.transaction)),
        timings=attrs.evolve(bad.timings, elapsed_ms=math.inf),
    )
    bus, store = MemoryBus(partitions=1), MemoryTwinStore()
    service = TwinService(bus, store)

    bus.publish(LIVE_OUTCOME, bad.customer_id, bad if as_object else bytes(bad))
    while service.poll_once(0):
        pass

    [dead] = bus.messages(dead_letter_topic(LIVE_OUTCOME))
    assert dead.value == bytes(bad) and "outcome is malformed" in dead.headers["corepay-error"]
    assert store.get(bad.customer_id) is None


class _FailsOnceBus(MemoryBus):
    """Refuses the first publish holding an alert with a non-backend error, then works."""

    def __init__(self, error: Exception, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.error: Exception | None = error

    def publish_many(self, records: Iterable[Record]) -> list[Delivery]:
        records = list(records)
        if self.error is not None and any(r.topic == DIVERGENCE_ALERT for r in records):
            error, self.error = self.error, None
            raise error
        return super().publish_many(records)


def test_an_alert_whose_publish_failed_once_is_published_on_the_retry() -> None:
    bus = _FailsOnceBus(RuntimeError("codec missing"), partitions=1)
    service = DetectorService(bus, DivergenceDetector(timeout=30), clock=_Clock())
    _publish(bus, "t", Path.LIVE, decision=Decision.DECLINE)
    _publish(bus, "t", Path.SIMULATION)
    assert service.poll_once(0) == 0
    assert service.poll_once(0) == 2
    assert _alerts(bus) == [("t", "DECISION_MISMATCH")]


class _RefusesAlertsForGood(MemoryBus):
    def publish_many(self, records: Iterable[Record]) -> list[Delivery]:
        records = list(records)
        if any(r.topic == DIVERGENCE_ALERT for r in records):
            raise RejectedError("message too large")
        return super().publish_many(records)


def test_output_refused_for_good_parks_the_inputs_instead_of_stalling() -> None:
    bus = _RefusesAlertsForGood(partitions=1)
    service = DetectorService(bus, DivergenceDetector(timeout=30), clock=_Clock())
    _publish(bus, "t", Path.LIVE, decision=Decision.DECLINE)
    _publish(bus, "t", Path.SIMULATION)
    for _ in range(service.max_attempts):
        service.poll_once(0)
    parked = bus.messages(dead_letter_topic(LIVE_OUTCOME)) + bus.messages(
        dead_letter_topic(SIMULATION_OUTCOME)
    )
    assert len(parked) == 2
    assert all("message too large" in m.headers["corepay-error"] for m in parked)
    assert bus.committed(service.group)[(LIVE_OUTCOME, 0)] == 1


def test_a_dead_letter_of_a_huge_message_is_cut_and_says_so() -> None:
    from corepay.services.runner import DEAD_LETTER_MAX_VALUE, dead_letter

    message = Message("in", 0, 7, "k", b"x" * (DEAD_LETTER_MAX_VALUE + 10), {}, 0)
    record = dead_letter(message, "too large")
    assert len(record.value) == DEAD_LETTER_MAX_VALUE
    assert record.headers["corepay-truncated-from"] == str(DEAD_LETTER_MAX_VALUE + 10)


class _Misconfigured(ConsumerService):
    group = "misconfigured"
    topics = ("in",)

    def handle(self, messages: Sequence[Message]) -> Handled:
        raise ConfigurationError("changelog topic has 3 partitions, the bus 4")


def test_a_misconfigured_service_stops_instead_of_dead_lettering_what_it_reads() -> None:
    bus = MemoryBus(partitions=1)
    bus.publish("in", "k", b"fine")
    service = _Misconfigured(bus)
    with pytest.raises(ConfigurationError, match="partitions"):
        service.poll_once(0)
    assert not bus.messages(dead_letter_topic("in"))


def test_a_twin_service_on_a_volatile_store_rebuilds_the_twins_after_a_restart() -> None:
    bus = MemoryBus(partitions=2)
    for i in range(50):
        _publish(bus, f"t{i}", Path.LIVE, customer=f"c{i % 5}")
    first = TwinService(bus, MemoryTwinStore(), max_records=20)
    while first.poll_once(0):
        pass
    first.close()
    for i in range(50, 60):  # more arrive while the service is down
        _publish(bus, f"t{i}", Path.LIVE, customer=f"c{i % 5}")
    fresh_store = MemoryTwinStore()  # the process died: its twins with it
    rebuilt: list[int] = []  # payments the twins held when told the rebuild was done

    def on_rebuilt() -> None:
        rebuilt.append(sum(fresh_store.get(f"c{n}").count for n in range(5)))  # type: ignore[union-attr]

    second = TwinService(bus, fresh_store, max_records=20, on_rebuilt=on_rebuilt)
    while second.poll_once(0):
        pass
    counts = {f"c{n}": fresh_store.get(f"c{n}").count for n in range(5)}  # type: ignore[union-attr]
    assert counts == {f"c{n}": 12 for n in range(5)}
    assert rebuilt == [60]  # once, with everything on live_outcome when it started applied


def _echo_on_one_partition(**kwargs: Any) -> tuple[MemoryBus, _Echo]:
    bus = MemoryBus(partitions=1)
    return bus, _Echo(bus, **kwargs)


def test_commits_are_spaced_while_busy_and_sent_once_a_poll_finds_nothing() -> None:
    bus, service = _echo_on_one_partition(commit_interval=3600)
    bus.publish("in", "k", b"a")
    assert service.poll_once(0) == 1
    assert bus.committed("echo")[("in", 0)] == 1  # the first batch is committed at once
    for value in (b"b", b"c"):
        bus.publish("in", "k", value)
        assert service.poll_once(0) == 1
    assert bus.committed("echo")[("in", 0)] == 1  # handled and published, commit spaced
    assert [m.value for m in bus.messages("echoed")] == [b"a", b"b", b"c"]
    assert service.poll_once(0) == 0
    assert bus.committed("echo")[("in", 0)] == 3


class _EchoRedeliveringAtMostFour(_Echo):
    redelivery_limit = 4


def test_a_commit_goes_out_before_a_crash_could_redeliver_more_than_the_limit() -> None:
    bus = MemoryBus(partitions=1)
    service = _EchoRedeliveringAtMostFour(bus, commit_interval=3600, max_records=2)
    # The first commit goes out without waiting, so it may not have landed: the one that
    # keeps the bound waits, and comes as soon as 4 - 2 could be waiting for a commit.
    for offset, committed in ((1, 1), (2, 1), (3, 3), (4, 3), (5, 3), (6, 6)):
        bus.publish("in", "k", b"x")
        assert service.poll_once(0) == 1
        # Never more than 4 - 2 waiting, so that a crash in the next batch of up to 2
        # redelivers at most 4.
        assert offset - bus.committed("echo")[("in", 0)] <= 2
        assert bus.committed("echo")[("in", 0)] == committed


def _lose_commits_sent_without_waiting(
    monkeypatch: pytest.MonkeyPatch, service: ConsumerService
) -> None:
    commit = service.consumer.commit

    def only_waited_for_lands(offsets: Any = None, *, wait: bool = True) -> None:
        if wait:
            commit(offsets, wait=True)

    monkeypatch.setattr(service.consumer, "commit", only_waited_for_lands)


def _bounded_echo_losing_unwaited_commits(
    monkeypatch: pytest.MonkeyPatch, partitions: int
) -> tuple[MemoryBus, _EchoRedeliveringAtMostFour]:
    bus = MemoryBus(partitions=partitions)
    service = _EchoRedeliveringAtMostFour(bus, commit_interval=0, max_records=2)
    _lose_commits_sent_without_waiting(monkeypatch, service)
    return bus, service


def test_the_redelivery_limit_holds_when_commits_sent_without_waiting_are_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bus, service = _bounded_echo_losing_unwaited_commits(monkeypatch, partitions=1)
    for offset in range(1, 9):
        bus.publish("in", "k", b"x")
        assert service.poll_once(0) == 1
        assert offset - bus.committed("echo").get(("in", 0), 0) <= 2


class _Crash(BaseException):
    pass


def test_a_twin_service_crash_never_redelivers_more_than_a_twin_remembers() -> None:
    bus, store = MemoryBus(partitions=1), MemoryTwinStore()
    store.durable = True  # the twins outlive the crash; nothing is rebuilt
    policy = TwinPolicy(dedup_window=2)  # the least a batch of 2 allows
    first = TwinService(bus, store, policy=policy, max_records=2, commit_interval=3600)
    for tid in ("t1", "t2"):
        _publish(bus, tid, Path.LIVE)
        first.poll_once(0)
    _publish(bus, "t3", Path.LIVE)
    _publish(bus, "t4", Path.LIVE)

    def crash(*args: object, **kwargs: object) -> None:
        raise _Crash

    first.consumer.commit = crash  # type: ignore[method-assign]
    with pytest.raises(_Crash):
        first.poll_once(0)  # t3 and t4 applied, then the process died before committing
    type(first.consumer).close(first.consumer)  # the dead member leaves the group
    second = TwinService(bus, store, policy=policy, max_records=2, commit_interval=3600)
    while second.poll_once(0):
        pass
    twin = store.get("cust-1")
    assert twin is not None and twin.count == 4


def test_leaving_while_a_batch_is_retried_does_not_commit_it() -> None:
    bus = _RefusingBus("echoed", refusals=0, partitions=1)
    service = _Echo(bus, commit_interval=3600)
    for value in (b"a", b"b"):
        bus.publish("in", "k", value)
        service.poll_once(0)
    bus.refusals = 1
    bus.publish("in", "k", b"c")
    assert service.poll_once(0) == 0  # the bus refused: c is held for a retry
    service.close()
    assert bus.committed("echo")[("in", 0)] == 2  # a and b, which were handled
    again = _Echo(bus)
    assert again.poll_once(0) == 1
    assert [m.value for m in bus.messages("echoed")] == [b"a", b"b", b"c"]


def test_a_commit_goes_out_once_the_interval_has_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("corepay.services.runner.time.monotonic", lambda: now[0])
    bus, service = _echo_on_one_partition(commit_interval=0.1)
    for value, advance, committed in ((b"a", 0.0, 1), (b"b", 0.05, 1), (b"c", 0.06, 3)):
        now[0] += advance
        bus.publish("in", "k", value)
        service.poll_once(0)
        assert bus.committed("echo")[("in", 0)] == committed


def test_without_a_redelivery_limit_a_batch_worth_waiting_is_committed() -> None:
    bus, service = _echo_on_one_partition(commit_interval=3600, max_records=2)
    for committed in (1, 1, 3, 3, 5):
        bus.publish("in", "k", b"x")
        service.poll_once(0)
        assert bus.committed("echo")[("in", 0)] == committed


def test_a_commit_that_failed_is_sent_again(monkeypatch: pytest.MonkeyPatch) -> None:
    bus, service = _echo_on_one_partition(commit_interval=0)
    commit = service.consumer.commit
    failures = [CommitFailedError("the group is rebalancing")]

    def fails_once(*args: Any, **kwargs: Any) -> None:
        if failures:
            raise failures.pop()
        commit(*args, **kwargs)

    monkeypatch.setattr(service.consumer, "commit", fails_once)
    bus.publish("in", "k", b"a")
    service.poll_once(0)
    assert bus.committed("echo") == {}
    service.poll_once(0)  # nothing new: what failed goes out again
    assert bus.committed("echo")[("in", 0)] == 1


def test_with_no_interval_every_batch_is_committed() -> None:
    bus, service = _echo_on_one_partition(commit_interval=0)
    for offset, value in enumerate((b"a", b"b", b"c"), start=1):
        bus.publish("in", "k", value)
        service.poll_once(0)
        assert bus.committed("echo")[("in", 0)] == offset


def test_leaving_commits_what_was_handled() -> None:
    bus, service = _echo_on_one_partition(commit_interval=3600)
    for value in (b"a", b"b"):
        bus.publish("in", "k", value)
        service.poll_once(0)
    assert bus.committed("echo")[("in", 0)] == 1
    service.close()
    assert bus.committed("echo")[("in", 0)] == 2
    again = _Echo(bus)
    assert again.poll_once(0) == 0  # nothing handled is read a second time


def _commits_sent(
    monkeypatch: pytest.MonkeyPatch, service: ConsumerService, *, land: bool = True
) -> list[object]:
    """From now on, the arguments of every commit the service sends (``land``: passed on)."""
    sent: list[object] = []
    commit = service.consumer.commit

    def recording(*args: object, **kwargs: object) -> None:
        sent.append(args)
        if land:
            commit(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(service.consumer, "commit", recording)
    return sent


def test_an_idle_service_sends_no_commits(monkeypatch: pytest.MonkeyPatch) -> None:
    # The detector says what is safe to commit after every poll, an empty one too: offsets
    # that did not move since they were sent are not sent again.
    bus = MemoryBus(partitions=1)
    service = DetectorService(bus, DivergenceDetector(timeout=30), clock=_Clock())
    _publish(bus, "t1", Path.LIVE)
    service.poll_once(0)
    sent = _commits_sent(monkeypatch, service)
    for _ in range(3):
        service.poll_once(0)
    assert sent == []
    _publish(bus, "t1", Path.SIMULATION)
    service.poll_once(0)
    service.poll_once(0)
    both = {(LIVE_OUTCOME, 0): 1, (SIMULATION_OUTCOME, 0): 1}  # the held half is resolved
    assert sent == [(both,)]
    assert bus.committed(service.group) == both


def test_an_idle_service_with_nothing_new_handled_sends_no_commits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bus, service = _echo_on_one_partition(commit_interval=3600)
    bus.publish("in", "k", b"a")
    service.poll_once(0)
    sent = _commits_sent(monkeypatch, service)
    for _ in range(3):
        service.poll_once(0)
    assert sent == []


def test_offsets_are_sent_again_after_a_while_in_case_a_commit_did_not_land(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr("corepay.services.runner.time.monotonic", lambda: now[0])
    bus, service = _echo_on_one_partition(commit_interval=3600)
    bus.publish("in", "k", b"a")
    service.poll_once(0)
    sent = _commits_sent(monkeypatch, service, land=False)  # lost
    now[0] += service.recommit_after / 2
    service.poll_once(0)
    assert sent == []
    now[0] += service.recommit_after
    service.poll_once(0)
    assert sent == [({("in", 0): 1},)]


def _first_handled_then_second_published(bus: MemoryBus, service: ConsumerService) -> None:
    """On both partitions, "first" published and handled (so committed: the first commit
    goes out at once), then "second" published."""
    for partition in (0, 1):
        bus.publish("in", "k", b"first", partition=partition)
    service.poll_once(0)
    for partition in (0, 1):
        bus.publish("in", "k", b"second", partition=partition)


class _EchoSaying(_Echo):
    """An echo that says which offsets are safe, as services holding messages do."""

    group = "echo"

    def handle(self, messages: Sequence[Message]) -> Handled:
        handled = super().handle(messages)
        self._done = {
            **getattr(self, "_done", {}),
            **{m.topic_partition: m.offset + 1 for m in messages},
        }
        return Handled(handled.records, dict(self._done))


def test_a_partition_lost_and_given_back_is_not_committed_back_to_what_this_member_had() -> None:
    bus = MemoryBus(partitions=2)
    service = _Echo(bus, commit_interval=3600)
    _first_handled_then_second_published(bus, service)
    service.poll_once(0)  # handled; its commit is spaced, so still 1 in both
    other = _Echo(bus, commit_interval=0)  # joins and takes one partition
    [(_, lost)] = other.consumer.assignment()
    for value in (b"third", b"fourth"):
        bus.publish("in", "k", value, partition=lost)
    while other.poll_once(0):
        pass
    assert bus.committed("echo")[("in", lost)] == 4
    other.close()  # leaves: the partition comes back
    service.poll_once(0)
    assert bus.committed("echo")[("in", lost)] == 4  # not moved back to the 2 handled here
    bus.publish("in", "k", b"fifth", partition=lost)
    assert service.poll_once(0) == 1
    service.close()
    assert bus.committed("echo")[("in", lost)] == 5


class _EchoRebalancedWhileHandling(_Echo):
    """Runs ``meanwhile`` once, in the middle of handling a batch (another member's doing)."""

    meanwhile: Callable[[], None] | None = None

    def handle(self, messages: Sequence[Message]) -> Handled:
        if self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            meanwhile()
        return super().handle(messages)


def test_a_partition_taken_and_given_back_during_a_batch_is_not_committed_backwards() -> None:
    bus = MemoryBus(partitions=2)
    service = _EchoRebalancedWhileHandling(bus, commit_interval=0)
    _first_handled_then_second_published(bus, service)
    taken: list[int] = []

    def another_member_comes_and_goes() -> None:
        other = _Echo(bus, commit_interval=0)
        [(_, partition)] = other.consumer.assignment()
        taken.append(partition)
        for value in (b"third", b"fourth"):
            bus.publish("in", "k", value, partition=partition)
        while other.poll_once(0):
            pass
        other.close()

    service.meanwhile = another_member_comes_and_goes
    assert service.poll_once(0) == 2  # its commit comes after the other member's 4
    assert bus.committed("echo")[("in", taken[0])] == 4


def test_a_waited_commit_sends_every_offset_again_not_only_those_that_moved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bus, service = _bounded_echo_losing_unwaited_commits(monkeypatch, partitions=2)
    for partition in (0, 1, 0):
        bus.publish("in", "k", b"x", partition=partition)
        assert service.poll_once(0) == 1
    # The third batch brought 3 waiting: the commit that keeps the bound waited, and carried
    # partition 1's offset too, although one was sent for it before (and lost).
    assert bus.committed("echo") == {("in", 0): 2, ("in", 1): 1}


def test_no_more_is_read_while_the_commit_that_keeps_the_limit_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bus = MemoryBus(partitions=1)
    service = _EchoRedeliveringAtMostFour(bus, commit_interval=3600, max_records=2)
    commit = service.consumer.commit
    down = [True]

    def waited_ones_fail(offsets: Any = None, *, wait: bool = True) -> None:
        if wait and down[0]:
            raise UnavailableError("the group coordinator is not available")
        commit(offsets, wait=wait)

    monkeypatch.setattr(service.consumer, "commit", waited_ones_fail)
    for _ in range(10):
        bus.publish("in", "k", b"x")
    for _ in range(5):
        service.poll_once(0)
    # Two batches read, then nothing: the first commit, sent without waiting, landed here,
    # but the service cannot know that, and the one it waits for fails.
    assert service.processed == 4
    assert service.processed - bus.committed("echo")[("in", 0)] <= 4 - 2
    down[0] = False
    while service.poll_once(0):
        pass
    assert service.processed == 10
    assert bus.committed("echo")[("in", 0)] == 10


@pytest.mark.parametrize("echo", [_Echo, _EchoSaying])
def test_a_spaced_commit_after_a_rebalance_commits_the_partitions_still_owned(
    echo: type[_Echo],
) -> None:
    bus = MemoryBus(partitions=2)
    service = echo(bus, commit_interval=3600)
    _first_handled_then_second_published(bus, service)  # first: committed at once
    assert service.poll_once(0) == 2  # handled, commit spaced
    other = bus.consumer("echo", ("in",))  # joins: each member now owns one partition
    [(_, kept)] = service.consumer.assignment()
    [(_, lost)] = other.assignment()
    service.poll_once(0)
    committed = bus.committed("echo")
    assert committed[("in", kept)] == 2
    assert committed[("in", lost)] == 1  # the new owner reads "second" again: never lost
    assert [m.value for m in other.poll(10, 0)] == [b"second"]


def test_a_negative_commit_interval_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="commit_interval"):
        _Echo(MemoryBus(), commit_interval=-1)
    with pytest.raises(ConfigurationError, match="commit_interval"):
        Settings(commit_interval=-0.5)
    assert Settings.from_env({"COREPAY_COMMIT_INTERVAL": "0"}).commit_interval == 0


def test_a_kafka_member_reports_as_taken_only_partitions_not_assigned_back() -> None:
    from kafka import TopicPartition as KafkaTopicPartition

    from corepay.backends.kafka import KafkaConsumerMember, _Listener

    member = KafkaConsumerMember.__new__(KafkaConsumerMember)  # no broker: the listener only
    member._polled, member._unsettled = {}, {}
    member._leaving, member._revoked = set(), set()
    member.group = "echo"
    listener = _Listener(member)
    both = [KafkaTopicPartition("in", 0), KafkaTopicPartition("in", 1)]
    # An eager rebalance revokes everything, then assigns; partition 0 keeps its position.
    listener.on_partitions_revoked(both)
    listener.on_partitions_assigned(both[:1])
    assert member.take_revoked() == {("in", 1)}
    assert member.take_revoked() == set()
    listener.on_partitions_revoked(both[:1])
    listener.on_partitions_assigned(both[:1])
    assert member.take_revoked() == set()
    listener.on_partitions_lost(both[:1])  # evicted: taken, whatever comes next
    listener.on_partitions_assigned(both[:1])
    assert member.take_revoked() == {("in", 0)}
