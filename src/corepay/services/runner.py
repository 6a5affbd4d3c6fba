"""The loop every consumer service runs: poll, handle, publish, commit."""

from __future__ import annotations

import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext

import attrs
import prometheus_client

from corepay.bus import Bus, Message, Record, TopicPartition, dead_letter_topic
from corepay.errors import BackendError, CommitFailedError, ConfigurationError
from corepay.observability import (
    CONSUMER_LAG,
    DEAD_LETTERS,
    MESSAGES_CONSUMED,
    MESSAGES_PRODUCED,
    forget_labelled,
    forgotten,
    labelled,
    timed,
)

__all__ = ["ConsumerService", "Handled", "dead_letter"]

log = logging.getLogger(__name__)


@attrs.frozen
class Handled:
    """What handling a batch produced: messages to publish, and what may be committed.

    ``commit`` is ``None`` to commit past every message of the batch, or the offsets that are
    safe (a service holding state for some messages commits only up to the oldest it still
    needs; it gives them for every batch, an empty one too).
    ``then`` is published only once ``records`` are all on the bus: state changelog entries
    that must never claim an output that was not written.
    """

    records: list[Record] = attrs.field(factory=list)
    commit: Mapping[TopicPartition, int] | None = None
    then: list[Record] = attrs.field(factory=list)


#: Header of a dead letter naming the topic its message was read from.
SOURCE_TOPIC_HEADER = "corepay-source-topic"

#: Largest value a dead letter carries; a longer one is cut (and says so), so that the bus
#: takes it even when the original was refused for its size.
DEAD_LETTER_MAX_VALUE = 512 * 1024


def dead_letter(message: Message, error: str) -> Record:
    """A record parking ``message`` on its topic's dead-letter topic, with why and where from."""
    value = message.value
    truncated = {}
    if len(value) > DEAD_LETTER_MAX_VALUE:
        value = value[:DEAD_LETTER_MAX_VALUE]
        truncated = {"corepay-truncated-from": str(len(message.value))}
    return Record(
        topic=dead_letter_topic(message.topic),
        key=message.key,
        value=value,
        headers={
            **truncated,
            **message.headers,
            "corepay-error": error[:1000],
            SOURCE_TOPIC_HEADER: message.topic,
            "corepay-source-partition": str(message.partition),
            "corepay-source-offset": str(message.offset),
        },
    )


class ConsumerService(ABC):
    """A consumer-group member that turns batches of messages into published messages.

    A batch is committed only after what it produced is on the bus, and commits are spaced:
    while busy, the offsets of the batches handled are sent every ``commit_interval`` seconds
    (``0``: after every batch) or once a batch's worth of messages waits, and at once when a
    poll finds nothing new or the service leaves. A commit is a request the broker writes to
    its log, and one per small batch costs the broker and the client more than the batch's
    records do. Only what was handled is ever committed. A crash (or a rebalance) redelivers
    what was handled since the last commit that landed, which the services' at-least-once
    handling allows for; a service that must bound it sets :attr:`redelivery_limit`, and then
    waits for a commit to land before the next batch could take it past the limit.

    If handling or publishing fails with a backend error (store or bus down), the same batch
    is retried with backoff before anything new is polled, so nothing is skipped. A batch that
    keeps failing for any other reason is handled one message at a time after
    ``max_attempts`` tries, and a message that fails alone ``max_attempts`` times goes to the
    dead-letter topic, never dropped.

    Metrics (see :mod:`corepay.observability`), labelled with :attr:`service`: messages
    consumed, produced and dead-lettered per topic, the time to handle, publish and commit a
    batch, and the consumer lag per partition: after the first poll that finds nothing new
    once messages were read, and otherwise at most every :attr:`lag_interval` seconds.
    """

    #: The consumer group; all instances of a service share it and split the partitions.
    group: str
    topics: tuple[str, ...]
    #: The service's name in metrics; defaults to the group without its ``corepay-`` prefix.
    service = ""
    max_attempts = 3
    #: Most handled messages a crash may redeliver (``None``: bounded by time alone); a
    #: service that must not see more again at once (the twin service's memory of applied
    #: transactions) sets it.
    redelivery_limit: int | None = None
    #: Seconds after which offsets that did not move are sent again, in case a commit sent
    #: without waiting did not land.
    recommit_after = 5.0
    #: Seconds between two reports of the consumer lag while busy (scrapes come seconds
    #: apart; a report per batch cost a lock and a gauge per partition every batch).
    lag_interval = 1.0

    def __init__(
        self,
        bus: Bus,
        *,
        group: str | None = None,
        max_records: int = 500,
        commit_interval: float = 0.1,
    ) -> None:
        if not commit_interval >= 0:
            raise ConfigurationError(f"commit_interval must be 0 or more, got {commit_interval}")
        self.bus = bus
        self.commit_interval = commit_interval
        self.group = group or self.group
        self.service = self.service or self.group.removeprefix("corepay-")
        self.max_records = max_records
        self.consumer = bus.consumer(self.group, self.topics)
        self._inflight: list[Message] = []
        self._handled: Handled | None = None
        self._retrying = False
        self._attempts = 0
        self._backoff = 0.0
        self.processed = 0
        self._lag_reported: dict[TopicPartition, int] = {}  # what each gauge was set to
        self._lag_removed = -1  # observability.forgotten() at the last report
        self._lag_reported_at = -math.inf
        self._read_since_lag = True  # messages read since the lag was last reported
        # Per partition: the offset safe to commit (past what was handled, or what the service
        # said), and the offset last sent.
        self._safe: dict[TopicPartition, int] = {}
        self._sent: dict[TopicPartition, int] = {}
        self._last_commit = self._last_resend = -math.inf
        self._handled_since_commit = 0

    @abstractmethod
    def handle(self, messages: Sequence[Message]) -> Handled:
        """Handle a batch (possibly empty: services with timers act on time passing)."""

    def safe_commit(self) -> Mapping[TopicPartition, int] | None:
        """What may be committed when a batch is dead-lettered (``None``: past all of it).

        Services that hold messages across batches override it with their safe offsets.
        """
        return None

    def poll_once(self, timeout: float = 0.5) -> int:
        """Poll (or retry the batch in hand), handle, publish, commit. Returns messages handled.

        Never raises for a backend that is down: it logs, backs off, and the next call retries.
        """
        limit = self.redelivery_limit
        if self._retrying:
            time.sleep(self._backoff)
            messages = self._inflight
        elif (
            limit is not None
            and self._handled_since_commit + self.max_records > limit
            and not self._commit_handled(time.monotonic(), wait=True)
        ):
            # The commit that keeps a crash within the limit did not land: read nothing more
            # until it does.
            time.sleep(self._longer_backoff())
            return 0
        else:
            try:
                messages = self.consumer.poll(self.max_records, timeout)
            except BackendError as exc:
                self._retry_later([], exc, repoll=True)
                return 0
            if messages:
                self._count(MESSAGES_CONSUMED, (m.topic for m in messages))
                self._read_since_lag = True
            self._drop_revoked()
            now = time.monotonic()
            # Caught up, the lag is what it was at the last idle poll unless something was
            # read since (an in-process pipeline polls idle after every batch), or a series
            # was removed meanwhile (by another member of this service in this process).
            if (
                (not messages and self._read_since_lag)
                or now - self._lag_reported_at >= self.lag_interval
                or forgotten() != self._lag_removed
            ):
                self._lag_reported_at = now
                self._read_since_lag = False
                self._report_lag()
        try:
            # A batch handled but not yet published is not handled again: handling changed
            # the service's state (a detector's pairs), so only the publish is retried.
            if self._handled is None:
                with self._timed("handle", bool(messages)):
                    self._handled = self.handle(messages)
            self._publish(self._handled)
        except BackendError as exc:
            self._retry_later(messages, exc)  # the bus or store is down: retry until it is back
            return 0
        except ConfigurationError:
            raise  # a misconfigured service must stop, not dead-letter everything it reads
        except Exception as exc:
            self._attempts += 1
            if self._attempts < self.max_attempts:
                log.exception("%s: batch failed (attempt %d)", self.group, self._attempts)
                self._retry_later(messages, exc)
                return 0
            if self._handled is None:
                log.exception(
                    "%s: batch failed %d times; handling its messages one by one",
                    self.group,
                    self._attempts,
                )
            else:
                # Handled, but what it produced cannot be published (refused for good): park
                # the inputs with the reason rather than stall the partition forever.
                log.exception(
                    "%s: output refused %d times; dead-lettering the batch",
                    self.group,
                    self._attempts,
                )
            try:
                if self._handled is None:
                    with self._timed("handle", bool(messages)):
                        self._handled = self._isolate(messages)
                else:
                    error = f"{type(exc).__name__}: {exc}"
                    self._handled = Handled(
                        [dead_letter(m, error) for m in messages], self.safe_commit()
                    )
                self._publish(self._handled)
            except BackendError as down:
                self._retry_later(messages, down)
                return 0
        handled = self._handled
        self._inflight, self._handled, self._retrying = [], None, False
        self._attempts, self._backoff = 0, 0.0
        if handled.commit is not None:
            self._safe.update(handled.commit)
        elif messages:
            # Past the last message of each partition in the batch (they come in offset order).
            last = {(m.topic, m.partition): m.offset + 1 for m in messages}
            self._safe.update((TopicPartition(*tp), offset) for tp, offset in last.items())
        self._handled_since_commit += len(messages)
        now = time.monotonic()
        if limit is not None and self._handled_since_commit + self.max_records > limit:
            # A crash in the next batch would redeliver it too, after it was applied: this
            # commit must have landed before that batch is read.
            with self._timed("commit", True):
                self._commit_handled(now, wait=True)
        elif (
            not messages
            or now - self._last_commit >= self.commit_interval
            or (limit is None and self._handled_since_commit >= self.max_records)
        ):
            with self._timed("commit", bool(messages)):
                self._commit_handled(now)
        self.processed += len(messages)
        return len(messages)

    def _publish(self, handled: Handled) -> None:
        with self._timed("publish", bool(handled.records or handled.then)):
            for records in (handled.records, handled.then):  # ``then``: once the first is out
                if records:
                    self.bus.publish_many(records)
                    self._count_published(records)

    def _timed(self, stage: str, active: bool) -> AbstractContextManager[None]:
        # Idle polls (nothing read, nothing to publish) are not timed: they would bury the
        # real batches under near-zero samples.
        return timed(self.service, stage) if active else nullcontext()

    def _count(self, counter: prometheus_client.Counter, topics: Iterable[str]) -> None:
        counts: dict[str, int] = {}
        for topic in topics:
            counts[topic] = counts.get(topic, 0) + 1
        for topic, n in counts.items():
            labelled(counter, self.service, topic).inc(n)

    def _count_published(self, records: Sequence[Record]) -> None:
        self._count(MESSAGES_PRODUCED, (r.topic for r in records))
        self._count(
            DEAD_LETTERS,
            (
                source
                for r in records
                if r.headers  # (most have none)
                and (source := r.headers.get(SOURCE_TOPIC_HEADER)) is not None
                and r.topic == dead_letter_topic(source)
            ),
        )

    def _report_lag(self) -> None:
        lag = self.consumer.lag()
        if lag is None:
            self._lag_removed = forgotten()  # (unknown now: tried again at the interval)
            return
        removed = forgotten()
        if lag == self._lag_reported and removed == self._lag_removed:
            return  # (caught up, it is all zeros again and again)
        for tp in self._lag_reported.keys() - lag.keys():
            self._forget_lag(tp)  # a partition this member no longer owns
        everything = removed != self._lag_removed  # a series may be gone: set them all
        for tp, waiting in lag.items():
            if everything or self._lag_reported.get(tp) != waiting:
                labelled(CONSUMER_LAG, self.service, tp.topic, str(tp.partition)).set(waiting)
        self._lag_reported, self._lag_removed = dict(lag), forgotten()

    def _forget_lag(self, tp: TopicPartition) -> None:
        forget_labelled(CONSUMER_LAG, self.service, tp.topic, str(tp.partition))

    def _isolate(self, messages: list[Message]) -> Handled:
        """Handle each message alone; one that keeps failing goes to the dead-letter topic."""
        records: list[Record] = []
        then: list[Record] = []
        for message in messages:
            for attempt in range(1, self.max_attempts + 1):
                try:
                    handled = self.handle([message])
                    records.extend(handled.records)
                    then.extend(handled.then)
                    break
                except (BackendError, ConfigurationError):
                    raise
                except Exception as exc:
                    if attempt == self.max_attempts:
                        log.exception(
                            "%s: %s[%d]@%d failed %d times; dead-lettering it",
                            self.group,
                            message.topic,
                            message.partition,
                            message.offset,
                            attempt,
                            extra={
                                "customer_id": message.key,
                                "topic": message.topic,
                                "partition": message.partition,
                                "offset": message.offset,
                            },
                        )
                        records.append(dead_letter(message, f"{type(exc).__name__}: {exc}"))
        return Handled(records, self.safe_commit(), then)

    def _retry_later(self, messages: list[Message], exc: Exception, repoll: bool = False) -> None:
        self._inflight, self._retrying = messages, not repoll
        self._longer_backoff()
        if repoll:
            time.sleep(self._backoff)
        log.warning(
            "%s: %s; retrying %d messages in %.2f s", self.group, exc, len(messages), self._backoff
        )

    def _longer_backoff(self) -> float:
        self._backoff = min(max(self._backoff * 2, 0.05), 5.0)
        return self._backoff

    def _drop_revoked(self) -> None:
        revoked = self.consumer.take_revoked()
        for tp in revoked:
            # Read again from the group's last commit by whoever owns it now (this member
            # too, if it was given back): what this member handled of it and did not commit
            # is no longer its to commit.
            self._safe.pop(tp, None)
            self._sent.pop(tp, None)
        if revoked:
            self._read_since_lag = True  # the lag of what it owns now is to be reported
            self.on_revoked(revoked)

    def on_revoked(self, partitions: frozenset[TopicPartition]) -> None:  # noqa: B027
        """Partitions taken from this member since the last call, whether or not they are
        its own again by now (another member may have read on meanwhile): what a service keeps
        of them is stale. Called after a poll and before a commit. By default nothing."""

    def _commit_handled(self, now: float, *, wait: bool = False) -> bool:
        """Send the offsets safe to commit that moved since they were last sent (all of them
        again every :attr:`recommit_after` seconds, or when waiting), for the partitions still
        owned. Returns whether the commit was sent (and, with ``wait``, stored).

        A partition another member took over is left to it: it reads again from the group's
        last commit, so what this member handled since goes through twice, never lost. What a
        crash would redeliver counts as committed (for :attr:`redelivery_limit`) only once a
        commit is known to have landed: one that waited, or, with no limit, one sent.
        """
        self._last_commit = now
        if not wait and self._safe == self._sent and now - self._last_resend < self.recommit_after:
            # Nothing moved since the offsets last sent, and none is due again: an idle poll.
            if self.redelivery_limit is None:
                self._handled_since_commit = 0
            return True
        self._drop_revoked()
        owned = self.consumer.assignment()
        self._safe = {tp: offset for tp, offset in self._safe.items() if tp in owned}
        self._sent = {tp: offset for tp, offset in self._sent.items() if tp in owned}
        if wait or now - self._last_resend >= self.recommit_after:
            self._sent, self._last_resend = {}, now
        offsets = {tp: o for tp, o in self._safe.items() if self._sent.get(tp) != o}
        if offsets:
            # A failed commit loses nothing: a later commit covers these offsets too, and at
            # worst the group reads them again. So the next batch need not wait for the
            # broker to store this one's offsets (unless a redelivery limit says so); closing
            # the consumer waits.
            try:
                self.consumer.commit(offsets, wait=wait)
            except (CommitFailedError, BackendError) as exc:
                log.warning("%s: commit failed: %s", self.group, exc)
                return False
            self._sent.update(offsets)
        if wait or self.redelivery_limit is None:
            self._handled_since_commit = 0
        return True

    def run(self, stop: threading.Event, *, timeout: float = 0.5) -> None:
        """Poll until ``stop`` is set, then commit what was handled and leave (a batch being
        retried, with the store or bus down, is left to be read again)."""
        try:
            while not stop.is_set():
                self.poll_once(timeout)
        finally:
            self.close()

    def close(self) -> None:
        log.info("%s: leaving the group, %d messages handled", self.group, self.processed)
        for tp in self._lag_reported:
            self._forget_lag(tp)
        self._lag_reported = {}
        try:
            self._commit_handled(time.monotonic())
        finally:
            self.consumer.close()
