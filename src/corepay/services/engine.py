"""The engine service: ``raw_transactions`` in, ``live_outcome`` and ``simulation_outcome`` out."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from corepay.bus import LIVE_OUTCOME, RAW_TRANSACTIONS, SIMULATION_OUTCOME, Bus, Message, Record
from corepay.engine import Engine
from corepay.errors import DecodeError
from corepay.gateway import open_gateway
from corepay.ingest import INGESTED_AT_HEADER
from corepay.models import Transaction
from corepay.paths import LivePath, SimulationPath
from corepay.scoring import DecisionPolicy
from corepay.services.runner import ConsumerService, Handled, dead_letter
from corepay.settings import Settings
from corepay.twin_client import TwinClient
from corepay.wire import encode_outcomes, transaction_of

__all__ = ["EngineService", "build_engine"]


def _ingested_at(stamp: str | None) -> datetime | None:
    try:
        return None if stamp is None else datetime.fromisoformat(stamp)
    except ValueError:
        return None


class EngineService(ConsumerService):
    """Decides each transaction on both paths and publishes both outcomes.

    A value that is not a valid transaction (any Kafka client can produce to
    ``raw_transactions``) goes to ``raw_transactions.dlq`` with the reason.
    """

    group = "corepay-engine"
    topics = (RAW_TRANSACTIONS,)
    service = "engine"

    def __init__(self, bus: Bus, engine: Engine, **kwargs: object) -> None:
        super().__init__(bus, **kwargs)  # type: ignore[arg-type]
        self.engine = engine

    def handle(self, messages: Sequence[Message]) -> Handled:
        records: list[Record] = []
        txns: list[Transaction] = []
        stamps: list[datetime | None] = []
        read: dict[str | None, datetime | None] = {}  # a batch ingested together shares one
        for message in messages:
            try:
                txns.append(transaction_of(message))
            except DecodeError as exc:
                records.append(dead_letter(message, str(exc)))
                continue
            stamp = message.headers.get(INGESTED_AT_HEADER)
            if stamp not in read:
                read[stamp] = _ingested_at(stamp)
            stamps.append(read[stamp])
        live, simulation = self.engine.decide(txns, stamps)
        outcomes = [*live, *simulation]
        topics = [LIVE_OUTCOME] * len(live) + [SIMULATION_OUTCOME] * len(simulation)
        values = encode_outcomes(outcomes, in_process=self.bus.in_process)
        for topic, outcome, value in zip(topics, outcomes, values, strict=True):
            records.append(Record(topic, outcome.customer_id, value))
        return Handled(records)


def build_engine(settings: Settings, twins: TwinClient) -> Engine:
    """The engine a deployment's settings describe: gateway, models and thresholds.

    Raises:
        ConfigurationError: a model file or the gateway URL is unusable (named in the message).
    """
    from corepay.training import model_for

    gateway = open_gateway(settings.gateway_url or f"simulated://?seed={settings.gateway_seed}")
    live_model = model_for("live", settings.live_model)
    twin_model = model_for("simulation", settings.twin_model)
    live = LivePath(
        gateway,
        model=live_model,
        policy=DecisionPolicy(settings.thresholds("live", live_model.thresholds)),
    )
    simulation = SimulationPath(
        twins,
        model=twin_model,
        policy=DecisionPolicy(settings.thresholds("twin", twin_model.thresholds)),
    )
    return Engine(live, simulation)
