"""The command line as a user runs it: ``corepay demo`` and ``corepay serve``."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from corepay.cli import main
from corepay.errors import BackendTimeoutError
from corepay.gateway import SimulatedGateway
from corepay.http_gateway import HttpGateway
from corepay.wire import parse_transaction

CORE_KEYS = {
    "transactions",
    "live_outcomes",
    "simulation_outcomes",
    "divergences",
    "unpaired",
    "twins",
    "throughput_tps",
    "latency_ms",
}


def _demo(*args: str) -> dict:
    result = CliRunner().invoke(main, ["demo", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_demo_json_summary_has_the_documented_keys_and_consistent_counts() -> None:
    summary = _demo("-n", "800", "-c", "40", "-s", "5")
    assert summary.keys() >= CORE_KEYS
    assert summary["transactions"] == 800
    assert summary["live_outcomes"] == summary["simulation_outcomes"] == 800
    assert summary["unpaired"] == 0
    assert 0 < summary["twins"] <= 40
    assert summary["divergences"] == sum(summary["divergences_by_kind"].values())
    assert sum(summary["decisions"]["live"].values()) == 800
    assert set(summary["latency_ms"]) >= {"p50", "p99"}
    assert summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]
    assert summary["throughput_tps"] > 0


def _decisions(out: Path) -> dict[str, tuple]:
    found = {}
    for topic in ("live_outcome", "simulation_outcome"):
        for line in (out / f"{topic}.jsonl").read_text().splitlines():
            o = json.loads(line)
            found[(o["transaction_id"], o["path"])] = (o["decision"], o["score"], o["reasons"])
    return found


def _alerts(out: Path) -> set[tuple[str, str]]:
    lines = (out / "divergence_alert.jsonl").read_text().splitlines()
    return {(a["alert_id"], a["kind"]) for a in map(json.loads, lines)}


def test_demo_is_deterministic_for_a_seed_and_differs_across_seeds(tmp_path: Path) -> None:
    runs = {}
    for name, seed in (("a", "9"), ("b", "9"), ("c", "10")):
        _demo("-n", "600", "-c", "30", "-s", seed, "--out", str(tmp_path / name))
        runs[name] = (_decisions(tmp_path / name), _alerts(tmp_path / name))
    assert runs["a"] == runs["b"]
    assert runs["a"][1], "the demo should produce some divergences"
    assert runs["a"] != runs["c"]


def test_demo_out_writes_every_topic_and_the_twins_as_json_lines(tmp_path: Path) -> None:
    summary = _demo("-n", "500", "-c", "25", "--out", str(tmp_path))
    lines = {p.name: p.read_text().splitlines() for p in tmp_path.glob("*.jsonl")}
    assert {
        "raw_transactions.jsonl",
        "live_outcome.jsonl",
        "simulation_outcome.jsonl",
        "divergence_alert.jsonl",
        "twins.jsonl",
    } <= set(lines)
    assert len(lines["raw_transactions.jsonl"]) == 500
    assert len(lines["live_outcome.jsonl"]) == len(lines["simulation_outcome.jsonl"]) == 500
    assert len(lines["divergence_alert.jsonl"]) == summary["divergences"]
    assert len(lines["twins.jsonl"]) == summary["twins"]
    twins = [json.loads(line) for line in lines["twins.jsonl"]]
    assert sum(t["count"] for t in twins) == 500
    # Each raw line is exactly what the ingestion API accepts.
    from corepay.wire import parse_json, parse_transaction

    for line in lines["raw_transactions.jsonl"][:50]:
        parse_transaction(parse_json(line))


def test_demo_prints_a_readable_summary() -> None:
    result = CliRunner().invoke(main, ["demo", "-n", "300", "-c", "20"])
    assert result.exit_code == 0, result.output
    for text in ("live decisions", "simulation decisions", "divergences", "throughput", "p99"):
        assert text in result.stdout


def test_an_unknown_bus_scheme_is_a_one_line_error_naming_the_known_ones() -> None:
    result = CliRunner().invoke(main, ["serve", "detector", "--bus", "rabbit://x"])
    assert result.exit_code == 1
    assert "memory://" in result.output and "rabbit://x" in result.output
    assert "Traceback" not in result.output


def test_the_engine_refuses_to_start_without_the_twin_service_url() -> None:
    result = CliRunner(env={"COREPAY_TWIN_URL": ""}).invoke(main, ["serve", "engine"])
    assert result.exit_code == 1
    assert "--twin-url" in result.output and "COREPAY_TWIN_URL" in result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


API_KEY = "test-key-0123456789abcdef"
TWIN_TOKEN = "test-twin-token-0123456789"
SECRETS = {"COREPAY_API_KEYS": API_KEY, "COREPAY_TWIN_TOKEN": TWIN_TOKEN}


def _request(url: str, body: bytes | None = None, key: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"} if body else {}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _start(
    service: str, port: int, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "COREPAY_BUS_URL": "memory://",
        "COREPAY_PORT": str(port),
        **(SECRETS if env is None else env),
    }
    with tempfile.NamedTemporaryFile(
        prefix=f"corepay-{service}-", suffix=".log", delete=False
    ) as log:  # the child keeps its own descriptor after this closes
        proc = subprocess.Popen(
            [sys.executable, "-m", "corepay", "serve", service, *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = Path(log.name).read_text(errors="replace")
            raise AssertionError(f"{service} exited with {proc.returncode}:\n{output}")
        try:
            if _request(f"http://127.0.0.1:{port}/healthz")[0] == 200:
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"{service} did not answer /healthz within 20 s")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()


VALID = {
    "transaction_id": "tx-cli-1",
    "customer_id": "cust-1",
    "amount": "12.50",
    "currency": "EUR",
    "merchant_id": "m-1",
    "merchant_category": "5411",
    "country": "DE",
    "channel": "pos",
    "timestamp": "2026-11-24T09:30:00+01:00",
}


@pytest.mark.slow
def test_serve_ingestion_runs_as_a_process_and_stops_cleanly_on_sigterm() -> None:
    port = _free_port()
    proc = _start("ingestion", port)
    try:
        url = f"http://127.0.0.1:{port}/v1/transactions"
        status, body = _request(url, json.dumps(VALID).encode(), key=API_KEY)
        assert (status, body["transaction_id"]) == (202, "tx-cli-1")
        status, body = _request(url, json.dumps({**VALID, "currency": "euro"}).encode(), API_KEY)
        assert status == 400 and body["fields"][0]["field"] == "currency"
        status, body = _request(url, json.dumps(VALID).encode(), key="not-the-key-at-all")
        assert status == 401 and API_KEY not in json.dumps(body)
    finally:
        assert _stop(proc) == 0


@pytest.mark.slow
def test_serve_twin_answers_404_for_an_unknown_customer() -> None:
    port = _free_port()
    proc = _start("twin", port, "--store", "memory://")
    try:
        url = f"http://127.0.0.1:{port}/v1/twins/cust-nobody"
        status, body = _request(url, key=TWIN_TOKEN)
        assert status == 404 and "cust-nobody" in body["message"]
        assert _request(url)[0] == 401
    finally:
        assert _stop(proc) == 0


@pytest.mark.slow
def test_serve_twin_keeps_the_engines_connection_open_between_reads() -> None:
    # The engine reads twins for every batch: one connection for all of them, not one each.
    port = _free_port()
    proc = _start("twin", port, "--store", "memory://")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        sockets = set()
        for i in range(5):
            conn.request(
                "GET",
                f"/v1/twins?customer_id=cust-{i}",
                headers={"Authorization": f"Bearer {TWIN_TOKEN}"},
            )
            response = conn.getresponse()
            assert (response.status, json.loads(response.read())) == (200, {"twins": []})
            assert not response.will_close
            sockets.add(conn.sock)
        assert len(sockets) == 1
    finally:
        assert _stop(proc) == 0  # with that connection still open
        conn.close()


@pytest.mark.slow
def test_serve_gateway_answers_as_the_simulated_gateway_it_serves() -> None:
    port = _free_port()
    proc = _start("gateway", port, "--gateway", "simulated://?seed=7&outage_rate=0")
    txns = [
        parse_transaction({**VALID, "transaction_id": f"tx-gw-{i}", "amount": f"{20 * i + 5}.00"})
        for i in range(150)
    ]
    try:
        with HttpGateway(f"http://127.0.0.1:{port}", timeout=5.0) as gateway:
            over_http = [gateway.authorize(t) for t in txns]
    finally:
        assert _stop(proc) == 0
    local = SimulatedGateway(7, outage_rate=0.0)
    expected = []
    for txn in txns:
        try:
            expected.append(local.authorize(txn).code)
        except BackendTimeoutError:
            expected.append("timeout")
    assert [a.code for a in over_http] == expected
    assert {"APPROVED"} < set(expected)  # some declines among them


def test_serve_gateway_refuses_to_serve_anything_but_a_simulated_one() -> None:
    result = CliRunner().invoke(main, ["serve", "gateway", "--gateway", "http://127.0.0.1:1"])
    assert result.exit_code == 1 and "serves a simulated gateway" in result.output


@pytest.mark.parametrize(
    ("service", "variable"),
    [("ingestion", "COREPAY_API_KEYS"), ("twin", "COREPAY_TWIN_TOKEN")],
)
def test_a_service_refuses_to_start_without_its_secret_unless_told_insecure(
    service: str, variable: str
) -> None:
    env = {k: v for k, v in SECRETS.items() if k != variable}
    with pytest.MonkeyPatch.context() as mp:
        for name in SECRETS:
            mp.delenv(name, raising=False)
        result = CliRunner().invoke(main, ["serve", service], env=env)
    assert result.exit_code == 1
    assert variable in result.output and "--insecure" in result.output


def test_short_api_keys_are_refused_without_showing_them() -> None:
    result = CliRunner().invoke(
        main, ["serve", "ingestion"], env={"COREPAY_API_KEYS": f"{API_KEY},short-key-9"}
    )
    assert result.exit_code == 1
    assert "entry 2 is shorter than 16 characters" in result.output
    assert "short-key-9" not in result.output and API_KEY not in result.output
