"""In-memory bus and twin store, for tests, demos and notebooks.

They are real implementations with the semantics of Kafka and Couchbase, not shortcuts:
messages are partitioned by key hash, consumer groups split partitions with Kafka's range
assignment (so co-partitioned topics go to the same member), polled-but-uncommitted messages
are redelivered after a member leaves, a commit for a partition the member lost fails, a twin
is kept as the immutable value it is, and a stale compare-and-swap raises
:class:`~corepay.errors.ConflictError`. Both are thread-safe and live only as long as the process.

The bus keeps every message unless given a retention (``retention_messages``): then, as on
Kafka, old messages are dropped whether or not anyone read them, and a consumer group that
was further behind than that reads on from the oldest message kept.

URL: ``memory://`` (options for the bus: ``?partitions=N``, default 4, and
``retention_messages=N``, default none).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import SupportsBytes

from corepay.bus import Bus, Consumer, Delivery, Message, Record, TopicPartition
from corepay.errors import CommitFailedError, ConfigurationError, ConflictError
from corepay.models import Twin
from corepay.store import TwinStore
from corepay.wire import carry, encode_twin

__all__ = ["MemoryBus", "MemoryTwinStore", "partition_for"]

logger = logging.getLogger(__name__)


def partition_for(key: str, partitions: int) -> int:
    """The partition a key lands in: stable across processes and runs (unlike ``hash``)."""
    return zlib.crc32(key.encode()) % partitions


class _Group:
    def __init__(self) -> None:
        self.members: list[MemoryConsumer] = []
        self.committed: dict[TopicPartition, int] = {}


#: What a partition's log keeps of a message: key, value, headers, timestamp (ms), and its
#: place in the order of everything the bus took (which :meth:`MemoryBus.messages` follows).
_Entry = tuple[str, "bytes | SupportsBytes", Mapping[str, str], int, int]
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})  # only ever copied out


class _Log(list[_Entry]):
    """A partition's messages, oldest kept first; ``start`` is the offset of the first (the
    log start offset: above 0 once retention dropped messages)."""

    __slots__ = ("start",)

    def __init__(self) -> None:
        super().__init__()
        self.start = 0

    @property
    def end(self) -> int:
        """The offset the next message gets."""
        return self.start + len(self)


def _messages(topic: str, partition: int, entries: Iterable[tuple[int, _Entry]]) -> list[Message]:
    """Messages for ``(offset, entry)`` pairs of one partition's log.

    New objects on every call, headers included: as from Kafka, what a consumer gets is its
    own, and nothing it changes reaches another consumer or a later delivery.
    """
    return [
        Message(topic, partition, offset, key, value, dict(headers) if headers else {}, at)
        for offset, (key, value, headers, at, _) in entries
    ]


class MemoryBus(Bus):
    """A partitioned in-process bus with Kafka's consumer-group semantics.

    Args:
        partitions: of every topic.
        retention_messages: the messages each partition keeps at least (``None``: every
            message, for as long as the bus lives). As Kafka drops whole log segments, a
            partition drops its oldest messages in one step once it holds twice as many, so
            it holds up to twice this many. For long runs in one process, whose memory
            otherwise grows with every payment. Whatever is dropped is gone for
            :meth:`replay` too: with a twin store that does not outlive the process, a twin
            service that starts later rebuilds only what is still kept.
    """

    in_process = True

    def __init__(self, partitions: int = 4, *, retention_messages: int | None = None) -> None:
        if partitions < 1:
            raise ConfigurationError("partitions must be at least 1")
        if retention_messages is not None and (
            type(retention_messages) is not int or retention_messages < 1
        ):
            raise ConfigurationError(
                f"retention_messages must be a whole number of at least 1 (or None), "
                f"not {retention_messages!r}"
            )
        self.partitions = partitions
        self.retention_messages = retention_messages
        self._lock = threading.Condition(threading.RLock())
        self._logs: dict[str, list[_Log]] = {}
        self._taken = itertools.count()  # the order the bus took messages in, over all topics
        self._groups: dict[str, _Group] = {}
        self._member_ids = itertools.count(1)

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, str]) -> MemoryBus:
        unknown = set(options) - {"partitions", "retention_messages"}
        if unknown:
            raise ConfigurationError(f"unknown memory bus option(s): {', '.join(sorted(unknown))}")
        numbers: dict[str, int] = {}
        for name in ("partitions", "retention_messages"):
            if name in options:
                try:
                    numbers[name] = int(options[name])
                except ValueError:
                    raise ConfigurationError(
                        f"memory bus option {name} must be an integer, not {options[name]!r}"
                    ) from None
        return cls(**numbers)

    def _log(self, topic: str) -> list[_Log]:
        log = self._logs.get(topic)
        if log is None:
            log = self._logs[topic] = [_Log() for _ in range(self.partitions)]
            for group in self._groups.values():
                if any(topic in m.topics for m in group.members):
                    self._rebalance(group)
        return log

    def ensure_topics(self, topics: Sequence[str]) -> None:
        with self._lock:
            for topic in topics:
                self._log(topic)

    def _check_partition(self, topic: str, partition: int | None) -> None:
        if partition is not None and (
            type(partition) is not int or not 0 <= partition < self.partitions
        ):
            raise ConfigurationError(
                f"{topic} has no partition {partition!r} (0-{self.partitions - 1})"
            )

    def publish_many(self, records: Iterable[Record]) -> list[Delivery]:
        records = list(records)
        values: list[bytes | SupportsBytes] = []
        checked: set[int] = set()
        for record in records:  # all or nothing, as on Kafka
            value = record.value
            if type(value) is not bytes:
                self._check_value(value)
                value = carry(value, checked)
            values.append(value)
            if record.partition is not None:
                self._check_partition(record.topic, record.partition)
        if not records:
            return []
        # One lock and one wake-up of the waiting consumers for the whole batch.
        timestamp_ms = int(time.time() * 1000)
        with self._lock:
            deliveries = self._append(records, values, timestamp_ms)
            self._lock.notify_all()
        return deliveries

    def publish(
        self,
        topic: str,
        key: str,
        value: bytes | SupportsBytes,
        headers: Mapping[str, str] | None = None,
        *,
        partition: int | None = None,
    ) -> Delivery:
        return self.publish_many([Record(topic, key, value, headers or {}, partition)])[0]

    @staticmethod
    def _check_value(value: object) -> None:
        if not isinstance(value, bytes) and not callable(getattr(type(value), "__bytes__", None)):
            raise TypeError(
                f"value must be bytes, not {type(value).__name__} (or, on this bus, an "
                "object that encodes itself with __bytes__)"
            )

    def _append(
        self,
        records: Sequence[Record],
        values: Sequence[bytes | SupportsBytes],
        timestamp_ms: int,
    ) -> list[Delivery]:
        # Called with the lock held; ``values``: what to keep of each record's value.
        logs, partitions, taken = self._logs, self.partitions, self._taken
        deliveries = []
        for record, value in zip(records, values, strict=True):
            topic, key, headers = record.topic, record.key, record.headers
            partition = record.partition
            if partition is None:
                partition = partition_for(key, partitions)
            log = (logs.get(topic) or self._log(topic))[partition]
            offset = log.start + len(log)
            log.append(
                (
                    key,
                    value,
                    dict(headers) if headers else _NO_HEADERS,
                    timestamp_ms,
                    next(taken),
                )
            )
            deliveries.append(Delivery(topic, partition, offset))
        if self.retention_messages is not None:
            self._retain({(d.topic, d.partition) for d in deliveries})
        return deliveries

    def _retain(self, partitions: Iterable[tuple[str, int]]) -> None:
        # Called with the lock held: drop the oldest messages of partitions that hold twice
        # their retention, down to it (in one step, so each message is moved about once).
        keep = self.retention_messages
        assert keep is not None
        for topic, partition in partitions:
            log = self._logs[topic][partition]
            if len(log) >= 2 * keep:
                dropped = len(log) - keep
                del log[:dropped]
                log.start += dropped

    def consumer(self, group: str, topics: Sequence[str]) -> MemoryConsumer:
        if not topics:
            raise ConfigurationError("a consumer needs at least one topic")
        with self._lock:
            member = MemoryConsumer(self, group, f"{group}-{next(self._member_ids)}", topics)
            state = self._groups.setdefault(group, _Group())
            for topic in topics:
                self._log(topic)
            state.members.append(member)
            self._rebalance(state)
            return member

    def replay(
        self, topic: str, partitions: Iterable[int], *, since_ms: int | None = None
    ) -> list[Message]:
        with self._lock:
            log = self._log(topic)
            since = since_ms or 0
            found: list[Message] = []
            for p in partitions:
                self._check_partition(topic, p)
                found += _messages(
                    topic, p, [(o, e) for o, e in enumerate(log[p], log[p].start) if e[3] >= since]
                )
            return found

    def messages(self, topic: str) -> list[Message]:
        """Every message published to ``topic`` (that its retention, if any, still keeps),
        in publication order."""
        with self._lock:
            kept = [
                (entry[4], p, offset, entry)
                for p, log in enumerate(self._logs.get(topic, ()))
                for offset, entry in enumerate(log, log.start)
            ]
            kept.sort(key=lambda found: found[0])
            return [_messages(topic, p, [(offset, entry)])[0] for _, p, offset, entry in kept]

    def topics(self) -> list[str]:
        with self._lock:
            return sorted(self._logs)

    def committed(self, group: str) -> dict[TopicPartition, int]:
        """The group's committed offsets (next offset to read, per partition)."""
        with self._lock:
            state = self._groups.get(group)
            return dict(state.committed) if state else {}

    def lag(self, group: str, topic: str) -> int:
        """Messages of ``topic`` the group has not committed yet (of those still kept)."""
        with self._lock:
            committed = self._groups[group].committed if group in self._groups else {}
            return sum(
                log.end - max(committed.get(TopicPartition(topic, p), 0), log.start)
                for p, log in enumerate(self._logs.get(topic, ()))
            )

    def _rebalance(self, group: _Group) -> None:
        # Kafka's range assignor: per topic, partitions in contiguous ranges over the members
        # sorted by id. Topics with equal partition counts get identical splits, which is what
        # keeps co-partitioned topics on one member.
        owners: dict[TopicPartition, MemoryConsumer] = {}
        for topic in sorted({t for m in group.members for t in m.topics}):
            members = sorted((m for m in group.members if topic in m.topics), key=_member_key)
            per, extra = divmod(len(self._logs[topic]), len(members))
            start = 0
            for i, member in enumerate(members):
                size = per + (1 if i < extra else 0)
                for p in range(start, start + size):
                    owners[TopicPartition(topic, p)] = member
                start += size
        for member in group.members:
            mine = {tp for tp, owner in owners.items() if owner is member}
            member._assign(mine, group.committed)

    def _leave(self, member: MemoryConsumer) -> None:
        with self._lock:
            group = self._groups[member.group]
            group.members.remove(member)
            self._rebalance(group)


def _member_key(member: MemoryConsumer) -> tuple[int, str]:
    return (len(member.member_id), member.member_id)


class MemoryConsumer(Consumer):
    """A member of a consumer group on a :class:`MemoryBus`."""

    def __init__(self, bus: MemoryBus, group: str, member_id: str, topics: Sequence[str]) -> None:
        self._bus = bus
        self.group = group
        self.member_id = member_id
        self.topics = tuple(topics)
        self._positions: dict[TopicPartition, int] = {}
        self._revoked: set[TopicPartition] = set()
        self._rotation = 0
        self._closed = False

    def _assign(
        self, partitions: set[TopicPartition], committed: Mapping[TopicPartition, int]
    ) -> None:
        # Partitions kept stay at their position; newly owned ones start at the committed offset.
        self._revoked |= self._positions.keys() - partitions
        self._positions = {
            tp: self._positions.get(tp, committed.get(tp, 0)) for tp in sorted(partitions)
        }

    def assignment(self) -> frozenset[TopicPartition]:
        with self._bus._lock:
            return frozenset(self._positions)

    def take_revoked(self) -> frozenset[TopicPartition]:
        with self._bus._lock:
            revoked, self._revoked = frozenset(self._revoked), set()
            return revoked

    def poll(self, max_records: int = 500, timeout: float = 1.0) -> list[Message]:
        if self._closed:
            raise RuntimeError("consumer is closed")
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._bus._lock:
            while True:
                batch = self._take(max_records)
                remaining = deadline - time.monotonic()
                if batch or remaining <= 0:
                    return batch
                self._bus._lock.wait(remaining)

    def _take(self, max_records: int) -> list[Message]:
        partitions = list(self._positions)
        if not partitions:
            return []
        self._rotation = (self._rotation + 1) % len(partitions)
        batch: list[Message] = []
        logs, positions = self._bus._logs, self._positions
        for tp in partitions[self._rotation :] + partitions[: self._rotation]:
            log = logs[tp.topic][tp.partition]
            position, start = positions[tp], log.start
            if start + len(log) == position:
                continue  # nothing new (an idle poll finds every partition so)
            if position < start:
                self._skip_dropped(tp, position, start)
                position = start
            at = position - start
            taken = log[at : at + max_records - len(batch)]
            batch.extend(_messages(tp.topic, tp.partition, enumerate(taken, position)))
            positions[tp] = position + len(taken)
            if len(batch) >= max_records:
                break
        return batch

    def _skip_dropped(self, tp: TopicPartition, position: int, start: int) -> None:
        # Kafka's answer to a position retention has dropped (auto.offset.reset=earliest, as
        # CorePay's Kafka consumers have it): read on from the oldest message kept. What was
        # dropped from the position on, no one in the group committed and this member did not
        # read (a member that once read some of it left before committing): the group has
        # missed it, and is told so, a group new to the partition too.
        dropped = (
            f"offset {position} before it was"
            if position == start - 1
            else f"offsets {position}-{start - 1} before they were"
        )
        logger.warning(
            "%s of group %s: %s[%d] dropped %s read (the bus's retention is %s messages a "
            "partition); reading on from %d",
            self.member_id,
            self.group,
            tp.topic,
            tp.partition,
            dropped,
            self._bus.retention_messages,
            start,
            extra={"topic": tp.topic, "partition": tp.partition, "offset": start},
        )

    def lag(self) -> dict[TopicPartition, int]:
        with self._bus._lock:
            lags = {}
            for tp, position in self._positions.items():
                log = self._bus._logs[tp.topic][tp.partition]
                lags[tp] = log.end - max(position, log.start)
            return lags

    def commit(
        self, offsets: Mapping[TopicPartition, int] | None = None, *, wait: bool = True
    ) -> None:
        # Stored at once, so there is nothing to wait for either way.
        if self._closed:
            raise RuntimeError("consumer is closed")
        with self._bus._lock:
            wanted = dict(self._positions if offsets is None else offsets)
            lost = sorted(tp for tp in wanted if tp not in self._positions)
            if lost:
                raise CommitFailedError(
                    f"{self.member_id} no longer owns {', '.join(f'{t}[{p}]' for t, p in lost)}"
                    " after a rebalance; those messages go to the new owner"
                )
            committed = self._bus._groups[self.group].committed
            for tp, offset in wanted.items():
                committed[tp] = offset  # as in Kafka: set, even if lower

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._bus._leave(self)


class MemoryTwinStore(TwinStore):
    """Twins kept in a dict, with compare-and-swap on the twin version.

    A :class:`Twin` is an immutable value, so the store keeps the object it is given and hands
    the same object back: no document is encoded or decoded on this path (the Couchbase store
    holds :func:`encode_twin` documents).
    """

    durable = False
    blocking = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._twins: dict[str, Twin] = {}

    @classmethod
    def from_url(
        cls, url: str, options: Mapping[str, str], **credentials: object
    ) -> MemoryTwinStore:
        if options:
            raise ConfigurationError(
                f"unknown memory store option(s): {', '.join(sorted(options))}"
            )
        return cls()

    def get(self, customer_id: str) -> Twin | None:
        return self._twins.get(customer_id)

    def compare_and_set(self, twin: Twin, *, expected_version: int | None) -> None:
        with self._lock:
            current = self._twins.get(twin.customer_id)
            found = None if current is None else current.version
            if found != expected_version:
                raise ConflictError(
                    f"twin {twin.customer_id!r} is at version {found}, "
                    f"not the expected {expected_version}"
                )
            self._twins[twin.customer_id] = twin

    def __len__(self) -> int:
        return len(self._twins)

    def __iter__(self) -> Iterator[Twin]:
        """Every twin, in customer-id order."""
        with self._lock:
            twins = sorted(self._twins.items())
        return (twin for _, twin in twins)

    def size_bytes(self) -> int:
        """Total size of the twins as stored documents (:func:`encode_twin`)."""
        with self._lock:
            twins = list(self._twins.values())
        return sum(len(encode_twin(t)) for t in twins)
