"""The two decision paths the engine runs for every transaction.

- :class:`LivePath` decides as production would: the risk model scores the transaction, the
  policy declines or holds risky ones, and the rest are authorized with the payment gateway.
- :class:`SimulationPath` predicts that decision from the customer's digital twin.

Both take a whole batch, build its feature matrix and score it with numpy in one go. Neither
ever drops a transaction: a failure becomes an outcome with ``error`` set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from corepay.errors import BackendTimeoutError, CorepayError, UnavailableError
from corepay.features import TWIN_FEATURES, transaction_features, twin_features
from corepay.gateway import PaymentGateway
from corepay.models import Decision, Outcome, Path, Timings, Transaction
from corepay.scoring import LIVE_MODEL, TWIN_MODEL, LogisticModel, Thresholds
from corepay.twin_client import TwinClient

__all__ = ["DecisionPath", "LivePath", "SimulationPath"]

Clock = Callable[[], float]


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class DecisionPath:
    """What both paths share: the error outcome that stands in for a failed decision."""

    path: Path
    model_version: str

    def decide_batch(
        self, txns: Sequence[Transaction], ingested: Sequence[datetime | None]
    ) -> list[Outcome]:
        raise NotImplementedError

    def failed(
        self,
        txns: Sequence[Transaction],
        ingested: Sequence[datetime | None],
        error: str,
        *,
        elapsed_ms: float = 0.0,
        twin_version: int | None = None,
        now: float | None = None,
    ) -> list[Outcome]:
        """Outcomes for transactions this path could not decide: held for review, ``error`` set."""
        decided = _utc(time.time() if now is None else now)
        return [
            Outcome(
                transaction=txn,
                path=self.path,
                decision=Decision.REVIEW,
                score=None,
                reasons=(error,),
                model_version=self.model_version,
                twin_version=twin_version,
                error=error,
                timings=Timings(decided_at=decided, elapsed_ms=elapsed_ms, ingested_at=at),
            )
            for txn, at in zip(txns, ingested, strict=True)
        ]


class LivePath(DecisionPath):
    """Risk model, decision policy, then the payment gateway for what the policy lets through."""

    path = Path.LIVE

    def __init__(
        self,
        gateway: PaymentGateway,
        *,
        model: LogisticModel = LIVE_MODEL,
        thresholds: Thresholds = Thresholds(),
        clock: Clock = time.time,
    ) -> None:
        self.gateway = gateway
        self.model = model
        self.thresholds = thresholds
        self.clock = clock
        self.model_version = model.version

    def decide_batch(
        self, txns: Sequence[Transaction], ingested: Sequence[datetime | None]
    ) -> list[Outcome]:
        started = time.perf_counter()
        scores = self.model.score(transaction_features(txns))
        decided: list[tuple[Decision, tuple[str, ...], str | None, float | None]] = []
        for txn, score in zip(txns, scores.tolist(), strict=True):
            decision, reasons = self.thresholds.decide(score)
            if decision is not Decision.APPROVE:
                decided.append((decision, reasons, None, None))
                continue
            try:
                answer = self.gateway.authorize(txn)
            except BackendTimeoutError:
                decided.append((Decision.REVIEW, ("GATEWAY_TIMEOUT",), "GATEWAY_TIMEOUT", None))
            except UnavailableError:
                decided.append(
                    (Decision.REVIEW, ("GATEWAY_UNAVAILABLE",), "GATEWAY_UNAVAILABLE", None)
                )
            except CorepayError:
                decided.append((Decision.REVIEW, ("GATEWAY_ERROR",), "GATEWAY_ERROR", None))
            else:
                if answer.approved:
                    decided.append((Decision.APPROVE, (), None, answer.latency_ms))
                else:
                    reasons = ("GATEWAY_DECLINED", f"GATEWAY_{answer.code}")
                    decided.append((Decision.DECLINE, reasons, None, answer.latency_ms))
        elapsed_ms = (time.perf_counter() - started) * 1000.0 / max(len(txns), 1)
        now = _utc(self.clock())
        return [
            Outcome(
                transaction=txn,
                path=Path.LIVE,
                decision=decision,
                score=score,
                reasons=reasons,
                model_version=self.model_version,
                error=error,
                timings=Timings(
                    decided_at=now, elapsed_ms=elapsed_ms, ingested_at=at, gateway_ms=gateway_ms
                ),
            )
            for txn, at, score, (decision, reasons, error, gateway_ms) in zip(
                txns, ingested, scores.tolist(), decided, strict=True
            )
        ]


# Which twin features, past which value, explain a non-approval (in TWIN_FEATURES order).
_TWIN_REASONS = (
    ("amount_ratio", 1.0, "AMOUNT_ANOMALY"),
    ("new_merchant", 1.0, "NEW_MERCHANT"),
    ("new_country", 1.0, "NEW_COUNTRY"),
    ("velocity_1h", 3.0, "VELOCITY"),
    ("decline_rate", 0.3, "HIGH_DECLINE_RATE"),
    ("thin_history", 1.0, "NO_HISTORY"),
)
_REASON_COLUMNS = tuple((TWIN_FEATURES.index(f), v, r) for f, v, r in _TWIN_REASONS)


class SimulationPath(DecisionPath):
    """Predicts the live decision from the customer's twin, stamping the twin version read."""

    path = Path.SIMULATION

    def __init__(
        self,
        twins: TwinClient,
        *,
        model: LogisticModel = TWIN_MODEL,
        thresholds: Thresholds = Thresholds(),
        clock: Clock = time.time,
    ) -> None:
        self.twins = twins
        self.model = model
        self.thresholds = thresholds
        self.clock = clock
        self.model_version = model.version

    def decide_batch(
        self, txns: Sequence[Transaction], ingested: Sequence[datetime | None]
    ) -> list[Outcome]:
        started = time.perf_counter()
        try:
            twins = self.twins.get_many([t.customer_id for t in txns])
        except BackendTimeoutError:
            return self.failed(txns, ingested, "TWIN_TIMEOUT", now=self.clock())
        except UnavailableError:
            return self.failed(txns, ingested, "TWIN_UNAVAILABLE", now=self.clock())
        features = twin_features(txns, twins)
        scores = self.model.score(features).tolist()
        rows = features.tolist()
        elapsed_ms = (time.perf_counter() - started) * 1000.0 / max(len(txns), 1)
        now = _utc(self.clock())
        outcomes = []
        for txn, at, score, row in zip(txns, ingested, scores, rows, strict=True):
            decision, reasons = self.thresholds.decide(score)
            if decision is not Decision.APPROVE:
                reasons += tuple(r for col, v, r in _REASON_COLUMNS if row[col] >= v)
            twin = twins.get(txn.customer_id)
            outcomes.append(
                Outcome(
                    transaction=txn,
                    path=Path.SIMULATION,
                    decision=decision,
                    score=score,
                    reasons=reasons,
                    model_version=self.model_version,
                    twin_version=0 if twin is None else twin.version,
                    timings=Timings(decided_at=now, elapsed_ms=elapsed_ms, ingested_at=at),
                )
            )
        return outcomes
