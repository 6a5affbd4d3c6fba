"""The engine: both paths always answer, and the simulation path reads twins over HTTP too."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from datetime import datetime

import pytest
from werkzeug.serving import make_server

from corepay import (
    Decision,
    Engine,
    HttpTwinClient,
    LivePath,
    MemoryTwinStore,
    SimulatedGateway,
    SimulationPath,
    StoreTwinClient,
    TrafficGenerator,
    parse_transaction,
)
from corepay.errors import BackendTimeoutError, UnavailableError
from corepay.models import Outcome, Path, Transaction, Twin
from corepay.paths import DecisionPath
from corepay.services.twin import update_twin
from corepay.services.twin_api import create_twin_app
from corepay.twin_client import TwinClient


def _txns(n: int, customers: int = 5) -> list[Transaction]:
    return [parse_transaction(r) for r in TrafficGenerator(customers=customers).requests(n)]


class _BrokenPath(DecisionPath):
    path = Path.LIVE
    model_version = "broken-1"

    def decide_batch(
        self, txns: Sequence[Transaction], ingested: Sequence[datetime | None]
    ) -> list[Outcome]:
        raise RuntimeError("model file is corrupt")


def test_a_path_that_crashes_still_yields_an_outcome_per_transaction_with_an_error() -> None:
    txns = _txns(20)
    engine = Engine(_BrokenPath(), SimulationPath(StoreTwinClient(MemoryTwinStore())))
    with engine:
        live, simulation = engine.decide(txns)
    assert [o.transaction_id for o in live] == [t.transaction_id for t in txns]
    assert {o.error for o in live} == {"LIVE_PATH_ERROR"}
    assert {o.decision for o in live} == {Decision.REVIEW}
    assert all(o.error is None for o in simulation)
    assert [o.transaction_id for o in simulation] == [t.transaction_id for t in txns]


class _DownTwins(TwinClient):
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def get_many(self, customer_ids: Sequence[str]) -> dict[str, Twin]:
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (UnavailableError("refused"), "TWIN_UNAVAILABLE"),
        (BackendTimeoutError("slow"), "TWIN_TIMEOUT"),
    ],
)
def test_twins_out_of_reach_give_simulation_errors_and_leave_the_live_path_alone(
    exc: Exception, code: str
) -> None:
    txns = _txns(30)
    with Engine(LivePath(SimulatedGateway(0)), SimulationPath(_DownTwins(exc))) as engine:
        live, simulation = engine.decide(txns)
    assert {o.error for o in simulation} == {code}
    assert len(live) == 30 and all(
        o.error in (None, "GATEWAY_TIMEOUT", "GATEWAY_UNAVAILABLE") for o in live
    )


def test_the_same_seed_gives_the_same_live_decisions() -> None:
    txns = _txns(300)
    runs = []
    for _ in range(2):
        with Engine(
            LivePath(SimulatedGateway(11)), SimulationPath(_DownTwins(UnavailableError("x")))
        ) as engine:
            live, _ = engine.decide(txns)
        runs.append([(o.decision, o.reasons, o.score) for o in live])
    assert runs[0] == runs[1]
    assert len({d for d, _, _ in runs[0]}) >= 2  # not a constant


@pytest.fixture
def twin_server() -> Iterator[tuple[str, MemoryTwinStore]]:
    store = MemoryTwinStore()
    server = make_server("127.0.0.1", 0, create_twin_app(store), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", store
    finally:
        server.shutdown()
        thread.join()


def test_the_simulation_path_reads_twins_through_the_twin_service(
    twin_server: tuple[str, MemoryTwinStore],
) -> None:
    url, store = twin_server
    txns = _txns(400, customers=8)
    with Engine(LivePath(SimulatedGateway(0)), SimulationPath(StoreTwinClient(store))) as engine:
        live, _ = engine.decide(txns[:300])
    for customer in {o.customer_id for o in live}:
        update_twin(store, customer, [o for o in live if o.customer_id == customer])

    over_http = SimulationPath(HttpTwinClient(url)).decide_batch(txns[300:], [None] * 100)
    direct = SimulationPath(StoreTwinClient(store)).decide_batch(txns[300:], [None] * 100)
    assert [(o.decision, o.score, o.twin_version) for o in over_http] == [
        (o.decision, o.score, o.twin_version) for o in direct
    ]
    assert all(o.twin_version and o.twin_version > 0 for o in over_http)


def test_http_twin_client_reports_an_unreachable_service_as_unavailable() -> None:
    client = HttpTwinClient("http://127.0.0.1:9", timeout=1.0)
    with pytest.raises(UnavailableError, match="unreachable"):
        client.get_many(["cust-1"])
