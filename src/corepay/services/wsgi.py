"""The ingestion API on gunicorn: worker processes, each with threads and its own bus.

Each worker builds its app (and opens its bus: a Kafka producer does not survive a fork)
after it is forked, and closes the bus when it exits. gunicorn's master handles the signals:
SIGTERM stops accepting, lets the requests in hand finish (``graceful_timeout``) and exits.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

__all__ = ["serve_wsgi"]

log = logging.getLogger(__name__)


_BEARER = re.compile(r"(?i)(bearer)\s+[^\s'\"]+")


class _Redact(logging.Filter):
    """Hides bearer credentials in gunicorn's lines (it quotes a malformed header whole)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _BEARER.sub(r"\1 [redacted]", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


class _Logger(Logger):  # type: ignore[misc]
    """gunicorn's logger: credentials redacted, and lines in JSON when CorePay's are."""

    json = True

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        from corepay.observability import JsonFormatter

        for handler in [*self.error_log.handlers, *self.access_log.handlers]:
            handler.addFilter(_Redact())
            if self.json:
                handler.setFormatter(JsonFormatter())


class _TextLogger(_Logger):
    json = False


class _Application(BaseApplication):  # type: ignore[misc]
    def __init__(self, factory: Callable[[], Flask], options: dict[str, Any]) -> None:
        self._factory = factory
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self._factory()


def serve_wsgi(
    factory: Callable[[], Flask],
    *,
    host: str,
    port: int,
    workers: int,
    threads: int,
    on_exit: Callable[[Flask], None] | None = None,
    graceful_timeout: int = 30,
    log_format: str = "json",
) -> None:
    """Serve the app ``factory`` builds in each worker until gunicorn is told to stop."""

    def worker_exit(server: Any, worker: Any) -> None:
        app = getattr(worker, "wsgi", None)
        if on_exit is not None and isinstance(app, Flask):
            on_exit(app)

    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "graceful_timeout": graceful_timeout,
        "timeout": 60,
        "keepalive": 5,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower(),
        "worker_exit": worker_exit,
        "proc_name": "corepay-ingestion",
        # No control socket: nothing to manage at run time, and no file in the home folder.
        "control_socket_disable": True,
        # Request line and header limits: the body limit is the app's (max_request_bytes).
        "limit_request_line": 4094,
        "limit_request_fields": 100,
        "limit_request_field_size": 8190,
    }
    # gunicorn's own lines as JSON too, like every other line; never with a credential.
    options["logger_class"] = _Logger if log_format == "json" else _TextLogger
    log.info(
        "ingestion on gunicorn: %d worker(s) x %d thread(s) on %s:%d", workers, threads, host, port
    )
    _Application(factory, options).run()
