"""The payment gateway the live path authorizes through, and a simulated one.

:class:`SimulatedGateway` behaves like a card processor: log-normal latency with a long tail,
issuer declines that grow likelier with the amount, rare timeouts, and outages that last whole
minutes. Every draw is derived from ``(seed, transaction id)`` or ``(seed, minute)``, so the same
seed gives the same answers in any order, in any process.
"""

from __future__ import annotations

import hashlib
import math
import time
from abc import ABC, abstractmethod
from statistics import NormalDist

import attrs

from corepay.errors import BackendTimeoutError, UnavailableError
from corepay.models import Transaction

__all__ = ["GatewayResponse", "PaymentGateway", "SimulatedGateway", "uniforms"]

_NORMAL = NormalDist()


def uniforms(seed: int, key: str, count: int = 4) -> list[float]:
    """``count`` (at most 8) independent uniform draws in (0, 1) for ``key`` under ``seed``."""
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=64).digest()
    return [
        (int.from_bytes(digest[i * 8 : i * 8 + 8], "big") + 0.5) / 2.0**64 for i in range(count)
    ]


@attrs.frozen
class GatewayResponse:
    """The gateway's answer: ``code`` is ``APPROVED`` or the issuer's decline code."""

    approved: bool
    code: str
    latency_ms: float


class PaymentGateway(ABC):
    """Authorizes a payment with the card network."""

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

    def authorize(self, txn: Transaction) -> GatewayResponse:
        minute = int(txn.timestamp.timestamp() // 60)
        if uniforms(self.seed, f"outage:{minute}", 1)[0] < self.outage_rate:
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
            return GatewayResponse(approved=True, code="APPROVED", latency_ms=latency)
        return GatewayResponse(approved=False, code=code, latency_ms=latency)
