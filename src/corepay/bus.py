"""The message bus interface: keyed publish, consumer groups, explicit commits.

Semantics every backend honours (the contract suite in ``tests/contract`` checks them):

- A topic has a fixed number of partitions; a message goes to the partition its key hashes to,
  so all messages with one key keep their order, and topics with the same partition count are
  co-partitioned.
- :meth:`Bus.publish` returns only once the bus has durably taken the message; if it cannot,
  it raises :class:`~corepay.errors.UnavailableError` (or a timeout), and nothing was accepted.
- Consumers in one group share a topic's partitions. Delivery is at least once: a message
  polled but not committed is delivered again to the group after the consumer closes, crashes,
  or loses the partition in a rebalance.
- Offsets follow Kafka's convention: a committed offset is the *next* message to read.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import NamedTuple, Self, SupportsBytes

import attrs

__all__ = [
    "ALL_TOPICS",
    "CHANGELOG_SUFFIX",
    "DIVERGENCE_ALERT",
    "LIVE_OUTCOME",
    "RAW_TRANSACTIONS",
    "SIMULATION_OUTCOME",
    "Bus",
    "Consumer",
    "Delivery",
    "Message",
    "Record",
    "TopicPartition",
    "dead_letter_topic",
]

RAW_TRANSACTIONS = "raw_transactions"
LIVE_OUTCOME = "live_outcome"
SIMULATION_OUTCOME = "simulation_outcome"
DIVERGENCE_ALERT = "divergence_alert"
ALL_TOPICS = (RAW_TRANSACTIONS, LIVE_OUTCOME, SIMULATION_OUTCOME, DIVERGENCE_ALERT)


#: Suffix of topics that hold a service's state (kept for ``changelog_retention``, not forever).
CHANGELOG_SUFFIX = "_changelog"


def dead_letter_topic(topic: str) -> str:
    """Where messages of ``topic`` that cannot be handled are parked, with the error."""
    return f"{topic}.dlq"


class TopicPartition(NamedTuple):
    topic: str
    partition: int


def _bytes_of(value: bytes | SupportsBytes) -> bytes:
    return value if type(value) is bytes else bytes(value)


@attrs.define
class Record:
    """A message to publish. ``key`` is the customer id on every CorePay topic.

    ``partition`` is ``None`` to place it by its key, as every CorePay topic does; a number
    places it in that partition (which must exist), for an entry that must sit beside the
    messages it is about (see :meth:`Bus.publish`).

    A plain (not frozen) class: a bus reads a record once, while publishing it, and keeps no
    reference to it. (A frozen attrs class costs about 40 ns more per field to build, which
    several envelopes per payment made a few percent of the in-process throughput.)
    """

    topic: str
    key: str
    value: bytes | SupportsBytes
    headers: Mapping[str, str] = attrs.field(factory=dict)
    partition: int | None = None


class Delivery(NamedTuple):
    """Where the bus put a published message: a position, like :class:`TopicPartition`."""

    topic: str
    partition: int
    offset: int


@attrs.define(repr=False)
class Message:
    """A message as a consumer receives it.

    Its ``value`` is bytes, however it was published. On a bus in this process, a value
    published as an object (see :attr:`Bus.in_process`) may be :attr:`carried` as itself,
    and is then encoded (``bytes(obj)``) only when ``value`` is first read.

    Every poll hands out messages of its own, as Kafka's client does: a consumer may change or
    keep one without another consumer, or a later delivery of the same message, seeing it.
    """

    topic: str
    partition: int
    offset: int
    key: str
    _value: bytes | SupportsBytes = attrs.field(eq=_bytes_of)
    headers: Mapping[str, str]
    timestamp_ms: int
    _encoded: bytes | None = attrs.field(default=None, init=False, eq=False, repr=False)

    @property
    def value(self) -> bytes:
        value = self._value
        if type(value) is bytes:
            return value
        encoded = self._encoded
        if encoded is None:  # threads racing here both get the same bytes
            encoded = self._encoded = bytes(value)
        return encoded

    @property
    def carried(self) -> SupportsBytes | None:
        """The object published, when a bus in this process carries it as itself."""
        value = self._value
        return None if type(value) is bytes else value

    def __repr__(self) -> str:
        return (
            f"Message(topic={self.topic!r}, partition={self.partition!r}, "
            f"offset={self.offset!r}, key={self.key!r}, value={self.value!r}, "
            f"headers={self.headers!r}, timestamp_ms={self.timestamp_ms!r})"
        )

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


class Consumer(ABC):
    """One member of a consumer group. Not thread-safe: use it from one thread."""

    @abstractmethod
    def poll(self, max_records: int = 500, timeout: float = 1.0) -> list[Message]:
        """Return up to ``max_records`` messages, waiting up to ``timeout`` seconds for one."""

    @abstractmethod
    def commit(
        self, offsets: Mapping[TopicPartition, int] | None = None, *, wait: bool = True
    ) -> None:
        """Commit ``offsets`` (next offset to read, per partition); ``None``: all polled so far.

        With ``wait=False`` the commit is sent and this returns without waiting for the server
        to store it, so the next batch need not wait a round trip. It reaches the server
        before any later commit from this member, and :meth:`close` commits again, waiting a
        bounded time, the offsets of partitions it still owns. A commit that fails is logged,
        not retried: until a later one lands, those messages are read again by whoever owns
        the partition next (after a crash, or a rebalance), as if they had not been committed.
        Delivery is at least once either way. A backend that stores commits at once does so
        here too.

        Raises:
            CommitFailedError: a partition was reassigned to another member since it was polled.
        """

    @abstractmethod
    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this member currently owns."""

    def take_revoked(self) -> frozenset[TopicPartition]:
        """The partitions taken from this member since the last call, by rebalances inside
        :meth:`poll`: those another member may have read since, including any given back to
        it by a later rebalance (it reads them again from the group's last commit). One a
        rebalance revokes and assigns straight back, keeping its position, is not among them.
        Default: none known."""
        return frozenset()

    def lag(self) -> dict[TopicPartition, int] | None:
        """Messages waiting in each owned partition after this member's position.

        Only what the member knows without asking the server (it is read after every poll,
        for metrics); a partition it knows nothing about yet is left out. ``None``: this
        backend cannot tell.
        """
        return None

    @abstractmethod
    def close(self) -> None:
        """Leave the group. Messages polled but not committed go back to the group."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Bus(ABC):
    """A partitioned, keyed message bus (Kafka, or its in-memory equivalent)."""

    #: Whether every consumer of this bus is in this process (the memory bus): it then takes
    #: in place of bytes an object that encodes itself (``bytes(obj)``), and keeps a
    #: transaction or outcome that :func:`corepay.wire.carry` vouches for as itself, so that
    #: one service hands the next the object, encoded only if someone reads its bytes; it
    #: encodes any other object at once. Any other bus refuses one (``TypeError``).
    in_process: bool = False

    @abstractmethod
    def publish(
        self,
        topic: str,
        key: str,
        value: bytes | SupportsBytes,
        headers: Mapping[str, str] | None = None,
        *,
        partition: int | None = None,
    ) -> Delivery:
        """Publish one message and wait until the bus has durably taken it.

        It goes to the partition its key hashes to, or to ``partition`` when one is given.
        ``value`` is bytes, or on a bus that is :attr:`in_process` an object to carry.

        Raises:
            TypeError: ``value`` is neither (nothing was published).
            ConfigurationError: ``partition`` is not one of the topic's; nothing was published.
            UnavailableError: the bus could not take it; nothing was published.
            BackendTimeoutError: no acknowledgement in time; the message may or may not be there.
        """

    def publish_many(self, records: Iterable[Record]) -> list[Delivery]:
        """Publish several messages, returning once all are taken (backends batch this).

        The memory and Kafka buses refuse them all, before any is published, when one names
        a partition its topic does not have (``ConfigurationError``).
        """
        return [
            self.publish(r.topic, r.key, r.value, r.headers)
            if r.partition is None
            else self.publish(r.topic, r.key, r.value, r.headers, partition=r.partition)
            for r in records
        ]

    @abstractmethod
    def consumer(self, group: str, topics: Sequence[str]) -> Consumer:
        """Join consumer group ``group``, subscribed to ``topics``."""

    @abstractmethod
    def replay(
        self, topic: str, partitions: Iterable[int], *, since_ms: int | None = None
    ) -> list[Message]:
        """The messages kept in these partitions of ``topic``, oldest first per partition:
        all of them, or those with a timestamp at or after ``since_ms`` (epoch milliseconds).

        Read outside any consumer group, up to where the partitions end now: how a service
        rebuilds state it keeps in a changelog topic.
        """

    def ensure_topics(self, topics: Sequence[str]) -> None:  # noqa: B027 - optional hook
        """Create the topics (with the bus's partition count) if they do not exist yet."""

    def check(self) -> None:  # noqa: B027 - optional hook
        """Raise :class:`~corepay.errors.UnavailableError` if the bus cannot be reached."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. The bus must not be used afterwards."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
