"""The twin service's internal HTTP API, which the engine reads twins through."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, Response, jsonify, request

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
    - ``GET /healthz``, ``GET /readyz`` (the store, and the bus when given, are reachable,
      and ``current()`` says ``"ok"``: the updater has the twins up to date), ``GET /metrics``.

    With ``token``, every ``/v1/`` request must send ``Authorization: Bearer <token>`` (401
    otherwise); the token may also be given in its hashed form, ``sha256:<hex>``.
    """
    app = Flask("corepay.twin", static_folder=None)
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

    more = {} if current is None else {"twins": current}
    add_ops_routes(app, "twin", checks(store=store, bus=bus, **more))
    count_requests(app, "twin")

    return app


def _json(body: bytes) -> Response:
    # The engine reads a batch's twins in one answer of up to a megabyte, encoded by the wire
    # module (orjson): several times faster than Flask's JSON provider, which sorts every key.
    return Response(body, mimetype="application/json")
