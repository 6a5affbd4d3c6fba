"""The engine: both paths always answer, and the simulation path reads twins over HTTP too."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import attrs
import orjson
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
from corepay.divergence import DivergenceDetector, classify
from corepay.errors import BackendTimeoutError, UnavailableError
from corepay.http_gateway import HttpGateway
from corepay.models import AlertKind, Outcome, Path, Transaction, Twin
from corepay.paths import DecisionPath
from corepay.services.twin import update_twin
from corepay.services.twin_api import create_twin_app
from corepay.twin import live_decision
from corepay.twin_client import TwinClient
from corepay.wire import TwinDecoder, encode_twins


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


class _Where(DecisionPath):
    """A path that notes the thread it decides on, and waits on the network or not."""

    model_version = "where-1"

    def __init__(self, path: Path, blocking: bool, seen: dict[Path, str]) -> None:
        self.path, self.blocking, self.seen = path, blocking, seen

    def decide_batch(
        self, txns: Sequence[Transaction], ingested: Sequence[datetime | None]
    ) -> list[Outcome]:
        self.seen[self.path] = threading.current_thread().name
        return self.failed(txns, ingested, "NOT_DECIDED")


@pytest.mark.parametrize(
    ("live_blocks", "simulation_blocks", "live_on_its_own_thread"),
    [(False, False, False), (True, False, True), (False, True, True), (True, True, True)],
)
def test_the_live_path_gets_a_thread_of_its_own_only_when_a_path_waits_on_the_network(
    live_blocks: bool, simulation_blocks: bool, live_on_its_own_thread: bool
) -> None:
    seen: dict[Path, str] = {}
    live = _Where(Path.LIVE, live_blocks, seen)
    simulation = _Where(Path.SIMULATION, simulation_blocks, seen)
    with Engine(live, simulation) as engine:
        engine.decide(_txns(3))

    here = threading.current_thread().name
    assert seen[Path.SIMULATION] == here
    assert (seen[Path.LIVE] != here) == live_on_its_own_thread
    if live_on_its_own_thread:
        assert seen[Path.LIVE].startswith("corepay-live")


def test_paths_wait_on_the_network_when_their_gateway_or_twin_reads_do() -> None:
    memory = StoreTwinClient(MemoryTwinStore())
    assert not LivePath(SimulatedGateway(0)).blocking
    assert LivePath(SimulatedGateway(0, realtime=True)).blocking
    assert LivePath(HttpGateway("http://127.0.0.1:9")).blocking
    assert not SimulationPath(memory).blocking
    assert SimulationPath(HttpTwinClient("http://127.0.0.1:9")).blocking
    assert SimulationPath(_DownTwins(UnavailableError("down"))).blocking  # assumed to wait


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

    # Payments the twins already show (read again, as after a crash) and new ones.
    again = txns[250:]
    over_http = SimulationPath(_QueryOnly(url)).decide_batch(again, [None] * 150)
    direct = SimulationPath(StoreTwinClient(store)).decide_batch(again, [None] * 150)
    assert _seen(over_http) == _seen(direct)
    assert all(o.twin_version and o.twin_version > 0 for o in over_http)
    assert not any(o.twin_lag for o in over_http[:50])
    assert any(o.twin_lag for o in over_http[50:])  # 100 new payments of 8 customers run ahead


class _CutTwins(TwinClient):
    """The twin service's answer to ``POST /v1/twins:query``, without the HTTP."""

    def __init__(self, store: MemoryTwinStore) -> None:
        self.store = store
        self.decoder = TwinDecoder()

    def get_many(self, customer_ids: Sequence[str]) -> dict[str, Twin]:
        raise AssertionError("whole twins were read")

    def get_many_checking(self, wanted: Mapping[str, Collection[str]]) -> dict[str, Twin]:
        body = encode_twins(self.store.get_many(list(wanted)).values(), wanted)
        return {t.customer_id: t for t in map(self.decoder.decode, orjson.loads(body)["twins"])}


@pytest.mark.parametrize("seed", range(12))
def test_twins_cut_to_the_ids_asked_give_the_same_outcomes_as_whole_twins(seed: int) -> None:
    # Batches read again, a payment twice in a batch, ids shared by customers and reused,
    # customers forgotten, and twins that apply a random few of the decided payments, late
    # and out of order.
    rng = random.Random(seed)
    customers = ["c-a", "c-b", "c-c", "c-d", "c-e"]
    txns = [
        attrs.evolve(t, transaction_id=f"t-{rng.randrange(150)}", customer_id=rng.choice(customers))
        for t in _txns(400, customers=4)
    ]
    store = MemoryTwinStore()
    whole = SimulationPath(StoreTwinClient(store), remember_customers=rng.choice([2, 3, 20_000]))
    cut = SimulationPath(_CutTwins(store), remember_customers=whole.remember_customers)
    decided: list[Transaction] = []
    batches: list[list[Transaction]] = []
    while len(decided) < len(txns):
        if batches and rng.random() < 0.2:
            batch = list(rng.choice(batches))
        else:
            batch = txns[len(decided) : len(decided) + rng.randint(1, 40)]
            decided.extend(batch)
            if rng.random() < 0.3:
                batch.append(rng.choice(batch))
        batches.append(batch)
        assert _seen(cut.decide_batch(batch, [None] * len(batch))) == _seen(
            whole.decide_batch(batch, [None] * len(batch))
        )
        for t in rng.sample(decided, k=min(len(decided), rng.randint(0, 25))):
            update_twin(store, t.customer_id, [_approved(t)])
    assert any(o.twin_lag for o in whole.decide_batch(txns[-40:], [None] * 40))


def test_an_engine_reads_whole_twins_from_a_twin_service_without_the_query() -> None:
    store = MemoryTwinStore()
    app = create_twin_app(store)
    query = app.view_functions["query_twins"]
    asked: list[str] = []

    def old_twin_service() -> tuple[str, int]:
        asked.append("query")
        return "not found", 404  # as before the query existed

    app.view_functions["query_twins"] = old_twin_service
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        txns = _txns(60, customers=1)
        customer = txns[0].customer_id
        update_twin(store, customer, [_approved(t) for t in txns[:10]])
        client = HttpTwinClient(f"http://127.0.0.1:{server.server_port}")
        read = client.get_many_checking({customer: ["x"], "cust-nobody": []})
        assert read == {customer: store.get(customer)}  # the whole twin, applied and all
        over_http = SimulationPath(client).decide_batch(txns[5:], [None] * 55)
        direct = SimulationPath(StoreTwinClient(store)).decide_batch(txns[5:], [None] * 55)
        assert _seen(over_http) == _seen(direct)
        assert asked == ["query"]  # asked once, then whole twins for a while...

        app.view_functions["query_twins"] = query  # ...until the twin service is upgraded
        client._whole_until = 0.0
        read = client.get_many_checking({customer: [txns[0].transaction_id, "x"]})
        assert list(read[customer].applied) == [txns[0].transaction_id]
    finally:
        server.shutdown()
        thread.join()


def _seen(outcomes: Sequence[Outcome]) -> list[tuple[object, ...]]:
    return [
        (o.transaction_id, o.decision, o.score, o.twin_version, o.twin_lag, o.fresh_decision)
        for o in outcomes
    ]


class _QueryOnly(HttpTwinClient):
    def get_many(self, customer_ids: Sequence[str]) -> dict[str, Twin]:
        raise AssertionError("whole twins were read")


def test_a_long_lived_customers_twin_is_read_without_its_applied_ids_and_judged_the_same(
    twin_server: tuple[str, MemoryTwinStore],
) -> None:
    url, store = twin_server
    txns = _txns(1_106, customers=1)
    past, new = txns[:1_100], txns[1_100:]
    update_twin(store, past[0].customer_id, [_approved(t) for t in past])
    twin = store.get(past[0].customer_id)
    assert twin is not None and len(twin.applied) == 1_000

    client = _QueryOnly(url)
    asked = [past[-1].transaction_id, past[0].transaction_id, new[0].transaction_id]
    read = client.get_many_checking({twin.customer_id: asked, "cust-nobody": asked})
    # Of what was asked, only what the twin still lists comes back: the first payment left
    # its last 1,000 long ago, and the new one was never applied.
    assert list(read[twin.customer_id].applied) == [past[-1].transaction_id]
    assert attrs.evolve(read[twin.customer_id], applied=twin.applied) == twin
    assert read.keys() == {twin.customer_id}

    over_http, direct = SimulationPath(client), SimulationPath(StoreTwinClient(store))
    # A batch read again after a crash (the twin has it all) and the payments after it,
    # the last two a burst that the twin service has not applied yet...
    steps = [past[-100:], new[:3]]
    for step in steps:
        assert _seen(over_http.decide_batch(step, [None] * len(step))) == _seen(
            direct.decide_batch(step, [None] * len(step))
        )
    # ...then the twin service applies the first of the burst: the next payments' twin
    # lacks only the other two.
    update_twin(store, twin.customer_id, [_approved(new[0])])
    judged = over_http.decide_batch(new[3:], [None] * 3)
    assert _seen(judged) == _seen(direct.decide_batch(new[3:], [None] * 3))
    assert [o.twin_lag for o in judged] == [2, 3, 4]


def test_http_twin_client_reports_an_unreachable_service_as_unavailable() -> None:
    client = HttpTwinClient("http://127.0.0.1:9", timeout=1.0)
    with pytest.raises(UnavailableError, match="unreachable"):
        client.get_many(["cust-1"])


def _same_customer(n: int) -> list[Transaction]:
    txns = _txns(400, customers=3)
    customer = txns[0].customer_id
    return [t for t in txns if t.customer_id == customer][:n]


def test_a_fresh_decision_is_the_decision_on_the_twin_with_the_missing_payments_applied() -> None:
    from corepay.features import feature_matrix
    from corepay.twin import project

    store = MemoryTwinStore()
    path = SimulationPath(StoreTwinClient(store))
    txns = _txns(400, customers=3)
    update_twin(
        store,
        txns[0].customer_id,
        [_approved(t) for t in txns[:30] if t.customer_id == txns[0].customer_id],
    )
    batch = txns[30:90]  # bursts of three customers, one with a twin

    outcomes = path.decide_batch(batch, [None] * len(batch))

    def alone(txn: Transaction, twin: Twin | None) -> Decision:
        matrix = feature_matrix([txn], [twin], path.model.features)
        return path.policy.decide(path.model.score(matrix), matrix, path.model.features)[0][0]

    assert sum(o.twin_lag > 0 for o in outcomes) > 40
    for i, (txn, outcome) in enumerate(zip(batch, outcomes, strict=True)):
        twin = store.get(txn.customer_id)
        assert outcome.decision is alone(txn, twin)
        earlier = [t for t in batch[:i] if t.customer_id == txn.customer_id]
        earlier = earlier[-path.pending_per_customer :]  # (what it remembers of a burst)
        assert outcome.twin_lag == len(earlier)
        expected = alone(txn, project(twin, earlier)) if earlier else None
        assert outcome.fresh_decision is expected


def test_the_simulation_path_stamps_how_far_behind_the_twin_it_read_was() -> None:
    store = MemoryTwinStore()
    path = SimulationPath(StoreTwinClient(store))
    first, second, third, fourth = _same_customer(4)
    # A burst in one batch: the twin (none yet) shows none of the earlier payments.
    outcomes = path.decide_batch([first, second, third], [None] * 3)
    assert [o.twin_lag for o in outcomes] == [0, 1, 2]
    assert {o.twin_version for o in outcomes} == {0}
    # Only a twin that was behind gets a decision on the fresher twin.
    assert outcomes[0].fresh_decision is None
    assert all(o.fresh_decision is not None for o in outcomes[1:])
    # The twin service applies the first two; the third, redelivered, and the fourth see a
    # twin one payment behind (the third was decided but is not in the twin yet).
    live = [_approved(t) for t in (first, second)]
    update_twin(store, first.customer_id, live)
    again = path.decide_batch([third, fourth], [None] * 2)
    assert [o.twin_lag for o in again] == [0, 1]
    assert {o.twin_version for o in again} == {1}
    # Once the twin has caught up, nothing is missing.
    update_twin(store, first.customer_id, [_approved(third), _approved(fourth)])
    caught_up = path.decide_batch([fourth], [None])
    assert caught_up[0].twin_lag == 0
    # A payment dated after the rest, or at the same instant, counts like any other.
    fifth, sixth = (
        attrs.evolve(fourth, transaction_id=f"{fourth.transaction_id}-{n}", timestamp=at)
        for n, at in (("later", fourth.timestamp.replace(year=2030)), ("same", fourth.timestamp))
    )
    out_of_order = path.decide_batch([fifth, sixth], [None] * 2)
    assert [o.twin_lag for o in out_of_order] == [0, 1]


def _approved(txn: Transaction) -> Outcome:
    return live_decision(txn, Decision.APPROVE, "test")


def test_a_disagreement_on_a_stale_twin_is_told_apart() -> None:
    txn = _same_customer(1)[0]
    live = _approved(txn)
    fresh = attrs.evolve(live, path=Path.SIMULATION, decision=Decision.DECLINE, twin_lag=0)
    # Behind by two payments, and with them applied it would have approved, as live did.
    stale = attrs.evolve(fresh, twin_lag=2, twin_version=7, fresh_decision=Decision.APPROVE)
    assert classify(live, fresh) is AlertKind.DECISION_MISMATCH
    assert classify(live, stale) is AlertKind.STALE_TWIN
    assert classify(live, attrs.evolve(stale, decision=Decision.APPROVE)) is None
    assert classify(attrs.evolve(live, error="GATEWAY_TIMEOUT"), stale) is AlertKind.PATH_ERROR
    # Behind, but a current twin would have disagreed all the same: not the staleness.
    behind = attrs.evolve(stale, fresh_decision=Decision.DECLINE)
    assert classify(live, behind) is AlertKind.DECISION_MISMATCH
    detector = DivergenceDetector()
    alerts = [p.alert for p in [*detector.observe(live, 0.0), *detector.observe(stale, 0.0)]]
    assert alerts[0] is not None and alerts[0].kind is AlertKind.STALE_TWIN
    assert "twin version 7 missed 2 earlier payments" in alerts[0].detail


class _SlowGateway(BaseHTTPRequestHandler):
    """A gateway that never answers some payments (ids ending in an even digit) in time: it
    holds them until ``release`` is set, after the test."""

    release = threading.Event()
    lock = threading.Lock()
    in_flight = 0
    most_in_flight = 0

    def do_POST(self) -> None:
        cls = type(self)
        with cls.lock:
            cls.in_flight += 1
            cls.most_in_flight = max(cls.most_in_flight, cls.in_flight)
        try:
            self._answer()
        finally:
            with cls.lock:
                cls.in_flight -= 1

    def _answer(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body["transaction_id"][-1] in "02468":
            self.release.wait(30)
        payload = json.dumps({"approved": True, "code": "APPROVED"}).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass  # the client gave up waiting: that is the point

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.timeout(30)
def test_gateway_timeouts_become_live_outcomes_with_a_reason_never_lost() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowGateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    gateway = HttpGateway(
        f"http://127.0.0.1:{server.server_port}", timeout=1.0, retries=0, failure_threshold=1000
    )
    txns = _txns(60)
    try:
        with Engine(
            LivePath(gateway, gateway_workers=8), SimulationPath(_DownTwins(UnavailableError("x")))
        ) as engine:
            live, _ = engine.decide(txns)
    finally:
        _SlowGateway.release.set()
        gateway.close()
        server.shutdown()
        thread.join(5)
        server.server_close()
    assert [o.transaction_id for o in live] == [t.transaction_id for t in txns]
    slow = {t.transaction_id for t in txns if t.transaction_id[-1] in "02468"}
    for o in live:
        if o.transaction_id in slow and o.reasons[:1] != ("GATEWAY_TIMEOUT",):
            # Only payments the policy sent to the gateway can time out.
            assert o.decision is not Decision.APPROVE and "GATEWAY_TIMEOUT" not in o.reasons
        elif o.transaction_id in slow:
            assert (o.decision, o.error) == (Decision.REVIEW, "GATEWAY_TIMEOUT")
        else:
            assert o.error is None
    assert sum(o.error == "GATEWAY_TIMEOUT" for o in live) >= len(slow) // 2
    # The payments of a batch are authorized concurrently, not one after the other.
    assert _SlowGateway.most_in_flight > 1
