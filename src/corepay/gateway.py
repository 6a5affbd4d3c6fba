"""The payment gateway the live path authorizes through, and a simulated one.

:class:`SimulatedGateway` behaves like a card processor: log-normal latency with a long tail,
issuer declines that grow likelier with the amount, rare timeouts, and outages that last whole
minutes. Every draw is derived from ``(seed, transaction id)`` or ``(seed, minute)``, so the same
seed gives the same answers in any order, in any process.

:class:`~corepay.http_gateway.HttpGateway` talks to a real gateway endpoint
(``POST /v1/authorizations``, served for the simulated gateway by
:mod:`corepay.services.gateway_api`) with retries and a circuit breaker. :func:`open_gateway`
builds either from a URL:

- ``simulated://?seed=0&timeout_ms=1500&median_latency_ms=120&outage_rate=0.003&realtime=false``
  (every option optional);
- ``http://host:port[/prefix]`` or ``https://...``, with options ``timeout`` (seconds per
  attempt, 1.5), ``retries`` (2), ``failure_threshold`` (5) and ``reset_timeout`` (seconds, 30).

An unknown option or a bad value raises :class:`~corepay.errors.ConfigurationError` naming it.
"""

from __future__ import annotations

import hashlib
import math
import struct
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from statistics import NormalDist
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import attrs

from corepay.errors import (
    BackendTimeoutError,
    ConfigurationError,
    UnavailableError,
)
from corepay.models import Transaction, epoch_us
from corepay.recent import Recent

__all__ = ["GatewayResponse", "PaymentGateway", "SimulatedGateway", "open_gateway", "uniforms"]

_NORMAL = NormalDist()


def uniforms(seed: int, key: str, count: int = 4) -> list[float]:
    """``count`` (at most 8) independent uniform draws in (0, 1) for ``key`` under ``seed``."""
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=64).digest()
    try:
        words = _WORDS[count]  # the digest's first ``count`` big-endian unsigned 64-bit words
    except KeyError:
        raise ValueError(f"count must be 0 to 8, not {count!r}") from None
    return [(word + 0.5) / 2.0**64 for word in words.unpack_from(digest)]


_WORDS = {count: struct.Struct(f">{count}Q") for count in range(9)}


@attrs.frozen
class GatewayResponse:
    """The gateway's answer: ``code`` is ``APPROVED`` or the issuer's decline code."""

    approved: bool
    code: str
    latency_ms: float


class PaymentGateway(ABC):
    """Authorizes a payment with the card network."""

    #: Whether :meth:`authorize` waits on the network (the live path then authorizes the
    #: payments of a batch concurrently).
    blocking = True

    @abstractmethod
    def authorize(self, txn: Transaction) -> GatewayResponse:
        """Ask for authorization.

        Raises:
            UnavailableError: the gateway is down or refused the connection.
            BackendTimeoutError: no answer within the gateway timeout.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class SimulatedGateway(PaymentGateway):
    """A deterministic stand-in for a card processor.

    Args:
        seed: the same seed gives the same answers.
        timeout_ms: an answer slower than this is a timeout.
        median_latency_ms: median of the log-normal latency.
        outage_rate: share of wall-clock minutes (by the transaction's timestamp) the gateway
            is down for.
        realtime: sleep for the simulated latency (off by default: the latency is reported,
            not waited for, so demos and tests run at full speed).
    """

    version = "simulated-gateway-1"

    def __init__(
        self,
        seed: int = 0,
        *,
        timeout_ms: float = 1500.0,
        median_latency_ms: float = 120.0,
        outage_rate: float = 0.003,
        realtime: bool = False,
    ) -> None:
        self.seed = seed
        self.timeout_ms = timeout_ms
        self.median_latency_ms = median_latency_ms
        self.outage_rate = outage_rate
        self.realtime = realtime
        self.blocking = realtime
        # Each minute's outage draw (a batch's payments share a few minutes), by seed.
        self._draws: Recent[tuple[int, int], float] = Recent(10_000)

    def _outage(self, minute: int) -> bool:
        draw = self._draws.get((self.seed, minute))
        if draw is None:
            draw = self._draws[(self.seed, minute)] = uniforms(self.seed, f"outage:{minute}", 1)[0]
        return draw < self.outage_rate

    def authorize(self, txn: Transaction) -> GatewayResponse:
        if self._outage(epoch_us(txn.timestamp) // 60_000_000):
            raise UnavailableError("payment gateway unavailable (simulated outage)")
        u_latency, u_tail, u_decline, u_code = uniforms(self.seed, txn.transaction_id)
        latency = self.median_latency_ms * math.exp(0.45 * _NORMAL.inv_cdf(u_latency))
        if u_tail < 0.002:  # the long tail: a stuck connection
            latency += self.timeout_ms
        if self.realtime:
            time.sleep(min(latency, self.timeout_ms) / 1000.0)
        if latency >= self.timeout_ms:
            raise BackendTimeoutError(
                f"payment gateway gave no answer within {self.timeout_ms:g} ms"
            )
        amount = float(txn.amount)
        p_funds = 0.015 + 0.06 * max(0.0, math.log10(max(amount, 1.0) / 200.0))
        if u_decline < p_funds:
            code = "INSUFFICIENT_FUNDS"
        elif u_decline < p_funds + 0.006:
            code = "DO_NOT_HONOR" if u_code < 0.7 else "EXPIRED_CARD"
        else:
            return GatewayResponse(True, "APPROVED", latency)  # (approved, code, latency_ms)
        return GatewayResponse(False, code, latency)


# --- open_gateway --------------------------------------------------------------------------


def _number(kind: type[int] | type[float], low: float, high: float = math.inf) -> Any:
    def convert(text: str) -> int | float:
        value = kind(text)
        if not (math.isfinite(value) and low <= value <= high):
            raise ValueError
        return value

    return convert


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError


# option -> (converter, what it accepts)
_SIMULATED_OPTIONS: dict[str, tuple[Callable[[str], Any], str]] = {
    "seed": (_number(int, -math.inf), "an integer"),
    "timeout_ms": (_number(float, 1e-9), "positive milliseconds"),
    "median_latency_ms": (_number(float, 1e-9), "positive milliseconds"),
    "outage_rate": (_number(float, 0.0, 1.0), "a number from 0 to 1"),
    "realtime": (_boolean, "true or false"),
}
_HTTP_OPTIONS: dict[str, tuple[Callable[[str], Any], str]] = {
    "timeout": (_number(float, 1e-9), "positive seconds"),
    "retries": (_number(int, 0), "an integer, 0 or more"),
    "failure_threshold": (_number(int, 1), "an integer, 1 or more"),
    "reset_timeout": (_number(float, 0.0), "0 or more seconds"),
}


def _options(query: str, known: dict[str, tuple[Callable[[str], Any], str]]) -> dict[str, Any]:
    given = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ConfigurationError(
            f"unknown payment gateway option(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    options: dict[str, Any] = {}
    for name, values in given.items():
        convert, rule = known[name]
        if len(values) > 1:
            raise ConfigurationError(f"payment gateway option {name} is given more than once")
        try:
            options[name] = convert(values[0])
        except ValueError:
            raise ConfigurationError(
                f"payment gateway option {name} must be {rule}, not {values[0]!r}"
            ) from None
    return options


def open_gateway(url: str) -> PaymentGateway:
    """The payment gateway a URL names (see the module docstring for the options).

    Raises:
        ConfigurationError: an unknown scheme, a bad URL, an unknown option or a bad value.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigurationError(f"payment gateway URL is malformed: {exc}") from None
    if parts.scheme == "simulated":
        if parts.netloc or parts.path.strip("/") or parts.fragment:
            raise ConfigurationError(
                "simulated gateway URL takes no host or path, only options: "
                "simulated://?seed=0&timeout_ms=1500&median_latency_ms=120"
                "&outage_rate=0.003&realtime=false"
            )
        return SimulatedGateway(**_options(parts.query, _SIMULATED_OPTIONS))
    if parts.scheme in ("http", "https"):
        options = _options(parts.query, _HTTP_OPTIONS)
        from corepay.http_gateway import HttpGateway  # imports this module: import it late

        return HttpGateway(urlunsplit(parts._replace(query="")), **options)
    raise ConfigurationError(
        f"unknown payment gateway scheme {parts.scheme!r}; known: simulated://, http://, https://"
    )
