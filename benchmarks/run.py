"""CorePay benchmarks: throughput, latency and memory, each against a baseline in the same run.

    python -m benchmarks.run [--quick] [--repeat N] [--kafka HOST:PORT] [--json FILE]

Prints a table and writes it as JSON (``benchmarks/results.json`` unless ``--json``), ending with
whether each of the targets for a 2-core machine is met. Parts:

1. ``in_process``: generated payments through the whole pipeline in one process on the memory
   backends (100,000 by default): transactions per second, and latency from the ingestion
   stamp to the detector's verdict (p50, p99), for batches of 500, 50 and 25. Each is run
   ``--repeat`` times (3), in turns with the other batch sizes and the bare loop, and reported
   as the median of its runs with their range: one run on a shared machine is one draw.
2. ``baseline_python``: the same per-transaction work in a bare Python loop, no framework:
   parse and check the request, features, both models scored per batch with numpy, the
   simulated gateway, a dict twin per customer, the comparison. CorePay's overhead is the
   ratio of the two rates.
3. ``ingestion_api``: requests per second against ``corepay serve ingestion`` (gunicorn, memory
   bus), one transaction per request and 100 per batch request, from a pool of client threads.
4. ``memory``: bytes per twin (in memory and as a stored document) and per transaction the
   detector holds while waiting for its pair.
5. ``twin_reads``: the engine reading 100 twins from the twin service over HTTP, for
   customers of 20 and of 1,200 payments: whole twins against only the ids it asks about.
6. With ``--kafka``: ``baseline_kafka`` (a bare kafka-python produce-then-consume loop with
   the same message sizes), ``kafka_pipeline`` (the four services as processes over the
   broker at fixed offered rates, see ``benchmarks/kafka_pipeline.py``) and
   ``baseline_kafka_relay`` (bare kafka-python relays in the pipeline's shape, at the same
   rates, see ``benchmarks/kafka_relay.py``): CorePay's Kafka floor on this machine.

Timings on a shared machine are noisy: compare figures from the same run.
"""

from __future__ import annotations

import argparse
import functools
import gc
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from corepay import MemoryBus, MemoryTwinStore, Pipeline, TrafficGenerator
from corepay.divergence import DivergenceDetector
from corepay.features import FEATURES, feature_matrix
from corepay.gateway import SimulatedGateway
from corepay.heap import fewer_full_collections
from corepay.models import Decision, Outcome, Timings
from corepay.models import Path as OutcomePath
from corepay.scoring import DecisionPolicy
from corepay.training import default_model
from corepay.twin import apply_outcome, live_decision
from corepay.wire import (
    decode_outcome,
    encode_outcome,
    encode_twin,
    encode_twins,
    parse_transaction,
)

HERE = Path(__file__).resolve().parent


def _requests(count: int, customers: int, seed: int = 0) -> list[dict[str, Any]]:
    return list(TrafficGenerator(customers=customers, seed=seed).requests(count))


# --- 1. in process -----------------------------------------------------------------------------


def in_process(count: int, customers: int, batch_size: int) -> dict[str, Any]:
    requests = _requests(count, customers)
    live, twin = default_model("live"), default_model("simulation")
    gc.collect()
    # The collector's settings of `corepay demo` (corepay.heap), as a user's run gets them.
    with (
        fewer_full_collections(),
        Pipeline(
            MemoryBus(), MemoryTwinStore(), batch_size=batch_size, live_model=live, twin_model=twin
        ) as pipeline,
    ):
        started = time.perf_counter()
        for start in range(0, count, batch_size):
            pipeline.submit_many(requests[start : start + batch_size])
            pipeline.drain()
        elapsed = time.perf_counter() - started
        latency = pipeline.latency.percentiles(50, 99)
        alerts = sum(pipeline.alerts.values())
    return {
        **_rate(count, batch_size, elapsed),
        "latency_ms": latency,
        "processing_us_per_txn": round(elapsed / count * 1e6, 1),
        "divergences": alerts,
    }


# --- 2. the bare Python loop -------------------------------------------------------------------


def baseline_python(count: int, customers: int, batch_size: int) -> dict[str, Any]:
    """The same work per payment with plain dicts and no framework (no bus, no services)."""
    requests = _requests(count, customers)
    encoded = [json.dumps(r).encode() for r in requests]  # what arrives on the wire
    live, twin_model = default_model("live"), default_model("simulation")
    live_policy, twin_policy = (
        DecisionPolicy(live.thresholds),
        DecisionPolicy(twin_model.thresholds),
    )
    gateway = SimulatedGateway(0)
    gc.collect()
    with fewer_full_collections():  # as the pipeline's run has them
        started = time.perf_counter()
        diverged = _bare_loop(
            encoded, batch_size, live, twin_model, live_policy, twin_policy, gateway
        )
        elapsed = time.perf_counter() - started
    return {**_rate(count, batch_size, elapsed), "divergences": diverged}


def _bare_loop(
    encoded: list[bytes],
    batch_size: int,
    live: Any,
    twin_model: Any,
    live_policy: DecisionPolicy,
    twin_policy: DecisionPolicy,
    gateway: SimulatedGateway,
) -> int:
    twins: dict[str, Any] = {}
    diverged = 0
    for start in range(0, len(encoded), batch_size):
        txns = [parse_transaction(json.loads(raw)) for raw in encoded[start : start + batch_size]]
        matrix = feature_matrix(txns, [twins.get(t.customer_id) for t in txns], FEATURES)
        live_x = matrix[:, [FEATURES.index(n) for n in live.features]]
        live_d = live_policy.decide(live.score(live_x), live_x, live.features)
        twin_x = matrix[:, [FEATURES.index(n) for n in twin_model.features]]
        twin_d = twin_policy.decide(twin_model.score(twin_x), twin_x, twin_model.features)
        for txn, (decision, _), (predicted, _) in zip(txns, live_d, twin_d, strict=True):
            if decision is Decision.APPROVE:
                try:
                    answer = gateway.authorize(txn)
                    decision = Decision.APPROVE if answer.approved else Decision.DECLINE
                except Exception:
                    decision = Decision.REVIEW
            diverged += decision is not predicted
            twins[txn.customer_id] = apply_outcome(
                twins.get(txn.customer_id), live_decision(txn, decision, "baseline")
            )
    return diverged


def _medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs of one benchmark, repeated: the median of each figure (rate, latency percentiles,
    time per payment) with every run's rate and p99 as they came, in the order they ran."""
    first = runs[0]
    summary = {**first, "tps": round(statistics.median(r["tps"] for r in runs), 1)}
    summary["seconds"] = round(statistics.median(r["seconds"] for r in runs), 2)
    if "latency_ms" in first:
        summary["latency_ms"] = {
            key: round(statistics.median(r["latency_ms"][key] for r in runs), 3)
            for key in first["latency_ms"]
        }
    if "processing_us_per_txn" in first:
        summary["processing_us_per_txn"] = round(
            statistics.median(r["processing_us_per_txn"] for r in runs), 1
        )
    summary["runs"] = [
        {"tps": r["tps"], **({"p99_ms": r["latency_ms"]["p99"]} if "latency_ms" in r else {})}
        for r in runs
    ]
    return summary


def _spread(summary: dict[str, Any]) -> str:
    """The range of repeated runs, as in "median of 3: 19,836-20,782 txn/s, p99 1.50-1.59 ms"
    ("" for a single run)."""
    runs = summary["runs"]
    if len(runs) < 2:
        return ""
    rates = [r["tps"] for r in runs]
    text = f"median of {len(runs)}: {min(rates):,.0f}-{max(rates):,.0f} txn/s"
    if "p99_ms" in runs[0]:
        p99s = [r["p99_ms"] for r in runs]
        text += f", p99 {min(p99s):.2f}-{max(p99s):.2f} ms"
    return text


def _rate(count: int, batch_size: int, elapsed: float) -> dict[str, Any]:
    return {
        "transactions": count,
        "batch_size": batch_size,
        "seconds": round(elapsed, 2),
        "tps": round(count / elapsed, 1),
    }


# --- 3. the ingestion API ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ingestion_api(seconds: float, clients: int) -> dict[str, Any]:
    key = f"bench-{uuid.uuid4().hex}"
    port = _free_port()
    env = {**os.environ, "COREPAY_API_KEYS": key, "COREPAY_BUS_URL": "memory://"}
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - the server process keeps writing it
        prefix="corepay-bench-ingestion-", suffix=".log", delete=False
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "corepay",
            "serve",
            "ingestion",
            "--port",
            str(port),
            "--workers",
            "1",
            "--threads",
            "8",
            "--log-level",
            "WARNING",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_ready(port, proc)
        requests = _requests(200_000, 2000, seed=7)
        single = _load(port, key, requests, seconds, clients, batch=0)
        batch = _load(port, key, requests[100_000:], seconds, clients, batch=100)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return {
        "server": "gunicorn 1 worker x 8 threads, memory bus",
        "clients": clients,
        "single": single,
        "batch_of_100": batch,
    }


def _wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("ingestion exited")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("ingestion did not get ready")


def _load(
    port: int, key: str, requests: list[dict[str, Any]], seconds: float, clients: int, batch: int
) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    path = "/v1/transactions:batch" if batch else "/v1/transactions"
    per_client = len(requests) // clients
    counts = [0] * clients
    statuses: dict[int, int] = defaultdict(int)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine = requests[i * per_client : (i + 1) * per_client]
        step = batch or 1
        for start in range(0, len(mine), step):
            if time.monotonic() >= stop:
                break
            chunk = mine[start : start + step]
            body = json.dumps({"transactions": chunk} if batch else chunk[0])
            sent = time.perf_counter()
            conn.request("POST", path, body, headers)
            response = conn.getresponse()
            response.read()
            latencies[i].append((time.perf_counter() - sent) * 1000)
            statuses[response.status] += 1
            counts[i] += len(chunk)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    calls = sum(len(x) for x in latencies)
    all_latencies = np.asarray([v for x in latencies for v in x])
    return {
        "requests_per_s": round(calls / elapsed, 1),
        "transactions_per_s": round(sum(counts) / elapsed, 1),
        "latency_ms": {
            "p50": round(float(np.percentile(all_latencies, 50)), 2),
            "p99": round(float(np.percentile(all_latencies, 99)), 2),
        },
        "statuses": dict(statuses),
    }


# --- 4. memory ---------------------------------------------------------------------------------


def memory(customers: int, per_customer: int, pending: int) -> dict[str, Any]:
    requests = _requests(customers * per_customer, customers)
    txns = [parse_transaction(r) for r in requests]
    outcomes = [live_decision(t, Decision.APPROVE, "bench") for t in txns]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    twins: dict[str, Any] = {}
    for o in outcomes:
        twins[o.customer_id] = apply_outcome(twins.get(o.customer_id), o)
    gc.collect()
    twin_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    doc_sizes = [len(encode_twin(t)) for t in twins.values()]

    detector = DivergenceDetector(max_pending=pending * 2)
    # As the detector meets them: decoded from the bus, so what it holds is all its own.
    wire = [encode_outcome(o) for o in outcomes[:pending]]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for value in wire:
        detector.observe(decode_outcome(value), 0.0)
    gc.collect()
    pending_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return {
        "twins": len(twins),
        "payments_per_twin": per_customer,
        "bytes_per_twin_in_memory": round(twin_bytes / len(twins)),
        "bytes_per_twin_document": round(sum(doc_sizes) / len(doc_sizes)),
        "detector_pending": detector.pending,
        "bytes_per_pending_transaction": round(pending_bytes / max(detector.pending, 1)),
    }


def detector_long_run(window: int) -> dict[str, Any]:
    """The detector's time per pair while its memory of resolved ids fills (``remember``) and
    after it has turned over three times: a long-running detector must not slow down."""
    txn = parse_transaction(_requests(1, 1)[0])
    timings = Timings(decided_at=txn.timestamp, elapsed_ms=1.0)
    detector = DivergenceDetector(remember=window)
    per_pair: list[float] = []
    done, chunk = 0, max(1, window // 4)
    while done < 4 * window:
        pairs = []
        for i in range(done, done + chunk):
            t = attrs.evolve(txn, transaction_id=f"long-{i:09d}")
            pairs.append(
                [
                    Outcome(t, path, Decision.APPROVE, 0.1, (), "bench", timings)
                    for path in (OutcomePath.LIVE, OutcomePath.SIMULATION)
                ]
            )
        started = time.perf_counter()
        for live, simulation in pairs:
            detector.observe(live, 1.0)
            detector.observe(simulation, 1.0)
        per_pair.append((time.perf_counter() - started) / chunk * 1e6)
        done += chunk
    filling = per_pair[:4]  # the first window
    return {
        "window": window,
        "pairs": done,
        "us_per_pair_filling": round(sum(filling) / len(filling), 2),
        "us_per_pair_last": round(per_pair[-1], 2),
    }


# --- 5. twin reads ------------------------------------------------------------------------------


def twin_reads(customers: int, levels: tuple[int, ...], rounds: int) -> list[dict[str, Any]]:
    """The engine's read of a batch's twins from the twin service (waitress, as it serves
    them, in this process), for customers with ``levels`` payments each: whole twins (``GET
    /v1/twins``, how the engine read them before) against what the engine asks (``POST
    /v1/twins:query`` with three ids per customer: two new payments and its latest applied).
    Per twin: bytes, the engine's CPU (its thread), the twin service's (the rest of the
    process) and the round trip."""
    from corepay.services.serve import _http_server
    from corepay.services.twin_api import create_twin_app
    from corepay.twin import apply_outcomes
    from corepay.twin_client import HttpTwinClient

    found = []
    for payments in levels:
        one = [parse_transaction(r) for r in TrafficGenerator(customers=1).requests(payments)]
        store = MemoryTwinStore()
        asked: dict[str, list[str]] = {}
        for k in range(customers):
            cid = f"bench-{k}"
            outcomes = [
                live_decision(
                    attrs.evolve(t, customer_id=cid, transaction_id=f"{t.transaction_id}-{k}"),
                    Decision.APPROVE,
                    "bench",
                )
                for t in one
            ]
            twin = apply_outcomes(None, outcomes)
            assert twin is not None
            store.compare_and_set(twin, expected_version=None)
            asked[cid] = [f"new-{k}-a", f"new-{k}-b", list(twin.applied)[-1]]
        ids = list(asked)
        row: dict[str, Any] = {"payments_per_customer": payments, "twins_per_read": customers}
        gc.collect()
        with (
            fewer_full_collections(),
            _http_server(create_twin_app(store), "127.0.0.1", 0, "bench-twins") as port,
        ):
            client = HttpTwinClient(f"http://127.0.0.1:{port}")
            client.chunk = customers  # one request per read either way
            reads = {
                "whole": functools.partial(client.get_many, ids),
                "asked": functools.partial(client.get_many_checking, asked),
            }
            for name, read in reads.items():
                for _ in range(3):
                    read()
                wall, mine, all_cpu = time.perf_counter(), time.thread_time(), time.process_time()
                for _ in range(rounds):
                    read()
                wall = time.perf_counter() - wall
                mine = time.thread_time() - mine
                all_cpu = time.process_time() - all_cpu
                per = rounds * customers
                row[name] = {
                    "round_trip_us": round(wall / per * 1e6, 1),
                    "engine_cpu_us": round(mine / per * 1e6, 1),
                    "twin_service_cpu_us": round((all_cpu - mine) / per * 1e6, 1),
                }
            client.close()
        twins = store.get_many(ids).values()
        row["whole"]["bytes"] = round(len(encode_twins(twins)) / customers)
        row["asked"]["bytes"] = round(len(encode_twins(twins, asked)) / customers)
        found.append(row)
    return found


# --- 6. the bare kafka-python loop ---------------------------------------------------------------


def baseline_kafka(bootstrap: str, count: int) -> dict[str, Any]:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"bench-baseline-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 4, 1)])
    admin.close()
    values = [json.dumps(r).encode() for r in _requests(count, 2000, seed=3)]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    started = time.perf_counter()
    futures = [producer.send(topic, key=v[:40], value=v) for v in values]
    producer.flush()
    for f in futures:
        f.get(timeout=30)
    produce_s = time.perf_counter() - started
    producer.close()
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    got = 0
    started = time.perf_counter()
    deadline = started + 60
    while got < count and time.perf_counter() < deadline:
        for records in consumer.poll(timeout_ms=500, max_records=500).values():
            got += len(records)
        consumer.commit()
    consume_s = time.perf_counter() - started
    consumer.close()
    return {
        "messages": count,
        "bytes_per_message": round(sum(map(len, values)) / len(values)),
        "produce_per_s": round(count / produce_s, 1),
        "consume_per_s": round(got / consume_s, 1),
        "consumed": got,
    }


# --- the run -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a minute or so")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        metavar="N",
        help="runs of each in-process benchmark and the bare loop, in turns; the median is "
        "reported (default 3)",
    )
    parser.add_argument("--kafka", metavar="HOST:PORT", help="also benchmark over this broker")
    parser.add_argument("--json", type=Path, default=HERE / "results.json")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, not {args.repeat}")
    n = 20_000 if args.quick else 100_000
    default_model("live"), default_model("simulation")  # trained before anything is timed
    results: dict[str, Any] = {
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    # Every batch size over all n payments: customers' twins fill up as a run goes on (their
    # history after 20 payments, their applied ids for longer), so a shorter run of the small
    # batches would be measured on smaller twins than the large batch. In turns, repeated: a
    # busy spell of the machine then moves one run of each, not every run of one.
    batches = (500, 50, 25)
    runs: dict[int, list[dict[str, Any]]] = defaultdict(list)
    bare: list[dict[str, Any]] = []
    for _ in range(args.repeat):
        for batch in batches:
            runs[batch].append(in_process(n, 2000, batch))
        bare.append(baseline_python(n, 2000, 500))
    results["in_process"] = [_medians(runs[batch]) for batch in batches]
    results["baseline_python"] = _medians(bare)
    results["overhead_vs_python"] = round(
        results["baseline_python"]["tps"] / results["in_process"][0]["tps"], 2
    )
    results["ingestion_api"] = ingestion_api(5.0 if args.quick else 15.0, clients=8)
    results["memory"] = memory(
        2000 if args.quick else 10_000, 20, 20_000 if args.quick else 100_000
    )
    results["detector_long_run"] = detector_long_run(20_000 if args.quick else 100_000)
    results["twin_reads"] = twin_reads(100, (20, 1200), 20 if args.quick else 60)
    if args.kafka:
        results["baseline_kafka"] = baseline_kafka(args.kafka, 20_000 if args.quick else 100_000)
        try:
            from benchmarks.kafka_pipeline import run as kafka_run
            from benchmarks.kafka_relay import run as relay_run
        except ImportError as exc:
            results["kafka_pipeline"] = {"error": f"not available: {exc}"}
        else:
            rates, seconds = [500, 1000, 2000], 5.0 if args.quick else 20.0
            results["kafka_pipeline"] = kafka_run(args.kafka, rates, seconds, args.quick)
            results["baseline_kafka_relay"] = relay_run(args.kafka, rates, seconds, args.quick)
    results["targets"] = [line for line in _targets(results) if line]
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(_table(results))
    print(f"\nwritten to {args.json}")
    return 0


def _table(r: dict[str, Any]) -> str:
    lines = ["CorePay benchmarks" + ("  (--quick)" if r["quick"] else ""), ""]
    for run in r["in_process"]:
        lat = run["latency_ms"]
        lines.append(
            f"in process, batch {run['batch_size']:>4}: {run['tps']:>9,.0f} txn/s  "
            f"stamp->verdict p50 {lat['p50']:.1f} ms  p99 {lat['p99']:.1f} ms  "
            f"({run['processing_us_per_txn']:.0f} us of work per txn, {run['transactions']:,} txns)"
        )
        if spread := _spread(run):
            lines.append(f"    {spread}")
    b = r["baseline_python"]
    lines.append(
        f"bare Python loop, batch 500: {b['tps']:>7,.0f} txn/s   "
        f"CorePay overhead x{r['overhead_vs_python']} (baseline rate / CorePay rate)"
    )
    if spread := _spread(b):
        lines.append(f"    {spread}")
    api = r["ingestion_api"]
    for name in ("single", "batch_of_100"):
        x = api[name]
        lines.append(
            f"ingestion API {name:<13} {x['requests_per_s']:>8,.0f} req/s "
            f"{x['transactions_per_s']:>8,.0f} txn/s  p50 {x['latency_ms']['p50']:.1f} ms "
            f"p99 {x['latency_ms']['p99']:.1f} ms  {x['statuses']}"
        )
    m = r["memory"]
    lines.append(
        f"memory: {m['bytes_per_twin_in_memory']:,} B per twin in memory "
        f"({m['payments_per_twin']} payments), {m['bytes_per_twin_document']:,} B as a document; "
        f"{m['bytes_per_pending_transaction']:,} B per pending transaction in the detector "
        f"({m['detector_pending']:,} pending)"
    )
    d = r.get("detector_long_run")
    if d:
        lines.append(
            f"detector over a long run: {d['us_per_pair_filling']:.1f} us per pair while it "
            f"fills its memory of {d['window']:,} resolved ids, {d['us_per_pair_last']:.1f} us "
            f"after {d['pairs']:,} pairs"
        )
    for t in r.get("twin_reads", ()):
        whole, asked = t["whole"], t["asked"]
        lines.append(
            f"twin reads over HTTP, {t['payments_per_customer']:,} payments a customer, per "
            f"twin: whole {whole['bytes']:,} B, engine {whole['engine_cpu_us']:.0f} us, round "
            f"trip {whole['round_trip_us']:.0f} us; only the ids asked {asked['bytes']:,} B, "
            f"{asked['engine_cpu_us']:.0f} us, {asked['round_trip_us']:.0f} us"
        )
    if "baseline_kafka" in r:
        k = r["baseline_kafka"]
        lines.append(
            f"bare kafka-python: produce {k['produce_per_s']:,.0f} msg/s, consume "
            f"{k['consume_per_s']:,.0f} msg/s ({k['bytes_per_message']} B messages)"
        )
    k = r.get("kafka_pipeline")
    if k and "rates" in k:
        if k.get("warm"):
            lines.append(
                f"over Kafka, first {k['config']['warm_s']:g} s at {k['warm']['offered_tps']:,.0f} "
                f"txn/s to warm the broker up, not counted: p99 {_ms(k['warm'], 'p99')} ms"
            )
        for x in k["rates"]:
            lines.append(
                f"over Kafka, {x['offered_tps']:>6,.0f} txn/s offered: {x['resolved_tps']:>7,.0f} "
                f"resolved/s  ingestion->verdict p50 {_ms(x, 'p50')} ms  p99 {_ms(x, 'p99')} "
                f"ms  p99.9 {_ms(x, 'p99.9')} ms  ({x['unresolved']} unresolved)"
            )
        lines.append(f"over Kafka, flat out: {k['max_sustained_tps']:,.0f} txn/s resolved")
        relay = r.get("baseline_kafka_relay")
        if relay:
            if relay.get("warm"):
                lines.append(
                    f"bare relays, first {relay['warm_s']:g} s to warm up, not counted: "
                    f"p99 {_ms(relay['warm'], 'p99')} ms"
                )
            for x in relay["rates"]:
                lines.append(
                    f"bare relays, {x['offered_tps']:>6,.0f} txn/s offered: "
                    f"{x['resolved_tps']:>7,.0f} resolved/s  p50 {_ms(x, 'p50')} ms  p99 "
                    f"{_ms(x, 'p99')} ms  p99.9 {_ms(x, 'p99.9')} ms"
                )
            lines.append(
                f"bare relays, flat out: {relay['max_sustained_tps']:,.0f} txn/s resolved; "
                f"CorePay overhead x{relay['max_sustained_tps'] / k['max_sustained_tps']:.1f} "
                "(relay rate / CorePay rate)"
            )
        if "baseline_kafka" in r:
            bare = min(r["baseline_kafka"]["produce_per_s"], r["baseline_kafka"]["consume_per_s"])
            lines.append(
                f"CorePay over Kafka vs bare kafka-python: overhead x"
                f"{bare / k['max_sustained_tps']:.1f} (bare rate / CorePay rate)"
            )
    elif k:
        lines.append(f"over Kafka: {k}")
    lines.extend(_targets(r))
    return "\n".join(lines)


def _ms(phase: dict[str, Any], key: str) -> str:
    """A latency percentile of a phase in whole ms, or "-" when nothing was resolved."""
    value = phase["latency_ms"][key]
    return "-" if value is None else f"{value:,.0f}"


#: The issue's targets for this 2-core machine.
TARGET_IN_PROCESS_TPS, TARGET_IN_PROCESS_P99_MS = 20_000, 2.0
TARGET_KAFKA_TPS, TARGET_KAFKA_P99_MS, TARGET_KAFKA_AT_TPS = 3_000, 100.0, 1_000


def _targets(r: dict[str, Any]) -> list[str]:
    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    # Both at once: the fastest batch size among those whose p99 is within the target (a
    # bigger batch is faster, and every payment waits for its whole batch), on the medians
    # of its runs; how many of those runs met both on their own is said too.
    sizes = r["in_process"]
    within = [x for x in sizes if x["latency_ms"]["p99"] <= TARGET_IN_PROCESS_P99_MS]
    best = max(within or sizes, key=lambda size: size["tps"])
    runs = best["runs"]
    met = sum(
        x["tps"] >= TARGET_IN_PROCESS_TPS and x["p99_ms"] <= TARGET_IN_PROCESS_P99_MS for x in runs
    )
    each = f"; {met} of its {len(runs)} runs met both" if len(runs) > 1 else ""
    lines = [
        "",
        f"target in process: >= {TARGET_IN_PROCESS_TPS:,} txn/s with p99 <= "
        f"{TARGET_IN_PROCESS_P99_MS:g} ms: "
        + ("fastest batch within that p99" if within else "no batch within that p99; fastest")
        + f" {best['tps']:,.0f} txn/s, p99 {best['latency_ms']['p99']:.2f} ms "
        f"(batch {best['batch_size']}{', medians' if len(runs) > 1 else ''}{each}): "
        + verdict(bool(within) and best["tps"] >= TARGET_IN_PROCESS_TPS),
    ]
    k = r.get("kafka_pipeline")
    if k and "rates" in k:
        at = [x for x in k["rates"] if x["offered_tps"] == TARGET_KAFKA_AT_TPS]
        p99 = at[0]["latency_ms"]["p99"] if at else None
        lines.append(
            f"target over Kafka: >= {TARGET_KAFKA_TPS:,} txn/s sustained: "
            f"{k['max_sustained_tps']:,.0f}: {verdict(k['max_sustained_tps'] >= TARGET_KAFKA_TPS)}"
            f"; p99 <= {TARGET_KAFKA_P99_MS:g} ms at {TARGET_KAFKA_AT_TPS:,} offered: "
            + (
                "not measured"
                if p99 is None
                else f"{p99:,.0f} ms: " + verdict(p99 <= TARGET_KAFKA_P99_MS)
            )
        )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
