"""The secure ingestion edge: API keys, idempotency, batches and limits; the twin API's token."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from corepay.auth import Credentials, bearer_token, hash_key
from corepay.backends.memory import MemoryBus, MemoryTwinStore
from corepay.bus import RAW_TRANSACTIONS
from corepay.errors import ConfigurationError, UnavailableError
from corepay.idempotency import Claim, IdempotencyCache
from corepay.services.ingestion import create_app
from corepay.services.twin_api import create_twin_app
from corepay.settings import Settings
from corepay.twin_client import HttpTwinClient
from corepay.wire import decode_transaction, parse_transaction

KEY = "key-for-tests-0123456789"
OTHER_KEY = "another-key-for-tests-42"
VALID = {
    "transaction_id": "txn-edge-1",
    "customer_id": "cust-42",
    "amount": "12.50",
    "currency": "EUR",
    "merchant_id": "m-7",
    "merchant_category": "5411",
    "country": "DE",
    "channel": "pos",
    "timestamp": "2026-11-24T09:30:00Z",
}


def _client(bus: MemoryBus, **settings: Any) -> FlaskClient:
    config = {"api_keys": f"{KEY},{hash_key(OTHER_KEY)}", **settings}
    return create_app(Settings(**config), bus=bus).test_client()


def _post(client: FlaskClient, body: Any, key: str | None = KEY, path: str = "/v1/transactions"):
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    return client.post(
        path, data=json.dumps(body), content_type="application/json", headers=headers
    )


def _published(bus: MemoryBus) -> list[str]:
    return [decode_transaction(m.value).transaction_id for m in bus.messages(RAW_TRANSACTIONS)]


# --- API keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Basic {KEY}",
        "Bearer wrong-key-0123456789",
        f"Bearer {KEY}x",
    ],
)
def test_without_a_valid_key_the_api_answers_401_and_publishes_nothing(authorization):
    bus = MemoryBus()
    client = _client(bus)
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.post(
        "/v1/transactions", data=json.dumps(VALID), content_type="application/json", headers=headers
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.get_json()["error"] == "unauthorized"
    assert KEY not in response.get_data(as_text=True)
    assert _published(bus) == []


def test_plain_and_hashed_keys_are_both_accepted_and_probes_need_none():
    bus = MemoryBus()
    client = _client(bus)
    assert _post(client, VALID, key=KEY).status_code == 202
    assert (
        _post(client, {**VALID, "transaction_id": "txn-edge-2"}, key=OTHER_KEY).status_code == 202
    )
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert client.get(path).status_code == 200


def test_credentials_compare_every_key_and_refuse_weak_configuration():
    keys = Credentials([KEY, hash_key(OTHER_KEY)], what="COREPAY_API_KEYS")
    assert keys.accepts(KEY) and keys.accepts(OTHER_KEY)
    assert not keys.accepts(None) and not keys.accepts("") and not keys.accepts(hash_key(KEY))
    assert bearer_token("bearer  abc ") == "abc" and bearer_token("Token abc") is None
    assert KEY not in repr(keys)
    with pytest.raises(ConfigurationError, match="entry 2 is shorter") as short:
        Credentials([KEY, "tiny"], what="COREPAY_API_KEYS")
    assert "tiny" not in str(short.value)
    with pytest.raises(ConfigurationError, match="not 64 hex digits"):
        Credentials(["sha256:abc"], what="COREPAY_API_KEYS")
    assert KEY not in repr(Settings(api_keys=KEY, twin_token=KEY))


# --- idempotency -----------------------------------------------------------------------------


def test_the_same_transaction_again_is_acknowledged_without_a_second_publish():
    bus = MemoryBus()
    client = _client(bus)
    first = _post(client, VALID)
    # The same transaction, written differently: key order and an equal amount.
    again = _post(client, {**dict(reversed(list(VALID.items()))), "amount": "12.500"})
    assert first.status_code == again.status_code == 202
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert _published(bus) == ["txn-edge-1"]


def test_another_transaction_under_an_accepted_id_is_a_conflict():
    bus = MemoryBus()
    client = _client(bus)
    assert _post(client, VALID).status_code == 202
    response = _post(client, {**VALID, "amount": "99.00"})
    assert response.status_code == 409
    assert response.get_json()["transaction_id"] == "txn-edge-1"
    assert _published(bus) == ["txn-edge-1"]


def test_after_the_window_the_id_is_forgotten():
    now = [0.0]
    cache = IdempotencyCache(60.0, clock=lambda: now[0])
    txn = parse_transaction(VALID)
    assert cache.claim(txn)[0] is Claim.NEW
    cache.complete(txn.transaction_id, {"status": "accepted"})
    now[0] = 59.0
    assert cache.claim(txn) == (Claim.REPLAY, {"status": "accepted"})
    now[0] = 121.0  # completed at 0, so remembered until 60
    assert cache.claim(txn)[0] is Claim.NEW


def test_a_failed_publish_is_forgotten_so_the_retry_publishes():
    cache = IdempotencyCache(60.0)
    txn = parse_transaction(VALID)
    assert cache.claim(txn)[0] is Claim.NEW
    cache.abort(txn.transaction_id)
    assert cache.claim(txn)[0] is Claim.NEW


def test_concurrent_posts_of_one_transaction_publish_it_once():
    bus = MemoryBus()
    app = create_app(Settings(api_keys=KEY), bus=bus)
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def post() -> None:
        client = app.test_client()
        barrier.wait()
        statuses.append(_post(client, VALID).status_code)

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert statuses == [202] * 8
    assert _published(bus) == ["txn-edge-1"]


def test_the_memory_stays_bounded():
    cache = IdempotencyCache(3600.0, max_entries=100)
    for i in range(250):
        txn = parse_transaction({**VALID, "transaction_id": f"t-{i}"})
        assert cache.claim(txn)[0] is Claim.NEW
        cache.complete(txn.transaction_id, {})
    assert len(cache) == 100


# --- batches and limits ----------------------------------------------------------------------


def test_a_batch_answers_per_item_and_publishes_only_what_it_accepts():
    bus = MemoryBus()
    client = _client(bus)
    assert _post(client, {**VALID, "transaction_id": "already"}).status_code == 202
    items = [
        {**VALID, "transaction_id": "b-1"},
        {**VALID, "transaction_id": "b-2", "currency": "EURO"},  # invalid
        {**VALID, "transaction_id": "already"},  # accepted before: replayed
        {**VALID, "transaction_id": "already", "amount": "1.00"},  # conflict
        {**VALID, "transaction_id": "b-1"},  # again in the same batch: replayed
        {**VALID, "transaction_id": "b-1", "amount": "3.00"},  # conflict within the batch
        "not an object",
    ]
    response = _post(client, {"transactions": items}, path="/v1/transactions:batch")
    assert response.status_code == 200
    body = response.get_json()
    results = body["results"]
    assert [r["index"] for r in results] == list(range(len(items)))
    assert [r["status"] for r in results] == [202, 400, 202, 409, 202, 409, 400]
    assert results[1]["fields"][0]["field"] == "currency"
    assert results[2]["replayed"] and results[4]["replayed"]
    assert results[4]["offset"] == results[0]["offset"]
    assert (body["accepted"], body["rejected"]) == (3, 4)
    assert sorted(_published(bus)) == ["already", "b-1"]


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"transactions": []}, 400, "empty_batch"),
        ([VALID], 400, "invalid_batch"),
        ({"transactions": [VALID], "extra": 1}, 400, "invalid_batch"),
        (
            {"transactions": [{**VALID, "transaction_id": f"t{i}"} for i in range(4)]},
            413,
            "batch_too_large",
        ),
    ],
)
def test_a_malformed_or_oversized_batch_is_refused_whole(body, status, error):
    bus = MemoryBus()
    response = _post(_client(bus, max_batch=3), body, path="/v1/transactions:batch")
    assert response.status_code == status and response.get_json()["error"] == error
    assert _published(bus) == []


def test_a_body_past_the_size_limit_is_413():
    bus = MemoryBus()
    big = {"transactions": [{**VALID, "transaction_id": f"t{i}"} for i in range(50)]}
    response = _post(_client(bus, max_request_bytes=2048), big, path="/v1/transactions:batch")
    assert response.status_code == 413 and "2048 bytes" in response.get_json()["message"]


class _DownBus(MemoryBus):
    def publish_many(self, records):
        raise UnavailableError("bus down for the test")


def test_a_batch_the_bus_refuses_is_503_per_item_and_can_be_retried():
    bus = _DownBus()
    client = _client(bus)
    items = [{**VALID, "transaction_id": f"d-{i}"} for i in range(3)]
    body = _post(client, {"transactions": items}, path="/v1/transactions:batch").get_json()
    assert [r["status"] for r in body["results"]] == [503] * 3
    assert body["results"][0]["error"] == "bus_unavailable"
    # Nothing was remembered as accepted: the retry is published.
    bus.publish_many = MemoryBus.publish_many.__get__(bus)  # the bus is back
    body = _post(client, {"transactions": items}, path="/v1/transactions:batch").get_json()
    assert [r["status"] for r in body["results"]] == [202] * 3
    assert not any(r.get("replayed") for r in body["results"])


def test_readyz_says_when_the_bus_is_out_of_reach_and_keeps_the_why_in_the_log(caplog):
    class Unreachable(MemoryBus):
        def check(self) -> None:
            raise UnavailableError("Kafka at 127.0.0.1:1 refused the connection")

    response = _client(Unreachable()).get("/readyz")
    assert response.status_code == 503
    # The public port does not tell the world what its backends answered; the log does.
    assert response.get_json()["checks"] == {"bus": "unavailable"}
    assert "Kafka at 127.0.0.1:1 refused the connection" in caplog.text


# --- the twin service's token ----------------------------------------------------------------


@pytest.fixture
def twin_api() -> Iterator[str]:
    server = make_server(
        "127.0.0.1",
        0,
        create_twin_app(MemoryTwinStore(), token="twin-token-0123456789"),
        threaded=True,
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


def test_the_twin_api_wants_its_token_and_the_client_sends_it(twin_api: str):
    with_token = HttpTwinClient(twin_api, token="twin-token-0123456789")
    without = HttpTwinClient(twin_api)
    wrong = HttpTwinClient(twin_api, token="not-the-twin-token-000")
    try:
        assert with_token.get_many(["cust-1"]) == {}
        assert with_token.get_many_checking({"cust-1": ["txn-1"]}) == {}
        for client in (without, wrong):
            for read, args in (
                (client.get_many, (["cust-1"],)),
                (client.get_many_checking, ({"cust-1": ["txn-1"]},)),
            ):
                with pytest.raises(UnavailableError, match="COREPAY_TWIN_TOKEN") as refused:
                    read(*args)
                assert "twin-token-0123456789" not in str(refused.value)
    finally:
        for client in (with_token, without, wrong):
            client.close()


def test_hash_key_prints_what_the_api_accepts():
    from click.testing import CliRunner

    from corepay.cli import main

    hashed = CliRunner().invoke(main, ["hash-key"], input=f"{KEY}\n")
    assert hashed.exit_code == 0 and hashed.stdout.strip() == hash_key(KEY)
    assert Credentials([hashed.stdout.strip()]).accepts(KEY)
    fresh = CliRunner().invoke(main, ["hash-key"], input="")
    new_key, new_hash = fresh.stdout.split()
    assert len(new_key) >= 32 and Credentials([new_hash]).accepts(new_key)


def test_no_key_reaches_logs_metrics_or_answers(caplog):
    caplog.set_level(logging.DEBUG)
    bus = _DownBus()
    client = _client(bus)
    wrong = "a-wrong-key-that-is-long-enough"
    seen = [
        _post(client, VALID, key=wrong).get_data(as_text=True),
        _post(client, VALID, key=KEY).get_data(as_text=True),  # a valid key, accepted
        _post(client, {"transactions": [VALID]}, path="/v1/transactions:batch").get_data(  # 503
            as_text=True
        ),
        client.get("/metrics").get_data(as_text=True),
    ]
    assert "corepay_http_requests_total" in seen[-1]
    for text in [*seen, caplog.text]:
        assert KEY not in text and OTHER_KEY not in text and wrong not in text


def test_two_batches_sharing_ids_in_opposite_orders_publish_each_once():
    bus = MemoryBus()
    app = create_app(Settings(api_keys=KEY), bus=bus)
    a, b = ({**VALID, "transaction_id": tid} for tid in ("cross-a", "cross-b"))
    answers: list[list[int]] = []
    barrier = threading.Barrier(2)

    def post(items: list[dict]) -> None:
        client = app.test_client()
        barrier.wait()
        body = _post(client, {"transactions": items}, path="/v1/transactions:batch").get_json()
        answers.append([r["status"] for r in body["results"]])

    threads = [threading.Thread(target=post, args=(order,)) for order in ([a, b], [b, a])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads)
    assert answers == [[202, 202], [202, 202]]
    assert sorted(_published(bus)) == ["cross-a", "cross-b"]


def test_a_chunked_body_is_held_to_the_size_limit_too():
    bus = MemoryBus()
    client = _client(bus, max_request_bytes=1024)
    padded = json.dumps(VALID) + " " * 2000  # valid JSON, too long

    response = client.post(
        "/v1/transactions",
        input_stream=io.BytesIO(padded.encode()),  # no Content-Length, as a chunked body
        environ_overrides={"wsgi.input_terminated": True},  # what gunicorn says of one
        content_type="application/json",
        headers={"Authorization": f"Bearer {KEY}", "Transfer-Encoding": "chunked"},
    )
    assert response.status_code == 413 and _published(bus) == []


def test_request_metrics_do_not_grow_a_series_per_made_up_method_and_no_static_files():
    from prometheus_client import REGISTRY

    client = _client(MemoryBus())
    for method in ("FOOA", "FOOB"):
        client.open("/v1/transactions", method=method, headers={"Authorization": f"Bearer {KEY}"})
    labels = {
        s.labels["method"]
        for m in REGISTRY.collect()
        if m.name == "corepay_http_requests"
        for s in m.samples
        if s.labels.get("service") == "ingestion"
    }
    assert "FOOA" not in labels and "other" in labels
    assert client.get("/static/anything").status_code == 404
    not_allowed = client.get("/v1/transactions", headers={"Authorization": f"Bearer {KEY}"})
    assert not_allowed.status_code == 405 and "POST" in not_allowed.headers["Allow"]


def test_the_twin_api_is_not_ready_until_its_twins_are_current():
    from corepay.services.twin import TwinService

    bus, store = MemoryBus(), MemoryTwinStore()
    service = TwinService(bus, store)
    client = create_twin_app(store, bus=bus, current=lambda: service.status).test_client()
    first = client.get("/readyz")
    assert first.status_code == 503 and first.get_json()["checks"]["twins"] == "starting"
    service.poll_once(timeout=0.1)  # joins, rebuilds its partitions from live_outcome
    assert client.get("/readyz").status_code == 200
    service.close()


def test_a_twin_query_answers_what_each_twin_applied_of_its_customers_ids():
    from corepay.models import Decision
    from corepay.services.twin import update_twin
    from corepay.twin import live_decision

    store = MemoryTwinStore()
    txns = [parse_transaction({**VALID, "transaction_id": f"txn-{i}"}) for i in range(5)]
    other = parse_transaction({**VALID, "transaction_id": "txn-0", "customer_id": "cust-7"})
    update_twin(store, "cust-42", [live_decision(t, Decision.APPROVE, "m") for t in txns])
    update_twin(store, "cust-7", [live_decision(other, Decision.DECLINE, "m")])
    client = create_twin_app(store).test_client()
    full = {
        t["customer_id"]: t
        for t in client.get("/v1/twins?customer_id=cust-42&customer_id=cust-7").get_json()["twins"]
    }

    answer = client.post(
        "/v1/twins:query",
        json={
            "customers": {
                "cust-42": ["txn-4", "txn-0", "txn-9"],
                "cust-7": ["txn-4"],  # applied to cust-42's twin, not to this one
                "cust-none": ["txn-1"],
            }
        },
    )
    assert answer.status_code == 200
    twins = {t["customer_id"]: t for t in answer.get_json()["twins"]}
    assert twins.keys() == {"cust-42", "cust-7"}
    assert twins["cust-42"]["applied"] == ["txn-0", "txn-4"]
    assert twins["cust-7"]["applied"] == []
    for customer, twin in twins.items():
        assert {**twin, "applied": full[customer]["applied"]} == full[customer]
    mine = client.post("/v1/twins:query", json={"customers": {"cust-7": ["txn-0"]}})
    assert mine.get_json()["twins"][0]["applied"] == ["txn-0"]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{not json", 'send {"customers"'),
        (b"[]", 'send {"customers"'),
        (b'{"customer_ids": ["c"]}', 'send {"customers"'),
        (b'{"customers": {}}', "customers must map 1 to 1000 customer ids"),
        (b'{"customers": ["c"]}', "customers must map 1 to 1000 customer ids"),
        (b'{"customers": {"c": "t-1"}}', "customers['c'] must be a list of transaction ids"),
        (b'{"customers": {"c": ["t-1", 7]}}', "customers['c'] must be a list of transaction"),
        (b'{"customers": {"c": []}, "x": 1}', "unknown field(s): x"),
    ],
)
def test_a_twin_query_that_is_malformed_is_refused_with_what_is_wrong(body, problem):
    answer = create_twin_app(MemoryTwinStore()).test_client().post("/v1/twins:query", data=body)
    assert answer.status_code == 400
    assert problem in answer.get_json()["message"]


def test_a_twin_query_is_limited_in_customers_and_size():
    from corepay.services.twin_api import MAX_QUERY_BYTES

    client = create_twin_app(MemoryTwinStore()).test_client()
    many = {f"c-{i}": [] for i in range(1001)}
    assert client.post("/v1/twins:query", json={"customers": many}).status_code == 400
    del many["c-1000"]
    assert client.post("/v1/twins:query", json={"customers": many}).status_code == 200
    huge = client.post("/v1/twins:query", data=b" " * (MAX_QUERY_BYTES + 1))
    assert huge.status_code == 413 and huge.get_json()["error"] == "too_large"


def test_the_twin_service_refuses_a_body_it_would_not_take_before_reading_it():
    import socket

    from corepay.services.serve import _http_server
    from corepay.services.twin_api import MAX_QUERY_BYTES

    app = create_twin_app(MemoryTwinStore(), token="twin-token-0123456789")
    with (
        _http_server(app, "127.0.0.1", 0, "test-twins") as port,
        socket.create_connection(("127.0.0.1", port), timeout=10) as conn,
    ):
        # No token, and a body four times the limit of which only the head is sent: the
        # answer comes at once, without the server waiting for the rest.
        conn.sendall(
            b"POST /v1/twins:query HTTP/1.1\r\nHost: twins\r\n"
            + f"Content-Length: {4 * MAX_QUERY_BYTES}\r\n\r\n".encode()
            + b" " * 1024
        )
        assert conn.recv(100).startswith(b"HTTP/1.1 413")
