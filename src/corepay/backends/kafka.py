"""Apache Kafka bus, on kafka-python.

URL: ``kafka://host:port[,host:port...]?option=value&...``. Options:

====================== ======== ===============================================================
option                 default  meaning
====================== ======== ===============================================================
partitions             4        partitions of every topic CorePay creates (all equal, so the
                                outcome topics stay co-partitioned)
replication_factor     1        replicas of every topic CorePay creates
linger_ms              5        producer: how long to wait to fill a batch (a publish sends
                                at once while it waits for its acknowledgements)
batch_size             65536    producer: most bytes per partition batch
compression_type       none     producer: ``gzip``, ``snappy``, ``lz4``, ``zstd`` or ``none``
publish_timeout        10       seconds a publish waits for the broker's acknowledgement
session_timeout_ms     10000    consumer group session; a member silent this long is evicted
heartbeat_interval_ms  1000     consumer heartbeats (a third of the session or less)
max_poll_interval_ms   300000   most time between polls before a member is evicted
client_id              corepay  client id the broker logs
changelog_retention_ms 3600000  how long ``*_changelog`` topics (service state) keep messages
====================== ======== ===============================================================

Publishing uses ``acks=all`` with idempotence: a publish returns only after every in-sync
replica has the message. Consumers commit by hand, only what was handled. Topics are created
on first use (with their dead-letter topics) when the broker does not have them.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, SupportsBytes

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KafkaTopicPartition
from kafka.admin import NewTopic
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import (
    CommitFailedError as KafkaCommitFailedError,
)
from kafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
)
from kafka.partitioner.default import DefaultPartitioner, murmur2
from kafka.structs import OffsetAndMetadata

from corepay.bus import CHANGELOG_SUFFIX, Bus, Consumer, Delivery, Message, Record, TopicPartition
from corepay.errors import (
    BackendTimeoutError,
    CommitFailedError,
    ConfigurationError,
    RejectedError,
    UnavailableError,
)

__all__ = ["KafkaBus", "KafkaConsumerMember"]

log = logging.getLogger(__name__)


def _keep_joins_that_finish_between_polls() -> bool:
    """Work around kafka-python 3.0.x dropping a group join that completed between two polls.

    kafka-python runs the JoinGroup/SyncGroup round trip as a task on its IO thread. When
    ``poll(timeout)`` returns before the task is done, the task goes on; but if it is done by
    the next ``poll``, ``BaseCoordinator.join_group_async`` starts a new JoinGroup instead of
    taking the finished one's assignment. The member then never applies its assignment, and
    when it leads the group every new JoinGroup restarts the rebalance: the group can churn
    for as long as its members pause between polls (seen in our contract suite: a two-member
    group that had not settled after 30 s, one member still holding every partition).

    The patch hands a join that finished successfully back to the original method as a
    future that resolves on the IO loop, so the method awaits it like one still in flight and
    completes the join with it. Applied only where the installed kafka-python has that code.
    """
    try:
        import inspect

        from kafka.coordinator.base import BaseCoordinator
    except ImportError:
        return False
    original = getattr(BaseCoordinator, "join_group_async", None)
    if original is None or getattr(original, "_corepay_patched", False):
        return False
    try:
        source = inspect.getsource(original)
    except (OSError, TypeError):
        return False
    if "self._join_task is None or self._join_task.is_done" not in source:
        return False

    async def join_group_async(self: Any, timeout_ms: int | None = None) -> Any:
        finished = self._join_task
        if finished is not None and finished.succeeded():
            value = finished.value
            self._join_task = self._manager.call_soon(lambda: value)
        return await original(self, timeout_ms)

    join_group_async._corepay_patched = True  # type: ignore[attr-defined]
    BaseCoordinator.join_group_async = join_group_async
    return True


_keep_joins_that_finish_between_polls()


def _checksums_in_c() -> bool:
    """Whether kafka-python computes record-batch CRC32C checksums with the ``crc32c`` C
    package (a dependency of CorePay). Without it each checksum runs in pure Python, about
    120 us of CPU per KB produced or consumed: more than CorePay's own work on a payment."""
    from kafka.record import util

    return getattr(util, "crc32c_c", None) is not None


if not _checksums_in_c():
    log.warning(
        "kafka-python is computing checksums in pure Python, which costs about 120 us of CPU "
        "per KB of messages; install the crc32c package (pip install 'kafka-python[crc32c]')"
    )

_INT_OPTIONS = {
    "partitions": 4,
    "replication_factor": 1,
    "linger_ms": 5,
    "batch_size": 65536,
    "session_timeout_ms": 10000,
    "heartbeat_interval_ms": 1000,
    "max_poll_interval_ms": 300000,
    "changelog_retention_ms": 3_600_000,
}
_OTHER_OPTIONS = {"compression_type": "none", "publish_timeout": "10", "client_id": "corepay"}


def _translate(exc: Exception, what: str) -> Exception:
    if isinstance(exc, KafkaTimeoutError):
        return BackendTimeoutError(f"Kafka: {what} timed out: {exc}")
    if (
        isinstance(exc, KafkaError)
        and not getattr(exc, "retriable", True)
        and not isinstance(exc, KafkaConnectionError)
    ):
        # Too large, invalid, not authorized...: the same request fails the same way again.
        return RejectedError(f"Kafka refused {what}: {type(exc).__name__}: {exc}")
    return UnavailableError(f"Kafka: {what} failed: {type(exc).__name__}: {exc}")


def _can_send_now(producer: Any) -> bool:
    """Whether this kafka-python producer has the flush switch :func:`_sending_now` uses."""
    accumulator = getattr(producer, "_accumulator", None)
    return (
        callable(getattr(accumulator, "begin_flush", None))
        and callable(getattr(getattr(accumulator, "_flushes_in_progress", None), "decrement", None))
        and callable(getattr(getattr(producer, "_sender", None), "wakeup", None))
    )


@contextlib.contextmanager
def _sending_now(producer: Any) -> Iterator[None]:
    """While a publish waits for its acknowledgements, have the producer send what it holds
    at once instead of waiting out ``linger_ms``.

    A publish appends all its records before it waits, so there is nothing left to gather:
    lingering only delayed every publish by ``linger_ms`` (5 ms; the detector, whose alerts
    must be on the bus before the changelog entries that claim them, paid it twice a batch).
    This is what ``KafkaProducer.flush()`` does, without its wait, which is for every
    unfinished batch of every thread, each with the whole timeout. Records other threads
    append meanwhile go out at once too. A kafka-python without that switch lingers as before.
    """
    if not _can_send_now(producer):
        yield
        return
    accumulator = producer._accumulator
    accumulator.begin_flush()
    try:
        producer._sender.wakeup()
        yield
    finally:
        accumulator._flushes_in_progress.decrement()


class KeyHashPartitioner(DefaultPartitioner):  # type: ignore[misc]
    """Kafka's default partitioning (murmur2 of the key, as every Kafka client does it), with
    each key's hash remembered.

    kafka-python computes murmur2 in pure Python on every send, and looks the topic up in a set
    it builds anew each time; with a few thousand customers' keys recurring, remembering the
    hashes takes that off the cost of a send. Keyless sends are left to the default.
    """

    def __init__(self, remember: int = 100_000) -> None:
        self.remember = remember
        self._hashes: dict[bytes, int] = {}

    def partition(
        self,
        topic: str,
        key: Any,
        serialized_key: bytes | None,
        value: Any,
        serialized_value: bytes | None,
        cluster: Any,
    ) -> int:
        if serialized_key is None:
            return super().partition(topic, key, serialized_key, value, serialized_value, cluster)  # type: ignore[no-any-return]
        partitions = cluster.partitions_for_topic(topic)
        if not partitions:
            raise ValueError(f"Topic {topic} not found in ClusterMetadata")
        hashed = self._hashes.get(serialized_key)
        if hashed is None:
            if len(self._hashes) >= self.remember:
                self._hashes.clear()
            hashed = self._hashes[serialized_key] = murmur2(serialized_key) & 0x7FFFFFFF
        return sorted(partitions)[hashed % len(partitions)]  # type: ignore[no-any-return]


class KafkaBus(Bus):
    """A :class:`~corepay.bus.Bus` on an Apache Kafka cluster."""

    def __init__(
        self,
        bootstrap_servers: Sequence[str],
        *,
        partitions: int = 4,
        replication_factor: int = 1,
        linger_ms: int = 5,
        batch_size: int = 65536,
        compression_type: str = "none",
        publish_timeout: float = 10.0,
        session_timeout_ms: int = 10000,
        heartbeat_interval_ms: int = 1000,
        max_poll_interval_ms: int = 300000,
        client_id: str = "corepay",
        changelog_retention_ms: int = 3_600_000,
    ) -> None:
        if not bootstrap_servers:
            raise ConfigurationError("a Kafka bus needs at least one bootstrap server host:port")
        if compression_type not in ("none", "gzip", "snappy", "lz4", "zstd"):
            raise ConfigurationError(
                "compression_type must be one of none, gzip, snappy, lz4, zstd"
            )
        if partitions < 1 or replication_factor < 1:
            raise ConfigurationError("partitions and replication_factor must be at least 1")
        self.bootstrap_servers = list(bootstrap_servers)
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.publish_timeout = publish_timeout
        self.changelog_retention_ms = changelog_retention_ms
        self._producer_config: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": client_id,
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": linger_ms,
            "batch_size": batch_size,
            "compression_type": None if compression_type == "none" else compression_type,
            "max_block_ms": int(publish_timeout * 1000),
            "bootstrap_timeout_ms": int(publish_timeout * 1000),
            "request_timeout_ms": max(int(publish_timeout * 1000), 1000),
            "retry_backoff_ms": 100,
            # kafka-python's own metrics cost ~10% of its CPU per message; CorePay keeps its own.
            "metrics_enabled": False,
            "partitioner": KeyHashPartitioner(),
        }
        self._consumer_config: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": client_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "session_timeout_ms": session_timeout_ms,
            "heartbeat_interval_ms": heartbeat_interval_ms,
            "max_poll_interval_ms": max_poll_interval_ms,
            "metadata_max_age_ms": 30000,
            "bootstrap_timeout_ms": int(publish_timeout * 1000),
            "metrics_enabled": False,
        }
        self._lock = threading.Lock()
        self._producer: KafkaProducer | None = None
        self._admin: KafkaAdminClient | None = None
        self._known_topics: set[str] = set()

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, str]) -> KafkaBus:
        hosts = url.split("://", 1)[1].split("?", 1)[0].split("/", 1)[0]
        servers = [h.strip() for h in hosts.split(",") if h.strip()]
        unknown = set(options) - set(_INT_OPTIONS) - set(_OTHER_OPTIONS)
        if unknown:
            known = ", ".join(sorted([*_INT_OPTIONS, *_OTHER_OPTIONS]))
            raise ConfigurationError(
                f"unknown Kafka bus option(s) {', '.join(sorted(unknown))}; known: {known}"
            )
        kwargs: dict[str, Any] = {}
        for name, value in options.items():
            try:
                if name in _INT_OPTIONS:
                    kwargs[name] = int(value)
                elif name == "publish_timeout":
                    kwargs[name] = float(value)
                else:
                    kwargs[name] = value
            except ValueError:
                raise ConfigurationError(
                    f"Kafka bus option {name}={value!r} is not a number"
                ) from None
        return cls(servers, **kwargs)

    def __repr__(self) -> str:
        return f"KafkaBus({','.join(self.bootstrap_servers)}, partitions={self.partitions})"

    def _check_reachable(self) -> None:
        # Before building a kafka-python client: one whose bootstrap fails raises from its
        # constructor and leaves its sockets open, and takes the whole timeout to do so.
        last: OSError | None = None
        for server in self.bootstrap_servers:
            host, _, port = server.rpartition(":")
            try:
                with socket.create_connection(
                    (host.strip("[]") or "localhost", int(port or 9092)),
                    timeout=min(self.publish_timeout, 5.0),
                ):
                    return
            except (OSError, ValueError) as exc:
                last = exc if isinstance(exc, OSError) else OSError(str(exc))
        raise UnavailableError(
            f"Kafka at {','.join(self.bootstrap_servers)} is unreachable: {last}"
        )

    # --- producing ---------------------------------------------------------------------------

    def _get_producer(self) -> KafkaProducer:
        with self._lock:
            if self._producer is None:
                self._check_reachable()
                try:
                    self._producer = KafkaProducer(**self._producer_config)
                except (ValueError, RuntimeError, AssertionError) as exc:
                    # kafka-python's word for a setting it cannot use (a codec not installed)
                    raise ConfigurationError(f"Kafka producer settings: {exc}") from exc
                except (KafkaError, OSError) as exc:
                    raise UnavailableError(
                        f"Kafka at {','.join(self.bootstrap_servers)} is unreachable: {exc}"
                    ) from exc
            return self._producer

    def publish(
        self,
        topic: str,
        key: str,
        value: bytes | SupportsBytes,
        headers: Mapping[str, str] | None = None,
        *,
        partition: int | None = None,
    ) -> Delivery:
        return self.publish_many([Record(topic, key, value, dict(headers or {}), partition)])[0]

    def publish_many(self, records: Iterable[Record]) -> list[Delivery]:
        records = list(records)
        if not records:
            return []
        for record in records:
            if not isinstance(record.value, bytes):
                raise TypeError(f"value must be bytes, not {type(record.value).__name__}")
        self._ensure({r.topic for r in records})
        producer = self._get_producer()
        try:
            for r in records:  # all or nothing: none is sent if one names no partition
                if r.partition is not None and (
                    type(r.partition) is not int
                    or r.partition not in producer.partitions_for(r.topic)
                ):
                    raise ConfigurationError(f"{r.topic} has no partition {r.partition!r}")
            futures = [
                producer.send(
                    r.topic,
                    key=r.key.encode(),
                    value=r.value,
                    headers=[(k, v.encode()) for k, v in r.headers.items()],
                    partition=r.partition,
                )
                for r in records
            ]
            deadline = time.monotonic() + self.publish_timeout
            deliveries = []
            with _sending_now(producer):
                for future in futures:
                    meta = future.get(timeout=max(deadline - time.monotonic(), 0.001))
                    deliveries.append(Delivery(meta.topic, meta.partition, meta.offset))
        except (KafkaError, OSError) as exc:
            raise _translate(exc, f"publishing {len(records)} message(s)") from exc
        return deliveries

    # --- topics ------------------------------------------------------------------------------

    def _get_admin(self) -> KafkaAdminClient:
        if self._admin is None:
            self._check_reachable()
            try:
                self._admin = KafkaAdminClient(
                    bootstrap_servers=self.bootstrap_servers,
                    client_id=self._producer_config["client_id"] + "-admin",
                    request_timeout_ms=max(int(self.publish_timeout * 1000), 1000),
                    bootstrap_timeout_ms=int(self.publish_timeout * 1000),
                )
            except (KafkaError, OSError) as exc:
                raise UnavailableError(
                    f"Kafka at {','.join(self.bootstrap_servers)} is unreachable: {exc}"
                ) from exc
        return self._admin

    def _ensure(self, topics: Iterable[str]) -> None:
        missing = set(topics) - self._known_topics
        if missing:
            self.ensure_topics(sorted(missing))

    def ensure_topics(self, topics: Sequence[str]) -> None:
        """Create ``topics`` and their dead-letter topics where missing, all with the same
        partition count; an existing topic with another count is a configuration error."""
        wanted = {
            t
            for topic in topics
            for t in (topic, f"{topic}.dlq")
            if not (t.endswith(".dlq.dlq") or t.endswith(f"{CHANGELOG_SUFFIX}.dlq"))
        }
        with self._lock:
            admin = self._get_admin()
            try:
                existing = {
                    t["topic"] if "topic" in t else t["name"]: len(t["partitions"])
                    for t in admin.describe_topics()
                }
                new = [
                    NewTopic(
                        t,
                        self.partitions,
                        self.replication_factor,
                        topic_configs=(
                            {"retention.ms": str(self.changelog_retention_ms)}
                            if t.endswith(CHANGELOG_SUFFIX)
                            else {}
                        ),
                    )
                    for t in sorted(wanted - set(existing))
                ]
                if new:
                    # Another process may create them in between: that is fine.
                    with contextlib.suppress(TopicAlreadyExistsError):
                        admin.create_topics(new, timeout_ms=int(self.publish_timeout * 1000))
                    log.info("created Kafka topics %s", ", ".join(t.name for t in new))
            except (KafkaError, OSError) as exc:
                raise _translate(exc, "creating topics") from exc
            for topic in wanted & set(existing):
                if existing[topic] != self.partitions and not topic.endswith(".dlq"):
                    raise ConfigurationError(
                        f"Kafka topic {topic} has {existing[topic]} partitions, but this bus "
                        f"is configured for {self.partitions}; the outcome topics must be "
                        "co-partitioned, so give every CorePay topic the same count"
                    )
            self._known_topics |= wanted

    def check(self) -> None:
        try:
            self._get_admin().describe_cluster()
        except (KafkaError, OSError) as exc:
            raise _translate(exc, "reaching the cluster") from exc

    def replay(
        self, topic: str, partitions: Iterable[int], *, since_ms: int | None = None
    ) -> list[Message]:
        wanted = [KafkaTopicPartition(topic, p) for p in sorted(set(partitions))]
        if not wanted:
            return []
        self._ensure([topic])
        self._check_reachable()
        config = {
            k: v
            for k, v in self._consumer_config.items()
            if k in ("bootstrap_servers", "client_id")
        }
        try:
            reader = KafkaConsumer(
                group_id=None,
                enable_auto_commit=False,
                bootstrap_timeout_ms=int(self.publish_timeout * 1000),
                **config,
            )
        except (KafkaError, OSError) as exc:
            raise _translate(exc, f"replaying {topic}") from exc
        try:
            reader.assign(wanted)
            reader.seek_to_beginning(*wanted)
            end = reader.end_offsets(wanted)
            if since_ms is not None:
                starts = reader.offsets_for_times(dict.fromkeys(wanted, since_ms))
                for tp in wanted:
                    found_at = starts.get(tp)
                    reader.seek(tp, end[tp] if found_at is None else found_at.offset)
            found: list[Message] = []
            stalled_at = time.monotonic() + 2 * self.publish_timeout
            while any(reader.position(tp) < end[tp] for tp in wanted):
                # The deadline is on progress, not on the whole read: a long changelog is fine,
                # a broker that stops answering is not.
                if time.monotonic() > stalled_at:
                    raise BackendTimeoutError(f"Kafka: replaying {topic} stopped making progress")
                for records in reader.poll(timeout_ms=500).values():
                    found.extend(_message(r) for r in records)
                    stalled_at = time.monotonic() + 2 * self.publish_timeout
            return found
        except (KafkaError, OSError) as exc:
            raise _translate(exc, f"replaying {topic}") from exc
        finally:
            reader.close(autocommit=False)

    # --- consuming ---------------------------------------------------------------------------

    def consumer(self, group: str, topics: Sequence[str]) -> KafkaConsumerMember:
        if not topics:
            raise ConfigurationError("a consumer needs at least one topic")
        self._ensure(topics)
        self._check_reachable()
        return KafkaConsumerMember(group, topics, self._consumer_config)

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=self.publish_timeout)
                self._producer = None
            if self._admin is not None:
                self._admin.close()
                self._admin = None


def _message(r: Any) -> Message:
    return Message(
        topic=r.topic,
        partition=r.partition,
        offset=r.offset,
        key=r.key.decode(errors="replace") if r.key is not None else "",
        value=r.value if r.value is not None else b"",
        headers={k: v.decode(errors="replace") for k, v in (r.headers or [])},
        timestamp_ms=r.timestamp,
    )


def _kafka_offsets(offsets: Mapping[TopicPartition, int]) -> dict[Any, Any]:
    """Offsets to commit, in kafka-python's types."""
    return {
        KafkaTopicPartition(tp.topic, tp.partition): OffsetAndMetadata(offset, "", -1)
        for tp, offset in offsets.items()
    }


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, member: KafkaConsumerMember) -> None:
        self.member = member

    # Called inside poll(), between batches. With the default (eager) assignors every
    # rebalance revokes every partition, then assigns; a partition assigned back keeps its
    # position, so only those not assigned back are taken away from this member.

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.member._revoking({TopicPartition(tp.topic, tp.partition) for tp in revoked})

    def on_partitions_lost(self, lost: Any) -> None:
        # Evicted from the group: whatever it is given next, these were taken away.
        self.member._lost({TopicPartition(tp.topic, tp.partition) for tp in lost})

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.member._assigned({TopicPartition(tp.topic, tp.partition) for tp in assigned})
        log.info(
            "%s assigned %s",
            self.member.group,
            ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(assigned)),
        )


class KafkaConsumerMember(Consumer):
    """One member of a Kafka consumer group; commits only what it is told to."""

    def __init__(self, group: str, topics: Sequence[str], config: Mapping[str, Any]) -> None:
        self.group = group
        self.topics = tuple(topics)
        try:
            self._consumer = KafkaConsumer(group_id=group, **config)
        except (KafkaError, OSError) as exc:
            raise _translate(exc, f"joining group {group}") from exc
        # Know every topic's partitions before joining: a group leader without them assigns
        # nothing of that topic, and would not notice until its next metadata refresh.
        deadline = time.monotonic() + 15.0
        try:
            for topic in topics:
                while (
                    not self._consumer.partitions_for_topic(topic) and time.monotonic() < deadline
                ):
                    time.sleep(0.1)
        except (KafkaError, OSError) as exc:
            self._consumer.close(autocommit=False)
            raise _translate(exc, f"joining group {group}") from exc
        self._consumer.subscribe(list(topics), listener=_Listener(self))
        self._polled: dict[TopicPartition, int] = {}
        # Offsets committed without waiting, per partition, that close() waits for.
        self._unsettled: dict[TopicPartition, int] = {}
        # Revoked and not (yet) assigned back; taken away for good (see take_revoked).
        self._leaving: set[TopicPartition] = set()
        self._revoked: set[TopicPartition] = set()
        self._settle_timeout_ms = int(config.get("bootstrap_timeout_ms", 10_000))
        self._closed = False

    def _revoking(self, partitions: set[TopicPartition]) -> None:
        self._leaving |= partitions
        self._forget(partitions)

    def _lost(self, partitions: set[TopicPartition]) -> None:
        self._revoking(partitions)
        self._revoked |= partitions

    def _assigned(self, partitions: set[TopicPartition]) -> None:
        self._revoked |= self._leaving - partitions
        self._leaving = set()

    def _forget(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            self._polled.pop(tp, None)
            self._unsettled.pop(tp, None)

    def poll(self, max_records: int = 500, timeout: float = 1.0) -> list[Message]:
        if self._closed:
            raise RuntimeError("consumer is closed")
        try:
            batches = self._consumer.poll(
                timeout_ms=int(max(timeout, 0.0) * 1000), max_records=max_records
            )
        except (KafkaError, OSError) as exc:
            raise _translate(exc, f"polling for group {self.group}") from exc
        messages: list[Message] = []
        for ktp, records in batches.items():
            messages.extend(_message(r) for r in records)
            if records:
                self._polled[TopicPartition(ktp.topic, ktp.partition)] = records[-1].offset + 1
        return messages

    def commit(
        self, offsets: Mapping[TopicPartition, int] | None = None, *, wait: bool = True
    ) -> None:
        if self._closed:
            raise RuntimeError("consumer is closed")
        wanted = dict(self._polled if offsets is None else offsets)
        if not wanted:
            return
        owned = self.assignment()
        lost = sorted(tp for tp in wanted if tp not in owned)
        if lost:
            raise CommitFailedError(
                f"group {self.group} member no longer owns "
                f"{', '.join(f'{t}[{p}]' for t, p in lost)}; those messages go to the new owner"
            )
        request = _kafka_offsets(wanted)
        try:
            if wait:
                self._consumer.commit(request, timeout_ms=self._settle_timeout_ms)
            else:
                # Sent in order on the coordinator's connection, so a later commit (or the
                # one close() makes) is stored after it.
                self._consumer.commit_async(request, callback=self._async_commit_done)
        except KafkaCommitFailedError as exc:
            raise CommitFailedError(f"group {self.group} rebalanced: {exc}") from exc
        except (KafkaError, OSError) as exc:
            raise _translate(exc, f"committing for group {self.group}") from exc
        if wait:
            for tp in wanted:
                self._unsettled.pop(tp, None)
        else:
            self._unsettled.update(wanted)

    def _async_commit_done(self, offsets: Any, result: Any) -> None:
        # Run by kafka-python on this member's thread, inside a later poll or commit.
        if isinstance(result, BaseException):
            log.warning(
                "group %s: commit of %d partition(s) failed, a later commit covers them: %s",
                self.group,
                len(offsets),
                result,
            )

    def _settle(self) -> None:
        """Wait for the commits sent without waiting, while this member still owns them, for
        as long as a publish would wait: a member leaving during an outage must not hang."""
        owned = self.assignment()
        wanted = _kafka_offsets({tp: o for tp, o in self._unsettled.items() if tp in owned})
        self._unsettled.clear()
        if wanted:
            try:
                self._consumer.commit(wanted, timeout_ms=self._settle_timeout_ms)
            except (KafkaError, OSError) as exc:
                log.warning("group %s: final commit failed: %s", self.group, exc)

    def assignment(self) -> frozenset[TopicPartition]:
        return frozenset(
            TopicPartition(tp.topic, tp.partition) for tp in self._consumer.assignment()
        )

    def take_revoked(self) -> frozenset[TopicPartition]:
        revoked, self._revoked = frozenset(self._revoked), set()
        return revoked

    def lag(self) -> dict[TopicPartition, int] | None:
        if self._closed:
            return None
        try:
            found: dict[TopicPartition, int] = {}
            for tp in self._consumer.assignment():
                high = self._consumer.highwater(tp)
                if high is None:
                    continue  # not fetched from yet
                # A partition fetched from has a position, so this is answered locally; the
                # zero timeout keeps it from ever waiting on the broker.
                position = self._consumer.position(tp, timeout_ms=0)
                if position is not None:
                    found[TopicPartition(tp.topic, tp.partition)] = max(high - position, 0)
            return found
        except (KafkaError, OSError) as exc:
            # Metrics only: a consumer in the middle of a rebalance reports nothing this time.
            log.debug("lag of group %s unknown: %s", self.group, exc)
            return None

    def close(self) -> None:
        if not self._closed:
            try:
                self._settle()
            except Exception:  # whatever broke, the client below must still be closed
                log.exception("group %s: final commit failed", self.group)
            self._closed = True
            try:
                self._consumer.close(autocommit=False)
            except (KafkaError, OSError) as exc:
                log.warning("closing consumer of group %s: %s", self.group, exc)
