"""The whole data flow in one process, over any bus and twin store.

The four services are the same objects ``corepay serve`` runs, pumped in turn on this thread:
ingestion, the engine, then the divergence detector and the twin service. Pumping in a fixed
order makes a run deterministic: the simulation path of a batch sees the twins as the previous
batches left them.

Deployed, the detector and the twin service read the live outcomes side by side, and neither
waits for the other. Here one has to go first: the detector does, so a verdict waits only for
the engine, as it does across processes, and not for the twin updates of its batch as well.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from corepay.backends.memory import MemoryBus, MemoryTwinStore
from corepay.bus import ALL_TOPICS, Bus
from corepay.divergence import DivergenceDetector, Pairing
from corepay.engine import Engine
from corepay.errors import ValidationError
from corepay.gateway import PaymentGateway, SimulatedGateway
from corepay.ingest import Accepted, Ingestor
from corepay.metrics import LatencyRecorder
from corepay.models import Transaction
from corepay.paths import LivePath, SimulationPath, policy_for
from corepay.riskmodel import RiskModel
from corepay.scoring import Thresholds
from corepay.services.detector import DetectorService
from corepay.services.engine import EngineService
from corepay.services.twin import TwinService
from corepay.store import TwinStore
from corepay.twin_client import StoreTwinClient
from corepay.wire import parse_transaction

__all__ = ["Pipeline"]


class Pipeline:
    """Ingestion, engine, twin service and divergence detector wired on one bus and store.

    Args:
        bus: defaults to a new :class:`MemoryBus`.
        store: defaults to a new :class:`MemoryTwinStore`.
        gateway: the live path's gateway; defaults to ``SimulatedGateway(seed)``.
        seed: seed of the default gateway.
        live_model, twin_model: the paths' risk models; default: trained on first use
            (:func:`corepay.training.default_model`).
        live_thresholds, twin_thresholds: override the models' own decision thresholds.
        batch_size: most messages each service handles per step.
        pairing_timeout: seconds the detector waits for the second outcome of a pair.
        max_pending: most half-pairs the detector holds.
        on_pairing: called with every resolved transaction (both outcomes and any alert).
        clock: epoch seconds, for ingestion stamps, decisions and the pairing timeout.
    """

    def __init__(
        self,
        bus: Bus | None = None,
        store: TwinStore | None = None,
        *,
        gateway: PaymentGateway | None = None,
        seed: int = 0,
        live_model: RiskModel | None = None,
        twin_model: RiskModel | None = None,
        live_thresholds: Thresholds | None = None,
        twin_thresholds: Thresholds | None = None,
        batch_size: int = 500,
        pairing_timeout: float = 30.0,
        max_pending: int = 100_000,
        on_pairing: Callable[[Pairing], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bus = bus if bus is not None else MemoryBus()
        self.store = store if store is not None else MemoryTwinStore()
        self.bus.ensure_topics(ALL_TOPICS)
        self._on_pairing = on_pairing
        self.ingestor = Ingestor(self.bus, clock=clock)
        live = LivePath(gateway or SimulatedGateway(seed), model=live_model, clock=clock)
        if live_thresholds is not None:
            live.policy = policy_for(live.model, live_thresholds)
        simulation = SimulationPath(StoreTwinClient(self.store), model=twin_model, clock=clock)
        if twin_thresholds is not None:
            simulation.policy = policy_for(simulation.model, twin_thresholds)
        self.engine = Engine(live, simulation)
        self.detector = DivergenceDetector(timeout=pairing_timeout, max_pending=max_pending)
        self.services = (
            EngineService(self.bus, self.engine, max_records=batch_size),
            DetectorService(
                self.bus,
                self.detector,
                on_pairing=self._record,
                clock=clock,
                max_records=2 * batch_size,
            ),
            TwinService(self.bus, self.store, max_records=batch_size),
        )
        self.decisions: dict[str, Counter[str]] = {"live": Counter(), "simulation": Counter()}
        self.alerts: Counter[str] = Counter()
        self.latency = LatencyRecorder()
        self.submitted = 0
        # The last ingestion stamp seen and its epoch seconds: a batch ingested together
        # shares one, so this spares a timestamp() per outcome.
        self._stamp: tuple[datetime | None, float] = (None, 0.0)

    def _record(self, pairing: Pairing) -> None:
        stamps = []
        for outcome in (pairing.live, pairing.simulation):
            if outcome is not None:
                # (``_value_``: the value, without the enum property's lookup.)
                self.decisions[outcome.path._value_][outcome.decision._value_] += 1
                at = outcome.timings.ingested_at
                if at is not None:
                    if at is not self._stamp[0]:
                        self._stamp = (at, at.timestamp())
                    stamps.append(self._stamp[1])
        if pairing.alert is not None:
            self.alerts[pairing.alert.kind.value] += 1
        if stamps:
            self.latency.add((pairing.resolved_at - min(stamps)) * 1000.0)
        if self._on_pairing is not None:
            self._on_pairing(pairing)

    @property
    def twin_service(self) -> TwinService:
        service = self.services[2]
        assert isinstance(service, TwinService)
        return service

    def submit(self, payload: Any) -> Accepted:
        """Validate a payment request and put it on the bus (see :class:`Ingestor`)."""
        accepted = self.ingestor.submit(payload)
        self.submitted += 1
        return accepted

    def submit_many(self, payloads: Iterable[Any]) -> list[Accepted]:
        """Validate payment requests and put them on the bus in one publish.

        The requests are stamped as ingested together, when the bus takes them.

        Raises:
            ValidationError: of the first invalid request, once the ones before it are on the
                bus; none after it is submitted.
            UnavailableError, BackendTimeoutError: the bus did not take them all (see
                :meth:`Ingestor.submit_transactions`); this comes first, before any
                ``ValidationError`` of a later request.
        """
        txns: list[Transaction] = []
        invalid: ValidationError | None = None
        for payload in payloads:
            try:
                txns.append(parse_transaction(payload))
            except ValidationError as exc:
                invalid = exc
                break
        accepted = self.ingestor.submit_transactions(txns) if txns else []
        self.submitted += len(accepted)
        if invalid is not None:
            raise invalid
        return accepted

    def step(self) -> int:
        """Let each service handle what is waiting for it, once. Returns messages handled."""
        return sum(service.poll_once(timeout=0.0) for service in self.services)

    def drain(self) -> None:
        """Step until no service has anything left to handle."""
        while self.step():
            pass

    def close(self) -> None:
        for service in self.services:
            service.close()
        self.engine.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
