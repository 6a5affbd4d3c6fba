"""The Bus contract: what every backend does for the services built on it.

Polls go through :func:`poll_until`, a loop with a deadline, because a real broker hands out
messages in several batches and joins groups asynchronously; the memory bus answers at once.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import pytest

from corepay import TrafficGenerator, wire
from corepay.bus import Bus, Consumer, Delivery, Message, Record, TopicPartition
from corepay.errors import CommitFailedError, ConfigurationError

from .conftest import BusFactory

Names = Callable[[str], str]


def poll_until(
    consumer: Consumer, n: int, until: float, *, max_records: int = 500
) -> list[Message]:
    """Poll until at least ``n`` messages arrived or ``until`` (monotonic) passed."""
    got: list[Message] = []
    while len(got) < n:
        remaining = until - time.monotonic()
        if remaining <= 0:
            break
        got.extend(consumer.poll(max_records=max_records, timeout=min(remaining, 0.5)))
    return got


def poll_quiet(consumer: Consumer, factory: BusFactory) -> list[Message]:
    """Whatever still arrives within the backend's quiet period (expected: nothing)."""
    got: list[Message] = []
    until = time.monotonic() + factory.quiet_s
    while (remaining := until - time.monotonic()) > 0:
        got.extend(consumer.poll(timeout=remaining))
    return got


def settle(
    members: Sequence[Consumer],
    topics: Iterable[str],
    factory: BusFactory,
    *,
    pause: float = 0.0,
) -> list[list[Message]]:
    """Poll every member until together they own every partition, each owning some.

    ``pause``: seconds each member spends "working" after its poll, as a service does with a
    batch. Returns what each member received meanwhile (nothing, if nothing was published yet).
    """
    expected = {TopicPartition(t, p) for t in topics for p in range(factory.partitions)}
    received: list[list[Message]] = [[] for _ in members]
    until = factory.deadline()
    while True:
        owned = [m.assignment() for m in members]
        disjoint = sum(len(o) for o in owned) == len(set().union(*owned))
        if all(owned) and disjoint and set().union(*owned) == expected:
            return received
        assert time.monotonic() < until, f"group did not settle: {owned}"
        for member, got in zip(members, received, strict=True):
            got.extend(member.poll(timeout=0.1 if not pause else 0.05))
            time.sleep(pause)


def new_topic(bus: Bus, fresh_name: Names) -> str:
    topic = fresh_name("topic")
    bus.ensure_topics([topic])
    return topic


def publish_spread(bus: Bus, topic: str, fresh_name: Names, count: int) -> list[bytes]:
    """Publish ``count`` messages with distinct keys (so over every partition); their values."""
    values = [f"message {i}".encode() for i in range(count)]
    for value in values:
        bus.publish(topic, fresh_name("customer"), value)
    return values


def addresses(messages: Iterable[Message]) -> list[tuple[str, int, int]]:
    return [(m.topic, m.partition, m.offset) for m in messages]


def memory_only(factory: BusFactory, why: str) -> None:
    if factory.name != "memory":
        pytest.skip(f"memory-only behaviour: {why}")


# --- publishing ------------------------------------------------------------------------------


def test_publish_returns_where_the_message_went(bus_factory: BusFactory, fresh_name: Names):
    bus = bus_factory()
    topic = new_topic(bus, fresh_name)
    keys = [fresh_name("customer") for _ in range(8)]
    published: list[tuple[Delivery, bytes]] = []
    for i in range(40):
        value = f"payment {i}".encode()
        published.append((bus.publish(topic, keys[i % len(keys)], value), value))

    last_offset: dict[int, int] = {}
    for delivery, _ in published:
        assert delivery.topic == topic
        assert 0 <= delivery.partition < bus_factory.partitions
        assert delivery.offset > last_offset.get(delivery.partition, -1)
        last_offset[delivery.partition] = delivery.offset

    with bus.consumer(fresh_name("group"), [topic]) as consumer:
        got = poll_until(consumer, len(published), bus_factory.deadline())
    by_address = {(m.topic, m.partition, m.offset): m.value for m in got}
    assert by_address == {(d.topic, d.partition, d.offset): v for d, v in published}


def test_one_key_stays_in_one_partition_in_order(bus_factory: BusFactory, fresh_name: Names):
    bus = bus_factory()
    topic = new_topic(bus, fresh_name)
    key = fresh_name("customer")
    values = [f"payment {i}".encode() for i in range(20)]
    deliveries = [bus.publish(topic, key, v) for v in values]

    assert len({d.partition for d in deliveries}) == 1
    consumer = bus_factory.consumer(bus, fresh_name("group"), [topic])
    got = poll_until(consumer, len(values), bus_factory.deadline())
    assert [m.value for m in got] == values
    assert {m.key for m in got} == {key}


def test_different_keys_spread_over_every_partition(bus_factory: BusFactory, fresh_name: Names):
    bus = bus_factory()
    topic = new_topic(bus, fresh_name)
    # 64 random keys leave one of 4 partitions empty with probability ~4e-8.
    deliveries = [bus.publish(topic, fresh_name("customer"), b"x") for _ in range(64)]
    assert {d.partition for d in deliveries} == set(range(bus_factory.partitions))


def test_publish_many_returns_deliveries_in_record_order(
    bus_factory: BusFactory, fresh_name: Names
):
    bus = bus_factory()
    topic = new_topic(bus, fresh_name)
    keys = [fresh_name("customer") for _ in range(5)]
    records = [Record(topic, keys[i % 5], f"payment {i}".encode()) for i in range(25)]

    deliveries = bus.publish_many(records)

    assert len(deliveries) == len(records)
    consumer = bus_factory.consumer(bus, fresh_name("group"), [topic])
    got = {
        (m.partition, m.offset): m
        for m in poll_until(consumer, len(records), bus_factory.deadline())
    }
    for record, delivery in zip(records, deliveries, strict=True):
        assert delivery.topic == topic
        message = got[(delivery.partition, delivery.offset)]
        assert (message.key, message.value) == (record.key, record.value)
    assert bus.publish_many([]) == []


def test_a_kafka_publish_does_not_wait_out_the_producer_linger(
    bus_factory: BusFactory, fresh_name: Names
):
    if bus_factory.name != "kafka":
        pytest.skip("kafka-only: the producer's linger_ms")
    # With a minute's linger, a publish that waited for its batch to fill or the linger to
    # pass would time out after 20 s; one that has its records sent at once is acknowledged.
    from corepay.backends import open_bus

    with open_bus(f"{bus_factory.url}&linger_ms=60000&publish_timeout=20") as bus:
        topic = new_topic(bus, fresh_name)
        keys = [fresh_name("customer") for _ in range(3)]
        deliveries = bus.publish_many([Record(topic, k, b"batched") for k in keys])
        deliveries.append(bus.publish(topic, keys[0], b"alone"))
        assert [d.topic for d in deliveries] == [topic] * 4
        consumer = bus_factory.consumer(bus, fresh_name("group"), [topic])
        got = poll_until(consumer, 4, bus_factory.deadline())
        assert sorted(m.value for m in got) == [b"alone", b"batched", b"batched", b"batched"]


def test_a_record_given_a_partition_goes_there_whatever_its_key(
    bus_factory: BusFactory, fresh_name: Names
):
    bus = bus_factory()
    topic = new_topic(bus, fresh_name)
    key = fresh_name("customer")
    by_key = bus.publish(topic, key, b"by key").partition
    elsewhere = [p for p in range(bus_factory.partitions) if p != by_key]
    records = [Record(topic, key, f"to {p}".encode(), partition=p) for p in elsewhere]

    deliveries = [bus.publish(topic, key, b"one", partition=elsewhere[0])]
    deliveries += bus.publish_many(records)

    assert [d.partition for d in deliveries] == [elsewhere[0], *elsewhere]
    replayed = {m.value: m.partition for m in bus.replay(topic, range(bus_factory.partitions))}
    assert replayed == {
        b"by key": by_key,
        b"one": elsewhere[0],
        **{f"to {p}".encode(): p for p in elsewhere},
    }
    # A partition that does not exist refuses the whole publish, before any of it is sent.
    with pytest.raises(ConfigurationError, match="no partition"):
        bus.publish(topic, key, b"nowhere", partition=bus_factory.partitions)
    with pytest.raises(ConfigurationError, match="no partition"):
        bus.publish_many(
            [
                Record(topic, key, b"fine", partition=0),
                Record(topic, key, b"nowhere", partition=bus_factory.partitions),
            ]
        )
    with pytest.raises(ConfigurationError, match="no partition"):
        bus.publish(topic, key, b"not a number", partition=True)  # type: ignore[arg-type]
    assert len(bus.replay(topic, range(bus_factory.partitions))) == len(replayed)


def test_a_replay_of_a_partition_that_does_not_exist_is_refused(
    bus_factory: BusFactory, fresh_name: Names
):
    memory_only(bus_factory, "the memory bus checks the partitions a replay asks for")
    bus = bus_factory()
    topic = new_topic(bus, fresh_name)
    bus.publish(topic, fresh_name("customer"), b"kept")
    for missing in (-1, bus_factory.partitions):
        with pytest.raises(ConfigurationError, match="no partition"):
            bus.replay(topic, [missing])
    assert [m.value for m in bus.replay(topic, range(bus_factory.partitions))] == [b"kept"]


def test_headers_round_trip(bus_factory: BusFactory, fresh_name: Names):
    bus = bus_factory()
    topic = new_topic(bus, fresh_name)
    headers = {"trace-id": fresh_name("trace"), "origin": "gateway-eu ü"}
    bus.publish(topic, fresh_name("customer"), b"with", headers)
    bus.publish(topic, fresh_name("customer"), b"without")

    consumer = bus_factory.consumer(bus, fresh_name("group"), [topic])
    got = {m.value: dict(m.headers) for m in poll_until(consumer, 2, bus_factory.deadline())}
    assert got == {b"with": headers, b"without": {}}


def test_value_must_be_bytes_and_a_refused_value_is_not_published(
    bus_factory: BusFactory, fresh_name: Names
):
    bus = bus_factory()
    topic = new_topic(bus, fresh_name)
    key = fresh_name("customer")
    with pytest.raises(TypeError, match="bytes"):
        bus.publish(topic, key, "not bytes")  # type: ignore[arg-type]
    bus.publish(topic, key, b"bytes")

    consumer = bus_factory.consumer(bus, fresh_name("group"), [topic])
    got = poll_until(consumer, 1, bus_factory.deadline()) + poll_quiet(consumer, bus_factory)
    assert [m.value for m in got] == [b"bytes"]


# --- consumer groups -------------------------------------------------------------------------


def test_a_committing_member_receives_every_message_exactly_once(
    bus_factory: BusFactory, fresh_name: Names
):
    bus = bus_factory()
    topic = new_topic(bus, fresh_name)
    group = fresh_name("group")
    values = publish_spread(bus, topic, fresh_name, 30)

    got: list[Message] = []
    with bus.consumer(group, [topic]) as consumer:
        until = bus_factory.deadline()
        while len(got) < len(values) and time.monotonic() < until:
            got.extend(consumer.poll(timeout=0.5))
            consumer.commit()
        got.extend(poll_quiet(consumer, bus_factory))
    assert Counter(m.value for m in got) == Counter(values)

    # Everything was committed: the group's next member has nothing left to read.
    rejoined = bus_factory.consumer(bus, group, [topic])
    assert poll_quiet(rejoined, bus_factory) == []


def test_groups_consume_independently(bus_factory: BusFactory, fresh_name: Names):
    bus = bus_factory()
    topic = new_topic(bus, fresh_name)
    values = publish_spread(bus, topic, fresh_name, 20)

    first = bus_factory.consumer(bus, fresh_name("group"), [topic])
    got_first = poll_until(first, len(values), bus_factory.deadline())
    first.commit()
    second = bus_factory.consumer(bus, fresh_name("group"), [topic])
    got_second = poll_until(second, len(values), bus_factory.deadline())

    assert sorted(m.value for m in got_first) == sorted(values)
    assert sorted(m.value for m in got_second) == sorted(values)


def test_uncommitted_messages_go_to_the_next_member_and_committed_ones_do_not(
    bus_factory: BusFactory, fresh_name: Names
):
    bus = bus_factory()
    topic = new_topic(bus, fresh_name)
    group = fresh_name("group")
    committed = publish_spread(bus, topic, fresh_name, 12)
    first = bus_factory.consumer(bus, group, [topic])
    assert len(poll_until(first, len(committed), bus_factory.deadline())) == len(committed)
    first.commit()
    uncommitted = [f"later {i}".encode() for i in range(12)]
    for value in uncommitted:
        bus.publish(topic, fresh_name("customer"), value)
    assert len(poll_until(first, len(uncommitted), bus_factory.deadline())) == len(uncommitted)
    first.close()

    second = bus_factory.consumer(bus, group, [topic])
    got = poll_until(second, len(uncommitted), bus_factory.deadline()) + poll_quiet(
        second, bus_factory
    )
    assert sorted(m.value for m in got) == sorted(uncommitted)


def test_what_a_consumer_changes_in_its_messages_reaches_no_other_delivery(
    bus_factory: BusFactory, fresh_name: Names
):
    # Messages are plain objects, so a consumer may change one; on Kafka each poll builds its
    # own, and the memory bus must not hand several consumers (or deliveries) one object.
    bus = bus_factory()
    topic = new_topic(bus, fresh_name)
    group, key = fresh_name("group"), fresh_name("customer")
    delivery = bus.publish(topic, key, b"payment", {"trace": "t-1"})
    first = bus_factory.consumer(bus, group, [topic])
    other = bus_factory.consumer(bus, fresh_name("group"), [topic])
    (mine,) = poll_until(first, 1, bus_factory.deadline())
    mine.key, mine.offset, mine.timestamp_ms = "someone-else", 99, 0
    mine.headers["trace"] = "changed"  # type: ignore[index]
    mine.headers["added"] = "too"  # type: ignore[index]
    first.close()  # not committed: delivered again to the group

    again = bus_factory.consumer(bus, group, [topic])
    got = [
        *poll_until(again, 1, bus_factory.deadline()),
        *poll_until(other, 1, bus_factory.deadline()),
    ]
    assert [(m.key, m.offset, m.headers, m.value) for m in got] == 2 * [
        (key, delivery.offset, {"trace": "t-1"}, b"payment")
    ]
    assert all(m.timestamp_ms > 0 for m in got)


#: Both ways to commit: waiting until it is stored, and not (how the services commit; a
#: close() right after must not lose it).
WAITS = pytest.mark.parametrize("wait", [True, False], ids=["waiting", "not-waiting"])


@WAITS
def test_explicit_commit_commits_up_to_the_next_offset_given(
    bus_factory: BusFactory, fresh_name: Names, wait: bool
):
    bus = bus_factory()
    topic = new_topic(bus, fresh_name)
    group = fresh_name("group")
    key = fresh_name("customer")
    values = [f"payment {i}".encode() for i in range(10)]
    deliveries = [bus.publish(topic, key, v) for v in values]
    tp = TopicPartition(topic, deliveries[0].partition)

    first = bus_factory.consumer(bus, group, [topic])
    assert len(poll_until(first, len(values), bus_factory.deadline())) == len(values)
    # The committed offset is the next message to read: values[5] onwards are not done.
    first.commit({tp: deliveries[4].offset + 1}, wait=wait)
    first.close()

    second = bus_factory.consumer(bus, group, [topic])
    got = poll_until(second, 5, bus_factory.deadline()) + poll_quiet(second, bus_factory)
    assert [m.value for m in got] == values[5:]
    assert got[0].offset == deliveries[5].offset


@WAITS
def test_a_lower_explicit_commit_moves_the_group_back(
    bus_factory: BusFactory, fresh_name: Names, wait: bool
):
    # Kafka stores the offset committed last, even a lower one; a bus that silently kept the
    # higher one would hide a consumer that commits out of order (and so skips messages on Kafka).
    bus = bus_factory()
    topic = new_topic(bus, fresh_name)
    group = fresh_name("group")
    key = fresh_name("customer")
    values = [f"payment {i}".encode() for i in range(10)]
    deliveries = [bus.publish(topic, key, v) for v in values]
    tp = TopicPartition(topic, deliveries[0].partition)

    first = bus_factory.consumer(bus, group, [topic])
    assert len(poll_until(first, len(values), bus_factory.deadline())) == len(values)
    first.commit({tp: deliveries[7].offset + 1}, wait=wait)
    first.commit({tp: deliveries[2].offset + 1}, wait=wait)
    first.close()

    second = bus_factory.consumer(bus, group, [topic])
    got = poll_until(second, 7, bus_factory.deadline()) + poll_quiet(second, bus_factory)
    assert [m.value for m in got] == values[3:]


def test_a_commit_that_does_not_wait_reaches_the_group_while_the_member_goes_on(
    bus_factory: BusFactory, fresh_name: Names
):
    # Not closed: the commit must be on its way by itself, or a rebalance hands the
    # partitions over as if nothing had been committed.
    bus = bus_factory()
    topic = new_topic(bus, fresh_name)
    group = fresh_name("group")
    values = publish_spread(bus, topic, fresh_name, 40)
    first = bus_factory.consumer(bus, group, [topic])
    assert len(poll_until(first, len(values), bus_factory.deadline())) == len(values)
    first.commit(wait=False)

    second = bus_factory.consumer(bus, group, [topic])
    received = settle([first, second], [topic], bus_factory)
    assert second.assignment()
    assert received[1] + poll_quiet(second, bus_factory) == []


def test_two_members_split_the_partitions_and_together_get_everything(
    bus_factory: BusFactory, fresh_name: Names
):
    bus = bus_factory()
    topic = new_topic(bus, fresh_name)
    group = fresh_name("group")
    members = [bus_factory.consumer(bus, group, [topic]) for _ in range(2)]
    received = settle(members, [topic], bus_factory)
    owned = [m.assignment() for m in members]
    values = publish_spread(bus, topic, fresh_name, 40)

    until = bus_factory.deadline()
    while sum(map(len, received)) < len(values) and time.monotonic() < until:
        for member, got in zip(members, received, strict=True):
            got.extend(member.poll(timeout=0.1))
            member.commit()

    assert owned[0].isdisjoint(owned[1])
    for mine, got in zip(owned, received, strict=True):
        assert got, "each member receives a share"
        assert {m.topic_partition for m in got} <= mine
    assert Counter(m.value for got in received for m in got) == Counter(values)


def test_a_group_settles_when_its_members_pause_between_polls(
    bus_factory: BusFactory, fresh_name: Names
):
    # Members that work between polls let a group join finish while no poll is waiting for
    # it; the join must still be taken up, not restarted (kafka-python 3.0 restarted it, and
    # a group could churn for as long as that went on: see backends/kafka.py). A join that
    # was restarted showed in about one group in four, so several groups are formed here.
    bus = bus_factory()
    topic = new_topic(bus, fresh_name)
    for _ in range(4):
        group = fresh_name("group")
        members = [bus_factory.consumer(bus, group, [topic]) for _ in range(2)]
        settle(members, [topic], bus_factory, pause=0.2)
        for member in members:
            member.close()


def test_co_partitioned_topics_go_to_the_same_member(bus_factory: BusFactory, fresh_name: Names):
    bus = bus_factory()
    payments, outcomes = new_topic(bus, fresh_name), new_topic(bus, fresh_name)
    group = fresh_name("group")
    members = [bus_factory.consumer(bus, group, [payments, outcomes]) for _ in range(2)]
    received = settle(members, [payments, outcomes], bus_factory)

    for member in members:
        owned = member.assignment()
        assert {p for t, p in owned if t == payments} == {p for t, p in owned if t == outcomes}

    # What users rely on: a customer's payment and outcome reach the same member.
    keys = [fresh_name("customer") for _ in range(16)]
    for key in keys:
        bus.publish(payments, key, b"payment")
        bus.publish(outcomes, key, b"outcome")
    until = bus_factory.deadline()
    while sum(map(len, received)) < 2 * len(keys) and time.monotonic() < until:
        for member, got in zip(members, received, strict=True):
            got.extend(member.poll(timeout=0.1))
    member_of = {(m.topic, m.key): i for i, got in enumerate(received) for m in got}
    assert len(member_of) == 2 * len(keys)
    for key in keys:
        assert member_of[(payments, key)] == member_of[(outcomes, key)]


def test_a_member_that_lost_a_partition_cannot_commit_it_and_the_new_owner_gets_its_messages(
    bus_factory: BusFactory, fresh_name: Names
):
    bus = bus_factory()
    topic = new_topic(bus, fresh_name)
    group = fresh_name("group")
    values = publish_spread(bus, topic, fresh_name, 40)
    first = bus_factory.consumer(bus, group, [topic])
    polled = poll_until(first, len(values), bus_factory.deadline())
    assert len(polled) == len(values)

    second = bus_factory.consumer(bus, group, [topic])
    received = settle([first, second], [topic], bus_factory)
    lost = second.assignment()
    next_offsets: dict[TopicPartition, int] = {}
    for m in polled:
        next_offsets[m.topic_partition] = max(next_offsets.get(m.topic_partition, 0), m.offset + 1)

    lost_offsets = {tp: next_offsets[tp] for tp in lost if tp in next_offsets}
    assert lost_offsets, "the new member took over partitions the first one had polled"

    with pytest.raises(CommitFailedError):
        first.commit(lost_offsets)
    with pytest.raises(CommitFailedError):
        first.commit(lost_offsets, wait=False)

    expected = sorted(addresses(m for m in polled if m.topic_partition in lost))
    got = received[1] + poll_until(second, len(expected) - len(received[1]), bus_factory.deadline())
    assert sorted(addresses(got)) == expected


def test_poll_returns_an_empty_list_when_nothing_arrives(
    bus_factory: BusFactory, fresh_name: Names
):
    bus = bus_factory()
    topic = new_topic(bus, fresh_name)
    consumer = bus_factory.consumer(bus, fresh_name("group"), [topic])
    started = time.monotonic()
    assert consumer.poll(timeout=0.2) == []
    assert time.monotonic() - started < 5, "poll ignored its timeout"


def test_poll_returns_a_message_published_while_it_waits(
    bus_factory: BusFactory, fresh_name: Names
):
    bus = bus_factory()
    topic = new_topic(bus, fresh_name)
    consumer = bus_factory.consumer(bus, fresh_name("group"), [topic])
    settle([consumer], [topic], bus_factory)
    publisher = threading.Timer(0.2, bus.publish, (topic, fresh_name("customer"), b"late"))
    publisher.start()
    try:
        got = poll_until(consumer, 1, bus_factory.deadline())
    finally:
        publisher.join()
    assert [m.value for m in got] == [b"late"]


def test_poll_returns_at_most_max_records(bus_factory: BusFactory, fresh_name: Names):
    bus = bus_factory()
    topic = new_topic(bus, fresh_name)
    values = publish_spread(bus, topic, fresh_name, 10)
    consumer = bus_factory.consumer(bus, fresh_name("group"), [topic])

    batches: list[list[Message]] = []
    until = bus_factory.deadline()
    while sum(map(len, batches)) < len(values) and time.monotonic() < until:
        batches.append(consumer.poll(max_records=3, timeout=0.5))
    assert all(len(batch) <= 3 for batch in batches)
    assert sorted(m.value for batch in batches for m in batch) == sorted(values)


def test_a_consumer_used_as_a_context_manager_leaves_the_group(
    bus_factory: BusFactory, fresh_name: Names
):
    bus = bus_factory()
    topic = new_topic(bus, fresh_name)
    group = fresh_name("group")
    values = publish_spread(bus, topic, fresh_name, 8)
    with bus.consumer(group, [topic]) as consumer:
        assert isinstance(consumer, Consumer)
        assert len(poll_until(consumer, len(values), bus_factory.deadline())) == len(values)
    consumer.close()  # closing again is harmless

    # It left the group at once, so the next member owns everything and gets the uncommitted.
    successor = bus_factory.consumer(bus, group, [topic])
    got = poll_until(successor, len(values), bus_factory.deadline())
    assert sorted(m.value for m in got) == sorted(values)


# --- memory-only introspection ---------------------------------------------------------------


def test_memory_lag_counts_what_the_group_has_not_committed(
    bus_factory: BusFactory, fresh_name: Names
):
    memory_only(bus_factory, "lag() and committed() are MemoryBus helpers, not part of Bus")
    bus = bus_factory()
    topic = new_topic(bus, fresh_name)
    group = fresh_name("group")
    publish_spread(bus, topic, fresh_name, 10)
    consumer = bus_factory.consumer(bus, group, [topic])
    assert bus.lag(group, topic) == 10  # type: ignore[attr-defined]

    got = poll_until(consumer, 10, bus_factory.deadline())
    assert bus.lag(group, topic) == 10  # type: ignore[attr-defined]
    consumer.commit()
    assert bus.lag(group, topic) == 0  # type: ignore[attr-defined]
    expected = {TopicPartition(topic, p): 0 for p in range(bus_factory.partitions)}
    expected.update({m.topic_partition: m.offset + 1 for m in sorted(got, key=lambda m: m.offset)})
    assert bus.committed(group) == expected  # type: ignore[attr-defined]


def test_memory_publish_many_with_a_value_not_bytes_publishes_none_of_them(
    bus_factory: BusFactory, fresh_name: Names
):
    memory_only(bus_factory, "the memory bus checks every value before it takes any")
    bus = bus_factory()
    topic = new_topic(bus, fresh_name)
    records = [Record(topic, "k", b"fine"), Record(topic, "k", "text")]  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="value must be bytes, not str"):
        bus.publish_many(records)
    assert bus.messages(topic) == []  # type: ignore[attr-defined]


class _Encodes:
    """An object that encodes itself, counting how often."""

    def __init__(self, text: str) -> None:
        self.text, self.encoded = text, 0

    def __bytes__(self) -> bytes:
        self.encoded += 1
        return f"encoded {self.text}".encode()


class _CannotEncode:
    def __bytes__(self) -> bytes:
        raise ValueError("this object has no bytes")


class _OddBytes(bytes):
    """Bytes of a subclass, which bytes() passes through from __bytes__ as they are."""


class _EncodesOdd:
    def __bytes__(self) -> bytes:
        return _OddBytes(b"odd")


def test_only_a_bus_in_this_process_takes_an_object_and_carries_what_wire_vouches_for(
    bus_factory: BusFactory, fresh_name: Names, monkeypatch: pytest.MonkeyPatch
):
    bus = bus_factory()
    topic = new_topic(bus, fresh_name)
    obj = _Encodes("x")

    if not bus.in_process:
        with pytest.raises(TypeError, match="value must be bytes, not _Encodes"):
            bus.publish(topic, "k", obj)
        assert obj.encoded == 0
        return
    with pytest.raises(TypeError, match="value must be bytes, not str"):
        bus.publish(topic, "k", "text")  # type: ignore[arg-type]  # (no __bytes__)
    with pytest.raises(ValueError, match="this object has no bytes"):
        bus.publish_many([Record(topic, "k", b"fine"), Record(topic, "k", _CannotEncode())])
    assert bus.replay(topic, range(bus_factory.partitions)) == []  # refused whole, at publish
    # An object wire does not vouch for is encoded as it is published, to plain bytes.
    bus.publish(topic, "k", obj)
    assert obj.encoded == 1
    bus.publish(topic, "k", _EncodesOdd())
    # A transaction this process validated is carried, and encoded once, when first read.
    encodings: list[object] = []
    encode = wire.encode_transaction
    monkeypatch.setattr(wire, "encode_transaction", lambda t: encodings.append(t) or encode(t))
    txn = wire.parse_transaction(next(TrafficGenerator(customers=1).requests(1)))
    bus.publish(topic, "k", txn)
    consumer = bus_factory.consumer(bus, fresh_name("group"), [topic])
    (mine, odd, message) = poll_until(consumer, 3, bus_factory.deadline())

    assert mine.carried is None and mine.value == b"encoded x"
    assert odd.carried is None and type(odd.value) is bytes and odd.value == b"odd"
    assert message.carried is txn
    assert encodings == []  # nothing encoded until its bytes are read
    assert message.value == encode(txn) == message.value
    assert encodings == [txn]  # and then once
    (_, _, replayed) = bus.replay(topic, [message.partition])
    assert replayed == message and replayed.value == encode(txn)
    plain = Message(
        topic, message.partition, message.offset, "k", encode(txn), {}, message.timestamp_ms
    )
    assert plain.carried is None
    assert plain == message and repr(plain) == repr(message)  # as bytes, however published


def test_replay_reads_whole_partitions_outside_any_group(
    bus_factory: BusFactory, fresh_name: Names
):
    bus = bus_factory()
    topic = new_topic(bus, fresh_name)
    keys = [fresh_name("customer") for _ in range(8)]
    deliveries = [bus.publish(topic, keys[i % 8], f"state {i}".encode()) for i in range(40)]
    some = {deliveries[0].partition}

    replayed = bus.replay(topic, some)
    assert [(m.partition, m.offset) for m in replayed] == sorted(
        (d.partition, d.offset) for d in deliveries if d.partition in some
    )
    everything = bus.replay(topic, range(bus_factory.partitions))
    assert sorted(m.value for m in everything) == sorted(f"state {i}".encode() for i in range(40))
    # A group consuming the topic afterwards still gets everything: replay committed nothing.
    with bus.consumer(fresh_name("group"), [topic]) as consumer:
        assert len(poll_until(consumer, 40, bus_factory.deadline())) == 40
    assert bus.replay(topic, []) == []
