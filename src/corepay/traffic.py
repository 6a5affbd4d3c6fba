"""A synthetic payments world: customers with habits, and labelled fraud that breaks them.

Deterministic per seed: the same ``(count, customers, seed)`` gives the same requests, byte for
byte, and the same labels. Each request is a wire-format JSON object the ingestion API accepts
as is; :meth:`TrafficGenerator.labelled` pairs each with a :class:`Label` saying whether it is
fraud and which pattern produced it, which is what ``corepay train`` learns from.

Customers have their own habits: a home country and currency, a typical amount, a handful of
regular merchants, channel preferences, the hours of the day they are active and how often they
pay. Most payments follow those habits. The rest follow one of the patterns below, fraud or a
legitimate break of habit (so that "unusual" alone is not "fraud"):

- ``card_testing`` (fraud): a burst of tiny card-not-present payments at one new digital-goods
  merchant, seconds apart.
- ``account_takeover`` (fraud): a burst of large payments from a new country at risky merchants,
  often at night.
- ``unusual_country`` (fraud): a mid-sized online payment from a country the customer never
  paid from, at a new merchant.
- ``amount_spike`` (fraud): a payment many times the customer's usual amount.
- ``travel`` (legitimate): the customer pays in person, at normal amounts, abroad.
- ``online_abroad`` (legitimate): an online order from a foreign shop the customer never used.
- ``big_purchase`` (legitimate): a large purchase at one of the customer's merchants.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs

__all__ = ["FRAUD_PATTERNS", "LEGITIMATE_PATTERNS", "Customer", "Label", "TrafficGenerator"]

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

#: Patterns that are fraud, and legitimate breaks of habit, with their share of all payments.
FRAUD_PATTERNS = {
    "card_testing": 0.004,
    "account_takeover": 0.004,
    "unusual_country": 0.006,
    "amount_spike": 0.006,
}
LEGITIMATE_PATTERNS = {"travel": 0.01, "online_abroad": 0.01, "big_purchase": 0.008}
_PATTERNS = tuple({**FRAUD_PATTERNS, **LEGITIMATE_PATTERNS}.items())
_PATTERN_CUM = list(itertools.accumulate(share for _, share in _PATTERNS))


@attrs.frozen
class Label:
    """The truth about a generated payment: fraud or not, and the pattern that produced it."""

    transaction_id: str
    is_fraud: bool
    pattern: str  # "normal" or one of the pattern names

    def to_json(self) -> dict[str, Any]:
        return {
            "transaction_id": self.transaction_id,
            "is_fraud": self.is_fraud,
            "pattern": self.pattern,
        }


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
    peak_hour: float  # local hour of day the customer pays around
    hour_spread: float  # hours


class TrafficGenerator:
    """Payment requests from ``customers`` generated customers.

    Requests come in timestamp order, except that a burst (card testing, account takeover) is
    emitted as a whole when it starts, the way a fraudster's script fires it. About 4% of
    payments are fraud (bursts count one by one) and 3% legitimate breaks of habit.
    """

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
        if rng.random() < 0.2:  # some customers game, send money or buy digital goods
            merchants += ((f"m-web-{rng.randrange(2000):04d}", rng.choice(_RISKY), 0.8),)
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
            peak_hour=rng.uniform(9.0, 20.0),
            hour_spread=rng.uniform(2.0, 4.5),
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.requests()

    def requests(self, count: int | None = None) -> Iterator[dict[str, Any]]:
        """Yield ``count`` payment requests (forever when ``None``)."""
        for request, _ in self.labelled(count):
            yield request

    def labelled(self, count: int | None = None) -> Iterator[tuple[dict[str, Any], Label]]:
        """Yield ``count`` payment requests with their labels (forever when ``None``)."""
        rng = self._rng
        now = self.start
        queued: list[tuple[dict[str, Any], Label]] = []
        produced = 0
        while count is None or produced < count:
            if not queued:
                now += timedelta(seconds=rng.expovariate(self.per_second))
                queued = self._next(now, produced)
                queued.reverse()
            yield queued.pop()
            produced += 1

    def _pick_customer(self, now: datetime) -> Customer:
        """A customer by activity, likelier the closer ``now`` is to their usual hour."""
        rng = self._rng
        for _ in range(8):
            customer = rng.choices(self.customers, cum_weights=self._cum_weights)[0]
            local = now.timestamp() / 3600.0 + customer.utc_offset_minutes / 60.0
            gap = abs((local - customer.peak_hour + 12.0) % 24.0 - 12.0)
            if rng.random() < math.exp(-0.5 * (gap / customer.hour_spread) ** 2):
                return customer
        return customer

    def _next(self, now: datetime, serial: int) -> list[tuple[dict[str, Any], Label]]:
        rng = self._rng
        customer = self._pick_customer(now)
        roll = rng.random()
        index = bisect.bisect_right(_PATTERN_CUM, roll)
        if index >= len(_PATTERNS):
            merchant, mcc, mult = rng.choice(customer.merchants)
            amount = customer.typical_amount * mult * math.exp(rng.gauss(0.0, 0.35))
            channel = rng.choices(_CHANNELS, weights=customer.channel_weights)[0]
            request = self._request(customer, serial, now, amount, merchant, mcc, channel)
            return [(request, Label(request["transaction_id"], False, "normal"))]
        pattern = _PATTERNS[index][0]
        requests = getattr(self, f"_{pattern}")(customer, serial, now)
        fraud = pattern in FRAUD_PATTERNS
        return [(r, Label(r["transaction_id"], fraud, pattern)) for r in requests]

    def _foreign(self, customer: Customer) -> str:
        return self._rng.choice([c[0] for c in _COUNTRIES if c[0] != customer.country])

    def _card_testing(self, c: Customer, serial: int, now: datetime) -> list[dict[str, Any]]:
        rng = self._rng
        merchant = f"m-web-{rng.randrange(10_000):04d}"
        scale = c.typical_amount / 35.0
        at = now
        burst = []
        for i in range(rng.randint(3, 8)):
            amount = scale * rng.uniform(0.5, 3.0)
            burst.append(
                self._request(c, serial, at, amount, merchant, "5816", "ecommerce", suffix=f"b{i}")
            )
            at += timedelta(seconds=rng.uniform(5.0, 40.0))
        return burst

    def _account_takeover(self, c: Customer, serial: int, now: datetime) -> list[dict[str, Any]]:
        rng = self._rng
        country = self._foreign(c)
        at = now
        if rng.random() < 0.6:  # takeovers favour the customer's night
            local_hour = (now.timestamp() / 3600.0 + c.utc_offset_minutes / 60.0) % 24.0
            at += timedelta(hours=(24.0 - local_hour + rng.uniform(0.5, 4.5)) % 24.0)
        burst = []
        for i in range(rng.randint(1, 4)):
            amount = c.typical_amount * rng.uniform(6.0, 60.0)
            merchant = f"m-{country.lower()}-x{rng.randrange(100):02d}"
            mcc = rng.choice(_RISKY) if rng.random() < 0.5 else rng.choice(_EVERYDAY)[0]
            channel = "ecommerce" if rng.random() < 0.8 else "moto"
            burst.append(
                self._request(c, serial, at, amount, merchant, mcc, channel, country, f"a{i}")
            )
            at += timedelta(seconds=rng.uniform(30.0, 600.0))
        return burst

    def _unusual_country(self, c: Customer, serial: int, now: datetime) -> list[dict[str, Any]]:
        rng = self._rng
        country = self._foreign(c)
        merchant = f"m-{country.lower()}-{rng.randrange(400):03d}"
        amount = c.typical_amount * rng.uniform(1.5, 6.0)
        mcc = rng.choice(("5999", "5732", "5691", "5311", "4829"))
        return [self._request(c, serial, now, amount, merchant, mcc, "ecommerce", country)]

    def _amount_spike(self, c: Customer, serial: int, now: datetime) -> list[dict[str, Any]]:
        rng = self._rng
        merchant, mcc, _ = rng.choice(c.merchants)
        amount = c.typical_amount * rng.uniform(10.0, 50.0)
        channel = "ecommerce" if rng.random() < 0.7 else "pos"
        return [self._request(c, serial, now, amount, merchant, mcc, channel)]

    def _travel(self, c: Customer, serial: int, now: datetime) -> list[dict[str, Any]]:
        rng = self._rng
        country = self._foreign(c)
        merchant = f"m-{country.lower()}-{rng.randrange(400):03d}"
        mcc, mult = rng.choice(_EVERYDAY)
        amount = c.typical_amount * mult * math.exp(rng.gauss(0.2, 0.4))
        return [self._request(c, serial, now, amount, merchant, mcc, "pos", country)]

    def _online_abroad(self, c: Customer, serial: int, now: datetime) -> list[dict[str, Any]]:
        rng = self._rng
        country = self._foreign(c)
        merchant = f"m-{country.lower()}-{rng.randrange(400):03d}"
        mcc = rng.choice(("5999", "5732", "5691", "5311", "5816"))
        amount = c.typical_amount * rng.uniform(0.5, 4.0)
        return [self._request(c, serial, now, amount, merchant, mcc, "ecommerce", country)]

    def _big_purchase(self, c: Customer, serial: int, now: datetime) -> list[dict[str, Any]]:
        rng = self._rng
        merchant, mcc, _ = rng.choice(c.merchants)
        amount = c.typical_amount * rng.uniform(5.0, 25.0)
        channel = "pos" if rng.random() < 0.6 else "ecommerce"
        return [self._request(c, serial, now, amount, merchant, mcc, channel)]

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
