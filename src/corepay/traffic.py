"""Generated payment traffic: customers with habits, and the odd payment that breaks them.

Deterministic per seed: the same ``(count, customers, seed)`` gives the same requests, byte for
byte. Each request is a wire-format JSON object the ingestion API accepts as is.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs

__all__ = ["Customer", "TrafficGenerator"]

# country, currency, UTC offset (minutes), amount scale of the currency (units per euro), weight
_COUNTRIES = (
    ("US", "USD", -300, 1.1, 30),
    ("GB", "GBP", 0, 0.85, 12),
    ("DE", "EUR", 60, 1.0, 12),
    ("FR", "EUR", 60, 1.0, 10),
    ("ES", "EUR", 60, 1.0, 6),
    ("NL", "EUR", 60, 1.0, 4),
    ("IT", "EUR", 60, 1.0, 6),
    ("CA", "CAD", -300, 1.5, 5),
    ("AU", "AUD", 600, 1.65, 4),
    ("JP", "JPY", 540, 160.0, 5),
    ("BR", "BRL", -180, 5.5, 3),
    ("IN", "INR", 330, 90.0, 3),
)
# Everyday merchant categories with a typical amount multiplier, and the risky ones.
_EVERYDAY = (
    ("5411", 1.2),  # grocery
    ("5812", 1.0),  # restaurants
    ("5814", 0.3),  # fast food
    ("5541", 1.1),  # fuel
    ("4111", 0.15),  # transit
    ("4121", 0.5),  # taxis
    ("5311", 1.8),  # department stores
    ("5691", 2.0),  # clothing
    ("5732", 4.0),  # electronics
    ("5999", 1.0),  # misc retail
)
_RISKY = ("7995", "6051", "5816", "4829")
_CHANNELS = ("pos", "ecommerce", "atm", "moto", "recurring")


@attrs.frozen
class Customer:
    """A generated customer's habits."""

    customer_id: str
    country: str
    currency: str
    utc_offset_minutes: int
    typical_amount: float
    merchants: tuple[tuple[str, str, float], ...]  # merchant id, category, amount multiplier
    channel_weights: tuple[float, ...]
    activity: float


class TrafficGenerator:
    """Payment requests from ``customers`` generated customers, in timestamp order.

    About 3% of payments break the customer's habits in ways risk teams look for: amount
    spikes, payments from an unusual country, card testing (a burst of tiny card-not-present
    payments at a new merchant) and account takeover (a large payment from a new country at a
    risky merchant).
    """

    anomaly_rate = 0.03

    def __init__(
        self,
        *,
        customers: int = 200,
        seed: int = 0,
        start: datetime = datetime(2026, 11, 2, 8, 0, tzinfo=UTC),
        per_customer_daily: float = 3.0,
    ) -> None:
        if customers < 1:
            raise ValueError("customers must be at least 1")
        self.seed = seed
        self.start = start
        self.per_second = customers * per_customer_daily / 86400.0
        self._rng = random.Random(seed)
        self.customers = [self._customer(i) for i in range(customers)]
        self._cum_weights = list(itertools.accumulate(c.activity for c in self.customers))

    def _customer(self, index: int) -> Customer:
        rng = self._rng
        country, currency, offset, scale, _ = rng.choices(
            _COUNTRIES, weights=[c[4] for c in _COUNTRIES]
        )[0]
        merchants = tuple(
            (f"m-{country.lower()}-{rng.randrange(400):03d}", mcc, mult)
            for mcc, mult in rng.sample(_EVERYDAY, rng.randint(3, 7))
        )
        pos, ecom = rng.uniform(0.3, 0.8), rng.uniform(0.1, 0.5)
        return Customer(
            customer_id=f"cust-{index:05d}",
            country=country,
            currency=currency,
            utc_offset_minutes=offset,
            typical_amount=scale * math.exp(rng.gauss(math.log(35.0), 0.6)),
            merchants=merchants,
            channel_weights=(pos, ecom, 0.05, 0.01, 0.04),
            activity=math.exp(rng.gauss(0.0, 0.8)),
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.requests()

    def requests(self, count: int | None = None) -> Iterator[dict[str, Any]]:
        """Yield ``count`` payment requests (forever when ``None``)."""
        rng = self._rng
        now = self.start
        queued: list[dict[str, Any]] = []
        produced = 0
        while count is None or produced < count:
            if not queued:
                now += timedelta(seconds=rng.expovariate(self.per_second))
                queued = self._next(now, produced)
            yield queued.pop(0)
            produced += 1

    def _next(self, now: datetime, serial: int) -> list[dict[str, Any]]:
        rng = self._rng
        customer = rng.choices(self.customers, cum_weights=self._cum_weights)[0]
        roll = rng.random()
        if roll >= self.anomaly_rate:
            merchant, mcc, mult = rng.choice(customer.merchants)
            amount = customer.typical_amount * mult * math.exp(rng.gauss(0.0, 0.35))
            channel = rng.choices(_CHANNELS, weights=customer.channel_weights)[0]
            return [self._request(customer, serial, now, amount, merchant, mcc, channel)]
        kind = rng.randrange(4)
        if kind == 0:  # amount spike at a usual merchant
            merchant, mcc, _ = rng.choice(customer.merchants)
            amount = customer.typical_amount * rng.uniform(12.0, 60.0)
            return [self._request(customer, serial, now, amount, merchant, mcc, "ecommerce")]
        if kind == 1:  # unusual country
            country = rng.choice([c[0] for c in _COUNTRIES if c[0] != customer.country])
            merchant = f"m-{country.lower()}-{rng.randrange(400):03d}"
            amount = customer.typical_amount * rng.uniform(1.0, 4.0)
            return [self._request(customer, serial, now, amount, merchant, "5999", "pos", country)]
        if kind == 2:  # card testing: a burst of tiny payments at one new merchant
            merchant = f"m-web-{rng.randrange(10_000):04d}"
            return [
                self._request(
                    customer,
                    serial,
                    now + timedelta(seconds=20 * i),
                    rng.uniform(0.5, 2.0),
                    merchant,
                    "5816",
                    "ecommerce",
                    suffix=f"b{i}",
                )
                for i in range(rng.randint(3, 6))
            ]
        country = rng.choice([c[0] for c in _COUNTRIES if c[0] != customer.country])
        amount = customer.typical_amount * rng.uniform(15.0, 80.0)
        merchant = f"m-{country.lower()}-x{rng.randrange(100):02d}"
        mcc = rng.choice(_RISKY)
        return [self._request(customer, serial, now, amount, merchant, mcc, "ecommerce", country)]

    def _request(
        self,
        customer: Customer,
        serial: int,
        at: datetime,
        amount: float,
        merchant: str,
        mcc: str,
        channel: str,
        country: str | None = None,
        suffix: str = "",
    ) -> dict[str, Any]:
        places = 0 if customer.currency in ("JPY",) else 2
        local = at.astimezone(timezone(timedelta(minutes=customer.utc_offset_minutes)))
        return {
            "transaction_id": f"tx-{self.seed}-{serial:08d}{suffix}",
            "customer_id": customer.customer_id,
            "amount": f"{max(amount, 1.0 if places == 0 else 0.5):.{places}f}",
            "currency": customer.currency,
            "merchant_id": merchant,
            "merchant_category": mcc,
            "country": country or customer.country,
            "channel": channel,
            "timestamp": local.isoformat(),
        }
