"""End-to-end benchmark of the distributed pipeline over a real Kafka broker.

The four services (twin, engine, detector, ingestion) run as separate ``corepay serve``
processes, configured like ``tests/test_distributed.py`` does (``COREPAY_BUS_URL``,
``COREPAY_API_KEYS``, ``COREPAY_TWIN_TOKEN``, ``--metrics-port``), on 127.0.0.1. Payments from
:class:`corepay.TrafficGenerator` (fresh customer ids each run) are put straight on
``raw_transactions`` by a kafka-python producer (``acks=all``, idempotent), in the ingestion
service's wire format, key and ``corepay-ingested-at`` header; the ingestion HTTP API is left
out of the measurement (it runs, idle).

Phases, after a small warm-up that waits for the consumer groups to be assigned and for the
twin service to finish rebuilding its twins (with the memory store it replays all of
``live_outcome`` at start, which grows with every run on the same broker), and ``warm``
seconds of traffic at 1,000 tx/s that are reported but not counted (see :func:`_warm_phase`):

- one per offered rate (default 500 and 2000 tx/s): an open-loop producer sends at that pace
  for ``duration`` seconds (a late producer catches up, it never waits on the pipeline);
- a throughput probe: the producer sends as fast as it can for ``duration`` seconds, but keeps
  at most ``probe_backlog`` transactions unresolved, so the pipeline is saturated without
  leaving a backlog on the shared consumer groups that would outlive the run.

A transaction is resolved when the detector writes it to ``detector_changelog`` (after its
alert, if any, is on the bus). Latency is that record's Kafka timestamp (the detector's
producer CreateTime) minus the ``corepay-ingested-at`` stamp of the transaction.
``resolved_tps`` counts resolutions in the steady window, from the phase's first resolution to
the end of producing (so the pipeline's fill time does not count against it). After producing,
each phase waits up to ``drain`` seconds for its stragglers; those left are ``unresolved``.
``over_100ms_by_second`` counts, per second of sending, the payments that took longer than
100 ms: whether a tail is spread out or a few bad seconds.

Run: ``.venv/bin/python -m benchmarks.kafka_pipeline --bootstrap "$(scripts/kafka start)"``
(``--quick`` for 5 s phases, ``--json FILE`` to keep the figures).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from prometheus_client.parser import text_string_to_metric_families

from corepay import TrafficGenerator
from corepay.backends.kafka import KafkaBus
from corepay.bus import (
    ALL_TOPICS,
    DIVERGENCE_ALERT,
    LIVE_OUTCOME,
    RAW_TRANSACTIONS,
    SIMULATION_OUTCOME,
)
from corepay.ingest import INGESTED_AT_HEADER
from corepay.services.detector import DETECTOR_CHANGELOG
from corepay.wire import encode_transaction, parse_transaction

__all__ = ["main", "run"]

TARGET_TPS = 3000
PARTITIONS = 4
DEFAULT_RATES = (500, 2000)
DEFAULT_DURATION = 20.0
QUICK_DURATION = 5.0
DEFAULT_DRAIN = 60.0
DEFAULT_CUSTOMERS = 5000
DEFAULT_PROBE_BACKLOG = 10_000
WARMUP_COUNT = 200
WARM_RATE = 1000.0
DEFAULT_WARM = 30.0
STARTUP_TIMEOUT = 180.0
WARMUP_TIMEOUT = 300.0
STOP_TIMEOUT = 20.0
REPO = Path(__file__).resolve().parent.parent

Payload = tuple[bytes, bytes]  # (key: customer id, value: encoded transaction)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# --- the services ----------------------------------------------------------------------------


class Services:
    """``corepay serve`` processes, each in its own session; all stopped by :meth:`stop_all`."""

    def __init__(self, bus_url: str, logs: Path) -> None:
        self.bus_url = bus_url
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.twin_port = _free_port()
        self.ingestion_port = _free_port()
        self.ops_ports: dict[str, int] = {}
        self.api_key = f"bench-{uuid.uuid4().hex}"
        self.twin_token = f"bench-twin-{uuid.uuid4().hex}"

    @property
    def twin_url(self) -> str:
        return f"http://127.0.0.1:{self.twin_port}"

    def start(self, name: str, *args: str) -> None:
        if name in ("engine", "detector"):
            self.ops_ports[name] = _free_port()
            args = (*args, "--metrics-port", str(self.ops_ports[name]))
        env = {
            **os.environ,
            "COREPAY_BUS_URL": self.bus_url,
            "COREPAY_HOST": "127.0.0.1",
            "COREPAY_LOG_LEVEL": "INFO",
            "COREPAY_API_KEYS": self.api_key,
            "COREPAY_TWIN_TOKEN": self.twin_token,
        }
        with (self.logs / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "corepay", "serve", name, *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our own process group: gunicorn's workers go with it
            )

    def start_all(self) -> None:
        """The twin service first (the engine reads it); the rest are started without waiting."""
        self.start("twin", "--port", str(self.twin_port), "--store", "memory://")
        self.start("engine", "--twin-url", self.twin_url)
        self.start("detector")
        self.start("ingestion", "--port", str(self.ingestion_port))

    def wait_ready(self, deadline: float) -> None:
        ports = {
            "twin": self.twin_port,
            "ingestion": self.ingestion_port,
            **self.ops_ports,
        }
        for name, port in ports.items():
            while True:
                proc = self.procs[name]
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {proc.returncode} before it was ready:\n"
                        + self.tail(name)
                    )
                try:
                    if _http_get(f"http://127.0.0.1:{port}/readyz", 2.0)[0] == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready on port {port}:\n{self.tail(name)}")
                time.sleep(0.2)

    def tail(self, name: str, chars: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def twin_exists(self, customer_id: str) -> bool:
        request = urllib.request.Request(
            f"{self.twin_url}/v1/twins/{customer_id}",
            headers={"Authorization": f"Bearer {self.twin_token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5.0) as response:
                return bool(response.status == 200)
        except (urllib.error.HTTPError, OSError):
            return False

    def metrics_urls(self) -> dict[str, str]:
        urls = {name: f"http://127.0.0.1:{port}/metrics" for name, port in self.ops_ports.items()}
        urls["twin"] = f"{self.twin_url}/metrics"
        return urls

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items()}

    def stop_all(self) -> dict[str, int]:
        """SIGTERM everything at once, wait (bounded), then SIGKILL each process group left."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        codes: dict[str, int] = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                codes[name] = -9
        for proc in self.procs.values():  # workers of a parent that left on its own
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        self.procs.clear()
        return codes


# --- what the services say about themselves ----------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float | None:
    """User+system CPU seconds of ``pid`` and its direct children (gunicorn's workers)."""
    total, found = 0.0, False
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / _TICK
            found = True
    return total if found else None


def _machine_cpu() -> tuple[float, float | None]:
    """Busy CPU seconds of the whole machine, and seconds some task waited for a CPU."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / _TICK  # all but idle and iowait
    try:
        some = Path("/proc/pressure/cpu").read_text().split("\n", 1)[0]
        stalled: float | None = int(some.rsplit("total=", 1)[1]) / 1e6
    except (OSError, IndexError, ValueError):
        stalled = None
    return busy, stalled


def _broker_pid() -> int | None:
    state = Path(os.environ.get("COREPAY_KAFKA_STATE", REPO / ".kafka"))
    try:
        pid = int((state / "kafka.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


class Observer:
    """Scrapes the services' ``/metrics`` (a sampler thread records the peak consumer lag) and
    reads their CPU time, to say per phase which stage of which service was busy."""

    def __init__(self, services: Services) -> None:
        self.urls = services.metrics_urls()
        self.pids = services.pids()
        broker = _broker_pid()
        if broker is not None:
            self.pids["broker"] = broker
        self.lock = threading.Lock()
        self.max_lag: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, name="bench-metrics", daemon=True)

    def scrape(self) -> dict[str, Any]:
        stages: dict[tuple[str, str], list[float]] = {}
        consumed: dict[tuple[str, str], float] = {}
        lag: Counter[str] = Counter()
        for url in self.urls.values():
            try:
                status, body = _http_get(url, 2.0)
            except OSError:
                continue
            if status != 200:
                continue
            for family in text_string_to_metric_families(body.decode()):
                for s in family.samples:
                    labels = s.labels
                    if s.name == "corepay_stage_seconds_sum":
                        stages.setdefault((labels["service"], labels["stage"]), [0.0, 0.0])[0] = (
                            s.value
                        )
                    elif s.name == "corepay_stage_seconds_count":
                        stages.setdefault((labels["service"], labels["stage"]), [0.0, 0.0])[1] = (
                            s.value
                        )
                    elif s.name == "corepay_messages_consumed_total":
                        consumed[(labels["service"], labels["topic"])] = s.value
                    elif s.name == "corepay_consumer_lag":
                        lag[labels["service"]] += s.value
        return {"stages": stages, "consumed": consumed, "lag": dict(lag)}

    def snapshot(self) -> dict[str, Any]:
        cpu = {name: _cpu_seconds(pid) for name, pid in self.pids.items()}
        times = os.times()
        cpu["benchmark"] = times.user + times.system
        machine, stalled = _machine_cpu()
        return {
            "at": time.monotonic(),
            "cpu": cpu,
            "machine": machine,
            "stalled": stalled,
            **self.scrape(),
        }

    def _sample(self) -> None:
        while not self.stop.wait(1.0):
            lag = self.scrape()["lag"]
            with self.lock:
                for service, value in lag.items():
                    self.max_lag[service] = max(self.max_lag.get(service, 0.0), value)

    def start_phase(self) -> dict[str, Any]:
        with self.lock:
            self.max_lag = {}
        return self.snapshot()

    def end_phase(self, before: dict[str, Any]) -> dict[str, Any]:
        after = self.snapshot()
        wall = max(after["at"] - before["at"], 1e-9)
        busy: dict[str, dict[str, float]] = {}
        mean_ms: dict[str, dict[str, float]] = {}
        batches: dict[str, float] = {}
        for (service, stage), (total, count) in after["stages"].items():
            was = before["stages"].get((service, stage), [0.0, 0.0])
            busy.setdefault(service, {})[stage] = round((total - was[0]) / wall, 3)
            if count > was[1]:
                mean_ms.setdefault(service, {})[stage] = round(
                    (total - was[0]) / (count - was[1]) * 1000.0, 2
                )
            if stage == "handle":
                batches[service] = count - was[1]
        mean_batch = {}
        for service, count in batches.items():
            read = sum(
                v - before["consumed"].get(key, 0.0)
                for key, v in after["consumed"].items()
                if key[0] == service
            )
            if count > 0:
                mean_batch[service] = round(read / count, 1)
        cpu = {
            name: round((after["cpu"][name] - was) / wall, 2)
            for name, was in before["cpu"].items()
            if was is not None and after["cpu"].get(name) is not None
        }
        ours = sum(cpu.values())
        machine = (after["machine"] - before["machine"]) / wall
        cpu["machine"] = round(machine, 2)
        cpu["others"] = round(max(machine - ours, 0.0), 2)  # processes this run did not start
        stalled = None
        if after["stalled"] is not None and before["stalled"] is not None:
            stalled = round((after["stalled"] - before["stalled"]) / wall, 3)
        with self.lock:
            max_lag = {k: int(v) for k, v in self.max_lag.items()}
        return {
            "wall_s": round(wall, 2),
            "busy": busy,
            "mean_ms_per_batch": mean_ms,
            "mean_batch": mean_batch,
            "max_consumer_lag": max_lag,
            "cpu_cores": cpu,
            "cpu_stalled_share": stalled,
        }


# --- producing and reading -----------------------------------------------------------------------


class Phase:
    """One measured run: its payloads, when each was sent, and when each was resolved."""

    def __init__(self, index: int, name: str, payloads: list[Payload]) -> None:
        self.index = index
        self.name = name
        self.payloads = payloads
        self.stamps: list[float] = []  # epoch seconds, the corepay-ingested-at of each sent one
        self.resolved: dict[int, int] = {}  # payload index -> changelog timestamp (epoch ms)
        self.duplicates = 0
        self.alerts: Counter[str] = Counter()
        self.produce_errors = 0
        self.acked = 0


class Tracker:
    """Reads ``detector_changelog`` and ``divergence_alert`` (or the given topics) from their
    end on, in a thread, and files each record of this run under its phase."""

    def __init__(
        self,
        bootstrap: str,
        prefix: str,
        resolved: str = DETECTOR_CHANGELOG,
        alerts: str | None = DIVERGENCE_ALERT,
    ) -> None:
        self.alerts_topic = alerts
        self.prefix = prefix
        self.phases: dict[int, Phase] = {}
        self.timestamp_types: Counter[int] = Counter()
        self.consumer = KafkaConsumer(
            bootstrap_servers=[bootstrap],
            client_id="corepay-bench-reader",
            group_id=None,
            enable_auto_commit=False,
            # Times come from the records (when the detector wrote them), not from when they
            # are read, so the reader fetches at most ten times a second: each fetch costs
            # kafka-python about as much CPU as a few hundred records, on the measured cores.
            fetch_min_bytes=1024 * 1024,
            fetch_max_wait_ms=100,
            metrics_enabled=False,
        )
        topics = [resolved] if alerts is None else [resolved, alerts]
        wanted = [TopicPartition(topic, p) for topic in topics for p in range(PARTITIONS)]
        self.consumer.assign(wanted)
        self.consumer.seek_to_end(*wanted)
        for tp in wanted:
            self.consumer.position(tp)  # resolve "end" now, before anything is produced
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._read, name="bench-reader", daemon=True)

    def _which(self, tid: str) -> tuple[Phase, int] | None:
        if not tid.startswith(self.prefix):
            return None
        phase, _, index = tid[len(self.prefix) :].partition("-")
        found = self.phases.get(int(phase))
        return None if found is None else (found, int(index))

    def _read(self) -> None:
        try:
            while not self.stop.is_set():
                for tp, records in self.consumer.poll(timeout_ms=200, max_records=5000).items():
                    for r in records:
                        if self.prefix.encode() not in r.value:
                            continue
                        value = json.loads(r.value)
                        if tp.topic == self.alerts_topic:
                            where = self._which(value.get("transaction_id", ""))
                            if where is not None:
                                where[0].alerts[value.get("kind", "?")] += 1
                            continue
                        # A changelog entry lists the transactions a batch resolved.
                        for tid in value.get("transaction_ids", []):
                            where = self._which(tid)
                            if where is None:
                                continue
                            phase, index = where
                            if index in phase.resolved:
                                phase.duplicates += 1
                            else:
                                phase.resolved[index] = r.timestamp
                                self.timestamp_types[r.timestamp_type] += 1
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.consumer.close(autocommit=False)


def _payloads(
    generator: TrafficGenerator, run: str, prefix: str, phase: int, count: int, start: int = 0
) -> Iterator[Payload]:
    """``count`` payments of fresh customers; the transaction id names the phase and index."""
    for i, request in enumerate(generator.requests(count), start):
        request["customer_id"] = f"{run}-{request['customer_id']}"
        request["transaction_id"] = f"{prefix}{phase}-{i}"
        txn = parse_transaction(request)
        yield txn.customer_id.encode(), encode_transaction(txn)


def _phases(
    generator: TrafficGenerator,
    run: str,
    prefix: str,
    rates: list[int],
    duration: float,
    probe_pool: int | None,
) -> tuple[list[Phase], Callable[[], None]]:
    """The warm-up, a phase per rate and, with ``probe_pool``, the probe (last), with their
    payloads; and a function that gives the probe 5,000 more."""
    phases = [Phase(0, "warmup", list(_payloads(generator, run, prefix, 0, WARMUP_COUNT)))]
    for rate in rates:
        index, count = len(phases), max(int(rate * duration), 1)
        phases.append(
            Phase(index, f"{rate}/s", list(_payloads(generator, run, prefix, index, count)))
        )
    if probe_pool is not None:
        index = len(phases)
        phases.append(
            Phase(index, "probe", list(_payloads(generator, run, prefix, index, probe_pool)))
        )

    def more() -> None:
        last = phases[-1]
        last.payloads.extend(
            _payloads(generator, run, prefix, last.index, 5000, len(last.payloads))
        )

    return phases, more


class Sender:
    """A producer configured like the bus's: ``acks=all``, idempotent, 5 ms linger."""

    def __init__(self, bootstrap: str, topic: str = RAW_TRANSACTIONS) -> None:
        self.topic = topic
        self.producer = KafkaProducer(
            bootstrap_servers=[bootstrap],
            client_id="corepay-bench-producer",
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            batch_size=65536,
            max_block_ms=30_000,
            metrics_enabled=False,
        )

    def send(self, phase: Phase, index: int) -> None:
        key, value = phase.payloads[index]
        now = time.time()
        stamp = datetime.fromtimestamp(now, UTC).isoformat()
        phase.stamps.append(now)
        future = self.producer.send(
            self.topic,
            key=key,
            value=value,
            headers=[(INGESTED_AT_HEADER, stamp.encode())],
        )
        future.add_callback(lambda _meta: setattr(phase, "acked", phase.acked + 1))
        future.add_errback(lambda _exc: setattr(phase, "produce_errors", phase.produce_errors + 1))

    def paced(self, phase: Phase, rate: float) -> float:
        """Open loop: message i goes at t0 + i/rate (late ones at once). Returns the time spent
        sending, measured to when the last message was due to be followed by the next."""
        n = len(phase.payloads)
        t0 = time.monotonic()
        sent = 0
        while sent < n:
            due = min(n, int((time.monotonic() - t0) * rate) + 1)
            while sent < due:
                self.send(phase, sent)
                sent += 1
            if sent < n:
                time.sleep(max(t0 + sent / rate - time.monotonic(), 0.0))
        elapsed = time.monotonic() - t0 + 1.0 / rate
        self.producer.flush(timeout=60)
        return elapsed

    def flood(self, phase: Phase, duration: float, backlog: int, more: Callable[[], None]) -> float:
        """As fast as possible for ``duration`` s, with at most ``backlog`` unresolved."""
        t0 = time.monotonic()
        end = t0 + duration
        sent = 0
        while time.monotonic() < end:
            if sent - len(phase.resolved) >= backlog:
                time.sleep(0.001)
                continue
            if sent >= len(phase.payloads):
                more()
            self.send(phase, sent)
            sent += 1
        elapsed = time.monotonic() - t0
        self.producer.flush(timeout=60)
        return elapsed

    def close(self) -> None:
        self.producer.close(timeout=10)


# --- figures ---------------------------------------------------------------------------------


def _percentile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return None
    rank = max(int(-(-q * len(ordered) // 100)), 1)  # ceil(q/100 * n)
    return ordered[min(rank, len(ordered)) - 1]


def _slow_seconds(entry: dict[str, Any]) -> str:
    slow = entry["over_100ms_by_second"]
    return " ".join(f"{second}s:{n}" for second, n in slow.items()) or "none"


def _figures(phase: Phase, offered: float | None, elapsed: float, drain: float) -> dict[str, Any]:
    sent = len(phase.stamps)
    t_first, t_last_sent = phase.stamps[0], phase.stamps[-1]
    produce_end = t_first + elapsed
    latencies = sorted(
        ts / 1000.0 - phase.stamps[i] for i, ts in phase.resolved.items() if i < sent
    )
    resolved_at = sorted(ts / 1000.0 for ts in phase.resolved.values())
    if resolved_at and resolved_at[0] < produce_end - 0.5:
        start = resolved_at[0]
        in_window = sum(1 for t in resolved_at if t <= produce_end)
        resolved_tps = in_window / (produce_end - start)
    elif resolved_at:  # resolutions only began after producing: count all of them
        resolved_tps = len(resolved_at) / max(resolved_at[-1] - t_first, 1e-9)
    else:
        resolved_tps = 0.0
    drain_s = max(resolved_at[-1] - max(produce_end, t_last_sent), 0.0) if resolved_at else None

    # Whether a tail is spread out or a few bad seconds (a stall somewhere on the machine):
    # per second of sending, how many payments took longer than 100 ms.
    slow: Counter[int] = Counter(
        int(phase.stamps[i] - t_first)
        for i, ts in phase.resolved.items()
        if i < sent and ts / 1000.0 - phase.stamps[i] > 0.1
    )

    def ms(q: float) -> float | None:
        value = _percentile(latencies, q)
        return None if value is None else round(value * 1000.0, 1)

    return {
        "offered_tps": offered,
        "produced_tps": round(sent / elapsed, 1) if elapsed > 0 else 0.0,
        "resolved_tps": round(resolved_tps, 1),
        "latency_ms": {
            "p50": ms(50),
            "p99": ms(99),
            "p99.9": ms(99.9),
            "max": round(latencies[-1] * 1000.0, 1) if latencies else None,
        },
        "unresolved": sent - len(phase.resolved),
        "over_100ms_by_second": {str(second): n for second, n in sorted(slow.items())},
        "sent": sent,
        "resolved": len(phase.resolved),
        "produce_errors": phase.produce_errors,
        "duplicates": phase.duplicates,
        "drain_s": None if drain_s is None else round(drain_s, 2),
        "drain_limit_s": drain,
        "duration_s": round(elapsed, 2),
        "alerts": dict(phase.alerts),
    }


def _warm_phase(
    generator: TrafficGenerator, run: str, prefix: str, index: int, seconds: float
) -> Phase:
    """``seconds`` of payments at :data:`WARM_RATE`, sent before the measured phases.

    A broker just started runs its hot paths interpreted while the JVM compiles them: on the
    2-core machine the benchmarks were made on, three 20 s phases at 1,000/s in a row on a
    fresh broker gave p99 270, 258 and 138 ms, the broker using 0.72, 0.43 and 0.30 cores, the
    JIT compiler alone up to 0.4 of a core at first. A broker in service is long past that.
    ``index`` is the phase's own (after every other phase's).
    """
    count = int(WARM_RATE * seconds)
    return Phase(index, "warm", list(_payloads(generator, run, prefix, index, count)))


def _send_warm(
    sender: Sender, tracker: Tracker, phase: Phase, drain: float, say: Callable[[str], None]
) -> dict[str, Any] | None:
    """Send the warm phase and wait for it; its figures, or ``None`` when it is empty."""
    if not phase.payloads:
        return None
    say(f"warming up the broker: {WARM_RATE:g} tx/s for {len(phase.payloads) / WARM_RATE:g} s")
    elapsed = sender.paced(phase, WARM_RATE)
    _wait_resolved(tracker, phase, drain)
    figures = _figures(phase, WARM_RATE, elapsed, drain)
    say(f"  warm: p99 {figures['latency_ms']['p99']} ms (not counted)")
    return figures


def _lengths(rates: list[int], duration: float, warm: float, quick: bool) -> tuple[float, float]:
    """Seconds per phase and of warm traffic, checked; ``quick`` makes them 5 s at most."""
    duration = QUICK_DURATION if quick else duration
    warm = min(warm, QUICK_DURATION) if quick else warm
    if duration <= 0 or warm < 0 or any(r <= 0 for r in rates):
        raise ValueError("duration and rates must be positive, warm not negative")
    return duration, warm


def _wait_resolved(tracker: Tracker, phase: Phase, limit: float) -> None:
    deadline = time.monotonic() + limit
    while len(phase.resolved) < len(phase.stamps) and time.monotonic() < deadline:
        if tracker.error is not None:
            raise RuntimeError("the changelog reader failed") from tracker.error
        time.sleep(0.1)


def _group_backlog(bootstrap: str) -> dict[str, int]:
    """Messages waiting for the engine's and detector's groups before anything runs (left by
    an earlier run or test on the same broker: the services read those first)."""
    groups = {
        "corepay-engine": (RAW_TRANSACTIONS,),
        "corepay-detector": (LIVE_OUTCOME, SIMULATION_OUTCOME),
    }
    admin = KafkaAdminClient(bootstrap_servers=[bootstrap], client_id="corepay-bench-admin")
    reader = KafkaConsumer(bootstrap_servers=[bootstrap], group_id=None)
    try:
        found = {}
        for group, topics in groups.items():
            tps = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
            try:
                committed = admin.list_group_offsets({group: tps}).get(group, {})
            except KafkaError:  # no offsets topic yet (a fresh broker): nothing committed
                committed = {}
            ends = reader.end_offsets(tps)
            done = {tp: max(committed[tp].offset, 0) for tp in tps if tp in committed}
            found[group] = sum(max(ends[tp] - done.get(tp, 0), 0) for tp in tps)
        return found
    finally:
        reader.close()
        admin.close()


# --- the run ---------------------------------------------------------------------------------


def run(
    bootstrap: str,
    rates: list[int],
    duration: float,
    quick: bool,
    *,
    drain: float = DEFAULT_DRAIN,
    customers: int = DEFAULT_CUSTOMERS,
    probe: bool = True,
    probe_backlog: int = DEFAULT_PROBE_BACKLOG,
    keep_logs: bool = False,
    warm: float = DEFAULT_WARM,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Start the four services on ``bootstrap``, measure each rate and the probe, stop them.

    ``quick`` makes every phase last 5 s whatever ``duration`` says, and the warm traffic at
    most 5 s.
    """
    say = progress or (lambda _msg: None)
    duration, warm = _lengths(rates, duration, warm, quick)
    run_id = uuid.uuid4().hex[:10]
    prefix = f"bench-{run_id}-"
    bus_url = (
        f"kafka://{bootstrap}?partitions={PARTITIONS}"
        "&session_timeout_ms=6000&heartbeat_interval_ms=1000"
    )
    began = time.monotonic()
    # Every topic with 4 partitions before any service or client touches it (an existing one
    # with another count is refused here, with the reason).
    with KafkaBus([bootstrap], partitions=PARTITIONS) as bus:
        bus.ensure_topics([*ALL_TOPICS, DETECTOR_CHANGELOG])
    backlog = _group_backlog(bootstrap)

    logs = Path(tempfile.mkdtemp(prefix="corepay-bench-"))
    services = Services(bus_url, logs)
    tracker: Tracker | None = None
    sender: Sender | None = None
    observer: Observer | None = None
    result: dict[str, Any] = {}
    try:
        say(f"starting services (logs in {logs})")
        services.start_all()
        # Payloads are made while the services load their models.
        generator = TrafficGenerator(customers=customers, seed=int(run_id[:6], 16))
        pool = probe_backlog + int(duration * 4000) if probe else None
        phases, more = _phases(generator, run_id, prefix, rates, duration, pool)
        warm_phase = _warm_phase(generator, run_id, prefix, len(phases), warm)
        probe_phase = phases[-1] if probe else None

        services.wait_ready(time.monotonic() + STARTUP_TIMEOUT)
        ready_s = time.monotonic() - began
        say(f"services ready after {ready_s:.1f} s")

        tracker = Tracker(bootstrap, prefix)
        tracker.phases = {p.index: p for p in [*phases, warm_phase]}
        tracker.thread.start()
        sender = Sender(bootstrap)
        observer = Observer(services)
        observer.thread.start()

        # Warm-up: the consumer groups get their partitions and the clients connect; the
        # detector replays its changelog, and the twin service (memory store) rebuilds every
        # twin from the whole of live_outcome, reporting ready meanwhile. It applies new
        # outcomes only after that, so a warm-up customer's twin appearing says it is done.
        warm_began = time.monotonic()
        sender.paced(phases[0], 200.0)
        _wait_resolved(tracker, phases[0], WARMUP_TIMEOUT)
        resolved_s = time.monotonic() - warm_began
        if len(phases[0].resolved) < len(phases[0].stamps):
            raise RuntimeError(
                f"warm-up: only {len(phases[0].resolved)} of {len(phases[0].stamps)} resolved "
                f"in {WARMUP_TIMEOUT:g} s\n--- engine\n{services.tail('engine')}\n"
                f"--- detector\n{services.tail('detector')}"
            )
        say(f"warm-up resolved in {resolved_s:.1f} s; waiting for the twin service to catch up")
        customer = phases[0].payloads[-1][0].decode()
        deadline = warm_began + WARMUP_TIMEOUT
        while not services.twin_exists(customer):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the twin service applied no warm-up outcome in {WARMUP_TIMEOUT:g} s "
                    f"(rebuilding from live_outcome?)\n--- twin\n{services.tail('twin')}"
                )
            time.sleep(0.2)
        warmup = {
            "sent": len(phases[0].stamps),
            "resolved": len(phases[0].resolved),
            "resolved_after_s": round(resolved_s, 2),
            "twins_current_after_s": round(time.monotonic() - warm_began, 2),
        }
        say(f"twin service current after {warmup['twins_current_after_s']} s")
        before = observer.start_phase()
        warm_figures = _send_warm(sender, tracker, warm_phase, drain, say)
        if warm_figures is not None:
            warm_figures["diagnostics"] = observer.end_phase(before)

        figures = []
        for phase, rate in zip(phases[1 : 1 + len(rates)], rates, strict=True):
            time.sleep(1.0)
            say(f"offering {rate} tx/s for {duration:g} s")
            before = observer.start_phase()
            elapsed = sender.paced(phase, float(rate))
            _wait_resolved(tracker, phase, drain)
            entry = _figures(phase, float(rate), elapsed, drain)
            entry["diagnostics"] = observer.end_phase(before)
            figures.append(entry)
            say(
                f"  produced {entry['produced_tps']}/s, resolved {entry['resolved_tps']}/s, "
                f"p99 {entry['latency_ms']['p99']} ms, unresolved {entry['unresolved']}"
            )
            say(f"  over 100 ms, by second sent: {_slow_seconds(entry)}")

        probe_figures = None
        if probe_phase is not None:
            time.sleep(1.0)
            say(f"probe: as fast as possible for {duration:g} s (<= {probe_backlog} unresolved)")
            before = observer.start_phase()
            elapsed = sender.flood(probe_phase, duration, probe_backlog, more)
            _wait_resolved(tracker, probe_phase, drain)
            probe_figures = _figures(probe_phase, None, elapsed, drain)
            probe_figures["backlog_limit"] = probe_backlog
            probe_figures["diagnostics"] = observer.end_phase(before)
            say(
                f"  produced {probe_figures['produced_tps']}/s, "
                f"resolved {probe_figures['resolved_tps']}/s"
            )

        ports = {
            "twin": services.twin_port,
            "ingestion": services.ingestion_port,
            **services.ops_ports,
        }
        result = {
            "rates": figures,
            "max_sustained_tps": None if probe_figures is None else probe_figures["resolved_tps"],
            "target_tps": TARGET_TPS,
            "probe": probe_figures,
            "warm": warm_figures,
            "config": {
                "bootstrap": bootstrap,
                "duration_s": duration,
                "warm_s": warm,
                "quick": quick,
                "drain_limit_s": drain,
                "customers": customers,
                "partitions": PARTITIONS,
                "cpus": os.cpu_count(),
                "run_id": run_id,
            },
            "services": {
                "bus_url": bus_url,
                "processes": {
                    name: {"pid": pid, "port": ports[name]} for name, pid in services.pids().items()
                },
                "gateway": "in-process simulated (engine default, no real-time latency)",
                "store": "memory://",
                "ready_after_s": round(ready_s, 1),
                "warmup": warmup,
                "group_backlog_at_start": backlog,
                "changelog_timestamp_types": {
                    ("CreateTime" if k == 0 else "LogAppendTime" if k == 1 else str(k)): v
                    for k, v in tracker.timestamp_types.items()
                },
            },
        }
    finally:
        if observer is not None:
            observer.stop.set()
        if sender is not None:
            with contextlib.suppress(Exception):
                sender.close()
        codes = services.stop_all()
        if tracker is not None:
            with contextlib.suppress(Exception):
                tracker.close()
        if observer is not None:
            observer.thread.join(timeout=5)
        if not keep_logs and result:
            for path in logs.iterdir():
                path.unlink()
            logs.rmdir()
    result["services"]["exit_codes"] = codes
    if keep_logs:
        result["services"]["logs"] = str(logs)
    result["total_s"] = round(time.monotonic() - began, 1)
    return result


# --- the command line --------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _busy_line(diag: dict[str, Any]) -> str:
    parts = []
    for service in ("engine", "detector", "twin"):
        stages = diag["busy"].get(service, {})
        loop = sum(stages.get(s, 0.0) for s in ("handle", "publish", "commit"))
        means = diag["mean_ms_per_batch"].get(service, {})
        detail = ", ".join(
            f"{s} {stages[s]:.0%} ~{means.get(s, 0.0):.0f} ms"
            for s in ("handle", "publish", "commit")
            if s in stages
        )
        cpu = diag["cpu_cores"].get(service)
        parts.append(
            f"{service}: loop busy {loop:.0%} ({detail}), cpu {_fmt(cpu, '.2f')}, "
            f"batch {_fmt(diag['mean_batch'].get(service))}, "
            f"max lag {diag['max_consumer_lag'].get(service, 0)}"
        )
    extra = ", ".join(
        f"{name} {diag['cpu_cores'][name]:.2f}"
        for name in ("broker", "benchmark", "ingestion", "others", "machine")
        if name in diag["cpu_cores"]
    )
    stalled = diag["cpu_stalled_share"]
    if stalled is not None:
        extra += f"; something waited for a CPU {stalled:.0%} of the time"
    return "\n".join(f"    {p}" for p in parts) + f"\n    cpu cores: {extra}"


def format_table(result: dict[str, Any]) -> str:
    header = (
        f"{'offered/s':>10} {'produced/s':>11} {'resolved/s':>11} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'p99.9 ms':>9} {'max ms':>8} {'unresolved':>11} {'drain s':>8}"
    )
    lines = [header, "-" * len(header)]
    rows = [(r, _fmt(r["offered_tps"], ".0f")) for r in result["rates"]]
    if result["probe"] is not None:
        rows.append((result["probe"], "max"))
    for r, offered in rows:
        lat = r["latency_ms"]
        lines.append(
            f"{offered:>10} {r['produced_tps']:>11.1f} {r['resolved_tps']:>11.1f} "
            f"{_fmt(lat['p50']):>8} {_fmt(lat['p99']):>8} {_fmt(lat['p99.9']):>9} "
            f"{_fmt(lat['max']):>8} {r['unresolved']:>11} {_fmt(r['drain_s'], '.2f'):>8}"
        )
    if result["max_sustained_tps"] is not None:
        verdict = "meets" if result["max_sustained_tps"] >= result["target_tps"] else "below"
        lines.append(
            f"\nmax sustained: {result['max_sustained_tps']:.0f} tx/s resolved "
            f"({verdict} the {result['target_tps']} tx/s target; probe kept <= "
            f"{result['probe']['backlog_limit']} unresolved)"
        )
    lines.append("\nwhere the time went (share of wall time per stage, cores of CPU):")
    for r, offered in rows:
        label = f"{offered} tx/s" if offered != "max" else "probe"
        lines.append(f"  {label}:  alerts {r['alerts']}")
        lines.append(_busy_line(r["diagnostics"]))
    cfg = result["config"]
    warm = result.get("warm")
    if warm is not None:
        lat = warm["latency_ms"]
        lines.append(
            f"\nbefore these, {cfg['warm_s']:g} s at {warm['offered_tps']:.0f} tx/s to warm the "
            f"broker up, not counted: p50 {_fmt(lat['p50'])}, p99 {_fmt(lat['p99'])} ms"
        )
        lines.append(_busy_line(warm["diagnostics"]))
    lines.append(
        f"\n{cfg['duration_s']:g} s per phase, {cfg['customers']} customers, "
        f"{cfg['partitions']} partitions, {cfg['cpus']} CPUs; services ready after "
        f"{result['services']['ready_after_s']} s; total {result['total_s']} s; "
        f"exit codes {result['services']['exit_codes']}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.kafka_pipeline",
        description="Benchmark the four CorePay services over a real Kafka broker.",
    )
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("COREPAY_TEST_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        help="host:port of the broker (scripts/kafka start prints it)",
    )
    parser.add_argument(
        "--rates",
        default=",".join(map(str, DEFAULT_RATES)),
        help="offered rates in tx/s, comma-separated (default 500,2000)",
    )
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION, help="s per phase")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_DURATION:g} s per phase")
    parser.add_argument("--drain", type=float, default=DEFAULT_DRAIN, help="s to wait after each")
    parser.add_argument("--customers", type=int, default=DEFAULT_CUSTOMERS)
    parser.add_argument("--probe-backlog", type=int, default=DEFAULT_PROBE_BACKLOG)
    parser.add_argument("--no-probe", action="store_true", help="skip the throughput probe")
    parser.add_argument("--keep-logs", action="store_true", help="keep the services' logs")
    parser.add_argument(
        "--warm",
        type=float,
        default=DEFAULT_WARM,
        help=f"s of traffic at {WARM_RATE:g} tx/s before measuring, to warm the broker up",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    try:
        rates = [int(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        parser.error("--rates takes whole numbers, such as 500,2000")

    def on_sigterm(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # so run()'s finally stops the services

    signal.signal(signal.SIGTERM, on_sigterm)
    result = run(
        args.bootstrap,
        rates,
        args.duration,
        args.quick,
        drain=args.drain,
        customers=args.customers,
        probe=not args.no_probe,
        probe_backlog=args.probe_backlog,
        keep_logs=args.keep_logs,
        warm=args.warm,
        progress=lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr),
    )
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
