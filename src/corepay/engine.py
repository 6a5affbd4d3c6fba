"""The AI engine: every transaction decided by the live and the simulation path, concurrently."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from types import TracebackType
from typing import Self

from corepay.models import Outcome, Transaction
from corepay.observability import timed
from corepay.paths import DecisionPath

__all__ = ["Engine"]

log = logging.getLogger(__name__)


class Engine:
    """Runs both paths on a batch; one failing never costs the other's outcome.

    When either path waits on the network (``DecisionPath.blocking``: a real gateway, twins
    read over HTTP or from Couchbase), the live path runs on a worker thread while the
    simulation path runs on the caller's, so a slow gateway and a slow twin read overlap.
    Otherwise both run on the caller's thread, one after the other: the same outcomes without
    handing the interpreter back and forth. When a path raises on a batch, its transactions
    are decided one by one, and the ones that still fail get an error outcome (decision
    ``REVIEW``, ``error`` set) instead of being lost.

    Each path's time on a batch is observed in ``corepay_stage_seconds`` as stage
    ``decide_live`` or ``decide_simulation``, labelled with ``service``.
    """

    def __init__(
        self, live: DecisionPath, simulation: DecisionPath, *, service: str = "engine"
    ) -> None:
        self.live = live
        self.simulation = simulation
        self.service = service
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="corepay-live")

    def decide(
        self, txns: Sequence[Transaction], ingested: Sequence[datetime | None] | None = None
    ) -> tuple[list[Outcome], list[Outcome]]:
        """The live and the simulation outcome of each transaction, in the given order."""
        stamps = list(ingested) if ingested is not None else [None] * len(txns)
        if len(stamps) != len(txns):
            raise ValueError("ingested must have one entry per transaction")
        if not txns:
            return [], []
        if not (self.live.blocking or self.simulation.blocking):
            live_outcomes = self._decide_on(self.live, txns, stamps)
            return live_outcomes, self._decide_on(self.simulation, txns, stamps)
        live = self._pool.submit(self._decide_on, self.live, txns, stamps)
        simulation = self._decide_on(self.simulation, txns, stamps)
        return live.result(), simulation

    def _decide_on(
        self, path: DecisionPath, txns: Sequence[Transaction], ingested: Sequence[datetime | None]
    ) -> list[Outcome]:
        with timed(self.service, f"decide_{path.path.value}"):
            return _run(path, txns, ingested)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.live.close()
        self.simulation.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _run(
    path: DecisionPath, txns: Sequence[Transaction], ingested: Sequence[datetime | None]
) -> list[Outcome]:
    started = time.perf_counter()
    try:
        return path.decide_batch(txns, ingested)
    except Exception:
        # Deliberately broad: whatever broke, every transaction still gets this path's outcome.
        if len(txns) > 1:
            # Decide them one by one, so one poison transaction does not fail its batch.
            return [o for t, at in zip(txns, ingested, strict=True) for o in _run(path, [t], [at])]
        txn = txns[0]
        log.exception(
            "%s path failed on transaction %s",
            path.path.value,
            txn.transaction_id,
            extra={"transaction_id": txn.transaction_id, "customer_id": txn.customer_id},
        )
        elapsed = (time.perf_counter() - started) * 1000.0
        code = f"{path.path.value.upper()}_PATH_ERROR"
        return path.failed(txns, ingested, code, elapsed_ms=elapsed)
