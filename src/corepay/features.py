"""Features of a payment, from the transaction alone and from the customer's twin. Pure.

One module serves every model, so what a model was built on is what it scores with.
Matrices are built for a whole batch at once and scored with numpy in one go.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import timedelta

import numpy as np

from corepay.models import Transaction, Twin

__all__ = [
    "HIGH_RISK_MCCS",
    "TRANSACTION_FEATURES",
    "TWIN_FEATURES",
    "transaction_features",
    "twin_features",
]

TRANSACTION_FEATURES = ("log_amount", "card_not_present", "high_risk_mcc", "cross_border", "night")
TWIN_FEATURES = (
    "amount_ratio",
    "new_merchant",
    "new_country",
    "velocity_1h",
    "decline_rate",
    "thin_history",
)

#: Merchant categories card schemes treat as high risk: gambling, quasi-cash, money transfer,
#: digital goods, direct marketing, dating, crypto and prepaid.
HIGH_RISK_MCCS = frozenset(
    {"4829", "5816", "5962", "5966", "5967", "6051", "6540", "7273", "7995", "6012"}
)
_CARD_NOT_PRESENT = frozenset({"ecommerce", "moto"})

# Where a currency is domestic. A payment in a currency outside its own area is cross-border.
_EURO_AREA = frozenset(
    [
        "AT",
        "BE",
        "CY",
        "DE",
        "EE",
        "ES",
        "FI",
        "FR",
        "GR",
        "HR",
        "IE",
        "IT",
        "LT",
        "LU",
        "LV",
        "MT",
        "NL",
        "PT",
        "SI",
        "SK",
    ]
)
_CURRENCY_AREAS: Mapping[str, frozenset[str]] = {
    "EUR": _EURO_AREA,
    "USD": frozenset({"US", "PR", "EC", "SV", "PA"}),
    "GBP": frozenset({"GB"}),
    "JPY": frozenset({"JP"}),
    "CAD": frozenset({"CA"}),
    "AUD": frozenset({"AU"}),
    "CHF": frozenset({"CH", "LI"}),
    "SEK": frozenset({"SE"}),
    "BRL": frozenset({"BR"}),
    "INR": frozenset({"IN"}),
    "SGD": frozenset({"SG"}),
    "MXN": frozenset({"MX"}),
}
# Rough units of each currency per euro, so amounts compare across currencies in features.
_UNITS_PER_EUR: Mapping[str, float] = {
    "EUR": 1.0,
    "USD": 1.1,
    "GBP": 0.85,
    "JPY": 160.0,
    "CAD": 1.5,
    "AUD": 1.65,
    "CHF": 0.95,
    "SEK": 11.5,
    "BRL": 5.5,
    "INR": 90.0,
    "SGD": 1.45,
    "MXN": 19.0,
}
_HOUR = timedelta(hours=1)
_THIN_HISTORY = 3


def _cross_border(txn: Transaction) -> float:
    area = _CURRENCY_AREAS.get(txn.currency)
    return 0.0 if area is None or txn.country in area else 1.0


def transaction_features(txns: Sequence[Transaction]) -> np.ndarray:
    """One row per transaction, columns in :data:`TRANSACTION_FEATURES` order.

    ``log_amount`` is in rough euro terms; ``night`` is a local hour (the timestamp's own
    offset) between 0:00 and 5:59.
    """
    rows = [
        (
            math.log10(float(t.amount) / _UNITS_PER_EUR.get(t.currency, 1.0)),
            1.0 if t.channel in _CARD_NOT_PRESENT else 0.0,
            1.0 if t.merchant_category in HIGH_RISK_MCCS else 0.0,
            _cross_border(t),
            1.0 if t.timestamp.hour < 6 else 0.0,
        )
        for t in txns
    ]
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(TRANSACTION_FEATURES))


def _twin_row(txn: Transaction, twin: Twin | None) -> tuple[float, ...]:
    if twin is None or twin.count == 0:
        return (0.0, 1.0, 1.0, 0.0, 0.0, 1.0)
    mean = max(float(twin.amount_mean), 1.0)
    ratio = min(max(math.log10(float(txn.amount) / mean), -2.0), 3.0)
    since = txn.timestamp - _HOUR
    velocity = sum(1 for h in twin.history if since <= h.timestamp < txn.timestamp)
    return (
        ratio,
        0.0 if txn.merchant_id in twin.merchants else 1.0,
        0.0 if txn.country in twin.countries else 1.0,
        float(velocity),
        twin.decline_rate,
        1.0 if twin.count < _THIN_HISTORY else 0.0,
    )


def twin_features(txns: Sequence[Transaction], twins: Mapping[str, Twin]) -> np.ndarray:
    """One row per transaction, columns in :data:`TWIN_FEATURES` order.

    ``twins`` maps customer id to twin; a customer without one gets the no-history row.
    """
    rows = [_twin_row(t, twins.get(t.customer_id)) for t in txns]
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(TWIN_FEATURES))
