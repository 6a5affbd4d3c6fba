"""Configuration: one frozen object, from explicit values, the environment, or defaults.

Precedence: an explicit argument beats ``COREPAY_*`` variables, which beat the defaults. Only
the CLI and service entrypoints read the environment (:meth:`Settings.from_env`).

==============================  =============================  ==============================
variable                        setting                        default
==============================  =============================  ==============================
``COREPAY_BUS_URL``             ``bus_url``                    ``memory://``
``COREPAY_STORE_URL``           ``store_url``                  ``memory://``
``COREPAY_STORE_USERNAME``      ``store_username``             (none)
``COREPAY_STORE_PASSWORD``      ``store_password`` (secret)    (none)
``COREPAY_TWIN_URL``            ``twin_url``                   (none)
``COREPAY_HOST``                ``host``                       ``127.0.0.1``
``COREPAY_PORT``                ``port``                       per service (see ``serve``)
``COREPAY_MAX_REQUEST_BYTES``   ``max_request_bytes``          ``65536``
``COREPAY_PAIRING_TIMEOUT``     ``pairing_timeout`` (seconds)  ``30``
``COREPAY_MAX_PENDING``         ``max_pending``                ``100000``
``COREPAY_BATCH_SIZE``          ``batch_size``                 ``500``
``COREPAY_GATEWAY_SEED``        ``gateway_seed``               ``0``
``COREPAY_LOG_LEVEL``           ``log_level``                  ``INFO``
==============================  =============================  ==============================
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from corepay.errors import ConfigurationError

__all__ = ["ENV_VARS", "Settings"]


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{attribute.name} must be a positive number, got {value}")


@attrs.frozen
class Settings:
    """Everything a CorePay service can be configured with."""

    bus_url: str = "memory://"
    store_url: str = "memory://"
    store_username: str | None = None
    store_password: str | None = attrs.field(default=None, repr=False)
    twin_url: str | None = None
    host: str = "127.0.0.1"
    port: int | None = None
    max_request_bytes: int = attrs.field(default=65536, validator=_positive)
    pairing_timeout: float = attrs.field(default=30.0, validator=_positive)
    max_pending: int = attrs.field(default=100_000, validator=_positive)
    batch_size: int = attrs.field(default=500, validator=_positive)
    gateway_seed: int = 0
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **explicit: Any) -> Settings:
        """Settings from ``COREPAY_*`` variables, overridden by ``explicit`` non-``None`` values.

        Raises:
            ConfigurationError: a variable holds a value of the wrong type (named in the message).
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for variable, (name, parse) in ENV_VARS.items():
            raw = environ.get(variable)
            if raw is None or raw == "":
                continue
            try:
                values[name] = parse(raw)
            except ValueError:
                raise ConfigurationError(
                    f"{variable}={raw!r} is not a valid {parse.__name__}"
                ) from None
        values.update({k: v for k, v in explicit.items() if v is not None})
        return cls(**values)


#: Every environment variable CorePay reads, with the setting it fills and how it is parsed.
ENV_VARS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "COREPAY_BUS_URL": ("bus_url", str),
    "COREPAY_STORE_URL": ("store_url", str),
    "COREPAY_STORE_USERNAME": ("store_username", str),
    "COREPAY_STORE_PASSWORD": ("store_password", str),
    "COREPAY_TWIN_URL": ("twin_url", str),
    "COREPAY_HOST": ("host", str),
    "COREPAY_PORT": ("port", int),
    "COREPAY_MAX_REQUEST_BYTES": ("max_request_bytes", int),
    "COREPAY_PAIRING_TIMEOUT": ("pairing_timeout", float),
    "COREPAY_MAX_PENDING": ("max_pending", int),
    "COREPAY_BATCH_SIZE": ("batch_size", int),
    "COREPAY_GATEWAY_SEED": ("gateway_seed", int),
    "COREPAY_LOG_LEVEL": ("log_level", str),
}
