"""How the simulation path reads twins: straight from a store, or from the twin service."""

from __future__ import annotations

import http.client
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from urllib.parse import quote, urlsplit

import orjson

from corepay.connections import ThreadConnections
from corepay.errors import BackendTimeoutError, ConfigurationError, DecodeError, UnavailableError
from corepay.models import Twin
from corepay.store import TwinStore
from corepay.wire import TwinDecoder

__all__ = ["HttpTwinClient", "StoreTwinClient", "TwinClient"]

log = logging.getLogger(__name__)


class TwinClient(ABC):
    """Reads the twins of a batch of customers."""

    #: Whether reads wait on the network or a store that does (the engine then runs the
    #: live path on a thread of its own, so that the two paths' waits overlap).
    blocking = True

    @abstractmethod
    def get_many(self, customer_ids: Sequence[str]) -> dict[str, Twin]:
        """The twins that exist among ``customer_ids``.

        Raises:
            UnavailableError, BackendTimeoutError: the twins could not be read.
        """

    def get_many_checking(self, wanted: Mapping[str, Collection[str]]) -> dict[str, Twin]:
        """The twins that exist among ``wanted``'s customers, for a caller that uses each
        twin's ``applied`` only to check whether it holds some of the transaction ids
        ``wanted`` gives for that customer.

        Each twin's ``applied`` then holds at least those of its customer's ids it has
        applied, and may leave the rest out: a client that reads over a network does (a
        long-lived customer's twin lists its last 1,000). By default it is :meth:`get_many`.

        Raises:
            UnavailableError, BackendTimeoutError: the twins could not be read.
        """
        return self.get_many(list(wanted))

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class StoreTwinClient(TwinClient):
    """Reads twins directly from a :class:`~corepay.store.TwinStore` (one process)."""

    def __init__(self, store: TwinStore) -> None:
        self.store = store
        self.blocking = store.blocking

    def get_many(self, customer_ids: Sequence[str]) -> dict[str, Twin]:
        return self.store.get_many(customer_ids)


class HttpTwinClient(TwinClient):
    """Reads twins from the twin service's internal API (``GET /v1/twins?customer_id=...``,
    and ``POST /v1/twins:query`` for :meth:`get_many_checking`).

    One keep-alive connection per thread; a batch is one request.
    """

    #: Customer ids per ``GET``, to keep URLs well under common server limits.
    chunk = 100
    #: Customer ids per ``POST /v1/twins:query`` (the most the twin service takes).
    query_chunk = 1000
    #: Seconds to read whole twins after the twin service did not answer the query.
    query_retry_s = 60.0

    def __init__(self, base_url: str, *, timeout: float = 2.0, token: str | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                f"twin service URL must be http://host:port or https://host:port, not {base_url!r}"
            )
        self.base_url = base_url.rstrip("/")
        self._parts = parts
        self._headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        self._post_headers = {**self._headers, "Content-Type": "application/json"}
        self.timeout = timeout
        self._connections = ThreadConnections(parts, timeout)
        self._decoder = TwinDecoder()
        # Until when twins are read whole, the twin service not having answered the query.
        self._whole_until = 0.0

    def _get(self, path: str) -> bytes:
        answer = self._request("GET", path, None)
        assert answer is not None  # only missing_ok requests answer None
        return answer

    def _request(
        self, method: str, path: str, body: bytes | None, *, missing_ok: bool = False
    ) -> bytes | None:
        """The body of a 200 answer; ``None`` for 404 or 405 when ``missing_ok``."""
        headers = self._headers if body is None else self._post_headers
        for attempt in (1, 2):  # a kept-alive connection the server closed is retried once
            conn = self._connections.get()
            try:
                conn.request(method, self._parts.path.rstrip("/") + path, body, headers)
                response = conn.getresponse()
                answer = response.read()
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
            if missing_ok and response.status in (404, 405):
                return None
            if response.status != 200:
                raise UnavailableError(
                    f"twin service at {self.base_url} answered {response.status}: {answer[:200]!r}"
                )
            return answer
        raise AssertionError("unreachable")

    def get_many(self, customer_ids: Sequence[str]) -> dict[str, Twin]:
        ids = list(dict.fromkeys(customer_ids))
        twins: dict[str, Twin] = {}
        for start in range(0, len(ids), self.chunk):
            query = "&".join(f"customer_id={quote(c)}" for c in ids[start : start + self.chunk])
            self._decode(self._get(f"/v1/twins?{query}"), twins)
        return twins

    def get_many_checking(self, wanted: Mapping[str, Collection[str]]) -> dict[str, Twin]:
        """As :meth:`TwinClient.get_many_checking`: one ``POST /v1/twins:query`` per
        :attr:`query_chunk` customers, answered with only the asked ids in ``applied``.

        A twin service that does not answer it (404 or 405: older than this client, so that
        the engine can be upgraded first) is read with :meth:`get_many` instead, and asked
        again :attr:`query_retry_s` later.
        """
        if time.monotonic() < self._whole_until:
            return self.get_many(list(wanted))
        customers = list(wanted)
        twins: dict[str, Twin] = {}
        for start in range(0, len(customers), self.query_chunk):
            chunk = {c: list(wanted[c]) for c in customers[start : start + self.query_chunk]}
            body = orjson.dumps({"customers": chunk})
            answer = self._request("POST", "/v1/twins:query", body, missing_ok=True)
            if answer is None:
                log.warning(
                    "twin service at %s does not answer POST /v1/twins:query (an older twin "
                    "service, or not the twin service's URL); reading whole twins for %g s",
                    self.base_url,
                    self.query_retry_s,
                )
                self._whole_until = time.monotonic() + self.query_retry_s
                return self.get_many(customers)
            self._decode(answer, twins)
        return twins

    def _decode(self, body: bytes, into: dict[str, Twin]) -> None:
        try:
            for doc in orjson.loads(body)["twins"]:
                twin = self._decoder.decode(doc)
                into[twin.customer_id] = twin
        except (ValueError, KeyError, TypeError, DecodeError) as exc:
            raise UnavailableError(
                f"twin service at {self.base_url} sent a malformed answer: {exc}"
            ) from exc

    def close(self) -> None:
        """Close every connection, whichever thread opened it."""
        self._connections.close()
