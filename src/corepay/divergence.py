"""Pairing live and simulation outcomes and judging them. Pure: no I/O, time is passed in.

Each transaction is resolved exactly once: when both outcomes are in (an alert if they
disagree or a path failed), or when its partner has not arrived within ``timeout`` seconds
(a ``MISSING_*`` alert). Later copies of either outcome, redelivered by the bus, are
recognised against a bounded memory of resolved transactions and ignored.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

import attrs

from corepay.models import AlertKind, DivergenceAlert, Outcome, Path
from corepay.recent import Recent

__all__ = ["DivergenceDetector", "Pairing", "alert_id_for", "classify"]

_ALERT_NAMESPACE = uuid.UUID("6f1e2a9c-3b7d-5c4e-9a8f-1d2c3b4a5e6f")


def alert_id_for(transaction_id: str) -> str:
    """The alert id of a transaction: stable, so a re-sent alert can be recognised downstream."""
    return str(uuid.uuid5(_ALERT_NAMESPACE, transaction_id))


def classify(live: Outcome, simulation: Outcome) -> AlertKind | None:
    """The alert a complete pair deserves, or ``None`` when the paths agree.

    A disagreement is ``STALE_TWIN`` when the twin the simulation read was missing payments of
    the customer (``twin_lag > 0``) and, with them applied, the simulation would have decided
    as the live path did (``fresh_decision``).
    """
    if live.error is not None or simulation.error is not None:
        return AlertKind.PATH_ERROR
    if live.decision is not simulation.decision:
        # The twin was behind, and with it up to date the simulation would have agreed.
        if simulation.twin_lag and simulation.fresh_decision is live.decision:
            return AlertKind.STALE_TWIN
        return AlertKind.DECISION_MISMATCH
    return None


def _detail(kind: AlertKind, live: Outcome | None, simulation: Outcome | None) -> str:
    if kind is AlertKind.MISSING_LIVE:
        return "no live outcome arrived within the pairing timeout"
    if kind is AlertKind.MISSING_SIMULATION:
        return "no simulation outcome arrived within the pairing timeout"
    assert live is not None and simulation is not None
    text = f"live {live.decision.value} vs simulation {simulation.decision.value}"
    if kind is AlertKind.STALE_TWIN:
        text += (
            f" (twin version {simulation.twin_version} missed "
            f"{simulation.twin_lag} earlier payments)"
        )
    errors = [f"{o.path.value} error {o.error}" for o in (live, simulation) if o.error]
    return f"{text} ({'; '.join(errors)})" if errors else text


@attrs.frozen
class Pairing:
    """A resolved transaction: both outcomes (or the one that arrived) and the alert, if any."""

    transaction_id: str
    live: Outcome | None
    simulation: Outcome | None
    alert: DivergenceAlert | None
    resolved_at: float


class DivergenceDetector:
    """Pairs outcomes by transaction id; bounded in what it holds.

    Args:
        timeout: seconds to wait for the second outcome of a pair before alerting MISSING_*.
        max_pending: most half-pairs held; past it the oldest is resolved as missing early.
        remember: how many resolved transaction ids are kept to drop redelivered outcomes.
    """

    def __init__(
        self, *, timeout: float = 30.0, max_pending: int = 100_000, remember: int = 1_000_000
    ) -> None:
        if timeout <= 0 or max_pending < 1 or remember < 1:
            raise ValueError("timeout, max_pending and remember must be positive")
        self.timeout = timeout
        self.max_pending = max_pending
        self.remember = remember
        self._pending: dict[str, tuple[Outcome, float]] = {}
        self._resolved: Recent[str, None] = Recent(remember)
        self.duplicates = 0
        self.evicted = 0

    @property
    def pending(self) -> int:
        """Half-pairs waiting for their partner."""
        return len(self._pending)

    def is_pending(self, transaction_id: str) -> bool:
        """Whether one outcome of the transaction is held, waiting for its partner."""
        return transaction_id in self._pending

    def mark_resolved(self, transaction_ids: Iterable[str]) -> None:
        """Record transactions as resolved elsewhere (before a restart): their outcomes are
        ignored from now on, and any half of them held is dropped."""
        for tid in transaction_ids:
            self._pending.pop(tid, None)
            self._resolved[tid] = None

    def forget(self, transaction_ids: Iterable[str]) -> None:
        """Drop these half-pairs unresolved (their partition moved to another detector)."""
        for tid in transaction_ids:
            self._pending.pop(tid, None)

    def pending_outcomes(self) -> Iterator[Outcome]:
        """The half-pairs waiting, oldest first."""
        return (outcome for outcome, _ in self._pending.values())

    def observe(self, outcome: Outcome, now: float) -> list[Pairing]:
        """Take one outcome at time ``now`` (epoch seconds); return what got resolved.

        The result is empty while the outcome waits for its partner or when it is a copy of
        one already seen; it may hold an evicted old half-pair when ``max_pending`` is reached.
        """
        tid = outcome.transaction_id
        if tid in self._resolved:
            self.duplicates += 1
            return []
        waiting = self._pending.get(tid)
        if waiting is None:
            self._pending[tid] = (outcome, now)
            resolved: list[Pairing] = []
            while len(self._pending) > self.max_pending:
                oldest = next(iter(self._pending))
                self.evicted += 1
                resolved.append(self._resolve_missing(oldest, now))
            return resolved
        first = waiting[0]
        if first.path is outcome.path:
            self.duplicates += 1
            return []
        del self._pending[tid]
        live, simulation = (first, outcome) if first.path is Path.LIVE else (outcome, first)
        kind = classify(live, simulation)
        alert = None if kind is None else self._alert(kind, live, simulation, now)
        return [self._resolve(tid, live, simulation, alert, now)]

    def expire(self, now: float) -> list[Pairing]:
        """Resolve, as missing, every half-pair that waited ``timeout`` seconds or more."""
        expired = []
        for tid, (_, since) in self._pending.items():
            if now - since < self.timeout:
                break  # insertion order is arrival order, so the rest are younger
            expired.append(tid)
        return [self._resolve_missing(tid, now) for tid in expired]

    def _resolve_missing(self, tid: str, now: float) -> Pairing:
        outcome, _ = self._pending.pop(tid)
        if outcome.path is Path.LIVE:
            live, simulation, kind = outcome, None, AlertKind.MISSING_SIMULATION
        else:
            live, simulation, kind = None, outcome, AlertKind.MISSING_LIVE
        return self._resolve(tid, live, simulation, self._alert(kind, live, simulation, now), now)

    def _resolve(
        self,
        tid: str,
        live: Outcome | None,
        simulation: Outcome | None,
        alert: DivergenceAlert | None,
        now: float,
    ) -> Pairing:
        self._resolved[tid] = None
        return Pairing(tid, live, simulation, alert, now)

    def _alert(
        self, kind: AlertKind, live: Outcome | None, simulation: Outcome | None, now: float
    ) -> DivergenceAlert:
        some = live if live is not None else simulation
        assert some is not None
        return DivergenceAlert(
            alert_id=alert_id_for(some.transaction_id),
            kind=kind,
            transaction_id=some.transaction_id,
            customer_id=some.customer_id,
            live=live,
            simulation=simulation,
            detected_at=datetime.fromtimestamp(now, UTC),
            detail=_detail(kind, live, simulation),
        )
