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
``COREPAY_COMMIT_INTERVAL``     ``commit_interval`` (seconds)  ``0.1``
``COREPAY_GATEWAY_SEED``        ``gateway_seed``               ``0``
``COREPAY_GATEWAY_URL``         ``gateway_url``                ``simulated://?seed=<seed>``
``COREPAY_LIVE_MODEL``          ``live_model`` (a model file)  trained on first use
``COREPAY_TWIN_MODEL``          ``twin_model`` (a model file)  trained on first use
``COREPAY_LIVE_REVIEW``         ``live_review`` (threshold)    the live model's own
``COREPAY_LIVE_DECLINE``        ``live_decline`` (threshold)   the live model's own
``COREPAY_TWIN_REVIEW``         ``twin_review`` (threshold)    the twin model's own
``COREPAY_TWIN_DECLINE``        ``twin_decline`` (threshold)   the twin model's own
``COREPAY_LOG_LEVEL``           ``log_level``                  ``INFO``
``COREPAY_LOG_FORMAT``          ``log_format``                 ``json`` (or ``text``)
``COREPAY_API_KEYS``            ``api_keys`` (secret)          (none: ``serve`` refuses)
``COREPAY_TWIN_TOKEN``          ``twin_token`` (secret)        (none: ``serve`` refuses)
``COREPAY_INSECURE``            ``insecure``                   ``false``
``COREPAY_IDEMPOTENCY_WINDOW``  ``idempotency_window`` (s)     ``600``
``COREPAY_IDEMPOTENCY_MAX``     ``idempotency_max_entries``    ``100000``
``COREPAY_MAX_BATCH``           ``max_batch``                  ``500``
``COREPAY_WEB_WORKERS``         ``web_workers``                ``1``
``COREPAY_WEB_THREADS``         ``web_threads``                ``8``
``COREPAY_METRICS_PORT``        ``metrics_port``               engine 9101, detector 9102
==============================  =============================  ==============================
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from corepay.errors import ConfigurationError
from corepay.scoring import Thresholds

__all__ = ["ENV_VARS", "Settings"]


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


_boolean.__name__ = "boolean (true or false)"


def _one_of(*choices: str) -> Callable[[Any, attrs.Attribute[Any], str], None]:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
        if value not in choices:
            raise ConfigurationError(
                f"{attribute.name} must be one of {', '.join(choices)}, not {value!r}"
            )

    return check


def _not_negative(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ConfigurationError(f"{attribute.name} must be 0 or a positive number, got {value}")


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
    commit_interval: float = attrs.field(default=0.1, validator=_not_negative)
    gateway_seed: int = 0
    gateway_url: str | None = attrs.field(default=None, repr=False)
    live_model: str | None = None
    twin_model: str | None = None
    live_review: float | None = None
    live_decline: float | None = None
    twin_review: float | None = None
    twin_decline: float | None = None
    log_level: str = "INFO"
    log_format: str = attrs.field(default="json", validator=_one_of("json", "text"))
    api_keys: str | None = attrs.field(default=None, repr=False)
    twin_token: str | None = attrs.field(default=None, repr=False)
    insecure: bool = False
    idempotency_window: float = attrs.field(default=600.0, validator=_positive)
    idempotency_max_entries: int = attrs.field(default=100_000, validator=_positive)
    max_batch: int = attrs.field(default=500, validator=_positive)
    web_workers: int = attrs.field(default=1, validator=_positive)
    web_threads: int = attrs.field(default=8, validator=_positive)
    metrics_port: int | None = None

    def thresholds(self, path: str, model: Thresholds) -> Thresholds:
        """The thresholds of ``path`` (``live`` or ``twin``): those set here, else the model's.

        Raises:
            ConfigurationError: the result is not 0 < review <= decline <= 1.
        """
        review, decline = getattr(self, f"{path}_review"), getattr(self, f"{path}_decline")
        try:
            return Thresholds(
                model.review if review is None else review,
                model.decline if decline is None else decline,
            )
        except ValueError as exc:
            raise ConfigurationError(f"{path} thresholds: {exc}") from None

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
    "COREPAY_COMMIT_INTERVAL": ("commit_interval", float),
    "COREPAY_GATEWAY_SEED": ("gateway_seed", int),
    "COREPAY_GATEWAY_URL": ("gateway_url", str),
    "COREPAY_LIVE_MODEL": ("live_model", str),
    "COREPAY_TWIN_MODEL": ("twin_model", str),
    "COREPAY_LIVE_REVIEW": ("live_review", float),
    "COREPAY_LIVE_DECLINE": ("live_decline", float),
    "COREPAY_TWIN_REVIEW": ("twin_review", float),
    "COREPAY_TWIN_DECLINE": ("twin_decline", float),
    "COREPAY_LOG_LEVEL": ("log_level", str),
    "COREPAY_LOG_FORMAT": ("log_format", str),
    "COREPAY_API_KEYS": ("api_keys", str),
    "COREPAY_TWIN_TOKEN": ("twin_token", str),
    "COREPAY_INSECURE": ("insecure", _boolean),
    "COREPAY_IDEMPOTENCY_WINDOW": ("idempotency_window", float),
    "COREPAY_IDEMPOTENCY_MAX": ("idempotency_max_entries", int),
    "COREPAY_MAX_BATCH": ("max_batch", int),
    "COREPAY_WEB_WORKERS": ("web_workers", int),
    "COREPAY_WEB_THREADS": ("web_threads", int),
    "COREPAY_METRICS_PORT": ("metrics_port", int),
}
