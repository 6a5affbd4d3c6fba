"""The ingestion service: the REST entry point for payment requests (a Flask app factory).

``POST /v1/transactions`` answers 202 only once the transaction is durably on the bus; 400
with every invalid field and why; 415 for a body that is not JSON; 413 past the size limit;
503 (with ``Retry-After``) when the bus cannot take it, so nothing is half-accepted.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from corepay.bus import Bus
from corepay.errors import BackendError, BackendTimeoutError, ValidationError
from corepay.ingest import Ingestor
from corepay.settings import Settings
from corepay.wire import parse_json

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def _problem(status: int, error: str, message: str, **extra: Any) -> tuple[Response, int]:
    return jsonify({"error": error, "message": message, **extra}), status


def create_app(settings: Settings | None = None, *, bus: Bus | None = None) -> Flask:
    """Build the ingestion app.

    Args:
        settings: limits and the bus URL; defaults to ``Settings()``.
        bus: the bus to publish to; opened from ``settings.bus_url`` when not given.
    """
    settings = settings or Settings()
    if bus is None:
        from corepay.backends import open_bus

        bus = open_bus(settings.bus_url)
    ingestor = Ingestor(bus)
    app = Flask("corepay.ingestion")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.extensions["corepay.bus"] = bus

    @app.post("/v1/transactions")
    def submit_transaction() -> tuple[Response, int]:
        if not request.is_json:
            return _problem(
                415,
                "unsupported_media_type",
                "send the transaction as JSON with Content-Type: application/json",
            )
        try:
            accepted = ingestor.submit(parse_json(request.get_data(cache=False)))
        except ValidationError as exc:
            return _problem(
                400,
                "invalid_transaction",
                str(exc),
                fields=[{"field": e.field, "message": e.message} for e in exc.errors],
            )
        except BackendTimeoutError as exc:
            log.warning("bus did not confirm a transaction: %s", exc)
            response, status = _problem(
                503,
                "bus_timeout",
                "the bus did not confirm the transaction in time, so it may or may not have "
                "been taken; retry with the same transaction_id",
            )
            response.headers["Retry-After"] = "1"
            return response, status
        except BackendError as exc:
            log.warning("bus did not take a transaction: %s", exc)
            response, status = _problem(
                503, "bus_unavailable", "the transaction was not accepted; retry later"
            )
            response.headers["Retry-After"] = "1"
            return response, status
        delivery = accepted.delivery
        return jsonify(
            {
                "transaction_id": accepted.transaction.transaction_id,
                "status": "accepted",
                "partition": delivery.partition,
                "offset": delivery.offset,
            }
        ), 202

    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        return jsonify({"status": "ok"}), 200

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        name = (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name
        if status == 413:
            message = f"the request body is larger than {settings.max_request_bytes} bytes"
        return _problem(status, name, message)

    return app
