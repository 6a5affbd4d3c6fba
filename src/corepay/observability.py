"""What operators see of a running service: Prometheus metrics, JSON logs, health endpoints.

Metrics live on ``prometheus_client``'s default registry, all named ``corepay_*``:

- ``corepay_http_requests_total{service,route,method,status}``: requests answered.
- ``corepay_messages_consumed_total{service,topic}``: messages polled from the bus.
- ``corepay_messages_produced_total{service,topic}``: messages the bus took.
- ``corepay_dead_letters_total{service,topic}``: messages read from ``topic`` and parked on
  its dead-letter topic.
- ``corepay_stage_seconds{service,stage}``: histogram of the time spent in a stage
  (``handle``, ``publish``, ``commit``, ``decide_live``, ``decide_simulation``).
- ``corepay_consumer_lag{service,topic,partition}``: gauge of the messages after the
  consumer's position, as of its last poll.
- ``corepay_divergences_total{kind}``: divergence alerts raised.
- ``corepay_twin_update_conflicts_total``: compare-and-swap conflicts retried while updating
  twins.

The ops endpoints (:func:`add_ops_routes`) answer ``/healthz`` (the process is up),
``/readyz`` (its backends answer) and ``/metrics``. With several worker processes (gunicorn)
each has its own registry: aggregating them needs ``prometheus_client``'s multiprocess mode.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram
from prometheus_client import generate_latest as _generate_latest
from prometheus_client.metrics import MetricWrapperBase

from corepay.errors import ConfigurationError, CorepayError

if TYPE_CHECKING:
    from flask import Flask

    from corepay.bus import Bus
    from corepay.store import TwinStore

__all__ = [
    "CONSUMER_LAG",
    "DEAD_LETTERS",
    "DIVERGENCES",
    "HTTP_REQUESTS",
    "MESSAGES_CONSUMED",
    "MESSAGES_PRODUCED",
    "READINESS_PROBE_ID",
    "STAGE_SECONDS",
    "TWIN_UPDATE_CONFLICTS",
    "JsonFormatter",
    "add_ops_routes",
    "bus_check",
    "checks",
    "configure_logging",
    "create_ops_app",
    "forget_labelled",
    "labelled",
    "record_request",
    "store_check",
    "timed",
]

log = logging.getLogger(__name__)

# --- metrics ---------------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "corepay_http_requests",
    "HTTP requests answered, by route template (not raw path) and status.",
    ["service", "route", "method", "status"],
)
MESSAGES_CONSUMED = Counter(
    "corepay_messages_consumed", "Messages polled from the bus.", ["service", "topic"]
)
MESSAGES_PRODUCED = Counter(
    "corepay_messages_produced", "Messages the bus took from this service.", ["service", "topic"]
)
DEAD_LETTERS = Counter(
    "corepay_dead_letters",
    "Messages of a topic parked on its dead-letter topic (topic: where they were read).",
    ["service", "topic"],
)
#: From 0.1 ms (a memory-bus publish) to 10 s (a batch stuck behind a slow gateway).
STAGE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
STAGE_SECONDS = Histogram(
    "corepay_stage_seconds",
    "Seconds spent in a processing stage (handle, publish, commit, decide_live...).",
    ["service", "stage"],
    buckets=STAGE_BUCKETS,
)
CONSUMER_LAG = Gauge(
    "corepay_consumer_lag",
    "Messages in a partition after this consumer's position, as of its last poll.",
    ["service", "topic", "partition"],
)
DIVERGENCES = Counter("corepay_divergences", "Divergence alerts raised, by kind.", ["kind"])
TWIN_UPDATE_CONFLICTS = Counter(
    "corepay_twin_update_conflicts",
    "Compare-and-swap conflicts retried while updating twins (another writer got there first).",
)


def record_request(service: str, route: str, method: str, status: int | str) -> None:
    """Count one answered HTTP request.

    Args:
        route: the route *template* (``/v1/twins/<customer_id>``), never the raw path: every
            distinct value is a time series.
    """
    HTTP_REQUESTS.labels(service=service, route=route, method=method, status=str(status)).inc()


def labelled(metric: MetricWrapperBase, *values: str) -> Any:
    """``metric.labels(*values)``, looked up once per process: ``labels()`` checks its
    arguments and takes a lock on every call (about 1 us), and a busy service's loop asks for
    the same few series several times a batch."""
    key = (id(metric), values)
    child = _LABELLED.get(key)
    if child is None:
        child = _LABELLED[key] = metric.labels(*values)
    return child


def forget_labelled(metric: MetricWrapperBase, *values: str) -> None:
    """Remove a series (``metric.remove``) and what :func:`labelled` kept of it."""
    global _FORGOTTEN
    _FORGOTTEN += 1
    _LABELLED.pop((id(metric), values), None)
    with contextlib.suppress(KeyError):
        metric.remove(*values)


def forgotten() -> int:
    """How many series :func:`forget_labelled` has removed in this process: a reporter that
    sets only what changed sets everything again once this moves (another reporter of the
    same series, such as a second member of a service in this process, may have removed
    one it still reports)."""
    return _FORGOTTEN


_FORGOTTEN = 0

#: Series looked up by :func:`labelled`: a few per service, stage, topic and partition.
_LABELLED: dict[tuple[int, tuple[str, ...]], Any] = {}


class timed:  # (lower case: used as a function, ``with timed(service, stage):``)
    """Observe how long the ``with`` block takes in ``corepay_stage_seconds``, even if it raises.

    A class rather than a generator: every service times several stages of every batch, and
    a generator's context manager costs about 0.6 us more each time.
    """

    __slots__ = ("_series", "_started")

    def __init__(self, service: str, stage: str) -> None:
        self._series = labelled(STAGE_SECONDS, service, stage)
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._series.observe(time.perf_counter() - self._started)


# --- logs ------------------------------------------------------------------------------------

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, then every field
    given with ``extra=`` (``transaction_id``, ``customer_id``, ``topic``...), and
    ``exception`` with the traceback when there is one. Values JSON cannot hold are str()'d.
    """

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                payload.setdefault(key, value)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            payload["exception"] = record.exc_text
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        try:
            return json.dumps(payload, default=str, allow_nan=False, ensure_ascii=False)
        except (TypeError, ValueError):  # NaN, a circular structure, a str() that fails...
            safe = {k: _jsonable(v) for k, v in payload.items()}
            return json.dumps(safe, default=str, ensure_ascii=False)


def _jsonable(value: object) -> object:
    try:
        json.dumps(value, default=str, allow_nan=False)
    except (TypeError, ValueError):
        try:
            return str(value)
        except Exception:
            return f"<unprintable {type(value).__name__}>"
    return value


class _StampService(logging.Filter):
    """Gives every record a ``service`` field, unless the log call gave its own."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "service", None) is None:
            record.service = self.service
        return True


_installed: logging.Handler | None = None


def configure_logging(level: str, fmt: str = "json", service: str | None = None) -> None:
    """Send every log record to stderr, as JSON lines (``fmt="json"``) or plain text.

    Calling it again replaces the handler it installed before; handlers installed by anything
    else (a test runner's) are left alone.

    Args:
        level: ``DEBUG``, ``INFO``, ``WARNING``, ``ERROR`` or ``CRITICAL`` (any case).
        fmt: ``json`` or ``text``.
        service: stamped as ``service`` on every record that does not carry its own.

    Raises:
        ConfigurationError: an unknown level or format.
    """
    global _installed
    numeric = logging.getLevelNamesMapping().get(level.strip().upper())
    if numeric is None or level.strip().upper() == "NOTSET":
        raise ConfigurationError(
            f"log level {level!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
        )
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter()
    elif fmt == "text":
        who = "" if service is None else service.replace("%", "%%") + " "
        formatter = logging.Formatter(f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s")
    else:
        raise ConfigurationError(f"log format {fmt!r} is not one of json, text")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    if service is not None:
        handler.addFilter(_StampService(service))
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
        _installed.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    _installed = handler


# --- readiness -------------------------------------------------------------------------------

#: The twin a store readiness check reads: a real round trip, whether or not it exists.
READINESS_PROBE_ID = "__readyz__"


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _run_check(name: str, check: Callable[[], str]) -> str:
    try:
        return check()
    except Exception as exc:
        # A backend that is down says why in its message; anything else is a bug worth a trace.
        log.warning(
            "readiness check %s failed: %s",
            name,
            exc,
            exc_info=not isinstance(exc, CorepayError),
        )
        return _describe(exc)


def bus_check(bus: Bus) -> Callable[[], str]:
    """A readiness check: ``"ok"`` if the bus answers (:meth:`Bus.check`), else why not."""

    def check() -> str:
        bus.check()
        return "ok"

    return lambda: _run_check("bus", check)


def store_check(store: TwinStore) -> Callable[[], str]:
    """A readiness check: ``"ok"`` if the twin store answers a read, else why not.

    It reads the twin :data:`READINESS_PROBE_ID`: a real round trip to the server (an empty
    ``get_many`` would not ask it anything), whose answer is normally "no such twin".
    """

    def check() -> str:
        store.get(READINESS_PROBE_ID)
        return "ok"

    return lambda: _run_check("store", check)


def checks(
    *, bus: Bus | None = None, store: TwinStore | None = None, **more: Callable[[], str]
) -> Callable[[], dict[str, str]]:
    """The readiness function for :func:`add_ops_routes`: runs each check, never raises.

    Args:
        bus, store: checked with :func:`bus_check` and :func:`store_check`.
        more: further named checks, each returning ``"ok"`` or what is wrong (or raising).
    """
    named: dict[str, Callable[[], str]] = {}
    if bus is not None:
        named["bus"] = bus_check(bus)
    if store is not None:
        named["store"] = store_check(store)
    named.update(more)

    def run() -> dict[str, str]:
        return {name: _run_check(name, check) for name, check in named.items()}

    return run


# --- ops HTTP --------------------------------------------------------------------------------


def add_ops_routes(
    app: Flask, service: str, ready: Callable[[], Mapping[str, str]], *, detail: bool = True
) -> None:
    """Add ``GET /healthz``, ``GET /readyz`` and ``GET /metrics`` to ``app``.

    ``/readyz`` answers 200 ``{"status": "ready", "checks": {...}}`` when every check is
    ``"ok"``, else 503 ``{"status": "not_ready", "checks": {...}}`` with each failing check's
    reason (see :func:`checks`). ``/metrics`` is the Prometheus text exposition of the
    process's registry. These routes are not counted in ``corepay_http_requests_total``.
    """
    from flask import Response, jsonify

    @app.get("/healthz", endpoint="ops_healthz")
    def healthz() -> tuple[Response, int]:
        return jsonify({"status": "ok"}), 200

    @app.get("/readyz", endpoint="ops_readyz")
    def readyz() -> tuple[Response, int]:
        try:
            found = {str(k): str(v) for k, v in ready().items()}
        except Exception as exc:
            log.warning("%s: readiness failed: %s", service, exc, exc_info=True)
            found = {"ready": _describe(exc)}
        if all(value == "ok" for value in found.values()):
            return jsonify({"status": "ready", "checks": found}), 200
        if not detail:  # what a backend answered stays in the log, off a public port
            log.warning("%s: not ready: %s", service, found)
            found = {name: "ok" if v == "ok" else "unavailable" for name, v in found.items()}
        return jsonify({"status": "not_ready", "checks": found}), 503

    @app.get("/metrics", endpoint="ops_metrics")
    def metrics() -> Response:
        return Response(_generate_latest(REGISTRY), status=200, content_type=CONTENT_TYPE_LATEST)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def count_requests(app: Flask, service: str) -> None:
    """Count every request ``app`` answers (but the ops routes) in ``corepay_http_requests_total``,
    by route template (``/v1/twins/<customer_id>``, never the raw path) and status."""
    from flask import Response, request

    @app.after_request
    def count(response: Response) -> Response:
        endpoint = request.endpoint or ""
        if not endpoint.startswith("ops_"):
            route = request.url_rule.rule if request.url_rule is not None else "unmatched"
            method = request.method if request.method in _METHODS else "other"
            record_request(service, route, method, response.status_code)
        return response


def create_ops_app(service: str, ready: Callable[[], Mapping[str, str]]) -> Flask:
    """A Flask app with only the ops routes, for services without an API of their own."""
    from flask import Flask

    app = Flask(__name__, static_folder=None)
    app.name = f"corepay-{service}"
    add_ops_routes(app, service, ready)
    return app
