"""Keep-alive HTTP connections, one per thread, for CorePay's internal HTTP clients."""

from __future__ import annotations

import http.client
import ssl
import threading
from urllib.parse import SplitResult

__all__ = ["ThreadConnections"]


class ThreadConnections:
    """One keep-alive connection to ``parts``'s host per calling thread.

    ``http.client`` connections are not thread-safe, so each thread gets its own; ``close()``
    closes them all, whichever thread opened them.
    """

    def __init__(
        self, parts: SplitResult, timeout: float, context: ssl.SSLContext | None = None
    ) -> None:
        self._parts = parts
        self._timeout = timeout
        self._context = context
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def get(self) -> http.client.HTTPConnection:
        """This thread's connection, opened on first use."""
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            host, port = self._parts.hostname or "", self._parts.port
            if self._parts.scheme == "https":
                conn = http.client.HTTPSConnection(
                    host, port, timeout=self._timeout, context=self._context
                )
            else:
                conn = http.client.HTTPConnection(host, port, timeout=self._timeout)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def reset(self) -> None:
        """Drop this thread's connection (after an error); the next ``get`` opens a new one."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            with self._lock:
                if conn in self._all:
                    self._all.remove(conn)

    def close(self) -> None:
        """Close every connection, whichever thread opened it."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
