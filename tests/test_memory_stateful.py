"""The memory backends against plain models: a dict of twins and a list of published messages.

Hypothesis drives random sequences of operations; after each step the backend must agree with
the model, and a failing sequence is shrunk to the shortest one that still fails.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from corepay.backends.memory import MemoryBus, MemoryConsumer, MemoryTwinStore
from corepay.bus import Message, TopicPartition
from corepay.errors import CommitFailedError, ConflictError
from corepay.models import Decision, Outcome, Path, Timings, Transaction, Twin
from corepay.twin import apply_outcome
from corepay.wire import CHANNELS

MACHINE_SETTINGS = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

T0 = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)


@attrs.frozen
class Payment:
    amount: Decimal
    decision: Decision
    country: str
    channel: str
    minutes: int


payments = st.builds(
    Payment,
    amount=st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("1000000"), places=4),
    decision=st.sampled_from(Decision),
    country=st.sampled_from(["DE", "FR", "US"]),
    channel=st.sampled_from(sorted(CHANNELS)),
    minutes=st.integers(-10_000, 10_000),
)


def live_outcome(customer_id: str, transaction_id: str, payment: Payment) -> Outcome:
    txn = Transaction(
        transaction_id=transaction_id,
        customer_id=customer_id,
        amount=payment.amount,
        currency="EUR",
        merchant_id="merchant-1",
        merchant_category="5411",
        country=payment.country,
        channel=payment.channel,
        timestamp=T0 + timedelta(minutes=payment.minutes),
    )
    return Outcome(
        transaction=txn,
        path=Path.LIVE,
        decision=payment.decision,
        score=0.5,
        reasons=(),
        model_version="test-1",
        timings=Timings(decided_at=txn.timestamp, elapsed_ms=1.0),
    )


# --- twin store ------------------------------------------------------------------------------

CUSTOMERS = ("customer-a", "customer-b", "customer-c")
customers = st.sampled_from(CUSTOMERS)


class TwinStoreMachine(RuleBasedStateMachine):
    """:class:`MemoryTwinStore` behaves like a dict guarded by the twin version."""

    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryTwinStore()
        self.model: dict[str, Twin] = {}
        self._transactions = itertools.count()

    def _next_twin(self, base: Twin | None, customer_id: str, payment: Payment) -> Twin:
        txn_id = f"{customer_id}-t{next(self._transactions)}"
        return apply_outcome(base, live_outcome(customer_id, txn_id, payment))

    @rule(customer_id=customers, payment=payments)
    def create(self, customer_id: str, payment: Payment) -> None:
        twin = self._next_twin(None, customer_id, payment)
        if customer_id in self.model:
            with pytest.raises(ConflictError):
                self.store.compare_and_set(twin, expected_version=None)
        else:
            self.store.compare_and_set(twin, expected_version=None)
            self.model[customer_id] = twin

    @precondition(lambda self: self.model)
    @rule(data=st.data(), payment=payments)
    def update_at_the_read_version(self, data: st.DataObject, payment: Payment) -> None:
        customer_id = data.draw(st.sampled_from(sorted(self.model)))
        current = self.model[customer_id]
        twin = self._next_twin(current, customer_id, payment)
        self.store.compare_and_set(twin, expected_version=current.version)
        self.model[customer_id] = twin

    @rule(
        customer_id=customers,
        payment=payments,
        wrong=st.sampled_from(["none", "below", "above"]),
        by=st.integers(1, 3),
    )
    def update_at_a_wrong_version(
        self, customer_id: str, payment: Payment, wrong: str, by: int
    ) -> None:
        current = self.model.get(customer_id)
        if current is None:
            expected: int | None = by
        else:
            expected = {"none": None, "below": current.version - by, "above": current.version + by}[
                wrong
            ]
        twin = self._next_twin(current, customer_id, payment)
        with pytest.raises(ConflictError):
            self.store.compare_and_set(twin, expected_version=expected)

    @invariant()
    def store_agrees_with_the_model(self) -> None:
        for customer_id in CUSTOMERS:
            assert self.store.get(customer_id) == self.model.get(customer_id)
        assert self.store.get_many(CUSTOMERS) == self.model
        assert len(self.store) == len(self.model)


TwinStoreMachine.TestCase.settings = MACHINE_SETTINGS
test_memory_twin_store_matches_a_dict = TwinStoreMachine.TestCase


# --- bus consumer group ----------------------------------------------------------------------

TOPIC = "payments"
GROUP = "detector"
PARTITIONS = 3
KEYS = tuple(f"customer-{c}" for c in "abcdefgh")


@attrs.define
class Member:
    consumer: MemoryConsumer
    #: Next offset this member reads, for the partitions it has polled since it got them.
    positions: dict[TopicPartition, int] = attrs.field(factory=dict)


class GroupDeliveryMachine(RuleBasedStateMachine):
    """One consumer group on a :class:`MemoryBus`, against a list of what was published.

    Checked: members own disjoint partitions covering the topic; each member reads a partition
    in order from the group's committed offset without gaps; nothing committed is delivered
    again; and at the end every published message has been delivered.

    With a retention (``RETENTION``), the model drops a partition's oldest messages as the bus
    says it does, and a member further behind reads on from the oldest message kept.
    """

    RETENTION: int | None = None

    def __init__(self) -> None:
        super().__init__()
        self.bus = MemoryBus(partitions=PARTITIONS, retention_messages=self.RETENTION)
        self.bus.ensure_topics([TOPIC])
        self.logs: dict[TopicPartition, list[bytes]] = {
            TopicPartition(TOPIC, p): [] for p in range(PARTITIONS)
        }
        #: Offset of the oldest message each partition keeps.
        self.starts = dict.fromkeys(self.logs, 0)
        self.where: dict[bytes, tuple[TopicPartition, int]] = {}
        self.published: list[bytes] = []
        self.delivered: set[bytes] = set()
        self.committed: dict[TopicPartition, int] = {}
        self.members: list[Member] = []

    def _member(self, index: int) -> Member:
        return self.members[index % len(self.members)]

    def _forget_reassigned(self) -> None:
        # After a rebalance a member keeps its place only in the partitions it kept.
        for member in self.members:
            owned = member.consumer.assignment()
            member.positions = {tp: o for tp, o in member.positions.items() if tp in owned}

    def _poll(self, member: Member, max_records: int) -> list[Message]:
        batch = member.consumer.poll(max_records=max_records, timeout=0)
        assert len(batch) <= max_records
        owned = member.consumer.assignment()
        for message in batch:
            tp = message.topic_partition
            assert tp in owned
            assert message.offset >= self.committed.get(tp, 0), "a committed message came back"
            position = member.positions.get(tp, self.committed.get(tp, 0))
            assert message.offset == max(position, self.starts[tp])
            assert message.value == self.logs[tp][message.offset]
            member.positions[tp] = message.offset + 1
            self.delivered.add(message.value)
        return batch

    @rule(key=st.sampled_from(KEYS), count=st.integers(1, 4))
    def publish(self, key: str, count: int) -> None:
        for _ in range(count):
            value = f"message {len(self.published)}".encode()
            delivery = self.bus.publish(TOPIC, key, value)
            tp = TopicPartition(TOPIC, delivery.partition)
            log = self.logs[tp]
            assert delivery.offset == len(log)
            log.append(value)
            self.where[value] = (tp, delivery.offset)
            self.published.append(value)
            if self.RETENTION is not None and len(log) - self.starts[tp] >= 2 * self.RETENTION:
                self.starts[tp] = len(log) - self.RETENTION

    def _kept(self) -> list[bytes]:
        return [v for v in self.published if self.where[v][1] >= self.starts[self.where[v][0]]]

    @precondition(lambda self: len(self.members) < PARTITIONS)
    @rule()
    def join(self) -> None:
        self.members.append(Member(self.bus.consumer(GROUP, [TOPIC])))
        self._forget_reassigned()

    @precondition(lambda self: self.members)
    @rule(index=st.integers(0, PARTITIONS - 1), max_records=st.integers(1, 5))
    def poll(self, index: int, max_records: int) -> None:
        self._poll(self._member(index), max_records)

    @precondition(lambda self: self.members)
    @rule(index=st.integers(0, PARTITIONS - 1))
    def commit_all_polled(self, index: int) -> None:
        member = self._member(index)
        member.consumer.commit()
        for tp in member.consumer.assignment():
            self.committed[tp] = member.positions.get(tp, self.committed.get(tp, 0))

    @precondition(lambda self: any(m.positions for m in self.members))
    @rule(data=st.data())
    def commit_part_of_what_was_polled(self, data: st.DataObject) -> None:
        member = data.draw(st.sampled_from([m for m in self.members if m.positions]))
        tp = data.draw(st.sampled_from(sorted(member.positions)))
        offset = data.draw(st.integers(self.committed.get(tp, 0), member.positions[tp]))
        member.consumer.commit({tp: offset})
        self.committed[tp] = offset

    @precondition(lambda self: len(self.members) > 1)
    @rule(index=st.integers(0, PARTITIONS - 1), offset=st.integers(0, 10))
    def commit_a_partition_owned_by_another(self, index: int, offset: int) -> None:
        member = self._member(index)
        other = sorted(set(self.logs) - member.consumer.assignment())
        with pytest.raises(CommitFailedError):
            member.consumer.commit({other[0]: offset})

    @precondition(lambda self: self.members)
    @rule(index=st.integers(0, PARTITIONS - 1), rejoin=st.booleans())
    def close(self, index: int, rejoin: bool) -> None:
        member = self._member(index)
        self.members.remove(member)
        member.consumer.close()
        self._forget_reassigned()
        if rejoin:
            self.join()

    @invariant()
    def members_split_the_partitions(self) -> None:
        owned = [m.consumer.assignment() for m in self.members]
        assert sum(map(len, owned)) == len(set().union(*owned))
        if self.members:
            assert set().union(*owned) == set(self.logs)

    @invariant()
    def the_group_committed_what_the_model_says(self) -> None:
        assert self.bus.committed(GROUP) == self.committed

    @invariant()
    def the_bus_keeps_what_the_model_says_in_publication_order(self) -> None:
        assert [m.value for m in self.bus.messages(TOPIC)] == self._kept()
        for p in range(PARTITIONS):
            tp = TopicPartition(TOPIC, p)
            replayed = self.bus.replay(TOPIC, [p])
            assert [m.offset for m in replayed] == list(range(self.starts[tp], len(self.logs[tp])))
            assert [m.value for m in replayed] == self.logs[tp][self.starts[tp] :]

    def teardown(self) -> None:
        if not self.members:
            self.join()
        drained = False
        while not drained:
            drained = not any([self._poll(member, 500) for member in self.members])
            for index in range(len(self.members)):
                self.commit_all_polled(index)
        assert set(self._kept()) <= self.delivered, "a message kept was never delivered"
        assert self.delivered <= set(self.published)
        if self.RETENTION is None:
            assert self.delivered == set(self.published)
        assert self.bus.lag(GROUP, TOPIC) == 0
        for member in self.members:
            member.consumer.close()


GroupDeliveryMachine.TestCase.settings = MACHINE_SETTINGS
test_memory_bus_group_delivery_matches_a_list = GroupDeliveryMachine.TestCase


class RetainedGroupDeliveryMachine(GroupDeliveryMachine):
    RETENTION = 2


RetainedGroupDeliveryMachine.TestCase.settings = MACHINE_SETTINGS
test_memory_bus_with_retention_matches_a_list = RetainedGroupDeliveryMachine.TestCase
