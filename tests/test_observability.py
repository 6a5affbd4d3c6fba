"""Metrics, JSON logs and ops endpoints: what an operator sees of a running service.

The Prometheus registry is process-wide, so every metric assertion compares a value before and
after the traffic the test itself sent.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from flask import Flask
from prometheus_client import REGISTRY

from corepay import (
    DIVERGENCE_ALERT,
    LIVE_OUTCOME,
    RAW_TRANSACTIONS,
    SIMULATION_OUTCOME,
    Engine,
    MemoryBus,
    MemoryTwinStore,
    Pipeline,
    SimulationPath,
    StoreTwinClient,
    TrafficGenerator,
    parse_transaction,
)
from corepay.bus import Message, Record, TopicPartition, dead_letter_topic
from corepay.errors import ConfigurationError, ConflictError, UnavailableError
from corepay.models import AlertKind, Outcome, Path, Transaction, Twin
from corepay.observability import (
    JsonFormatter,
    add_ops_routes,
    checks,
    configure_logging,
    create_ops_app,
    record_request,
    timed,
)
from corepay.paths import DecisionPath
from corepay.services.detector import DETECTOR_CHANGELOG
from corepay.services.runner import ConsumerService, Handled

PARTITIONS = 4


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class _Snapshot:
    """Sample values now, to compare with later ones."""

    def __init__(self, samples: Sequence[tuple[str, dict[str, str]]]) -> None:
        self._before = {(n, tuple(sorted(ls.items()))): _value(n, **ls) for n, ls in samples}

    def delta(self, name: str, **labels: str) -> float:
        return _value(name, **labels) - self._before[(name, tuple(sorted(labels.items())))]


def _requests(count: int, customers: int, seed: int = 5) -> list[dict[str, object]]:
    return list(TrafficGenerator(customers=customers, seed=seed).requests(count))


# --- metrics ---------------------------------------------------------------------------------

_FLOW = [
    ("engine", RAW_TRANSACTIONS, "consumed"),
    ("engine", LIVE_OUTCOME, "produced"),
    ("engine", SIMULATION_OUTCOME, "produced"),
    ("engine", dead_letter_topic(RAW_TRANSACTIONS), "produced"),
    ("twin", LIVE_OUTCOME, "consumed"),
    ("detector", LIVE_OUTCOME, "consumed"),
    ("detector", SIMULATION_OUTCOME, "consumed"),
    ("detector", DIVERGENCE_ALERT, "produced"),
    ("detector", DETECTOR_CHANGELOG, "produced"),
]


def test_counters_follow_every_message_through_the_pipeline() -> None:
    samples = [
        (f"corepay_messages_{way}_total", {"service": service, "topic": topic})
        for service, topic, way in _FLOW
    ]
    samples.append(("corepay_dead_letters_total", {"service": "engine", "topic": RAW_TRANSACTIONS}))
    samples += [("corepay_divergences_total", {"kind": kind.value}) for kind in AlertKind]
    stages = [
        ("corepay_stage_seconds_count", {"service": service, "stage": stage})
        for service, stage in [
            ("engine", "handle"),
            ("engine", "publish"),
            ("engine", "commit"),
            ("twin", "handle"),  # (the twin service publishes nothing)
            ("twin", "commit"),
            ("detector", "handle"),
            ("detector", "publish"),
            ("detector", "commit"),
        ]
    ]
    samples += stages
    before = _Snapshot(samples)
    bus = MemoryBus(partitions=PARTITIONS)
    with Pipeline(bus, seed=3, batch_size=100) as pipeline:
        requests = _requests(600, customers=40)
        for start in range(0, len(requests), 200):
            pipeline.submit_many(requests[start : start + 200])
            pipeline.drain()
        bus.publish(RAW_TRANSACTIONS, "cust-x", b"not a transaction")
        pipeline.drain()

    n = len(requests)
    # One changelog entry lists every transaction a batch resolved in a partition.
    logged = [
        tid
        for m in bus.messages(DETECTOR_CHANGELOG)
        for tid in json.loads(m.value)["transaction_ids"]
    ]
    assert len(logged) == len(set(logged)) == n
    produced = {
        "engine": {LIVE_OUTCOME: n, SIMULATION_OUTCOME: n, dead_letter_topic(RAW_TRANSACTIONS): 1},
        "detector": {
            DIVERGENCE_ALERT: len(bus.messages(DIVERGENCE_ALERT)),
            DETECTOR_CHANGELOG: len(bus.messages(DETECTOR_CHANGELOG)),
        },
    }
    consumed = {
        "engine": {RAW_TRANSACTIONS: n + 1},
        "twin": {LIVE_OUTCOME: n},
        "detector": {LIVE_OUTCOME: n, SIMULATION_OUTCOME: n},
    }
    for service, topic, way in _FLOW:
        expected = (produced if way == "produced" else consumed)[service][topic]
        got = before.delta(f"corepay_messages_{way}_total", service=service, topic=topic)
        assert got == expected, f"{way} {service} {topic}"
    assert before.delta("corepay_dead_letters_total", service="engine", topic=RAW_TRANSACTIONS) == 1

    alerts = {kind.value: pipeline.alerts[kind.value] for kind in AlertKind}
    assert sum(alerts.values()) == len(bus.messages(DIVERGENCE_ALERT)) > 0
    counted = {k: before.delta("corepay_divergences_total", kind=k) for k in alerts}
    assert counted == alerts

    # Every stage of every service was timed at least once (how long it took is not asserted).
    for _, labels in stages:
        assert before.delta("corepay_stage_seconds_count", **labels) > 0, labels


def _lag(service: str, topic: str) -> list[float | None]:
    return [
        REGISTRY.get_sample_value(
            "corepay_consumer_lag", {"service": service, "topic": topic, "partition": str(p)}
        )
        for p in range(PARTITIONS)
    ]


def test_consumer_lag_counts_what_waits_and_drops_to_zero_once_drained() -> None:
    with Pipeline(MemoryBus(partitions=PARTITIONS), seed=1, batch_size=10) as pipeline:
        pipeline.submit_many(_requests(50, customers=20))
        pipeline.step()  # the engine takes 10 of the 50
        waiting = _lag("engine", RAW_TRANSACTIONS)
        assert None not in waiting
        assert sum(v or 0 for v in waiting) == 40
        pipeline.drain()
        assert _lag("engine", RAW_TRANSACTIONS) == [0.0] * PARTITIONS
        assert _lag("twin", LIVE_OUTCOME) == [0.0] * PARTITIONS
        assert _lag("detector", SIMULATION_OUTCOME) == [0.0] * PARTITIONS
    # A service that left its group no longer reports partitions it does not own.
    assert _lag("engine", RAW_TRANSACTIONS) == [None] * PARTITIONS

    # One that joins again reports them again (the series it removed are not reused).
    with Pipeline(MemoryBus(partitions=PARTITIONS), seed=1, batch_size=10) as pipeline:
        pipeline.submit_many(_requests(30, customers=20))
        pipeline.step()
        assert sum(v or 0 for v in _lag("engine", RAW_TRANSACTIONS)) == 20


def test_a_busy_service_reports_its_lag_every_lag_interval_and_when_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with Pipeline(MemoryBus(partitions=PARTITIONS), seed=1, batch_size=10) as pipeline:
        engine = pipeline.services[0]
        engine.lag_interval = 3600.0
        asked: list[int] = []
        lag = engine.consumer.lag
        monkeypatch.setattr(engine.consumer, "lag", lambda: asked.append(1) or lag())
        pipeline.submit_many(_requests(50, customers=20))

        for _ in range(5):  # busy: reported after the first batch only
            assert engine.poll_once(timeout=0.0) == 10
        assert len(asked) == 1
        assert sum(v or 0 for v in _lag("engine", RAW_TRANSACTIONS)) == 40

        assert engine.poll_once(timeout=0.0) == 0  # nothing new: reported at once
        assert len(asked) == 2
        assert _lag("engine", RAW_TRANSACTIONS) == [0.0] * PARTITIONS


def test_partitions_taken_away_while_idle_are_no_longer_reported_at_the_next_poll() -> None:
    with Pipeline(MemoryBus(partitions=PARTITIONS), seed=1, batch_size=10) as pipeline:
        engine = pipeline.services[0]
        engine.lag_interval = 3600.0
        pipeline.submit_many(_requests(20, customers=20))
        pipeline.drain()
        assert _lag("engine", RAW_TRANSACTIONS) == [0.0] * PARTITIONS
        other = pipeline.bus.consumer(engine.group, [RAW_TRANSACTIONS])  # takes some over
        taken = other.assignment()

        engine.poll_once(timeout=0.0)

        lags = _lag("engine", RAW_TRANSACTIONS)
        assert taken and all(lags[tp.partition] is None for tp in taken)
        assert all(lags[tp.partition] == 0.0 for tp in engine.consumer.assignment())
        other.close()


def test_a_partition_one_member_hands_to_another_in_this_process_keeps_its_gauge() -> None:
    # Both members report into the same series: the one that loses a partition removes
    # it, and the one that takes it over must set it again though its lag did not change.
    bus = MemoryBus(partitions=2)
    bus.ensure_topics(["lag-moved"])

    class _Idle(ConsumerService):
        group, topics, service = "lag-moved", ("lag-moved",), "lag-moved"

        def handle(self, messages: Sequence[Message]) -> Handled:
            return Handled([])

    def gauges() -> list[float | None]:
        labels = {"service": "lag-moved", "topic": "lag-moved"}
        return [
            REGISTRY.get_sample_value("corepay_consumer_lag", {**labels, "partition": str(p)})
            for p in range(2)
        ]

    first = _Idle(bus)
    first.lag_interval = 3600.0
    for p in (0, 1):
        bus.publish("lag-moved", "k", b"x", partition=p)
    while first.poll_once(timeout=0.0):
        pass
    assert gauges() == [0.0, 0.0]
    second = _Idle(bus)  # takes partition 1 over
    second.lag_interval = 3600.0
    second.poll_once(timeout=0.0)
    first.poll_once(timeout=0.0)  # gives partition 1 up: its series goes
    assert gauges()[1] is None

    second.poll_once(timeout=0.0)
    second.poll_once(timeout=0.0)

    assert gauges() == [0.0, 0.0]
    first.close()
    second.close()


def test_a_memory_consumer_reports_lag_per_owned_partition() -> None:
    bus = MemoryBus(partitions=2)
    for i in range(7):
        bus.publish("t", f"c{i}", b"x")
    consumer = bus.consumer("g", ["t"])
    ends = {tp: len(bus.replay(tp.topic, [tp.partition])) for tp in consumer.assignment()}
    assert consumer.lag() == ends
    consumer.poll(max_records=7, timeout=0)
    assert consumer.lag() == dict.fromkeys(ends, 0)
    consumer.close()


@pytest.mark.kafka
def test_a_kafka_consumer_reports_lag_from_what_it_fetched() -> None:
    bootstrap = os.environ.get("COREPAY_TEST_KAFKA_BOOTSTRAP", "").strip()
    if not bootstrap:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true, so Kafka must be tested: set COREPAY_TEST_KAFKA_BOOTSTRAP")
        pytest.skip("needs a broker: scripts/kafka start, then set COREPAY_TEST_KAFKA_BOOTSTRAP")
    from corepay.backends import open_bus

    topic, group = f"lag-{uuid.uuid4().hex}", f"lag-{uuid.uuid4().hex}"
    with open_bus(f"kafka://{bootstrap}?partitions={PARTITIONS}") as bus:
        bus.ensure_topics([topic])
        deliveries = bus.publish_many(Record(topic, f"c{i}", b"x") for i in range(20))
        ends = Counter(TopicPartition(topic, d.partition) for d in deliveries)
        with bus.consumer(group, [topic]) as consumer:
            got: list[Message] = []
            deadline = time.monotonic() + 30
            while not got and time.monotonic() < deadline:
                got = consumer.poll(max_records=5, timeout=0.5)
            lag = consumer.lag()
            # Partitions not fetched from yet are left out; the others count what waits.
            assert lag, "no partition fetched from"
            read = Counter(m.topic_partition for m in got)
            assert lag == {tp: ends[tp] - read[tp] for tp in lag}
            assert sum(lag.values()) > 0
            while len(got) < 20 and time.monotonic() < deadline:
                got += consumer.poll(max_records=5, timeout=0.5)
            assert len(got) == 20
            assert consumer.lag() == dict.fromkeys(consumer.assignment(), 0)


class _Contended(MemoryTwinStore):
    """Loses every third compare-and-swap to an imaginary concurrent writer."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = self.lost = 0

    def compare_and_set(self, twin: Twin, *, expected_version: int | None) -> None:
        self.calls += 1
        if self.calls % 3 == 0:
            self.lost += 1
            raise ConflictError(f"twin {twin.customer_id!r} changed")
        super().compare_and_set(twin, expected_version=expected_version)


def test_twin_update_conflicts_are_counted() -> None:
    before = _Snapshot([("corepay_twin_update_conflicts_total", {})])
    store = _Contended()
    with Pipeline(store=store, seed=2, batch_size=50) as pipeline:
        pipeline.submit_many(_requests(60, customers=15))
        pipeline.drain()
    assert store.lost > 0
    assert before.delta("corepay_twin_update_conflicts_total") == store.lost
    assert pipeline.twin_service.conflicts == store.lost


def test_record_request_and_timed_count_what_they_are_given() -> None:
    labels = {"service": "test", "route": "/v1/things/<id>", "method": "GET", "status": "404"}
    stage = {"service": "test", "stage": "failing"}
    before = _Snapshot(
        [("corepay_http_requests_total", labels), ("corepay_stage_seconds_count", stage)]
    )
    record_request("test", "/v1/things/<id>", "GET", 404)
    record_request("test", "/v1/things/<id>", "GET", 404)
    with pytest.raises(ZeroDivisionError), timed("test", "failing"):
        _ = 1 / 0
    assert before.delta("corepay_http_requests_total", **labels) == 2
    assert before.delta("corepay_stage_seconds_count", **stage) == 1


# --- logs ------------------------------------------------------------------------------------


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture
def json_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("corepay.test_observability")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield logger, out
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def test_json_lines_carry_the_extra_fields_given(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = json_log
    logger.warning(
        "declined %s",
        "t-1",
        extra={
            "transaction_id": "t-1",
            "customer_id": "c-9",
            "partition": 3,
            "amount": Decimal("12.50"),
            "seen": {"at": datetime(2024, 1, 2, tzinfo=UTC)},
            "score": float("nan"),
        },
    )
    [line] = _json_lines(out.getvalue())
    assert line["level"] == "WARNING"
    assert line["logger"] == "corepay.test_observability"
    assert line["message"] == "declined t-1"
    assert line["transaction_id"] == "t-1" and line["customer_id"] == "c-9"
    assert line["partition"] == 3
    assert line["amount"] == "12.50"
    assert "2024-01-02" in str(line["seen"])
    assert line["score"] == "nan"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(line["ts"]))
    assert "exception" not in line


def test_json_lines_carry_the_traceback_of_an_exception(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = json_log
    try:
        _ = {}["missing"]
    except KeyError:
        logger.exception("lookup failed", extra={"transaction_id": "t-2"})
    [line] = _json_lines(out.getvalue())
    assert line["transaction_id"] == "t-2"
    assert str(line["exception"]).startswith("Traceback (most recent call last)")
    assert "KeyError: 'missing'" in str(line["exception"])


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


@pytest.mark.usefixtures("restore_root_logging")
def test_configure_logging_stamps_the_service_on_every_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("warning", service="detector")
    configure_logging("info", "json", service="detector")  # again: still one line per record
    logging.getLogger("corepay.anything").info("hello", extra={"transaction_id": "t-3"})
    logging.getLogger("corepay.anything").info("mine", extra={"service": "twin"})
    logging.getLogger("corepay.anything").debug("below the level")
    lines = _json_lines(capsys.readouterr().err)
    assert [(x["message"], x["service"]) for x in lines] == [
        ("hello", "detector"),
        ("mine", "twin"),
    ]
    assert lines[0]["transaction_id"] == "t-3"


@pytest.mark.usefixtures("restore_root_logging")
def test_configure_logging_names_a_bad_level_or_format() -> None:
    with pytest.raises(ConfigurationError, match="'loud'"):
        configure_logging("loud")
    with pytest.raises(ConfigurationError, match="'xml'"):
        configure_logging("INFO", fmt="xml")


def test_an_alert_is_logged_with_its_transaction_customer_and_kind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = MemoryBus(partitions=PARTITIONS)
    with (
        caplog.at_level(logging.INFO, logger="corepay.services.detector"),
        Pipeline(bus, seed=3, batch_size=100) as pipeline,
    ):
        pipeline.submit_many(_requests(300, customers=30))
        pipeline.drain()
    logged = {
        (r.transaction_id, r.customer_id, r.kind)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "corepay.services.detector" and hasattr(r, "kind")
    }
    alerts = {
        (a["transaction_id"], a["customer_id"], a["kind"])
        for a in (json.loads(m.value) for m in bus.messages(DIVERGENCE_ALERT))
    }
    assert logged == alerts
    assert len(alerts) > 0


class _BrokenPath(DecisionPath):
    path = Path.LIVE
    model_version = "broken-1"

    def decide_batch(
        self, txns: Sequence[Transaction], ingested: Sequence[datetime | None]
    ) -> list[Outcome]:
        raise RuntimeError("model file is corrupt")


def test_a_failed_decision_is_logged_with_its_transaction_and_the_paths_are_timed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stages = [
        ("corepay_stage_seconds_count", {"service": "test-engine", "stage": s})
        for s in (
            "decide_live",
            "decide_simulation",
        )
    ]
    before = _Snapshot(stages)
    txns = [parse_transaction(r) for r in _requests(3, customers=3)]
    simulation = SimulationPath(StoreTwinClient(MemoryTwinStore()))
    with (
        caplog.at_level(logging.ERROR, logger="corepay.engine"),
        Engine(_BrokenPath(), simulation, service="test-engine") as engine,
    ):
        engine.decide(txns)
    logged = [
        (r.transaction_id, r.customer_id)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "corepay.engine"
    ]
    assert sorted(logged) == sorted((t.transaction_id, t.customer_id) for t in txns)
    for _, labels in stages:
        assert before.delta("corepay_stage_seconds_count", **labels) == 1


# --- ops endpoints ---------------------------------------------------------------------------


class _UnreachableBus(MemoryBus):
    def check(self) -> None:
        raise UnavailableError("Kafka at 10.0.0.9:9092 is unreachable: connection refused")


class _DownStore(MemoryTwinStore):
    def get(self, customer_id: str) -> Twin | None:
        raise UnavailableError("Couchbase at db:11210 did not answer")


def test_healthz_and_readyz_with_working_backends() -> None:
    client = create_ops_app("detector", checks(bus=MemoryBus(), store=MemoryTwinStore()))
    client = client.test_client()
    health = client.get("/healthz")
    assert (health.status_code, health.get_json()) == (200, {"status": "ok"})
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json() == {"status": "ready", "checks": {"bus": "ok", "store": "ok"}}


def test_readyz_answers_503_naming_what_is_down_without_a_traceback() -> None:
    def model() -> str:
        raise RuntimeError("model not loaded yet")

    ready = checks(bus=_UnreachableBus(), store=_DownStore(), model=model, cache=lambda: "ok")
    response = create_ops_app("twin", ready).test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {
        "status": "not_ready",
        "checks": {
            "bus": "Kafka at 10.0.0.9:9092 is unreachable: connection refused",
            "store": "Couchbase at db:11210 did not answer",
            "model": "model not loaded yet",
            "cache": "ok",
        },
    }
    assert "Traceback" not in response.get_data(as_text=True)


def test_readyz_answers_503_when_the_readiness_function_itself_fails() -> None:
    def ready() -> dict[str, str]:
        raise RuntimeError("settings not loaded")

    response = create_ops_app("engine", ready).test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {
        "status": "not_ready",
        "checks": {"ready": "settings not loaded"},
    }


def test_metrics_are_exposed_next_to_an_apps_own_routes() -> None:
    app = Flask("some-service")

    @app.get("/v1/ping")
    def ping() -> str:
        return "pong"

    add_ops_routes(app, "some-service", checks(bus=MemoryBus()))
    client = app.test_client()
    with Pipeline(seed=0) as pipeline:  # so the consumed counter has samples to show
        pipeline.submit_many(_requests(5, customers=5))
        pipeline.drain()
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=")
    body = response.get_data(as_text=True)
    assert 'corepay_messages_consumed_total{service="engine",topic="raw_transactions"}' in body
    assert "corepay_stage_seconds_bucket" in body
    assert client.get("/v1/ping").get_data(as_text=True) == "pong"


def test_the_ops_app_is_named_after_its_service() -> None:
    assert create_ops_app("detector", checks()).name == "corepay-detector"
