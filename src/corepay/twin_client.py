"""How the simulation path reads twins: straight from a store, or from the twin service."""

from __future__ import annotations

import http.client
from abc import ABC, abstractmethod
from collections.abc import Sequence
from urllib.parse import quote, urlsplit

import orjson

from corepay.connections import ThreadConnections
from corepay.errors import BackendTimeoutError, ConfigurationError, DecodeError, UnavailableError
from corepay.models import Twin
from corepay.store import TwinStore
from corepay.wire import TwinDecoder

__all__ = ["HttpTwinClient", "StoreTwinClient", "TwinClient"]


class TwinClient(ABC):
    """Reads the twins of a batch of customers."""

    @abstractmethod
    def get_many(self, customer_ids: Sequence[str]) -> dict[str, Twin]:
        """The twins that exist among ``customer_ids``.

        Raises:
            UnavailableError, BackendTimeoutError: the twins could not be read.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class StoreTwinClient(TwinClient):
    """Reads twins directly from a :class:`~corepay.store.TwinStore` (one process)."""

    def __init__(self, store: TwinStore) -> None:
        self.store = store

    def get_many(self, customer_ids: Sequence[str]) -> dict[str, Twin]:
        return self.store.get_many(customer_ids)


class HttpTwinClient(TwinClient):
    """Reads twins from the twin service's internal API (``GET /v1/twins?customer_id=...``).

    One keep-alive connection per thread; a batch is one request.
    """

    #: Customer ids per request, to keep URLs well under common server limits.
    chunk = 100

    def __init__(self, base_url: str, *, timeout: float = 2.0, token: str | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                f"twin service URL must be http://host:port or https://host:port, not {base_url!r}"
            )
        self.base_url = base_url.rstrip("/")
        self._parts = parts
        self._headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        self.timeout = timeout
        self._connections = ThreadConnections(parts, timeout)
        self._decoder = TwinDecoder()

    def _get(self, path: str) -> bytes:
        for attempt in (1, 2):  # a kept-alive connection the server closed is retried once
            conn = self._connections.get()
            try:
                conn.request("GET", self._parts.path.rstrip("/") + path, headers=self._headers)
                response = conn.getresponse()
                body = response.read()
            except TimeoutError as exc:
                self._connections.reset()
                raise BackendTimeoutError(
                    f"twin service at {self.base_url} gave no answer within {self.timeout:g} s"
                ) from exc
            except (OSError, http.client.HTTPException) as exc:
                self._connections.reset()
                if attempt == 2:
                    raise UnavailableError(
                        f"twin service at {self.base_url} is unreachable: {exc}"
                    ) from exc
                continue
            if response.status == 401:
                raise UnavailableError(
                    f"twin service at {self.base_url} refused the engine's token (401): "
                    "set the same COREPAY_TWIN_TOKEN for both"
                )
            if response.status != 200:
                raise UnavailableError(
                    f"twin service at {self.base_url} answered {response.status}: {body[:200]!r}"
                )
            return body
        raise AssertionError("unreachable")

    def get_many(self, customer_ids: Sequence[str]) -> dict[str, Twin]:
        ids = list(dict.fromkeys(customer_ids))
        twins: dict[str, Twin] = {}
        for start in range(0, len(ids), self.chunk):
            query = "&".join(f"customer_id={quote(c)}" for c in ids[start : start + self.chunk])
            body = self._get(f"/v1/twins?{query}")
            try:
                docs = orjson.loads(body)["twins"]
                for doc in docs:
                    twin = self._decoder.decode(doc)
                    twins[twin.customer_id] = twin
            except (ValueError, KeyError, TypeError, DecodeError) as exc:
                raise UnavailableError(
                    f"twin service at {self.base_url} sent a malformed answer: {exc}"
                ) from exc
        return twins

    def close(self) -> None:
        """Close every connection, whichever thread opened it."""
        self._connections.close()
