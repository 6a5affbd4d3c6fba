"""Baseline for the distributed pipeline: the same three hops over Kafka, with no CorePay work.

Three relay processes stand in for the engine, the twin service and the divergence detector,
each a bare kafka-python loop with the services' client settings (``acks=all``, idempotent,
5 ms linger, 64 KiB batches; commits by hand after each publish, without waiting):

- ``decide`` reads the payment requests and writes two messages per payment, the size of
  CorePay's live and simulation outcomes, to two topics;
- ``apply`` reads the first of those and commits, as the twin service reads ``live_outcome``;
- ``pair`` reads both, pairs them by transaction id, and writes a changelog-sized message per
  pair.

Payments are sent and latencies measured exactly as ``benchmarks/kafka_pipeline.py`` does
(same producer, same payloads, same phases), to fresh topics of 4 partitions each run, so the
two tables compare directly: what is left of CorePay's latency and rate over this one is
CorePay's own work. No alerts, no HTTP twin reads, no metrics.

Run: ``.venv/bin/python -m benchmarks.kafka_relay --bootstrap "$(scripts/kafka start)"``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from benchmarks.kafka_pipeline import (
    DEFAULT_CUSTOMERS,
    DEFAULT_DRAIN,
    DEFAULT_DURATION,
    DEFAULT_PROBE_BACKLOG,
    DEFAULT_RATES,
    DEFAULT_WARM,
    PARTITIONS,
    QUICK_DURATION,
    WARMUP_TIMEOUT,
    Sender,
    Tracker,
    _cpu_seconds,
    _figures,
    _fmt,
    _lengths,
    _phases,
    _send_warm,
    _wait_resolved,
    _warm_phase,
)
from corepay import TrafficGenerator

__all__ = ["run"]

#: Bytes of each message written, as CorePay writes them (measured on generated traffic:
#: outcomes about 705 bytes; a changelog entry lists the transactions a batch resolved in one
#: partition, and is at least 69 bytes).
OUTCOME_BYTES = 705
CHANGELOG_BYTES = 69
STAGES = ("decide", "apply", "pair")


def _topics(run_id: str) -> dict[str, str]:
    return {name: f"relay-{run_id}-{name}" for name in ("raw", "live", "simulation", "resolved")}


def _padded(fields: dict[str, Any], size: int) -> bytes:
    body = orjson.dumps(fields)
    return body[:-1] + b',"pad":"' + b"x" * max(size - len(body) - 9, 0) + b'"}'


# --- one relay process -----------------------------------------------------------------------


def relay(stage: str, bootstrap: str, run_id: str) -> None:
    """Run one stage until SIGTERM."""
    topics = _topics(run_id)
    reads = {"decide": ["raw"], "apply": ["live"], "pair": ["live", "simulation"]}[stage]
    consumer = KafkaConsumer(
        *(topics[t] for t in reads),
        bootstrap_servers=[bootstrap],
        group_id=f"relay-{run_id}-{stage}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        metrics_enabled=False,
    )
    producer = KafkaProducer(
        bootstrap_servers=[bootstrap],
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        batch_size=65536,
        metrics_enabled=False,
    )
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    halves: dict[str, int] = {}
    while not stop:
        batches = consumer.poll(timeout_ms=500, max_records=500)
        futures = []
        paired: dict[int, tuple[bytes, list[str]]] = {}  # per partition, as the detector's
        for tp, records in batches.items():
            for r in records:
                if stage == "decide":
                    tid = orjson.loads(r.value)["transaction_id"]
                    for path in ("live", "simulation"):
                        value = _padded({"transaction_id": tid, "path": path}, OUTCOME_BYTES)
                        futures.append(
                            producer.send(topics[path], key=r.key, value=value, headers=r.headers)
                        )
                elif stage == "pair":
                    tid = orjson.loads(r.value)["transaction_id"]
                    if halves.pop(tid, None) is None:
                        halves[tid] = 1
                        continue
                    paired.setdefault(tp.partition, (r.key, []))[1].append(tid)
        for partition, (key, tids) in paired.items():
            entry = {"schema_version": 1, "transaction_ids": tids, "alerted": False}
            value = _padded(entry, CHANGELOG_BYTES)
            futures.append(
                producer.send(topics["resolved"], key=key, value=value, partition=partition)
            )
        for future in futures:
            future.get(timeout=30)
        if batches:
            consumer.commit_async()
    consumer.close(autocommit=False)
    producer.close(timeout=10)


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
    warm: float = DEFAULT_WARM,
    progress: Any = None,
) -> dict[str, Any]:
    """Start the three relays on fresh topics, measure each rate and the probe, stop them.

    First ``warm`` seconds of traffic, as the pipeline's benchmark sends (``_warm_phase``)."""
    say = progress or (lambda _msg: None)
    duration, warm = _lengths(rates, duration, warm, quick)
    run_id = uuid.uuid4().hex[:10]
    prefix = f"bench-{run_id}-"
    topics = _topics(run_id)
    admin = KafkaAdminClient(bootstrap_servers=[bootstrap], client_id="corepay-bench-admin")
    try:
        admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in topics.values()])
    finally:
        admin.close()
    began = time.monotonic()
    procs = {
        stage: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.kafka_relay",
                "--stage",
                stage,
                "--run-id",
                run_id,
                "--bootstrap",
                bootstrap,
            ],
            cwd=Path(__file__).resolve().parent.parent,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        for stage in STAGES
    }
    tracker = sender = None
    try:
        generator = TrafficGenerator(customers=customers, seed=int(run_id[:6], 16))
        pool = probe_backlog + int(duration * 8000) if probe else None
        phases, more = _phases(generator, run_id, prefix, rates, duration, pool)
        warm_phase = _warm_phase(generator, run_id, prefix, len(phases), warm)
        tracker = Tracker(bootstrap, prefix, resolved=topics["resolved"], alerts=None)
        tracker.phases = {p.index: p for p in [*phases, warm_phase]}
        tracker.thread.start()
        sender = Sender(bootstrap, topic=topics["raw"])
        sender.paced(phases[0], 200.0)
        _wait_resolved(tracker, phases[0], WARMUP_TIMEOUT)
        if len(phases[0].resolved) < len(phases[0].stamps):
            raise RuntimeError("relay warm-up did not resolve in time")
        say(f"relays warm after {time.monotonic() - began:.1f} s")
        warm_figures = _send_warm(sender, tracker, warm_phase, drain, say)

        figures = []
        for phase, rate in zip(phases[1 : 1 + len(rates)], rates, strict=True):
            time.sleep(1.0)
            say(f"relay: offering {rate} tx/s for {duration:g} s")
            cpu = _cpu_of(procs)
            elapsed = sender.paced(phase, float(rate))
            _wait_resolved(tracker, phase, drain)
            entry = _figures(phase, float(rate), elapsed, drain)
            entry["relay_cpu_cores"] = _cores(procs, cpu, elapsed)
            figures.append(entry)
            say(
                f"  resolved {entry['resolved_tps']}/s, p50 {entry['latency_ms']['p50']} ms, "
                f"p99 {entry['latency_ms']['p99']} ms"
            )
        probe_figures = None
        if probe:
            time.sleep(1.0)
            say(f"relay probe: as fast as possible for {duration:g} s")
            cpu = _cpu_of(procs)
            elapsed = sender.flood(phases[-1], duration, probe_backlog, more)
            _wait_resolved(tracker, phases[-1], drain)
            probe_figures = _figures(phases[-1], None, elapsed, drain)
            probe_figures["relay_cpu_cores"] = _cores(procs, cpu, elapsed)
            say(f"  resolved {probe_figures['resolved_tps']}/s")
    finally:
        if sender is not None:
            with contextlib.suppress(Exception):
                sender.close()
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for stage, proc in procs.items():
            try:
                codes[stage] = proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                codes[stage] = proc.wait(timeout=10)
        if tracker is not None:
            with contextlib.suppress(Exception):
                tracker.close()
    return {
        "rates": figures,
        "max_sustained_tps": None if probe_figures is None else probe_figures["resolved_tps"],
        "probe": probe_figures,
        "warm": warm_figures,
        "warm_s": warm,
        "message_bytes": {"outcome": OUTCOME_BYTES, "changelog": CHANGELOG_BYTES},
        "exit_codes": codes,
        "total_s": round(time.monotonic() - began, 1),
    }


def _cpu_of(procs: dict[str, subprocess.Popen[bytes]]) -> dict[str, float | None]:
    return {stage: _cpu_seconds(proc.pid) for stage, proc in procs.items()}


def _cores(
    procs: dict[str, subprocess.Popen[bytes]], before: dict[str, float | None], elapsed: float
) -> dict[str, float | None]:
    after = _cpu_of(procs)
    return {
        stage: None
        if before[stage] is None or after[stage] is None
        else round((after[stage] - before[stage]) / elapsed, 2)  # type: ignore[operator]
        for stage in procs
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"{'offered/s':>10} {'resolved/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9}"
        "  relay cpu cores (decide/apply/pair)"
    ]
    rows = [(r, f"{r['offered_tps']:.0f}") for r in result["rates"]]
    if result["probe"] is not None:
        rows.append((result["probe"], "max"))
    for r, offered in rows:
        lat = r["latency_ms"]
        cores = "/".join(
            "-" if r["relay_cpu_cores"][s] is None else f"{r['relay_cpu_cores'][s]:.2f}"
            for s in STAGES
        )
        lines.append(
            f"{offered:>10} {r['resolved_tps']:>11.1f} {lat['p50'] or 0:>8.1f} "
            f"{lat['p99'] or 0:>8.1f} {lat['p99.9'] or 0:>9.1f}  {cores}"
        )
    warm = result.get("warm")
    if warm is not None:
        lines.append(
            f"\nbefore these, {result['warm_s']:g} s at {warm['offered_tps']:.0f} tx/s "
            f"to warm the broker up, not counted: p99 {_fmt(warm['latency_ms']['p99'])} ms"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.kafka_relay",
        description="Bare kafka-python relays in the pipeline's shape: CorePay's Kafka floor.",
    )
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="broker host:port")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--run-id", help=argparse.SUPPRESS)
    parser.add_argument(
        "--rates", default=",".join(map(str, DEFAULT_RATES)), help="offered tx/s, comma-separated"
    )
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION, help="s per phase")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_DURATION:g} s per phase")
    parser.add_argument("--no-probe", action="store_true", help="skip the throughput probe")
    parser.add_argument(
        "--warm", type=float, default=DEFAULT_WARM, help="s of traffic before measuring"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.stage:
        relay(args.stage, args.bootstrap, args.run_id)
        return 0
    result = run(
        args.bootstrap,
        [int(r) for r in args.rates.split(",")],
        args.duration,
        args.quick,
        probe=not args.no_probe,
        warm=args.warm,
        progress=lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True),
    )
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
