"""The divergence detector service: pairs the two outcome topics, publishes ``divergence_alert``.

It commits an outcome's offset only once that outcome's transaction is resolved, so a half-pair
held in memory is never lost with the process: after a restart it is read again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence

from corepay.bus import (
    CHANGELOG_SUFFIX,
    DIVERGENCE_ALERT,
    LIVE_OUTCOME,
    SIMULATION_OUTCOME,
    Bus,
    Message,
    Record,
    TopicPartition,
)
from corepay.divergence import DivergenceDetector, Pairing
from corepay.errors import DecodeError
from corepay.models import Outcome
from corepay.observability import DIVERGENCES, labelled
from corepay.recent import Recent
from corepay.services.runner import ConsumerService, Handled, dead_letter
from corepay.wire import encode_alert, encode_json, outcome_of

__all__ = ["DETECTOR_CHANGELOG", "DetectorService"]

#: Every transaction the detector resolved. An entry lists the transactions one batch resolved
#: from one partition of the outcome topics, and is written to that partition number:
#: ``{"schema_version": 1, "transaction_ids": [...], "alerted": false}``. (Entries of one
#: transaction, ``"transaction_id": "..."``, are still read.)
DETECTOR_CHANGELOG = "detector" + CHANGELOG_SUFFIX

#: Most transaction ids in one changelog entry (at most 67 bytes each).
CHANGELOG_ENTRY_IDS = 1000

# A batch's changelog entries: per (partition number, or customer id where none is known;
# whether alerted), a customer id to key the entry with and the transaction ids.
_Entries = dict[tuple[int | str, bool], tuple[str, list[str]]]

log = logging.getLogger(__name__)


class DetectorService(ConsumerService):
    """Feeds both outcome topics to a :class:`DivergenceDetector` and publishes its alerts.

    Args:
        on_pairing: called with every resolved transaction (metrics, demos, tests).
        clock: epoch seconds; the pairing timeout is measured with it.
        link_window: resolved transactions whose offsets are kept, to commit redelivered
            copies of their outcomes safely.
        replay_window: seconds of changelog, beyond the pairing timeout, read back when
            partitions are assigned (restart, takeover).
    """

    group = "corepay-detector"
    topics = (LIVE_OUTCOME, SIMULATION_OUTCOME)
    service = "detector"

    def __init__(
        self,
        bus: Bus,
        detector: DivergenceDetector,
        *,
        on_pairing: Callable[[Pairing], None] | None = None,
        clock: Callable[[], float] = time.time,
        link_window: int = 100_000,
        replay_window: float = 300.0,
        **kwargs: object,
    ) -> None:
        super().__init__(bus, **kwargs)  # type: ignore[arg-type]
        if link_window < 1:
            raise ValueError(f"link_window must be at least 1, got {link_window}")
        self.detector = detector
        self.on_pairing = on_pairing
        self.clock = clock
        # Offsets of held half-pairs per partition, in offset order; the first is the lowest.
        self._held: dict[TopicPartition, dict[int, None]] = {}
        self._held_at: dict[str, tuple[TopicPartition, int]] = {}
        self._next: dict[TopicPartition, int] = {}
        # Where both halves of recently paired transactions were read, until both are committed.
        self._pairs: list[tuple[TopicPartition, int, TopicPartition, int]] = []
        # Where the halves of the last `link_window` resolved transactions were read, so a
        # redelivered copy read later is tied to them (re-read together, or not at all). As
        # plain (topic, partition, offset) tuples, which the garbage collector stops tracking:
        # a full window of TopicPartition pairs is half a million objects to scan each time.
        self._resolved_at: Recent[str, tuple[tuple[str, int, int], ...]] = Recent(link_window)
        self.link_window = link_window
        self._tid_at: dict[tuple[TopicPartition, int], str] = {}
        self._last_cut: dict[TopicPartition, int] = {}
        self._restored: set[int] = set()  # partition numbers whose changelog was read
        self.replay_window = replay_window

    def handle(self, messages: Sequence[Message]) -> Handled:
        records: list[Record] = []
        entries: _Entries = {}
        now = self.clock()
        owned = self.consumer.assignment()
        self._forget(set(self._next) - owned)
        self._restore({tp.partition for tp in owned})
        tp = TopicPartition("", -1)
        for message in messages:
            if message.partition != tp.partition or message.topic != tp.topic:
                tp = message.topic_partition  # a batch comes in runs of one partition
            self._next[tp] = message.offset + 1
            try:
                outcome = outcome_of(message)
            except DecodeError as exc:
                records.append(dead_letter(message, str(exc)))
                continue
            tid = outcome.transaction_id
            here = (tp, message.offset)
            pairings = self.detector.observe(outcome, now)
            for pairing in pairings:
                held = self._release(
                    pairing,
                    records,
                    entries,
                    tp.partition if pairing.transaction_id == tid else None,
                )
                if held is not None and pairing.transaction_id == tid:
                    self._pairs.append((*held, *here))
                    self._remember(tid, held, here)
            if not pairings and tid in self._resolved_at:
                # A copy of a resolved transaction: were it re-read alone after a restart, it
                # would wait for a partner that is not coming and raise a false MISSING_*. Tie
                # it to the halves not committed yet (committed ones are not read again).
                for topic, partition, offset in self._resolved_at[tid]:
                    there = TopicPartition(topic, partition)
                    if there in self._next and offset >= self._last_cut.get(there, 0):
                        self._pairs.append((*here, there, offset))
            if tid not in self._held_at and self.detector.is_pending(tid):
                # This message is the half-pair now held: its offset may not be committed yet.
                self._held.setdefault(tp, {})[message.offset] = None
                self._held_at[tid] = here
                self._tid_at[here] = tid
        for pairing in self.detector.expire(now):
            self._release(pairing, records, entries, None)
        # An entry that claims an alert waits until the alert is on the bus; one that claims
        # none goes out with the batch's first publish, a round trip sooner.
        resolved: list[Record] = []
        for (where, alerted), (key, tids) in entries.items():
            # In the partition number the pairs were read from: where their outcomes are,
            # whatever their keys hash to. Where none is known, by the customer's key.
            target = where if isinstance(where, int) else None
            for start in range(0, len(tids), CHANGELOG_ENTRY_IDS):
                entry = {
                    "schema_version": 1,
                    "transaction_ids": tids[start : start + CHANGELOG_ENTRY_IDS],
                    "alerted": alerted,
                }
                (resolved if alerted else records).append(
                    Record(DETECTOR_CHANGELOG, key, encode_json(entry), partition=target)
                )
        return Handled(records, self.safe_commit(), then=resolved)

    def _restore(self, partitions: set[int]) -> None:
        """Learn from the changelog which transactions were resolved in newly owned partitions.

        A detector that crashed after publishing an alert but before committing reads those
        outcomes again; the changelog says they were resolved, so no second alert, and a
        redelivered copy arriving later is not mistaken for a half waiting for its partner.
        """
        self._restored &= partitions
        fresh = partitions - self._restored
        if not fresh:
            return
        # Outcomes read again after a restart, and redelivered copies, are recent: what was
        # resolved before the pairing timeout plus the window cannot be among them.
        since = self.clock() - self.detector.timeout - self.replay_window
        entries = self.bus.replay(DETECTOR_CHANGELOG, fresh, since_ms=int(since * 1000))
        restored: list[str] = []
        for entry in entries:
            try:
                restored.extend(_resolved_in(json.loads(entry.value)))
            except (ValueError, KeyError, TypeError, RecursionError):
                log.warning(
                    "skipping a malformed %s entry at offset %d",
                    entry.topic,
                    entry.offset,
                    extra={
                        "topic": entry.topic,
                        "partition": entry.partition,
                        "offset": entry.offset,
                    },
                )
        self.detector.mark_resolved(restored)
        for tid in restored:
            held = self._held_at.pop(tid, None)
            if held is not None:
                del self._held[held[0]][held[1]]
                del self._tid_at[held]
        self._restored |= fresh
        log.info("restored %d resolved transactions of partitions %s", len(restored), sorted(fresh))

    def safe_commit(self) -> dict[TopicPartition, int]:
        owned = self.consumer.assignment()
        self._last_cut = self._cut()
        return {tp: offset for tp, offset in self._last_cut.items() if tp in owned}

    def on_revoked(self, partitions: frozenset[TopicPartition]) -> None:
        # Taken away, if only for a moment: another detector may have paired what this one
        # holds of them. Drop it, and read their changelog again once they are back.
        self._forget(set(partitions))
        self._restored -= {tp.partition for tp in partitions}

    def _forget(self, lost: set[TopicPartition]) -> None:
        """Drop what came from partitions another member now owns: it reads them again."""
        if not lost:
            return
        for tp in lost:
            for offset in self._held.pop(tp, {}):
                del self._held_at[self._tid_at.pop((tp, offset))]
            self._next.pop(tp, None)
            self._last_cut.pop(tp, None)
        self._pairs = [p for p in self._pairs if p[0] not in lost and p[2] not in lost]
        self.detector.forget(
            o.transaction_id
            for o in list(self.detector.pending_outcomes())
            if o.transaction_id not in self._held_at
        )

    def _remember(
        self, tid: str, held: tuple[TopicPartition, int], here: tuple[TopicPartition, int]
    ) -> None:
        (first, at), (second, then) = held, here
        self._resolved_at[tid] = (
            (first.topic, first.partition, at),
            (second.topic, second.partition, then),
        )

    def _release(
        self,
        pairing: Pairing,
        records: list[Record],
        entries: _Entries,
        partition: int | None,
    ) -> tuple[TopicPartition, int] | None:
        """Publish the pairing's alert, if any, and file it for the batch's changelog entries
        (``partition``: where the message that resolved it was read, if it was)."""
        held = self._held_at.pop(pairing.transaction_id, None)
        if held is not None:
            del self._held[held[0]][held[1]]
            del self._tid_at[held]
        some = pairing.live or pairing.simulation
        assert some is not None
        if pairing.alert is not None:
            alert = pairing.alert
            records.append(Record(DIVERGENCE_ALERT, alert.customer_id, encode_alert(alert)))
            labelled(DIVERGENCES, alert.kind.value).inc()
            log.info(
                "divergence %s on transaction %s",
                alert.kind.value,
                pairing.transaction_id,
                extra={**_about(pairing, some), "kind": alert.kind.value},
            )
        # Filed under the partition number each half was read from: one, when both are keyed
        # by their customer (the outcome topics are co-partitioned), but a producer may key
        # them otherwise, and a detector that takes over either partition must find it.
        alerted = pairing.alert is not None
        other = None if held is None else held[0].partition
        groups: tuple[int | str, ...]
        if partition is None:
            groups = (some.customer_id,) if other is None else (other,)
        else:
            groups = (partition,) if other is None or other == partition else (partition, other)
        for group in groups:
            entry = entries.setdefault((group, alerted), (some.customer_id, []))
            entry[1].append(pairing.transaction_id)
        if self.on_pairing is not None:
            try:
                self.on_pairing(pairing)
            except Exception:
                # An observer's failure must not fail the batch: the pair is already resolved,
                # so a retried batch would no longer publish its alert.
                log.exception(
                    "on_pairing callback failed for %s",
                    pairing.transaction_id,
                    extra=_about(pairing, some),
                )
        return held

    def _cut(self) -> dict[TopicPartition, int]:
        """Offsets safe to commit: a restart re-reads both halves of a pair, or neither.

        Each partition starts at its oldest held half (or everything read). A paired
        transaction with one half above a cut and one below would, after a restart, come back
        half and time out as a false ``MISSING_*``, so the other cut moves down to include it,
        until no pair straddles.
        """
        cut = {
            tp: next(iter(self._held[tp])) if self._held.get(tp) else offset
            for tp, offset in self._next.items()
        }
        moved = True
        while moved:
            moved = False
            for tp_a, off_a, tp_b, off_b in self._pairs:
                above_a, above_b = off_a >= cut[tp_a], off_b >= cut[tp_b]
                if above_a and not above_b:
                    cut[tp_b], moved = off_b, True
                elif above_b and not above_a:
                    cut[tp_a], moved = off_a, True
        self._pairs = [p for p in self._pairs if p[1] >= cut[p[0]]]
        return cut


def _resolved_in(entry: object) -> list[str]:
    """The transaction ids a changelog entry says were resolved.

    Raises:
        KeyError, TypeError: not a changelog entry.
    """
    if not isinstance(entry, dict):
        raise TypeError("a changelog entry is a JSON object")
    tids = entry["transaction_ids"] if "transaction_ids" in entry else [entry["transaction_id"]]
    if not isinstance(tids, list) or not all(isinstance(t, str) for t in tids):
        raise TypeError("transaction ids are strings")
    return tids


def _about(pairing: Pairing, some: Outcome) -> dict[str, str]:
    """The log fields of a line about a pairing."""
    return {"transaction_id": pairing.transaction_id, "customer_id": some.customer_id}
