"""``corepay train`` and ``corepay generate`` as a user runs them, and models in the demo."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from werkzeug.serving import make_server

from corepay.backends import open_bus
from corepay.backends.memory import MemoryBus
from corepay.bus import RAW_TRANSACTIONS
from corepay.cli import main
from corepay.riskmodel import load_model
from corepay.services.ingestion import create_app
from corepay.settings import Settings
from corepay.wire import decode_transaction, parse_json, parse_transaction


def _run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_train_json_reports_held_out_metrics_and_saves_a_loadable_model(tmp_path: Path) -> None:
    out = tmp_path / "live.joblib"
    report = json.loads(
        _run("train", "--out", str(out), "-n", "4000", "-c", "300", "-s", "3", "--json")
    )
    assert {"roc_auc", "precision", "recall", "version", "features", "thresholds"} <= set(report)
    assert 0.8 < report["roc_auc"] <= 1.0 and 0 < report["precision"] <= 1
    model = load_model(out, for_path="live")
    assert model.version == report["version"]
    assert dict(model.metadata.metrics)["roc_auc"] == report["roc_auc"]
    assert model.metadata.training["seed"] == 3 and model.metadata.training["transactions"] == 4000


def test_train_prints_a_readable_report_and_refuses_bad_thresholds(tmp_path: Path) -> None:
    text = _run("train", "--out", str(tmp_path / "m.joblib"), "-n", "2000", "--path", "simulation")
    assert "ROC AUC" in text and "velocity_1h" in text and "(simulation path)" in text
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--out",
            str(tmp_path / "x"),
            "--review-threshold",
            "0.9",
            "--decline-threshold",
            "0.5",
        ],
    )
    assert result.exit_code == 2 and "review <= decline" in result.output
    assert not (tmp_path / "x").exists()


def test_demo_runs_on_model_files_and_refuses_one_for_the_other_path(tmp_path: Path) -> None:
    live, twin = tmp_path / "live.joblib", tmp_path / "twin.joblib"
    _run("train", "--out", str(live), "-n", "3000", "-s", "1")
    _run("train", "--out", str(twin), "-n", "3000", "-s", "1", "--path", "simulation")
    summary = json.loads(
        _run("demo", "--json", "-n", "300", "--live-model", str(live), "--twin-model", str(twin))
    )
    assert summary["models"] == {
        "live": "live-logit-s1-n3000",
        "simulation": "simulation-logit-s1-n3000",
    }
    result = CliRunner().invoke(main, ["demo", "-n", "10", "--live-model", str(twin)])
    assert result.exit_code == 1
    assert "is for the simulation path, not the live path" in result.output


def test_generate_writes_wire_format_payments_and_their_labels_deterministically(
    tmp_path: Path,
) -> None:
    for name in ("a", "b"):
        _run(
            "generate",
            "-n",
            "400",
            "-c",
            "50",
            "-s",
            "9",
            "--out",
            str(tmp_path / f"{name}.jsonl"),
            "--labels",
            str(tmp_path / f"{name}.labels"),
        )
    payments = (tmp_path / "a.jsonl").read_bytes()
    assert payments == (tmp_path / "b.jsonl").read_bytes()
    lines = payments.splitlines()
    labels = [json.loads(x) for x in (tmp_path / "a.labels").read_text().splitlines()]
    assert len(lines) == len(labels) == 400
    for line, label in zip(lines, labels, strict=True):
        txn = parse_transaction(parse_json(line))  # what the ingestion API accepts as is
        assert label["transaction_id"] == txn.transaction_id
        assert isinstance(label["is_fraud"], bool)
    patterns = {label["pattern"] for label in labels}
    assert "normal" in patterns and len(patterns) >= 3
    assert any(label["is_fraud"] for label in labels)


def test_generate_needs_somewhere_to_put_the_payments() -> None:
    result = CliRunner().invoke(main, ["generate", "-n", "5"])
    assert result.exit_code == 2 and "--out, --labels and/or --to" in result.output


@pytest.fixture
def ingestion() -> Iterator[tuple[str, MemoryBus]]:
    bus = MemoryBus()
    app = create_app(Settings(api_keys="generate-test-key-0123"), bus=bus)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", bus
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


def test_generate_sends_every_payment_through_the_ingestion_api(
    ingestion: tuple[str, MemoryBus], tmp_path: Path
) -> None:
    url, bus = ingestion
    refused = CliRunner().invoke(main, ["generate", "-n", "5", "--to", url])
    assert refused.exit_code == 1 and "refused the API key (401)" in refused.output
    _run(
        "generate",
        "-n",
        "250",
        "-s",
        "4",
        "--to",
        url,
        "--out",
        str(tmp_path / "p.jsonl"),
        "--api-key",
        "generate-test-key-0123",
    )
    sent = [
        json.loads(x)["transaction_id"] for x in (tmp_path / "p.jsonl").read_text().splitlines()
    ]
    published = [decode_transaction(m.value).transaction_id for m in bus.messages(RAW_TRANSACTIONS)]
    assert sorted(published) == sorted(sent) and len(sent) == 250


@pytest.mark.kafka
def test_generate_publishes_straight_onto_kafka() -> None:
    bootstrap = os.environ.get("COREPAY_TEST_KAFKA_BOOTSTRAP", "").strip()
    if not bootstrap:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true, so Kafka must be tested: set COREPAY_TEST_KAFKA_BOOTSTRAP")
        pytest.skip("needs a broker: scripts/kafka start, then set COREPAY_TEST_KAFKA_BOOTSTRAP")
    url = f"kafka://{bootstrap}?partitions=4"
    seed = random.randrange(10**9)  # transaction ids carry the seed: this run's own
    since_ms = int(time.time() * 1000) - 1000
    result = CliRunner().invoke(main, ["generate", "-n", "120", "-s", str(seed), "--to", url])
    assert result.exit_code == 0, result.output
    assert f"published 120 to raw_transactions on {url}" in result.stderr
    with open_bus(url) as bus:
        messages = bus.replay(RAW_TRANSACTIONS, range(4), since_ms=since_ms)
    ours = [
        m for m in messages if decode_transaction(m.value).transaction_id.startswith(f"tx-{seed}-")
    ]
    assert len(ours) == 120
    assert all(m.key == decode_transaction(m.value).customer_id for m in ours)
    assert all("corepay-ingested-at" in m.headers for m in ours)


def test_generate_stops_with_a_clear_error_when_the_api_is_not_there() -> None:
    result = CliRunner().invoke(main, ["generate", "-n", "5", "--to", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "did not take transaction" in result.output and "0 were sent" in result.output
