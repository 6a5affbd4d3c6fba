"""``corepay demo``: generated traffic through the whole pipeline, in one process."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corepay.backends.memory import MemoryBus, MemoryTwinStore
from corepay.bus import ALL_TOPICS, dead_letter_topic
from corepay.errors import ValidationError
from corepay.heap import fewer_full_collections
from corepay.pipeline import Pipeline
from corepay.riskmodel import RiskModel
from corepay.traffic import TrafficGenerator
from corepay.training import default_model
from corepay.wire import encode_twin

__all__ = ["run_demo"]

# One request in this many is sent malformed, to show ingestion's validation at work.
_MALFORMED_EVERY = 400


def _malform(request: dict[str, Any], serial: int) -> dict[str, Any]:
    bad = dict(request)
    kind = serial % 3
    if kind == 0:
        bad["amount"] = "-" + str(bad["amount"])
    elif kind == 1:
        bad["currency"] = "EURO"
    else:
        bad["card_number"] = "4111111111111111"
    return bad


def run_demo(
    *,
    transactions: int = 5000,
    customers: int = 200,
    seed: int = 0,
    batch_size: int = 500,
    out: Path | None = None,
    progress: Callable[[int], None] | None = None,
    live_model: RiskModel | None = None,
    twin_model: RiskModel | None = None,
) -> dict[str, Any]:
    """Run ``transactions`` generated payments through the pipeline; return the summary.

    The same ``(transactions, customers, seed, batch_size)`` gives the same decisions and the
    same divergences on every run. With ``out``, every topic is written there as JSON Lines,
    one message value per line, plus the final twins as ``twins.jsonl``.
    """
    # Models first: a default model is trained here, outside the measured run.
    live_model = live_model or default_model("live")
    twin_model = twin_model or default_model("simulation")
    bus, store = MemoryBus(), MemoryTwinStore()
    traffic = TrafficGenerator(customers=customers, seed=seed)
    rejected: dict[str, int] = {}
    started = time.perf_counter()
    with (
        fewer_full_collections(),
        Pipeline(
            bus,
            store,
            seed=seed,
            batch_size=batch_size,
            live_model=live_model,
            twin_model=twin_model,
        ) as pipeline,
    ):
        batch: list[dict[str, Any]] = []
        for serial, request in enumerate(traffic.requests(transactions), start=1):
            if serial % _MALFORMED_EVERY == 0:
                try:
                    pipeline.submit(_malform(request, serial // _MALFORMED_EVERY))
                except ValidationError as exc:
                    for error in exc.errors:
                        rejected[error.field] = rejected.get(error.field, 0) + 1
            batch.append(request)
            if len(batch) == batch_size:
                _flush(pipeline, batch, progress)
        _flush(pipeline, batch, progress)
        elapsed = time.perf_counter() - started
        summary = _summary(pipeline, bus, store, elapsed, rejected)
    summary.update(
        seed=seed,
        customers=customers,
        batch_size=batch_size,
        models={"live": live_model.version, "simulation": twin_model.version},
    )
    if out is not None:
        _write(out, bus, store)
    return summary


def _flush(
    pipeline: Pipeline, batch: list[dict[str, Any]], progress: Callable[[int], None] | None
) -> None:
    pipeline.submit_many(batch)
    pipeline.drain()
    if progress is not None and batch:
        progress(len(batch))
    batch.clear()


def _summary(
    pipeline: Pipeline,
    bus: MemoryBus,
    store: MemoryTwinStore,
    elapsed: float,
    rejected: dict[str, int],
) -> dict[str, Any]:
    decisions = {path: dict(sorted(c.items())) for path, c in pipeline.decisions.items()}
    dead = {t: n for t in ALL_TOPICS if (n := len(bus.messages(dead_letter_topic(t))))}
    return {
        "transactions": pipeline.submitted,
        "rejected": sum(rejected.values()),
        "rejected_by_field": dict(sorted(rejected.items())),
        "live_outcomes": len(bus.messages("live_outcome")),
        "simulation_outcomes": len(bus.messages("simulation_outcome")),
        "decisions": decisions,
        "divergences": sum(pipeline.alerts.values()),
        "divergences_by_kind": dict(sorted(pipeline.alerts.items())),
        "unpaired": pipeline.detector.pending,
        "dead_letters": dead,
        "twins": len(store),
        "twin_conflicts": pipeline.twin_service.conflicts,
        "elapsed_s": round(elapsed, 3),
        "throughput_tps": round(pipeline.submitted / elapsed, 1) if elapsed else 0.0,
        "latency_ms": pipeline.latency.percentiles(50, 99),
    }


def _write(out: Path, bus: MemoryBus, store: MemoryTwinStore) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for topic in bus.topics():
        with (out / f"{topic}.jsonl").open("wb") as f:
            for message in bus.messages(topic):
                f.write(message.value + b"\n")
    with (out / "twins.jsonl").open("wb") as f:
        for twin in store:
            f.write(encode_twin(twin) + b"\n")
