"""Couchbase twin store, on the official ``couchbase`` SDK 4.x.

URL: ``couchbase://host[,host...]/bucket?option=value`` (``couchbases://`` for TLS). Credentials
come from settings (``COREPAY_STORE_USERNAME``, ``COREPAY_STORE_PASSWORD``) or the URL's user
info (``couchbase://user:password@host/bucket``); they never appear in reprs, logs or errors.

================= ========== ===============================================================
option            default    meaning
================= ========== ===============================================================
scope             _default   scope holding the twins
collection        _default   collection holding the twins
durability        none       ``none``, ``majority``, ``majority_and_persist_to_active`` or
                             ``persist_to_majority``: when a write counts as done
kv_timeout        2.5        seconds a read or write may take
connect_timeout   10         seconds to reach the cluster before giving up
================= ========== ===============================================================

One document per customer, key ``twin::<customer_id>``, holding the twin's JSON (bounded: the
history and the dedup window are capped). Reads and writes are key-value operations only, no
N1QL. The compare-and-swap update reuses the CAS of the read it was based on.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs
from couchbase import exceptions as cbx
from couchbase.auth import PasswordAuthenticator
from couchbase.cluster import Cluster
from couchbase.durability import DurabilityLevel, ServerDurability
from couchbase.exceptions import CouchbaseException, DocumentNotFoundException
from couchbase.options import ClusterOptions, ClusterTimeoutOptions, InsertOptions, ReplaceOptions

from corepay.errors import (
    BackendTimeoutError,
    ConfigurationError,
    ConflictError,
    CorepayError,
    UnavailableError,
)
from corepay.models import Twin
from corepay.store import TwinStore
from corepay.wire import decode_twin, twin_to_wire

__all__ = ["CouchbaseConfig", "CouchbaseTwinStore", "translate"]

_DURABILITY = ("none", "majority", "majority_and_persist_to_active", "persist_to_majority")
_OPTIONS = ("scope", "collection", "durability", "kv_timeout", "connect_timeout")


@attrs.frozen
class CouchbaseConfig:
    """Where and how to reach the twins, parsed from a URL (see the module docstring)."""

    scheme: str
    hosts: tuple[str, ...]
    bucket: str
    scope: str = "_default"
    collection: str = "_default"
    durability: str = "none"
    kv_timeout: float = 2.5
    connect_timeout: float = 10.0
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)

    @classmethod
    def from_url(
        cls,
        url: str,
        options: Mapping[str, str],
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> CouchbaseConfig:
        """Parse a store URL; explicit credentials win over the URL's user info.

        Raises:
            ConfigurationError: naming the part of the URL that is wrong (never the password).
        """
        parts = urlsplit(url)
        if parts.scheme not in ("couchbase", "couchbases"):
            raise ConfigurationError(
                "a Couchbase store URL starts with couchbase:// or couchbases://"
            )
        netloc = parts.netloc.rpartition("@")[2]
        hosts = tuple(h.strip() for h in netloc.split(",") if h.strip())
        if not hosts:
            raise ConfigurationError("the Couchbase store URL names no host")
        bucket = parts.path.strip("/")
        if not bucket or "/" in bucket:
            raise ConfigurationError(
                "the Couchbase store URL must name one bucket: couchbase://host/bucket"
            )
        unknown = set(options) - set(_OPTIONS)
        if unknown:
            raise ConfigurationError(
                f"unknown Couchbase store option(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(_OPTIONS)}"
            )
        durability = options.get("durability", "none").lower()
        if durability not in _DURABILITY:
            raise ConfigurationError(f"durability must be one of {', '.join(_DURABILITY)}")
        timeouts = {}
        for name in ("kv_timeout", "connect_timeout"):
            if name in options:
                try:
                    timeouts[name] = float(options[name])
                except ValueError:
                    raise ConfigurationError(f"{name} must be a number of seconds") from None
                if not 0 < timeouts[name] < 3600:
                    raise ConfigurationError(f"{name} must be between 0 and 3600 seconds")
        return cls(
            scheme=parts.scheme,
            hosts=hosts,
            bucket=bucket,
            scope=options.get("scope", "_default"),
            collection=options.get("collection", "_default"),
            durability=durability,
            username=username or (unquote(parts.username) if parts.username else None),
            password=password or (unquote(parts.password) if parts.password else None),
            **timeouts,
        )

    @property
    def connection_string(self) -> str:
        return f"{self.scheme}://{','.join(self.hosts)}"

    @property
    def where(self) -> str:
        """The store, for messages: no credentials."""
        return f"{self.connection_string}/{self.bucket} ({self.scope}.{self.collection})"


def translate(exc: Exception, what: str, config: CouchbaseConfig) -> CorepayError:
    """A CorePay error for a Couchbase SDK exception, saying what failed and where."""

    where = config.where
    if isinstance(exc, cbx.CasMismatchException | cbx.DocumentExistsException):
        return ConflictError(f"{what}: the twin changed in {where} since it was read")
    if isinstance(
        exc,
        cbx.TimeoutException | cbx.AmbiguousTimeoutException | cbx.UnAmbiguousTimeoutException,
    ):
        return BackendTimeoutError(
            f"{what}: Couchbase at {where} did not answer in time (kv_timeout "
            f"{config.kv_timeout:g} s, connect_timeout {config.connect_timeout:g} s)"
        )
    if isinstance(exc, cbx.AuthenticationException):
        return UnavailableError(
            f"{what}: Couchbase at {where} refused the credentials of user "
            f"{config.username!r}; check COREPAY_STORE_USERNAME and COREPAY_STORE_PASSWORD"
        )
    if isinstance(
        exc,
        cbx.BucketNotFoundException | cbx.ScopeNotFoundException | cbx.CollectionNotFoundException,
    ):
        return ConfigurationError(f"{what}: {where} does not exist on the cluster")
    return UnavailableError(f"{what}: Couchbase at {where} failed: {type(exc).__name__}")


class CouchbaseTwinStore(TwinStore):
    """Twins in a Couchbase collection, updated with compare-and-swap on the document CAS."""

    #: How many (customer, version) -> CAS pairs from recent reads are kept for updates.
    cas_cache_size = 10_000

    def __init__(self, config: CouchbaseConfig) -> None:
        self.config = config
        if not config.username or not config.password:
            raise ConfigurationError(
                f"Couchbase at {config.where} needs credentials: set COREPAY_STORE_USERNAME "
                "and COREPAY_STORE_PASSWORD"
            )
        connect = timedelta(seconds=config.connect_timeout)
        options = ClusterOptions(
            PasswordAuthenticator(config.username, config.password),
            timeout_options=ClusterTimeoutOptions(
                connect_timeout=connect,
                bootstrap_timeout=connect,
                kv_timeout=timedelta(seconds=config.kv_timeout),
            ),
        )
        try:
            self._cluster = Cluster(config.connection_string, options)
            self._cluster.wait_until_ready(connect)
            bucket = self._cluster.bucket(config.bucket)
            self._collection = bucket.scope(config.scope).collection(config.collection)
        except CouchbaseException as exc:
            raise translate(exc, "connecting", config) from exc
        level = {
            "none": None,
            "majority": DurabilityLevel.MAJORITY,
            "majority_and_persist_to_active": DurabilityLevel.MAJORITY_AND_PERSIST_TO_ACTIVE,
            "persist_to_majority": DurabilityLevel.PERSIST_TO_MAJORITY,
        }[config.durability]
        self._durability = None if level is None else ServerDurability(level)
        self._cas: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_url(
        cls,
        url: str,
        options: Mapping[str, str],
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> CouchbaseTwinStore:
        return cls(CouchbaseConfig.from_url(url, options, username=username, password=password))

    def __repr__(self) -> str:
        return f"CouchbaseTwinStore({self.config.where})"

    @staticmethod
    def key(customer_id: str) -> str:
        return f"twin::{customer_id}"

    def _remember(self, customer_id: str, version: int, cas: int) -> None:
        with self._lock:
            self._cas[(customer_id, version)] = cas
            while len(self._cas) > self.cas_cache_size:
                self._cas.popitem(last=False)

    def get(self, customer_id: str) -> Twin | None:
        try:
            result = self._collection.get(self.key(customer_id))
        except DocumentNotFoundException:
            return None
        except CouchbaseException as exc:
            raise translate(exc, f"reading the twin of {customer_id}", self.config) from exc
        twin = decode_twin(result.content_as[dict])
        self._remember(customer_id, twin.version, result.cas)
        return twin

    def compare_and_set(self, twin: Twin, *, expected_version: int | None) -> None:
        key, doc = self.key(twin.customer_id), twin_to_wire(twin)
        what = f"storing the twin of {twin.customer_id}"
        # The SDK gives durable writes 10 s unless told otherwise: hold them to kv_timeout.
        durability: dict[str, Any] = {"timeout": timedelta(seconds=self.config.kv_timeout)}
        if self._durability is not None:
            durability["durability"] = self._durability
        try:
            if expected_version is None:
                result = self._collection.insert(key, doc, InsertOptions(**durability))
            else:
                with self._lock:
                    cas = self._cas.pop((twin.customer_id, expected_version), None)
                if cas is None:  # not read through this store: read the CAS now
                    current = self._collection.get(key)
                    if decode_twin(current.content_as[dict]).version != expected_version:
                        raise ConflictError(
                            f"{what}: it is no longer at version {expected_version}"
                        )
                    cas = current.cas
                result = self._collection.replace(key, doc, ReplaceOptions(cas=cas, **durability))
        except DocumentNotFoundException as exc:
            raise ConflictError(f"{what}: it is no longer at version {expected_version}") from exc
        except CouchbaseException as exc:
            raise translate(exc, what, self.config) from exc
        self._remember(twin.customer_id, twin.version, result.cas)

    def close(self) -> None:

        with contextlib.suppress(CouchbaseException):
            self._cluster.close()
