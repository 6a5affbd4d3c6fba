"""The whole pipeline over a real Kafka broker, each service its own ``corepay serve`` process."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from corepay import (
    Decision,
    LivePath,
    MemoryTwinStore,
    SimulatedGateway,
    SimulationPath,
    StoreTwinClient,
    TrafficGenerator,
    parse_transaction,
)
from corepay.backends.kafka import KafkaBus
from corepay.bus import DIVERGENCE_ALERT, LIVE_OUTCOME, SIMULATION_OUTCOME
from corepay.services.detector import DETECTOR_CHANGELOG

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

BOOTSTRAP = os.environ.get("COREPAY_TEST_KAFKA_BOOTSTRAP", "").strip()
if not BOOTSTRAP:
    if os.environ.get("CI") == "true":
        pytest.fail(
            "CI=true, so the Kafka pipeline must be tested: set COREPAY_TEST_KAFKA_BOOTSTRAP"
        )
    pytest.skip(
        "needs a broker: scripts/kafka start, then set COREPAY_TEST_KAFKA_BOOTSTRAP",
        allow_module_level=True,
    )

BUS_URL = f"kafka://{BOOTSTRAP}?partitions=4&session_timeout_ms=6000&heartbeat_interval_ms=1000"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


API_KEY = f"distributed-{uuid.uuid4().hex}"
TWIN_TOKEN = f"twin-{uuid.uuid4().hex}"


def _get(url: str, body: bytes | None = None) -> tuple[int, dict]:
    """GET (or POST ``body``) with the key the URL's service wants."""
    token = TWIN_TOKEN if "/v1/twins" in url else API_KEY
    headers = {"Authorization": f"Bearer {token}"}
    if body:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class Services:
    """Starts ``corepay serve`` processes and stops them all at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.twin_port = _free_port()
        self.ingestion_port = _free_port()
        self.ops_ports: dict[str, int] = {}

    def start(self, name: str, service: str, *args: str) -> None:
        if service in ("engine", "detector"):  # health and metrics on a port of its own
            self.ops_ports[name] = _free_port()
            args = (*args, "--metrics-port", str(self.ops_ports[name]))
        env = {
            **os.environ,
            "COREPAY_BUS_URL": BUS_URL,
            "COREPAY_LOG_LEVEL": "INFO",
            "COREPAY_API_KEYS": API_KEY,
            "COREPAY_TWIN_TOKEN": TWIN_TOKEN,
        }
        with (self.logs / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "corepay", "serve", service, *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def twin_url(self) -> str:
        return f"http://127.0.0.1:{self.twin_port}"

    def start_pipeline(
        self,
        engines: tuple[str, ...] = ("engine",),
        detectors: tuple[str, ...] = ("detector",),
        ingestion: bool = True,
        store: str = "memory://",
    ) -> None:
        """The twin service first (the engine reads it), then the rest; wait for the APIs."""
        deadline = time.monotonic() + 120
        self.start("twin", "twin", "--port", str(self.twin_port), "--store", store)
        self.wait_http(self.twin_port, deadline)
        for name in engines:
            self.start(name, "engine", "--twin-url", self.twin_url)
        for name in detectors:
            self.start(name, "detector")
        if ingestion:
            self.start("ingestion", "ingestion", "--port", str(self.ingestion_port))
            self.wait_http(self.ingestion_port, deadline)
        # Engines answer once their models are loaded, so no traffic waits on training.
        for name in (*engines, *detectors):
            self.wait_http(self.ops_ports[name], deadline)

    def wait_http(self, port: int, deadline: float, probe: str = "/readyz") -> None:
        """Until the service on ``port`` is ready (its bus and store reachable, a twin
        service's twins rebuilt), or with ``probe="/healthz"`` only alive."""
        while time.monotonic() < deadline:
            try:
                if _get(f"http://127.0.0.1:{port}{probe}")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"nothing answered on port {port}: {self.tail()}")

    def tail(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.logs.iterdir()
        )

    def stop(self, name: str) -> int:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -9

    def kill(self, name: str) -> None:
        """kill -9: no goodbye, no commit."""
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait()

    def wait_for_twin(self, customer_id: str, deadline: float) -> None:
        """Until the customer's twin exists: the pipeline is at work."""
        while _get(f"{self.twin_url}/v1/twins/{customer_id}")[0] != 200:
            assert time.monotonic() < deadline, "no twin appeared"
            time.sleep(0.05)

    def stop_all(self) -> dict[str, int]:
        return {name: self.stop(name) for name in list(self.procs)}


@pytest.fixture
def services() -> Iterator[Services]:
    with tempfile.TemporaryDirectory(prefix="corepay-dist-") as logs:
        running = Services(Path(logs))
        try:
            yield running
        finally:
            running.stop_all()


def _read_topics(ids: set[str], deadline: float) -> dict[str, list[dict]]:
    """Both outcome topics, the alerts and the detector's changelog, from the start, for
    transactions in ``ids``: until each outcome topic has all of them and the detector has
    resolved all of them (it writes a changelog entry only once a pair's alert is on the bus,
    so after that no alert is still on its way), then two seconds more for any copy."""
    topics = (LIVE_OUTCOME, SIMULATION_OUTCOME, DIVERGENCE_ALERT, DETECTOR_CHANGELOG)
    found: dict[str, list[dict]] = {t: [] for t in topics}
    complete_at: float | None = None
    with KafkaBus([BOOTSTRAP]) as bus, bus.consumer(f"test-{uuid.uuid4().hex}", topics) as reader:
        while time.monotonic() < (complete_at or deadline):
            for message in reader.poll(500, 0.5):
                value = json.loads(message.value)
                # A changelog entry lists the transactions one batch resolved.
                for tid in value.get("transaction_ids", [value.get("transaction_id")]):
                    if tid in ids:
                        found[message.topic].append({**value, "transaction_id": tid})
            if complete_at is None and all(
                {v["transaction_id"] for v in found[t]} >= ids
                for t in (LIVE_OUTCOME, SIMULATION_OUTCOME, DETECTOR_CHANGELOG)
            ):
                complete_at = time.monotonic() + 2.0
    return found


def test_four_services_as_processes_over_kafka_decide_every_transaction_once(
    services: Services,
) -> None:
    services.start_pipeline()

    requests = _traffic(300, customers=30)
    _send(services.ingestion_port, requests)
    ids = {r["transaction_id"] for r in requests}

    found = _read_topics(ids, time.monotonic() + 120)
    live, simulation = found[LIVE_OUTCOME], found[SIMULATION_OUTCOME]
    assert sorted(o["transaction_id"] for o in live) == sorted(ids), services.tail()
    assert sorted(o["transaction_id"] for o in simulation) == sorted(ids)

    # Alerts exactly for the divergent transactions, one each.
    by_id = {o["transaction_id"]: o for o in live}
    divergent = {
        s["transaction_id"]
        for s in simulation
        if s["error"]
        or by_id[s["transaction_id"]]["error"]
        or s["decision"] != by_id[s["transaction_id"]]["decision"]
    }
    alerts = Counter(a["transaction_id"] for a in found[DIVERGENCE_ALERT])
    assert set(alerts) == divergent and set(alerts.values()) <= {1}

    # Twins, read from the twin service, count exactly each customer's live outcomes.
    per_customer = Counter(o["customer_id"] for o in live)
    time.sleep(1.0)
    query = "&".join(f"customer_id={c}" for c in per_customer)
    status, body = _get(f"http://127.0.0.1:{services.twin_port}/v1/twins?{query}")
    assert status == 200
    assert {t["customer_id"]: t["count"] for t in body["twins"]} == dict(per_customer)

    assert services.stop_all() == {"twin": 0, "engine": 0, "detector": 0, "ingestion": 0}


def _kcat(*args: str, data: bytes | None = None) -> str:
    kcat = shutil.which("kcat")
    if kcat is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true, so interoperability with kcat must be tested: install kcat")
        pytest.skip("kcat is not installed (scripts/test installs the Debian package kcat)")
    result = subprocess.run(
        [kcat, "-b", BOOTSTRAP, *args], input=data, capture_output=True, timeout=60, check=True
    )
    return result.stdout.decode()


def _diverging_payment() -> dict:
    paths = (LivePath(SimulatedGateway(0)), SimulationPath(StoreTwinClient(MemoryTwinStore())))
    run = uuid.uuid4().hex[:12]
    for i in range(5000):
        payment = {
            "transaction_id": f"tx-kcat-{run}-{i}",
            "customer_id": f"cust-kcat-{run}-{i}",
            "amount": "900.00",
            "currency": "EUR",
            "merchant_id": "m-de-electronics-1",
            "merchant_category": "5732",
            "country": "DE",
            "channel": "pos",
            "timestamp": "2026-11-24T15:10:00+01:00",
        }
        txn = parse_transaction(payment)
        live, simulation = (p.decide_batch([txn], [None])[0] for p in paths)
        if (live.decision, simulation.decision) == (Decision.DECLINE, Decision.APPROVE):
            return payment
    raise AssertionError("no payment the gateway declines and the models approve")


def test_a_kafka_client_corepay_did_not_write_can_feed_it_and_read_its_verdicts(
    services: Services,
) -> None:
    deadline = time.monotonic() + 120
    services.start_pipeline(ingestion=False)

    # A payment the two paths decide differently: the one the issuer declines at the gateway
    # while both models see no risk in it, found by asking the same paths the engine runs
    # (default models, gateway seed 0) in this process.
    payment = _diverging_payment()
    tid = payment["transaction_id"]
    line = f"{payment['customer_id']}|{json.dumps(payment)}\n".encode()
    _kcat("-P", "-t", "raw_transactions", "-K", "|", data=line)

    def read(topic: str) -> list[dict]:
        out = _kcat("-C", "-t", topic, "-o", "beginning", "-e", "-q", "-f", "%k\t%s\n")
        found = []
        for row in out.splitlines():
            key, _, value = row.partition("\t")
            message = json.loads(value)
            if message["transaction_id"] == tid:
                assert key == payment["customer_id"]
                found.append(message)
        return found

    while time.monotonic() < deadline and not read("divergence_alert"):
        time.sleep(1.0)
    [live], [simulation] = read("live_outcome"), read("simulation_outcome")
    assert (live["decision"], simulation["decision"]) == ("DECLINE", "APPROVE"), services.tail()
    assert "GATEWAY_DECLINED" in live["reasons"]
    [alert] = read("divergence_alert")
    assert alert["kind"] == "DECISION_MISMATCH"
    assert alert["live"]["transaction"]["amount"] == payment["amount"]


def _traffic(count: int, customers: int) -> list[dict]:
    """Fresh payment requests: a new seed, and customers no other test run has (the broker,
    and a Couchbase bucket, outlive a test)."""
    run = uuid.uuid4().hex[:8]
    generator = TrafficGenerator(customers=customers, seed=int(run, 16) % 1_000_000)
    return [{**r, "customer_id": f"{run}-{r['customer_id']}"} for r in generator.requests(count)]


def _send(port: int, requests: list[dict], per_second: float | None = None) -> None:
    """POST each request, one at a time; at most ``per_second`` of them a second."""
    url = f"http://127.0.0.1:{port}/v1/transactions"
    started = time.monotonic()
    for i, request in enumerate(requests):
        if per_second is not None:
            time.sleep(max(started + i / per_second - time.monotonic(), 0.0))
        status, body = _get(url, json.dumps(request).encode())
        assert status == 202, body


class _Stream:
    """The crash tests' payments, POSTed one by one from a thread at 100 a second, the last 50
    held back until :meth:`finish`: the stream is still going whenever a test kills a service,
    however fast the pipeline takes it, and goes on after the restart."""

    rate = 100.0
    held_back = 50

    def __init__(self, port: int, requests: list[dict]) -> None:
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(port, requests))
        self._thread.start()

    def _run(self, port: int, requests: list[dict]) -> None:
        cut = len(requests) - self.held_back
        _send(port, requests[:cut], self.rate)
        self._release.wait(timeout=120)
        _send(port, requests[cut:], self.rate)

    @property
    def going(self) -> bool:
        return self._thread.is_alive()

    def finish(self) -> None:
        self._release.set()
        self._thread.join(timeout=120)


def _check_invariants(services: Services, ids: set[str]) -> dict[str, list[dict]]:
    """Every transaction decided on both paths (copies allowed: delivery is at least once),
    one alert per divergent transaction, and twins that count each live outcome once."""
    found = _read_topics(ids, time.monotonic() + 120)
    live: dict[str, dict] = {}
    for o in found[LIVE_OUTCOME]:
        live.setdefault(o["transaction_id"], o)
    simulation: dict[str, dict] = {}
    for o in found[SIMULATION_OUTCOME]:
        simulation.setdefault(o["transaction_id"], o)
    assert set(live) == set(simulation) == ids, services.tail()
    divergent = {
        t
        for t in ids
        if live[t]["error"]
        or simulation[t]["error"]
        or live[t]["decision"] != simulation[t]["decision"]
    }
    alerts = Counter(a["transaction_id"] for a in found[DIVERGENCE_ALERT])
    assert set(alerts) == divergent
    assert max(alerts.values(), default=1) == 1, "an alert was published twice"
    per_customer = Counter(o["customer_id"] for o in live.values())
    query = "&".join(f"customer_id={c}" for c in per_customer)
    twins: dict[str, int] = {}
    until = time.monotonic() + 30
    while time.monotonic() < until and twins != dict(per_customer):
        _, body = _get(f"http://127.0.0.1:{services.twin_port}/v1/twins?{query}")
        twins = {t["customer_id"]: t["count"] for t in body["twins"]}
        time.sleep(0.5)
    assert twins == dict(per_customer)
    return found


def _handled(services: Services, name: str) -> int:
    log = (services.logs / f"{name}.log").read_text()
    return sum(int(n) for n in re.findall(r"leaving the group, (\d+) messages handled", log))


def test_two_engines_and_two_detectors_share_the_work_and_survive_one_leaving(
    services: Services,
) -> None:
    services.start_pipeline(("engine-a", "engine-b"), ("detector-a", "detector-b"))

    requests = _traffic(600, customers=40)
    _send(services.ingestion_port, requests[:300])
    _check_invariants(services, {r["transaction_id"] for r in requests[:300]})

    # One engine and one detector leave; the others take over their partitions.
    assert services.stop("engine-a") == 0 and services.stop("detector-a") == 0
    _send(services.ingestion_port, requests[300:])
    _check_invariants(services, {r["transaction_id"] for r in requests})
    assert services.stop("engine-b") == 0 and services.stop("detector-b") == 0
    # Both instances of each did part of the work.
    assert _handled(services, "engine-a") > 0 and _handled(services, "engine-b") > 0
    assert _handled(services, "detector-a") > 0 and _handled(services, "detector-b") > 0


def test_an_engine_killed_mid_stream_loses_nothing_and_double_counts_nothing(
    services: Services,
) -> None:
    deadline = time.monotonic() + 120
    services.start_pipeline()

    requests = _traffic(600, customers=30)
    stream = _Stream(services.ingestion_port, requests)
    services.wait_for_twin(requests[0]["customer_id"], deadline)  # the engine is at work...
    assert stream.going  # ...and transactions are still arriving
    services.kill("engine")
    services.start("engine-restarted", "engine", "--twin-url", services.twin_url)
    stream.finish()
    _check_invariants(services, {r["transaction_id"] for r in requests})


def test_engine_twin_and_detector_killed_in_turn_mid_stream_lose_and_repeat_nothing(
    services: Services,
) -> None:
    """kill -9 the engine, then the twin service, then the detector, each restarted, while
    payments keep arriving: every transaction gets both outcomes, no twin counts one twice,
    and every divergent transaction gets exactly one alert."""
    deadline = time.monotonic() + 120
    services.start_pipeline()
    requests = _traffic(1500, customers=30)
    stream = _Stream(services.ingestion_port, requests)
    services.wait_for_twin(requests[0]["customer_id"], deadline)
    restarts = {
        "engine": ("engine", "--twin-url", services.twin_url),
        "twin": ("twin", "--port", str(services.twin_port), "--store", "memory://"),
        "detector": ("detector",),
    }
    for name, args in restarts.items():
        assert stream.going  # mid-stream
        services.kill(name)
        services.start(f"{name}-2", *args)
        if name == "twin":  # up again; it rebuilds its twins while the stream goes on
            services.wait_http(services.twin_port, deadline, probe="/healthz")
        time.sleep(1.0)
    stream.finish()
    _check_invariants(services, {r["transaction_id"] for r in requests})


def _twin_store(kind: str) -> str:
    if kind == "memory":
        return "memory://"
    store = os.environ.get("COREPAY_TEST_COUCHBASE_URL", "").strip()
    if not store:
        pytest.skip(
            "couchbase:// tests need a server: start a Couchbase cluster and set "
            "COREPAY_TEST_COUCHBASE_URL (couchbase://user:password@host/bucket)"
        )
    return store


@pytest.mark.parametrize(
    "store_kind",
    ["memory", pytest.param("couchbase", marks=pytest.mark.couchbase)],
)
def test_a_twin_service_killed_mid_stream_loses_nothing_and_double_counts_nothing(
    services: Services, store_kind: str
) -> None:
    """Couchbase keeps the twins through the crash; the memory store loses them with the
    process, and the restarted service rebuilds them from live_outcome."""
    store = _twin_store(store_kind)
    deadline = time.monotonic() + 120
    services.start_pipeline(store=store)
    requests = _traffic(600, customers=30)
    stream = _Stream(services.ingestion_port, requests)
    services.wait_for_twin(requests[0]["customer_id"], deadline)
    assert stream.going
    services.kill("twin")
    services.start("twin-2", "twin", "--port", str(services.twin_port), "--store", store)
    services.wait_http(services.twin_port, deadline, probe="/healthz")
    stream.finish()
    _check_invariants(services, {r["transaction_id"] for r in requests})
