"""Service entrypoints: settings -> backends -> core object -> run loop. Nothing else."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from types import FrameType

from flask import Flask
from waitress import wasyncore
from waitress.server import MultiSocketServer, create_server

from corepay import heap
from corepay.backends import open_bus, open_store
from corepay.bus import ALL_TOPICS
from corepay.divergence import DivergenceDetector
from corepay.errors import ConfigurationError
from corepay.gateway import open_gateway
from corepay.observability import checks, create_ops_app
from corepay.services.detector import DetectorService
from corepay.services.engine import EngineService, build_engine
from corepay.services.gateway_api import create_gateway_app
from corepay.services.ingestion import create_app
from corepay.services.twin import TwinService
from corepay.services.twin_api import create_twin_app
from corepay.settings import Settings
from corepay.twin_client import HttpTwinClient

__all__ = ["DEFAULT_PORTS", "SERVICES", "serve"]

log = logging.getLogger("corepay.serve")

#: HTTP port of each service that has an HTTP API, unless ``--port`` says otherwise.
DEFAULT_PORTS = {"ingestion": 8080, "twin": 8081, "gateway": 8082, "engine": 9101, "detector": 9102}


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("received %s; finishing the batch in hand", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


#: Threads answering the requests of one HTTP server. The gateway's threads answer as slowly
#: as the gateway it simulates, so it has more than the 16 an engine calls it from.
HTTP_THREADS = 8
GATEWAY_HTTP_THREADS = 32


@contextlib.contextmanager
def _http_server(
    app: Flask, host: str, port: int, name: str, threads: int = HTTP_THREADS
) -> Iterator[int]:
    """Serve ``app`` from a thread while the block runs; yields the port it listens on.

    waitress keeps connections alive, so the engine reads twins over one connection instead
    of connecting (and the twin service starting a thread) for every batch, as werkzeug's
    development server made it do.
    """
    # A body larger than the app takes is refused as it arrives, not read to the end first.
    limit = app.config.get("MAX_CONTENT_LENGTH")
    sizes = {} if limit is None else {"max_request_body_size": limit}
    server = create_server(app, host=host, port=port, threads=threads, ident="corepay", **sizes)
    # A host name with several addresses (localhost: IPv4 and IPv6) gets one socket each.
    if isinstance(server, MultiSocketServer):
        bound, sockets = int(server.effective_listen[0][1]), server.map
    else:
        bound, sockets = int(server.effective_port), server._map
    stopping = threading.Event()

    def run() -> None:
        try:
            server.run()
        except (OSError, ValueError):
            # Closing the sockets below can land while the loop waits on them in select():
            # a bad file descriptor then, which only means the loop is done.
            if not stopping.is_set():
                raise

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        yield bound
    finally:
        stopping.set()
        server.task_dispatcher.shutdown()
        wasyncore.close_all(sockets)  # the listeners and every kept-alive connection
        thread.join(timeout=5)


def _serve_http(
    app: Flask, host: str, port: int, stop: threading.Event, threads: int = HTTP_THREADS
) -> None:
    with _http_server(app, host, port, "corepay-http", threads) as bound:
        log.info("%s listening on http://%s:%d", app.name, host, bound)
        stop.wait()


def _require(secret: str | None, variable: str, settings: Settings, service: str) -> None:
    if secret is None and not settings.insecure:
        raise ConfigurationError(
            f"the {service} needs {variable} (see the README's Security section); to run "
            "without it on a trusted machine, say so with --insecure or COREPAY_INSECURE=true"
        )
    if secret is None:
        log.warning(
            "%s runs without %s (--insecure): no credentials are checked", service, variable
        )


@contextlib.contextmanager
def _ops_server(
    service: str, settings: Settings, ready: Callable[[], Mapping[str, str]]
) -> Iterator[None]:
    """``/healthz``, ``/readyz`` and ``/metrics`` of a service without an API, while it runs."""
    port = settings.metrics_port if settings.metrics_port is not None else DEFAULT_PORTS[service]
    app = create_ops_app(service, ready)
    with _http_server(app, settings.host, port, "corepay-ops") as bound:
        log.info("%s: health and metrics on http://%s:%d", service, settings.host, bound)
        yield


def _ingestion(settings: Settings, stop: threading.Event) -> None:
    from corepay.auth import Credentials
    from corepay.services.wsgi import serve_wsgi

    _require(settings.api_keys, "COREPAY_API_KEYS", settings, "ingestion service")
    Credentials.parse(settings.api_keys, what="COREPAY_API_KEYS")  # malformed keys: fail now
    with open_bus(settings.bus_url) as bus:  # fail fast on a bad bus, before any worker
        bus.ensure_topics(ALL_TOPICS)

    def close_bus(app: Flask) -> None:
        app.extensions["corepay.bus"].close()

    serve_wsgi(
        lambda: create_app(settings),
        host=settings.host,
        port=settings.port or DEFAULT_PORTS["ingestion"],
        workers=settings.web_workers,
        threads=settings.web_threads,
        on_exit=close_bus,
        log_format=settings.log_format,
    )


def _engine(settings: Settings, stop: threading.Event) -> None:
    if not settings.twin_url:
        raise ConfigurationError(
            "the engine reads twins from the twin service: give --twin-url or COREPAY_TWIN_URL"
            " (for example http://127.0.0.1:8081)"
        )
    _require(settings.twin_token, "COREPAY_TWIN_TOKEN", settings, "engine")
    twins = HttpTwinClient(settings.twin_url, token=settings.twin_token)
    try:
        # Models first (a default one is trained here), so a bad model file fails fast.
        engine = build_engine(settings, twins)
        with engine:
            log.info(
                "engine: live model %s, twin model %s",
                engine.live.model_version,
                engine.simulation.model_version,
            )
            with (
                open_bus(settings.bus_url) as bus,
                _ops_server("engine", settings, checks(bus=bus)),
            ):
                bus.ensure_topics(ALL_TOPICS)
                service = EngineService(
                    bus,
                    engine,
                    max_records=settings.batch_size,
                    commit_interval=settings.commit_interval,
                )
                heap.settle()
                service.run(stop)
    finally:
        twins.close()


def _twin(settings: Settings, stop: threading.Event) -> None:
    _require(settings.twin_token, "COREPAY_TWIN_TOKEN", settings, "twin service")
    bus = open_bus(settings.bus_url)
    bus.ensure_topics(ALL_TOPICS)
    store = open_store(
        settings.store_url, username=settings.store_username, password=settings.store_password
    )
    with bus, store:
        service = TwinService(
            bus,
            store,
            max_records=settings.batch_size,
            commit_interval=settings.commit_interval,
            on_rebuilt=heap.settle,
        )
        heap.settle()

        def update() -> None:
            try:
                service.run(stop)
            finally:
                stop.set()  # a dead updater must not leave the API answering as if all is well

        worker = threading.Thread(target=update, name="corepay-twin-updater")
        worker.start()
        try:
            _serve_http(
                create_twin_app(
                    store, token=settings.twin_token, bus=bus, current=lambda: service.status
                ),
                settings.host,
                settings.port or DEFAULT_PORTS["twin"],
                stop,
            )
        finally:
            stop.set()
            worker.join()


def _detector(settings: Settings, stop: threading.Event) -> None:
    bus = open_bus(settings.bus_url)
    bus.ensure_topics(ALL_TOPICS)
    detector = DivergenceDetector(
        timeout=settings.pairing_timeout, max_pending=settings.max_pending
    )
    with bus, _ops_server("detector", settings, checks(bus=bus)):
        service = DetectorService(
            bus,
            detector,
            max_records=settings.batch_size,
            commit_interval=settings.commit_interval,
        )
        heap.settle()
        service.run(stop)


def _gateway(settings: Settings, stop: threading.Event) -> None:
    """A simulated payment gateway over HTTP: a real endpoint for the live path's client."""
    url = settings.gateway_url or f"simulated://?seed={settings.gateway_seed}&realtime=true"
    if not url.startswith("simulated://"):
        raise ConfigurationError(
            "the gateway service serves a simulated gateway: give --gateway simulated://?... "
            "(options seed, timeout_ms, median_latency_ms, outage_rate, realtime)"
        )
    app = create_gateway_app(open_gateway(url))
    port = settings.port or DEFAULT_PORTS["gateway"]
    _serve_http(app, settings.host, port, stop, threads=GATEWAY_HTTP_THREADS)


SERVICES: dict[str, Callable[[Settings, threading.Event], None]] = {
    "ingestion": _ingestion,
    "engine": _engine,
    "twin": _twin,
    "detector": _detector,
    "gateway": _gateway,
}


def serve(service: str, settings: Settings) -> None:
    """Run one service until SIGTERM or SIGINT.

    Raises:
        ConfigurationError: unknown service, or settings it cannot run with.
    """
    run = SERVICES.get(service)
    if run is None:
        raise ConfigurationError(
            f"unknown service {service!r}; choose one of {', '.join(SERVICES)}"
        )
    run(settings, _stop_on_signals())
