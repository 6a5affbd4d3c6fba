"""Backends, chosen by URL through one registry.

A URL's scheme names the backend (``memory://``; ``kafka://`` and ``couchbase://`` plug in the
same way); its query string carries the backend's own options, documented in its module. The
registry maps a scheme to ``"module:Class"`` and imports the module only when that scheme is
used, so ``memory://`` never imports a driver.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from corepay.bus import Bus
from corepay.errors import ConfigurationError
from corepay.store import TwinStore

__all__ = ["BUS_BACKENDS", "STORE_BACKENDS", "open_bus", "open_store", "parse_options"]

BUS_BACKENDS: dict[str, str] = {
    "memory": "corepay.backends.memory:MemoryBus",
    "kafka": "corepay.backends.kafka:KafkaBus",
}
STORE_BACKENDS: dict[str, str] = {
    "memory": "corepay.backends.memory:MemoryTwinStore",
    "couchbase": "corepay.backends.couchbase:CouchbaseTwinStore",
    "couchbases": "corepay.backends.couchbase:CouchbaseTwinStore",
}


def parse_options(url: str) -> dict[str, str]:
    """The query-string options of a backend URL; a repeated option is an error."""
    options: dict[str, str] = {}
    for name, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if name in options:
            raise ConfigurationError(f"option {name!r} is given twice in the URL")
        options[name] = value
    return options


def _open(url: str, registry: Mapping[str, str], what: str, **kwargs: Any) -> Any:
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    target = registry.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(registry))
        raise ConfigurationError(
            f"unknown {what} URL {_redact(url)!r}: the scheme must be one of {known}"
        )
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"the {scheme}:// {what} needs a package that is not installed ({exc.name}); "
            f"install corepay[{scheme}]"
        ) from exc
    return getattr(module, class_name).from_url(url, parse_options(url), **kwargs)


def _redact(url: str) -> str:
    parts = urlsplit(url if "//" in url else "//" + url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def open_bus(url: str, **kwargs: Any) -> Bus:
    """The bus a URL names, such as ``memory://`` or ``memory://?partitions=8``.

    Raises:
        ConfigurationError: an unknown scheme (the message lists the known ones) or bad options.
    """
    bus: Bus = _open(url, BUS_BACKENDS, "bus", **kwargs)
    return bus


def open_store(url: str, **kwargs: Any) -> TwinStore:
    """The twin store a URL names, such as ``memory://``.

    Raises:
        ConfigurationError: an unknown scheme (the message lists the known ones) or bad options.
    """
    store: TwinStore = _open(url, STORE_BACKENDS, "twin store", **kwargs)
    return store
