"""The divergence detector service: pairs the two outcome topics, publishes ``divergence_alert``.

It commits an outcome's offset only once that outcome's transaction is resolved, so a half-pair
held in memory is never lost with the process: after a restart it is read again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from corepay.bus import (
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
from corepay.services.runner import ConsumerService, Handled, dead_letter
from corepay.wire import decode_outcome, encode_alert

__all__ = ["DetectorService"]


class DetectorService(ConsumerService):
    """Feeds both outcome topics to a :class:`DivergenceDetector` and publishes its alerts.

    Args:
        on_pairing: called with every resolved transaction (metrics, demos, tests).
        clock: epoch seconds; the pairing timeout is measured with it.
    """

    group = "corepay-detector"
    topics = (LIVE_OUTCOME, SIMULATION_OUTCOME)

    def __init__(
        self,
        bus: Bus,
        detector: DivergenceDetector,
        *,
        on_pairing: Callable[[Pairing], None] | None = None,
        clock: Callable[[], float] = time.time,
        **kwargs: object,
    ) -> None:
        super().__init__(bus, **kwargs)  # type: ignore[arg-type]
        self.detector = detector
        self.on_pairing = on_pairing
        self.clock = clock
        # Offsets of held half-pairs per partition, in offset order; the first is the lowest.
        self._held: dict[TopicPartition, dict[int, None]] = {}
        self._held_at: dict[str, tuple[TopicPartition, int]] = {}
        self._next: dict[TopicPartition, int] = {}

    def handle(self, messages: Sequence[Message]) -> Handled:
        records: list[Record] = []
        now = self.clock()
        resolved: list[Pairing] = []
        for message in messages:
            tp = message.topic_partition
            self._next[tp] = message.offset + 1
            try:
                outcome = decode_outcome(message.value)
            except DecodeError as exc:
                records.append(dead_letter(message, str(exc)))
                continue
            resolved.extend(self.detector.observe(outcome, now))
            tid = outcome.transaction_id
            if tid not in self._held_at and self.detector.is_pending(tid):
                # This message is the half-pair now held: its offset may not be committed yet.
                self._held.setdefault(tp, {})[message.offset] = None
                self._held_at[tid] = (tp, message.offset)
        resolved.extend(self.detector.expire(now))
        for pairing in resolved:
            held = self._held_at.pop(pairing.transaction_id, None)
            if held is not None:
                del self._held[held[0]][held[1]]
            if pairing.alert is not None:
                alert = pairing.alert
                records.append(Record(DIVERGENCE_ALERT, alert.customer_id, encode_alert(alert)))
            if self.on_pairing is not None:
                self.on_pairing(pairing)
        owned = self.consumer.assignment()
        commit = {
            tp: next(iter(self._held[tp]), offset) if self._held.get(tp) else offset
            for tp, offset in self._next.items()
            if tp in owned
        }
        return Handled(records, commit)
