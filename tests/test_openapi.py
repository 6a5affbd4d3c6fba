"""The ingestion API keeps to its OpenAPI document: schemathesis against the running app."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from importlib import resources

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from werkzeug.serving import make_server

from corepay.backends.memory import MemoryBus
from corepay.services.ingestion import create_app
from corepay.settings import Settings

KEY = "openapi-test-key-0123456789"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    ignored_auth,
]


def _serve() -> tuple[str, MemoryBus]:
    bus = MemoryBus()
    app = create_app(Settings(api_keys=KEY, max_batch=20), bus=bus)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _servers.append(server)
    return f"http://127.0.0.1:{server.server_port}", bus


_servers: list = []
BASE_URL, BUS = _serve()
schema = schemathesis.openapi.from_url(f"{BASE_URL}/openapi.json")


@pytest.fixture(scope="module", autouse=True)
def _stop_server() -> Iterator[None]:
    yield
    for server in _servers:
        server.shutdown()
        server.server_close()


def test_the_served_document_is_the_one_in_the_repository():
    repo = json.loads(
        resources.files("corepay.services").joinpath("openapi.json").read_text("utf-8")
    )
    served = schema.raw_schema
    assert served["paths"] == repo["paths"] and served["info"] == repo["info"]
    assert served["components"]["schemas"]["Batch"]["properties"]["transactions"]["maxItems"] == 20


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_the_api_answers_every_generated_request_as_documented(case):
    # No 5xx, and every status, content type, header and body as the document says.
    case.call_and_validate(
        base_url=BASE_URL, headers={"Authorization": f"Bearer {KEY}"}, checks=CHECKS
    )


def test_the_documented_example_is_accepted_replayed_and_conflicts_as_documented():
    # Generated payments rarely pass every rule (an ISO currency, a real country), so the
    # accepting paths are driven by the document's own example, through schemathesis' checks.
    documented = schema.raw_schema["components"]["schemas"]["Transaction"]["example"]
    example = {**documented, "transaction_id": "tx-example-accepted"}  # an id of its own
    operation = schema["/v1/transactions"]["POST"]
    auth = {"Authorization": f"Bearer {KEY}"}
    before = len(BUS.messages("raw_transactions"))
    statuses = []
    for body in (example, example, {**example, "amount": "99.00"}):
        case = operation.Case(body=body, media_type="application/json")
        response = case.call_and_validate(base_url=BASE_URL, headers=auth, checks=CHECKS)
        statuses.append(response.status_code)
    assert statuses == [202, 202, 409]
    assert len(BUS.messages("raw_transactions")) == before + 1
    batch = schema["/v1/transactions:batch"]["POST"].Case(
        body={"transactions": [{**example, "transaction_id": "tx-batch-example"}]},
        media_type="application/json",
    )
    response = batch.call_and_validate(base_url=BASE_URL, headers=auth, checks=CHECKS)
    assert response.json()["results"][0]["status"] == 202
