"""A payment gateway served over HTTP, as :class:`~corepay.http_gateway.HttpGateway` calls one.

- ``POST /v1/authorizations``: a wire-format transaction; answers 200
  ``{"approved": bool, "code": str, "latency_ms": float}``. With an ``Idempotency-Key`` header,
  a repeated request gets the first answer again (the last ``remember`` answers are kept; a
  duplicate that arrives while the first is still being answered waits for it). Errors are
  ``{"error": ..., "message": ...}``: 400 invalid JSON or transaction, 422 a key reused for
  another transaction or a refused request, 502 another gateway error, 503 gateway unavailable,
  504 gateway timeout.
- ``GET /healthz``.

Serving :class:`~corepay.gateway.SimulatedGateway` this way gives the live path a real endpoint.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, jsonify, request

from corepay.errors import (
    BackendTimeoutError,
    CorepayError,
    RejectedError,
    UnavailableError,
    ValidationError,
)
from corepay.gateway import PaymentGateway
from corepay.models import Transaction
from corepay.observability import add_ops_routes, checks, count_requests
from corepay.wire import parse_json, parse_transaction

__all__ = ["create_gateway_app"]

#: Longest accepted ``Idempotency-Key``.
MAX_KEY_LENGTH = 255

_Answer = tuple[int, dict[str, Any]]


class _Answers:
    """The last ``size`` successful answers by idempotency key, with their transactions."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._cond = threading.Condition()
        self._running: set[str] = set()
        self._done: OrderedDict[str, tuple[Transaction, dict[str, Any]]] = OrderedDict()

    def answer(self, key: str, txn: Transaction, compute: Callable[[], _Answer]) -> _Answer:
        with self._cond:
            while key in self._running:  # a retry racing the first request: wait for it
                self._cond.wait()
            seen = self._done.get(key)
            if seen is not None:
                if seen[0] != txn:
                    return _error(
                        422,
                        "idempotency_key_reused",
                        f"Idempotency-Key {key!r} was used for another transaction",
                    )
                self._done.move_to_end(key)
                return 200, seen[1]
            self._running.add(key)
        status = 500
        body: dict[str, Any] = {}
        try:
            status, body = compute()
        finally:
            with self._cond:
                self._running.discard(key)
                if status == 200:  # failures are not remembered: a retry may succeed
                    self._done[key] = (txn, body)
                    while len(self._done) > self.size:
                        self._done.popitem(last=False)
                self._cond.notify_all()
        return status, body


def _error(status: int, error: str, message: str, **extra: Any) -> _Answer:
    return status, {"error": error, "message": message, **extra}


def _authorize(gateway: PaymentGateway, txn: Transaction) -> _Answer:
    try:
        answer = gateway.authorize(txn)
    except BackendTimeoutError as exc:
        return _error(504, "gateway_timeout", str(exc))
    except UnavailableError as exc:
        return _error(503, "gateway_unavailable", str(exc))
    except RejectedError as exc:
        return _error(422, "rejected", str(exc))
    except CorepayError as exc:
        return _error(502, "gateway_error", f"{type(exc).__name__}: {exc}")
    return 200, {"approved": answer.approved, "code": answer.code, "latency_ms": answer.latency_ms}


def create_gateway_app(gateway: PaymentGateway, *, remember: int = 10_000) -> Flask:
    """Serve ``gateway`` over HTTP (see the module docstring for the protocol).

    Args:
        gateway: answers the authorizations.
        remember: how many answers to keep by idempotency key.
    """
    app = Flask("corepay.gateway", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    answers = _Answers(remember)

    @app.post("/v1/authorizations")
    def authorize() -> tuple[Response, int]:
        key = request.headers.get("Idempotency-Key")
        status, body = _answer(key)
        return jsonify(body), status

    def _answer(key: str | None) -> _Answer:
        if key is not None and not 1 <= len(key) <= MAX_KEY_LENGTH:
            return _error(
                400, "invalid_idempotency_key", f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} chars"
            )
        try:
            data = parse_json(request.get_data())
        except ValidationError as exc:
            return _error(400, "invalid_json", str(exc))
        try:
            txn = parse_transaction(data)
        except ValidationError as exc:
            fields = [{"field": e.field, "message": e.message} for e in exc.errors]
            return _error(400, "invalid_transaction", str(exc), fields=fields)
        if key is None:
            return _authorize(gateway, txn)
        return answers.answer(key, txn, lambda: _authorize(gateway, txn))

    add_ops_routes(app, "gateway", checks())
    count_requests(app, "gateway")

    return app
