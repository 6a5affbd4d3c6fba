"""The two decision paths the engine runs for every transaction.

- :class:`LivePath` decides as production would: the risk model scores the transaction, the
  policy declines or holds risky ones, and the rest are authorized with the payment gateway.
- :class:`SimulationPath` predicts that decision from the customer's digital twin, and says
  how stale the twin it read was.

Both take a whole batch, build its feature matrix and score it with numpy in one go. Neither
ever drops a transaction: a failure becomes an outcome with ``error`` set. A path's model comes
from a model file (:func:`corepay.riskmodel.load_model`) or, by default, is trained on first use
(:func:`corepay.training.default_model`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from corepay.errors import BackendTimeoutError, CorepayError, UnavailableError
from corepay.features import feature_matrix
from corepay.gateway import GatewayResponse, PaymentGateway
from corepay.models import Decision, Outcome, Path, Timings, Transaction, Twin
from corepay.riskmodel import RiskModel
from corepay.scoring import DecisionPolicy, Thresholds
from corepay.twin import project
from corepay.twin_client import TwinClient

__all__ = ["DecisionPath", "LivePath", "SimulationPath", "policy_for"]

Clock = Callable[[], float]


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class DecisionPath:
    """What both paths share: the error outcome that stands in for a failed decision."""

    path: Path
    model_version: str
    #: Whether deciding waits on the network (a gateway, twin reads): the engine overlaps
    #: the two paths only then. Python runs one thread at a time, so paths that only compute
    #: gain nothing from a thread of their own, and lose the hand-overs between them.
    blocking = True

    def decide_batch(
        self, txns: Sequence[Transaction], ingested: Sequence[datetime | None]
    ) -> list[Outcome]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the path holds (threads, connections)."""

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


def policy_for(model: RiskModel, thresholds: Thresholds | None = None) -> DecisionPolicy:
    """The decision policy for a model: its own thresholds unless others are given."""
    return DecisionPolicy(thresholds or model.thresholds)


def _default(path: str) -> RiskModel:
    from corepay.training import default_model  # trains on first use, so only when needed

    return default_model(path)


def _check_model(model: RiskModel, path: Path) -> RiskModel:
    if model.metadata.path != path.value:
        raise CorepayError(
            f"model {model.version} is for the {model.metadata.path} path, "
            f"not the {path.value} path"
        )
    return model


_GatewayResult = tuple[Decision, tuple[str, ...], str | None, float | None]


class LivePath(DecisionPath):
    """Risk model, decision policy, then the payment gateway for what the policy lets through.

    Args:
        gateway: authorizes what the policy approves. A gateway that blocks on the network is
            called for up to ``gateway_workers`` payments of a batch at once.
        model: the risk model (transaction features only); default: :func:`default_model`.
        policy: thresholds and reason codes; default: the model's own thresholds.
    """

    path = Path.LIVE

    def __init__(
        self,
        gateway: PaymentGateway,
        *,
        model: RiskModel | None = None,
        policy: DecisionPolicy | None = None,
        clock: Clock = time.time,
        gateway_workers: int = 16,
    ) -> None:
        self.gateway = gateway
        self.blocking = gateway.blocking
        self.model = _check_model(model or _default("live"), Path.LIVE)
        self.policy = policy or policy_for(self.model)
        self.clock = clock
        self.model_version = self.model.version
        self._pool = (
            ThreadPoolExecutor(gateway_workers, thread_name_prefix="corepay-gateway")
            if gateway.blocking and gateway_workers > 1
            else None
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def decide_batch(
        self, txns: Sequence[Transaction], ingested: Sequence[datetime | None]
    ) -> list[Outcome]:
        started = time.perf_counter()
        features = self.model.features_of(txns)
        scores = self.model.score(features)
        decided: list[_GatewayResult] = [
            (decision, reasons, None, None)
            for decision, reasons in self.policy.decide(scores, features, self.model.features)
        ]
        to_authorize = [i for i, d in enumerate(decided) if d[0] is Decision.APPROVE]
        if self._pool is not None and len(to_authorize) > 1:
            answers = list(self._pool.map(self._authorize, [txns[i] for i in to_authorize]))
        else:
            answers = [self._authorize(txns[i]) for i in to_authorize]
        for i, answer in zip(to_authorize, answers, strict=True):
            decided[i] = answer
        elapsed_ms = (time.perf_counter() - started) * 1000.0 / max(len(txns), 1)
        now = _utc(self.clock())
        version = self.model_version
        # Fields by position, in the classes' order: by keyword costs 0.3 us more an outcome.
        return [
            Outcome(
                txn,  # transaction
                Path.LIVE,  # path
                decision,
                score,
                reasons,
                version,  # model_version
                Timings(now, elapsed_ms, at, gateway_ms),  # decided_at, ..., gateway_ms
                None,  # twin_version
                None,  # twin_lag
                None,  # fresh_decision
                error,
            )
            for txn, at, score, (decision, reasons, error, gateway_ms) in zip(
                txns, ingested, scores.tolist(), decided, strict=True
            )
        ]

    def _authorize(self, txn: Transaction) -> _GatewayResult:
        try:
            answer: GatewayResponse = self.gateway.authorize(txn)
        except BackendTimeoutError:
            return (Decision.REVIEW, ("GATEWAY_TIMEOUT",), "GATEWAY_TIMEOUT", None)
        except UnavailableError:
            return (Decision.REVIEW, ("GATEWAY_UNAVAILABLE",), "GATEWAY_UNAVAILABLE", None)
        except CorepayError:
            return (Decision.REVIEW, ("GATEWAY_ERROR",), "GATEWAY_ERROR", None)
        if answer.approved:
            return (Decision.APPROVE, (), None, answer.latency_ms)
        reasons = ("GATEWAY_DECLINED", f"GATEWAY_{answer.code}")
        return (Decision.DECLINE, reasons, None, answer.latency_ms)


class SimulationPath(DecisionPath):
    """Predicts the live decision from the customer's twin, stamping the twin it read.

    Every outcome carries the version of the twin read and ``twin_lag``: how many of the
    customer's payments this path had already decided that the twin did not reflect yet (the
    twin service applies a payment only after its live outcome is published, so a burst of
    payments meets a twin that is behind). When the twin was behind, the outcome also says
    what the decision would have been on a twin with those payments applied
    (``fresh_decision``; their live decisions are not known yet, so they count as approved).
    A disagreement that a current twin would not have had is told apart by the detector as
    ``STALE_TWIN``.

    Args:
        twins: where twins are read from.
        model: the twin model; default: :func:`default_model`.
        policy: thresholds and reason codes; default: the model's own thresholds.
        remember_customers: customers whose not-yet-applied payments are remembered.
    """

    path = Path.SIMULATION
    #: Most not-yet-applied payments remembered per customer.
    pending_per_customer = 16

    def __init__(
        self,
        twins: TwinClient,
        *,
        model: RiskModel | None = None,
        policy: DecisionPolicy | None = None,
        clock: Clock = time.time,
        remember_customers: int = 20_000,
    ) -> None:
        self.twins = twins
        self.blocking = twins.blocking
        self.model = _check_model(model or _default("simulation"), Path.SIMULATION)
        self.policy = policy or policy_for(self.model)
        self.clock = clock
        self.model_version = self.model.version
        self.remember_customers = remember_customers
        # Per customer, the payments this path decided that their twin did not show yet.
        self._pending: OrderedDict[str, list[Transaction]] = OrderedDict()

    def decide_batch(
        self, txns: Sequence[Transaction], ingested: Sequence[datetime | None]
    ) -> list[Outcome]:
        started = time.perf_counter()
        # Whether a twin shows a payment is all this path asks of its ``applied``: per customer,
        # about the batch's payments, and those it decided and has not seen applied yet.
        asked: dict[str, set[str]] = {}
        for t in txns:
            asked.setdefault(t.customer_id, set()).add(t.transaction_id)
        for cid, ids in asked.items():
            ids.update(p.transaction_id for p in self._pending.get(cid, ()))
        try:
            twins = self.twins.get_many_checking(asked)
        except BackendTimeoutError:
            return self.failed(txns, ingested, "TWIN_TIMEOUT", now=self.clock())
        except UnavailableError:
            return self.failed(txns, ingested, "TWIN_UNAVAILABLE", now=self.clock())
        lags, fresher = self._staleness(txns, twins, asked)
        rows = sorted(fresher)
        if rows:
            # The payments again on their fresher twins, as rows after the batch's own: one
            # matrix, one scoring, one policy pass (each costs tens of us whatever its size).
            features = feature_matrix(
                [*txns, *(txns[i] for i in rows)],
                [*(twins.get(t.customer_id) for t in txns), *(fresher[i] for i in rows)],
                self.model.features,
            )
        else:
            features = self.model.features_of(txns, twins)
        scores = self.model.score(features)
        decided = self.policy.decide(scores, features, self.model.features)
        n = len(txns)
        fresh = {i: decision for i, (decision, _) in zip(rows, decided[n:], strict=True)}
        decided = decided[:n]
        elapsed_ms = (time.perf_counter() - started) * 1000.0 / max(len(txns), 1)
        now = _utc(self.clock())
        # One Timings (immutable) per ingestion stamp object: the engine reads one per batch
        # ingested together. (By identity: equal instants in two offsets encode differently.)
        timings: dict[int, Timings] = {}
        outcomes = []
        version = self.model_version
        for i, (txn, at, score, (decision, reasons), lag) in enumerate(
            zip(txns, ingested, scores[:n].tolist(), decided, lags, strict=True)
        ):
            twin = twins.get(txn.customer_id)
            timed = timings.get(id(at))
            if timed is None:
                timed = timings[id(at)] = Timings(
                    decided_at=now, elapsed_ms=elapsed_ms, ingested_at=at
                )
            outcomes.append(
                Outcome(  # fields by position, in the class's order (see LivePath)
                    txn,  # transaction
                    Path.SIMULATION,  # path
                    decision,
                    score,
                    reasons,
                    version,  # model_version
                    timed,  # timings
                    0 if twin is None else twin.version,  # twin_version
                    lag,  # twin_lag
                    fresh.get(i),  # fresh_decision
                )
            )
        return outcomes

    def _staleness(
        self, txns: Sequence[Transaction], twins: Mapping[str, Twin], asked: Mapping[str, set[str]]
    ) -> tuple[list[int], dict[int, Twin]]:
        """Per payment, how many decided payments its twin lacks, and (where it lacks any)
        the twin with them applied. ``asked``: per customer, every id looked for in its
        twin's ``applied`` below."""
        lags: list[int] = []
        fresher: dict[int, Twin] = {}
        applied: dict[str, AbstractSet[str]] = {}
        for i, txn in enumerate(txns):
            cid = txn.customer_id
            pending = self._pending.get(cid)
            if pending is None:
                pending = self._pending[cid] = []
                if len(self._pending) > self.remember_customers:
                    self._pending.popitem(last=False)
            else:
                self._pending.move_to_end(cid)
            twin = twins.get(cid)
            shown = applied.get(cid)
            if shown is None:
                shown = applied[cid] = (
                    set() if twin is None else {i for i in asked[cid] if i in twin.applied}
                )
                # What the twin shows is not missing from it any more. Once per customer and
                # batch: a payment shown is never added below.
                if shown:
                    pending[:] = [p for p in pending if p.transaction_id not in shown]
            tid = txn.transaction_id
            missing = [p for p in pending if p.transaction_id != tid]
            lags.append(len(missing))
            if missing:
                # Not applied to the twin (what it shows left pending above), and distinct.
                fresher[i] = project(twin, missing)  # type: ignore[assignment]
            if tid not in shown and len(missing) == len(pending):  # not pending already
                pending.append(txn)
                del pending[: -self.pending_per_customer]
        return lags, fresher
