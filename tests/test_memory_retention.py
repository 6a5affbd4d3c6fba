"""The memory bus's retention: a bound on what a long run in one process keeps.

(The model-based test of retention with consumer groups is in test_memory_stateful.)
"""

from __future__ import annotations

import logging
import time

import pytest

from corepay import MemoryBus, MemoryTwinStore, Pipeline, TrafficGenerator
from corepay.backends import open_bus
from corepay.backends.memory import MemoryConsumer
from corepay.bus import LIVE_OUTCOME, Record, TopicPartition
from corepay.errors import ConfigurationError


def _fill(bus: MemoryBus, count: int, first: int = 0, topic: str = "payments") -> None:
    for i in range(first, first + count):
        bus.publish(topic, "customer-1", f"m{i}".encode(), partition=0)


def _poll_warned(
    consumer: MemoryConsumer, caplog: pytest.LogCaptureFixture
) -> tuple[list[int], str]:
    """The offsets one poll gets, and the one thing logged meanwhile: a warning."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="corepay.backends.memory"):
        got = consumer.poll(max_records=10, timeout=0)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    return [m.offset for m in got], record.getMessage()


def test_a_partition_drops_its_oldest_in_one_step_at_twice_its_retention() -> None:
    bus = MemoryBus(partitions=2, retention_messages=3)
    _fill(bus, 5)
    assert [m.offset for m in bus.replay("payments", [0])] == [0, 1, 2, 3, 4]
    _fill(bus, 1, first=5)  # six: twice three, so down to the newest three
    kept = bus.replay("payments", [0])
    assert [(m.offset, m.value) for m in kept] == [(3, b"m3"), (4, b"m4"), (5, b"m5")]
    # Offsets go on from where they were, as on Kafka.
    assert bus.publish("payments", "customer-1", b"next", partition=0).offset == 6
    assert [m.value for m in bus.messages("payments")] == [b"m3", b"m4", b"m5", b"next"]
    # The other partition is not touched.
    assert bus.publish("payments", "customer-2", b"other", partition=1).offset == 0


def test_without_a_retention_every_message_is_kept() -> None:
    bus = MemoryBus(partitions=1)
    _fill(bus, 1000)
    assert len(bus.messages("payments")) == 1000
    assert bus.retention_messages is None


def test_a_batch_published_at_once_is_trimmed_once_it_is_in() -> None:
    bus = MemoryBus(partitions=1, retention_messages=2)
    deliveries = bus.publish_many([Record("t", "k", f"{i}".encode()) for i in range(7)])
    assert [d.offset for d in deliveries] == list(range(7))
    assert [m.offset for m in bus.replay("t", [0])] == [5, 6]


def test_messages_keep_publication_order_across_partitions_and_topics() -> None:
    bus = MemoryBus(partitions=3, retention_messages=100)
    order = []
    for i in range(30):
        value = f"v{i}".encode()
        bus.publish("a" if i % 4 else "b", f"customer-{i % 7}", value)
        order.append(value)
    assert [m.value for m in bus.messages("a")] == [v for i, v in enumerate(order) if i % 4]
    assert [m.value for m in bus.messages("b")] == [v for i, v in enumerate(order) if not i % 4]


def test_a_group_behind_the_retention_reads_on_from_the_oldest_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = MemoryBus(partitions=1, retention_messages=2)
    consumer = bus.consumer("late", ["payments"])
    bus.publish("payments", "customer-1", b"first", partition=0)
    assert [m.value for m in consumer.poll(max_records=1, timeout=0)] == [b"first"]
    consumer.commit()
    _fill(bus, 3, first=1)  # offsets 1-3, then only 2 and 3 are kept
    assert consumer.lag() == {TopicPartition("payments", 0): 2}
    assert bus.lag("late", "payments") == 2
    offsets, warning = _poll_warned(consumer, caplog)
    assert offsets == [2, 3]
    assert "payments[0] dropped offset 1 before it was read" in warning
    assert "retention is 2 messages a partition" in warning
    assert "reading on from 2" in warning
    consumer.commit()
    assert bus.committed("late") == {TopicPartition("payments", 0): 4}
    assert bus.lag("late", "payments") == 0
    consumer.close()


def test_a_new_group_is_told_what_it_will_never_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = MemoryBus(partitions=1, retention_messages=2)
    _fill(bus, 4)
    consumer = bus.consumer("new", ["payments"])
    offsets, warning = _poll_warned(consumer, caplog)
    assert offsets == [2, 3]
    assert "payments[0] dropped offsets 0-1 before they were read" in warning
    consumer.close()


def test_a_member_that_read_but_did_not_commit_leaves_its_group_warned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = MemoryBus(partitions=1, retention_messages=2)
    first = bus.consumer("group", ["payments"])
    _fill(bus, 2)
    assert [m.offset for m in first.poll(max_records=10, timeout=0)] == [0, 1]
    first.close()  # before it committed: offsets 0 and 1 are the group's to read again
    _fill(bus, 4, first=2)  # offsets 2-5, then only 4 and 5 are kept
    second = bus.consumer("group", ["payments"])
    offsets, warning = _poll_warned(second, caplog)
    assert offsets == [4, 5]
    assert "payments[0] dropped offsets 0-3 before they were read" in warning
    second.close()


def test_a_group_that_keeps_up_reads_everything_and_is_told_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = MemoryBus(partitions=1, retention_messages=2)
    consumer = bus.consumer("keeps-up", ["payments"])
    read = []
    with caplog.at_level(logging.DEBUG, logger="corepay.backends.memory"):
        for i in range(0, 12, 2):
            # Two at a time: the second drops the two before them, so the group stands at the
            # oldest message kept, not past it.
            _fill(bus, 2, first=i)
            read += [m.value for m in consumer.poll(max_records=10, timeout=0)]
            consumer.commit()
    assert read == [f"m{i}".encode() for i in range(12)]
    assert bus.replay("payments", [0])[0].offset > 0  # retention did drop messages meanwhile
    assert caplog.records == []
    consumer.close()


def test_replay_since_a_time_sees_only_what_is_kept_and_new_enough() -> None:
    bus = MemoryBus(partitions=1, retention_messages=3)
    _fill(bus, 5)  # offsets 0-4, all kept
    assert [m.value for m in bus.replay("payments", [0], since_ms=1)] == [
        f"m{i}".encode() for i in range(5)
    ]
    time.sleep(0.005)
    since_ms = int(time.time() * 1000)
    time.sleep(0.005)
    _fill(bus, 1, first=5)  # six: down to offsets 3-5
    assert [m.offset for m in bus.replay("payments", [0])] == [3, 4, 5]
    assert [(m.offset, m.value) for m in bus.replay("payments", [0], since_ms=since_ms)] == [
        (5, b"m5")
    ]


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", True])
def test_a_retention_that_is_not_a_positive_whole_number_is_refused(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="retention_messages must be a whole number"):
        MemoryBus(retention_messages=bad)  # type: ignore[arg-type]


def test_the_url_option_sets_it() -> None:
    with open_bus("memory://?partitions=2&retention_messages=50") as bus:
        assert isinstance(bus, MemoryBus)
        assert (bus.partitions, bus.retention_messages) == (2, 50)
    with pytest.raises(ConfigurationError, match="retention_messages must be an integer, not 'x'"):
        open_bus("memory://?retention_messages=x")
    with pytest.raises(ConfigurationError, match="retention_messages must be a whole number"):
        open_bus("memory://?retention_messages=0")


def test_a_long_run_in_one_process_decides_the_same_and_keeps_what_it_was_told() -> None:
    requests = list(TrafficGenerator(customers=50, seed=7).requests(3000))

    def run(bus: MemoryBus) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
        with Pipeline(bus, MemoryTwinStore(), batch_size=50) as pipeline:
            for start in range(0, len(requests), 50):
                pipeline.submit_many(requests[start : start + 50])
                pipeline.drain()
            decisions = {path: dict(c) for path, c in pipeline.decisions.items()}
            return decisions, dict(pipeline.alerts)

    everything, bounded = MemoryBus(), MemoryBus(retention_messages=100)
    assert run(bounded) == run(everything)
    assert len(everything.messages(LIVE_OUTCOME)) == 3000
    for topic in bounded.topics():
        for p in range(bounded.partitions):
            assert len(bounded.replay(topic, [p])) < 200, (topic, p)
    assert 0 < len(bounded.messages(LIVE_OUTCOME)) < 4 * 200
