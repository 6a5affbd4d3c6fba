"""The ingestion service: the REST entry point for payment requests (a Flask app factory).

- ``POST /v1/transactions``: one transaction. 202 only once it is durably on the bus; the same
  transaction posted again within the idempotency window gets the same 202 without a second
  publish (``Idempotent-Replayed: true``); another transaction under an id already accepted
  gets 409; 400 lists every invalid field; 401 without a valid API key; 413 past the size
  limit; 415 for a body that is not JSON; 503 (with ``Retry-After``) when the bus cannot
  take it, so nothing is half-accepted.
- ``POST /v1/transactions:batch``: ``{"transactions": [...]}``, up to ``max_batch`` of them;
  200 with one result per item, in order, each with the status the item would have had alone.
- ``GET /healthz``, ``GET /readyz`` (the bus is reachable), ``GET /metrics`` (Prometheus),
  ``GET /openapi.json``.

The OpenAPI 3 document of all this is ``openapi.json`` next to this module.
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from corepay.auth import Credentials
from corepay.bus import RAW_TRANSACTIONS, Bus
from corepay.errors import BackendError, BackendTimeoutError, RejectedError, ValidationError
from corepay.idempotency import Claim, IdempotencyCache, fingerprint
from corepay.ingest import Accepted, Ingestor
from corepay.models import Transaction
from corepay.observability import (
    MESSAGES_PRODUCED,
    add_ops_routes,
    checks,
    count_requests,
    timed,
)
from corepay.settings import Settings
from corepay.wire import parse_json, parse_transaction

__all__ = ["create_app", "openapi_document"]

log = logging.getLogger(__name__)

_UNAVAILABLE = {
    "error": "bus_unavailable",
    "message": "the transaction was not accepted; retry later",
}
_BATCH_FAILED = {
    "error": "bus_unavailable",
    "message": "the bus did not confirm this batch, so this transaction may or may not have "
    "been taken; retry with the same transaction_id",
}
_REJECTED = {
    "error": "rejected_by_bus",
    "message": "the bus refused this transaction for good (for example, too large)",
}
_TIMEOUT = {
    "error": "bus_timeout",
    "message": "the bus did not confirm the transaction in time, so it may or may not have "
    "been taken; retry with the same transaction_id",
}


def openapi_document() -> dict[str, Any]:
    """The ingestion API's OpenAPI 3 document (``openapi.json`` in this package)."""
    text = resources.files("corepay.services").joinpath("openapi.json").read_text("utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


def _problem(status: int, error: str, message: str, **extra: Any) -> tuple[Response, int]:
    return jsonify({"error": error, "message": message, **extra}), status


def _invalid(exc: ValidationError) -> dict[str, Any]:
    return {
        "error": "invalid_transaction",
        "message": str(exc),
        "fields": [{"field": e.field, "message": e.message} for e in exc.errors],
    }


def _conflict(transaction_id: str) -> dict[str, Any]:
    return {
        "error": "conflict",
        "message": f"transaction {transaction_id!r} was already accepted with different "
        "content; a new transaction needs a new transaction_id",
        "transaction_id": transaction_id,
    }


def _accepted(accepted: Accepted) -> dict[str, Any]:
    return {
        "transaction_id": accepted.transaction.transaction_id,
        "status": "accepted",
        "partition": accepted.delivery.partition,
        "offset": accepted.delivery.offset,
    }


def create_app(settings: Settings | None = None, *, bus: Bus | None = None) -> Flask:
    """Build the ingestion app.

    Args:
        settings: API keys, limits, the idempotency window and the bus URL; defaults to
            ``Settings()``. Without ``api_keys`` the API takes requests without a key (for
            in-process use and tests; ``corepay serve ingestion`` refuses to run that way
            unless told ``--insecure``).
        bus: the bus to publish to; opened from ``settings.bus_url`` when not given.

    Raises:
        ConfigurationError: the API keys are malformed (the message never shows a key).
    """
    settings = settings or Settings()
    keys = Credentials.parse(settings.api_keys, what="COREPAY_API_KEYS")
    if bus is None:
        from corepay.backends import open_bus

        bus = open_bus(settings.bus_url)
    ingestor = Ingestor(bus)
    seen = IdempotencyCache(
        settings.idempotency_window, max_entries=settings.idempotency_max_entries
    )
    app = Flask("corepay.ingestion", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.extensions["corepay.bus"] = bus
    app.extensions["corepay.idempotency"] = seen

    @app.before_request
    def authenticate() -> tuple[Response, int] | None:
        if keys is None or not request.path.startswith("/v1/"):
            return None
        if keys.accepts_header(request.headers.get("Authorization")):
            return None
        response, status = _problem(
            401,
            "unauthorized",
            "send a valid API key as Authorization: Bearer <key>",
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="corepay"'
        return response, status

    def body() -> Any:
        if not request.is_json:
            return None
        if request.content_length is not None:  # Flask already held it to the limit
            return parse_json(request.get_data(cache=False))
        # A chunked body: Werkzeug's stream would stop quietly at the limit, so read the
        # server's own stream one byte past it to know whether there was more.
        raw = request.environ["wsgi.input"].read(settings.max_request_bytes + 1)
        if len(raw) > settings.max_request_bytes:
            raise RequestEntityTooLarge()
        return parse_json(raw)

    def not_json() -> tuple[Response, int]:
        return _problem(
            415,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
        )

    def unavailable(payload: dict[str, Any]) -> tuple[Response, int]:
        response = jsonify(payload)
        response.headers["Retry-After"] = "1"
        return response, 503

    @app.post("/v1/transactions")
    def submit_transaction() -> tuple[Response, int]:
        if not request.is_json:
            return not_json()
        try:
            txn = parse_transaction(body())
        except ValidationError as exc:
            return jsonify(_invalid(exc)), 400
        claim, answer = seen.claim(txn)
        if claim is Claim.CONFLICT:
            log.info("conflicting repost refused", extra=_about(txn))
            return jsonify(_conflict(txn.transaction_id)), 409
        if claim is Claim.REPLAY:
            response = jsonify(answer)
            response.headers["Idempotent-Replayed"] = "true"
            return response, 202
        try:
            with timed("ingestion", "publish"):
                accepted = ingestor.submit_transaction(txn)
            MESSAGES_PRODUCED.labels("ingestion", RAW_TRANSACTIONS).inc()
        except BackendTimeoutError as exc:
            seen.abort(txn.transaction_id)
            log.warning("bus did not confirm the transaction: %s", exc, extra=_about(txn))
            return unavailable(_TIMEOUT)
        except BackendError as exc:
            seen.abort(txn.transaction_id)
            log.warning("bus did not take the transaction: %s", exc, extra=_about(txn))
            return unavailable(_UNAVAILABLE)
        except RejectedError as exc:
            seen.abort(txn.transaction_id)
            log.warning("bus refused the transaction: %s", exc, extra=_about(txn))
            return jsonify(_REJECTED), 400
        except BaseException:
            seen.abort(txn.transaction_id)
            raise
        answer = _accepted(accepted)
        seen.complete(txn.transaction_id, answer)
        return jsonify(answer), 202

    @app.post("/v1/transactions:batch")
    def submit_batch() -> tuple[Response, int]:
        if not request.is_json:
            return not_json()
        try:
            envelope = body()
        except ValidationError as exc:
            return jsonify({**_invalid(exc), "error": "invalid_batch"}), 400
        items = envelope.get("transactions") if isinstance(envelope, dict) else None
        if not isinstance(items, list) or set(envelope) != {"transactions"}:
            return _problem(
                400,
                "invalid_batch",
                'send {"transactions": [...]}: an object whose only field is a list',
            )
        if not 1 <= len(items) <= settings.max_batch:
            return _problem(
                413 if items else 400,
                "batch_too_large" if items else "empty_batch",
                f"a batch holds 1 to {settings.max_batch} transactions, not {len(items)}",
            )
        results: list[dict[str, Any]] = [{} for _ in items]
        claimed: list[tuple[int, Transaction]] = []
        first_of: dict[str, tuple[int, str]] = {}  # id -> (index, fingerprint) in this batch
        repeats: list[tuple[int, int, str, bool]] = []  # (index, first index, id, same content)
        valid: list[tuple[int, Transaction]] = []
        for index, item in enumerate(items):
            try:
                txn = parse_transaction(item)
            except ValidationError as exc:
                results[index] = {"status": 400, **_invalid(exc)}
                continue
            mark = fingerprint(txn)
            if txn.transaction_id in first_of:  # the same id twice in one batch
                first, first_mark = first_of[txn.transaction_id]
                repeats.append((index, first, txn.transaction_id, mark == first_mark))
                continue
            first_of[txn.transaction_id] = (index, mark)
            valid.append((index, txn))
        # Claimed in id order: two batches that share ids never wait on each other.
        for index, txn in sorted(valid, key=lambda pair: pair[1].transaction_id):
            claim, answer = seen.claim(txn)
            if claim is Claim.CONFLICT:
                results[index] = {"status": 409, **_conflict(txn.transaction_id)}
            elif claim is Claim.REPLAY:
                results[index] = {**(answer or {}), "status": 202, "replayed": True}
            else:
                claimed.append((index, txn))
        if claimed:
            try:
                with timed("ingestion", "publish"):
                    accepted = ingestor.submit_transactions([t for _, t in claimed])
                MESSAGES_PRODUCED.labels("ingestion", RAW_TRANSACTIONS).inc(len(accepted))
            except (BackendError, RejectedError) as exc:
                # Some of the batch may be on the bus already: each is answered as not known
                # to be taken, and a retry with the same ids is safe downstream.
                for index, txn in claimed:
                    seen.abort(txn.transaction_id)
                    results[index] = {
                        "status": 503,
                        "transaction_id": txn.transaction_id,
                        **_BATCH_FAILED,
                    }
                log.warning("bus did not take a batch of %d: %s", len(claimed), exc)
            except BaseException:
                for _, txn in claimed:
                    seen.abort(txn.transaction_id)
                raise
            else:
                for (index, txn), taken in zip(claimed, accepted, strict=True):
                    answer = _accepted(taken)
                    seen.complete(txn.transaction_id, answer)
                    results[index] = {**answer, "status": 202}
        for index, first, tid, same in repeats:  # a repeat in the batch answers as its first
            if not same:
                results[index] = {"status": 409, **_conflict(tid)}
            elif results[first]["status"] == 202:
                results[index] = {**results[first], "replayed": True}
            else:
                results[index] = dict(results[first])
        for index, result in enumerate(results):
            results[index] = {"index": index, **result}
        accepted_count = sum(1 for r in results if r["status"] == 202)
        return jsonify(
            {
                "accepted": accepted_count,
                "rejected": len(results) - accepted_count,
                "results": results,
            }
        ), 200

    # The public port says whether it is ready, not what the backends answered.
    add_ops_routes(app, "ingestion", checks(bus=bus), detail=False)
    count_requests(app, "ingestion")

    document = openapi_document()
    document["components"]["schemas"]["Batch"]["properties"]["transactions"]["maxItems"] = (
        settings.max_batch
    )

    @app.get("/openapi.json")
    def openapi() -> tuple[Response, int]:
        return jsonify(document), 200

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        name = (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name
        if status == 413:
            message = f"the request body is larger than {settings.max_request_bytes} bytes"
        response, status = _problem(status, name, message)
        for header, value in exc.get_headers():
            if header.lower() != "content-type":
                response.headers[header] = value  # Allow on a 405, for one
        return response, status

    return app


def _about(txn: Transaction) -> dict[str, str]:
    return {"transaction_id": txn.transaction_id, "customer_id": txn.customer_id}
