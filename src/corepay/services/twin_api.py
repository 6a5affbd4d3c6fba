"""The twin service's internal HTTP API, which the engine reads twins through."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from corepay.auth import Credentials
from corepay.bus import Bus
from corepay.observability import add_ops_routes, checks, count_requests
from corepay.store import TwinStore
from corepay.wire import encode_twin, encode_twins

__all__ = ["create_twin_app"]


def create_twin_app(
    store: TwinStore,
    *,
    token: str | None = None,
    bus: Bus | None = None,
    current: Callable[[], str] | None = None,
) -> Flask:
    """The twin service's internal HTTP API.

    - ``GET /v1/twins/<customer_id>``: the twin (404 when the customer has none).
    - ``GET /v1/twins?customer_id=a&customer_id=b``: ``{"twins": [...]}`` for those that exist.
    - ``POST /v1/twins:query`` with ``{"customers": {"<customer_id>": ["<transaction_id>",
      ...], ...}}`` (1 to 1000 customers): ``{"twins": [...]}`` as above, except that each
      twin's ``applied`` lists only those of its customer's transaction ids it has applied.
      This is how the engine reads: it only asks whether a twin shows some of its own
      payments, and a long-lived customer's twin holds the ids of its last 1,000.
    - ``GET /healthz``, ``GET /readyz`` (the store, and the bus when given, are reachable,
      and ``current()`` says ``"ok"``: the updater has the twins up to date), ``GET /metrics``.

    With ``token``, every ``/v1/`` request must send ``Authorization: Bearer <token>`` (401
    otherwise); the token may also be given in its hashed form, ``sha256:<hex>``.
    """
    app = Flask("corepay.twin", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_QUERY_BYTES
    accepted = None if token is None else Credentials([token], what="COREPAY_TWIN_TOKEN")

    @app.before_request
    def authenticate() -> tuple[Response, int] | None:
        if accepted is None or not request.path.startswith("/v1/"):
            return None
        if accepted.accepts_header(request.headers.get("Authorization")):
            return None
        response = jsonify(
            {"error": "unauthorized", "message": "send the twin service token as a bearer token"}
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="corepay-twin"'
        return response, 401

    @app.get("/v1/twins/<customer_id>")
    def get_twin(customer_id: str) -> tuple[Response, int]:
        twin = store.get(customer_id)
        if twin is None:
            return jsonify(
                {"error": "not_found", "message": f"no twin for customer {customer_id!r}"}
            ), 404
        return _json(encode_twin(twin)), 200

    @app.get("/v1/twins")
    def get_twins() -> tuple[Response, int]:
        ids = request.args.getlist("customer_id")
        if not ids or len(ids) > 1000:
            return jsonify(
                {"error": "bad_request", "message": "give 1 to 1000 customer_id parameters"}
            ), 400
        twins = store.get_many(ids)
        return _json(encode_twins(twins.values())), 200

    @app.post("/v1/twins:query")
    def query_twins() -> tuple[Response, int]:
        try:
            body = orjson.loads(request.get_data())
        except orjson.JSONDecodeError:
            body = None
        problem = _query_problem(body)
        if problem is not None:
            return jsonify({"error": "bad_request", "message": problem}), 400
        asked = body["customers"]
        return _json(encode_twins(store.get_many(list(asked)).values(), asked)), 200

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge) -> tuple[Response, int]:
        message = f"the body is larger than {MAX_QUERY_BYTES} bytes"
        return jsonify({"error": "too_large", "message": message}), 413

    more = {} if current is None else {"twins": current}
    add_ops_routes(app, "twin", checks(store=store, bus=bus, **more))
    count_requests(app, "twin")

    return app


def _json(body: bytes) -> Response:
    # A batch's twins go in one answer (megabytes, for many long-lived customers read in
    # full), encoded by the wire module (orjson): several times faster than Flask's JSON
    # provider, which sorts every key.
    return Response(body, mimetype="application/json")


#: Largest ``POST /v1/twins:query`` body: about 300,000 transaction ids.
MAX_QUERY_BYTES = 16 * 1024 * 1024


def _query_problem(body: Any) -> str | None:
    """What is wrong with a ``POST /v1/twins:query`` body, or ``None``."""
    shape = 'send {"customers": {"<customer_id>": ["<transaction_id>", ...], ...}}'
    if not isinstance(body, dict) or "customers" not in body:
        return shape
    unknown = sorted(set(body) - {"customers"})
    if unknown:
        return f"unknown field(s): {', '.join(unknown)}"
    customers = body["customers"]
    if not isinstance(customers, dict) or not 1 <= len(customers) <= 1000:
        return f"customers must map 1 to 1000 customer ids to transaction ids; {shape}"
    for customer, ids in customers.items():
        if not isinstance(ids, list) or not all(type(i) is str for i in ids):
            return f"customers[{customer!r}] must be a list of transaction ids (strings)"
    return None
