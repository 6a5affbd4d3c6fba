"""Features of a payment, from the transaction alone and from the customer's twin. Pure.

One module serves training (``corepay train``) and scoring (the engine's two paths), so a model
is scored on exactly the features it learned from: no train/serve skew. A model names the
features it uses, in order; :func:`feature_matrix` builds those columns for a whole batch at
once, as one numpy matrix.

Transaction features (what the payment request says):

==================  ===============================================================
``log_amount``      log10 of the amount in rough euro terms (static rates for 45 currencies;
                    a typical amount for any other currency, so an unknown unit is neutral)
``tiny_amount``     1 when the amount is under 3 euro (the probes of card testing)
``card_not_present`` 1 for ``ecommerce`` and ``moto``
``atm``             1 for ``atm``
``high_risk_mcc``   1 for merchant categories schemes treat as high risk
``cross_border``    1 when the currency is not the country's own
``night``           1 between 0:00 and 5:59, local time (the timestamp's own offset)
==================  ===============================================================

Twin features (what the customer's history says about this payment; a customer without a
twin gets the no-history row, see :data:`NO_HISTORY`):

==================  ===============================================================
``amount_ratio``    log10 of the amount over the customer's mean, clipped to [-2, 3]
``amount_zscore``   standard deviations above the customer's mean, clipped to [-3, 10]
``new_merchant``    1 when the customer never paid this merchant
``new_country``     1 when the customer never paid from this country
``velocity_10m``    the customer's payments in the 10 minutes before this one
``velocity_1h``     ... in the hour before
``velocity_24h``    ... in the 24 hours before (counted over the twin's recent history)
``log_since_last``  log10 of 1 + seconds since the customer's previous payment
``decline_rate``    share of the customer's payments the live path declined
``thin_history``    1 when the twin holds fewer than 3 payments
==================  ===============================================================
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta

import numpy as np

from corepay.errors import ConfigurationError
from corepay.models import Transaction, Twin, epoch_us

__all__ = [
    "FEATURES",
    "HIGH_RISK_MCCS",
    "NO_HISTORY",
    "TRANSACTION_FEATURES",
    "TWIN_FEATURES",
    "check_features",
    "feature_matrix",
    "transaction_features",
    "twin_features",
]

TRANSACTION_FEATURES = (
    "log_amount",
    "tiny_amount",
    "card_not_present",
    "atm",
    "high_risk_mcc",
    "cross_border",
    "night",
)
TWIN_FEATURES = (
    "amount_ratio",
    "amount_zscore",
    "new_merchant",
    "new_country",
    "velocity_10m",
    "velocity_1h",
    "velocity_24h",
    "log_since_last",
    "decline_rate",
    "thin_history",
)
#: Every feature CorePay computes, in a fixed order.
FEATURES = TRANSACTION_FEATURES + TWIN_FEATURES
_INDEX = {name: i for i, name in enumerate(FEATURES)}

#: Merchant categories card schemes treat as high risk: gambling, quasi-cash, money transfer,
#: digital goods, direct marketing, dating, crypto and prepaid.
HIGH_RISK_MCCS = frozenset(
    {"4829", "5816", "5962", "5966", "5967", "6051", "6540", "7273", "7995", "6012"}
)
_CARD_NOT_PRESENT = frozenset({"ecommerce", "moto"})

# Where a currency is domestic. A payment in a currency outside its own area is cross-border.
_EURO_AREA = frozenset(
    "AT BE CY DE EE ES FI FR GR HR IE IT LT LU LV MT NL PT SI SK".split()  # noqa: SIM905
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
    "CNY": 7.8,
    "HKD": 8.5,
    "KRW": 1450.0,
    "TWD": 35.0,
    "NZD": 1.8,
    "NOK": 11.7,
    "DKK": 7.46,
    "PLN": 4.3,
    "CZK": 25.0,
    "HUF": 390.0,
    "RON": 5.0,
    "BGN": 1.96,
    "ISK": 150.0,
    "TRY": 35.0,
    "ZAR": 20.0,
    "AED": 4.0,
    "SAR": 4.1,
    "ILS": 4.0,
    "EGP": 53.0,
    "NGN": 1700.0,
    "KES": 140.0,
    "THB": 38.0,
    "MYR": 5.0,
    "IDR": 17000.0,
    "PHP": 62.0,
    "VND": 27000.0,
    "PKR": 300.0,
    "ARS": 1000.0,
    "CLP": 1000.0,
    "COP": 4300.0,
    "PEN": 4.1,
}
#: ``log_amount`` of a payment in a currency without a rate here: a typical amount, so that an
#: unknown unit neither raises nor lowers the risk.
_UNKNOWN_CURRENCY_LOG_AMOUNT = math.log10(35.0)
_TINY_EUR = 3.0
_THIN_HISTORY = 3
_WINDOWS = (timedelta(minutes=10), timedelta(hours=1), timedelta(hours=24))
_WINDOWS_US = tuple(w // timedelta(microseconds=1) for w in _WINDOWS)
#: ``log_since_last`` of a customer with no earlier payment: as if the last was ~12 days ago.
_NEVER = 6.0

#: The twin features of a customer without history (no twin, or an empty one).
NO_HISTORY: Mapping[str, float] = {
    "amount_ratio": 0.0,
    "amount_zscore": 0.0,
    "new_merchant": 1.0,
    "new_country": 1.0,
    "velocity_10m": 0.0,
    "velocity_1h": 0.0,
    "velocity_24h": 0.0,
    "log_since_last": _NEVER,
    "decline_rate": 0.0,
    "thin_history": 1.0,
}
_NO_HISTORY_ROW = tuple(NO_HISTORY[name] for name in TWIN_FEATURES)


def check_features(names: Iterable[str], *, allowed: Sequence[str] = FEATURES) -> tuple[str, ...]:
    """``names`` as a tuple, if every one is a feature in ``allowed``.

    Raises:
        ConfigurationError: naming the features that are not computed (or not allowed).
    """
    names = tuple(names)
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ConfigurationError(
            f"unknown features {unknown}; the features available are {list(allowed)}"
        )
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConfigurationError(f"features listed twice: {twice}")
    return names


def transaction_features(txns: Sequence[Transaction]) -> np.ndarray:
    """One row per transaction, columns in :data:`TRANSACTION_FEATURES` order."""
    n = len(txns)
    units, areas, nan = _UNITS_PER_EUR, _CURRENCY_AREAS, math.nan
    # One pass over the batch for what each payment says (columns 2-6 as they are), then the
    # arithmetic on whole columns.
    said = np.array(
        [
            (
                units.get(t.currency, nan),
                float(t.amount),
                t.channel in _CARD_NOT_PRESENT,
                t.channel == "atm",
                t.merchant_category in HIGH_RISK_MCCS,
                (area := areas.get(t.currency)) is not None and t.country not in area,
                t.timestamp.hour < 6,
            )
            for t in txns
        ],
        dtype=np.float64,
    ).reshape(n, len(TRANSACTION_FEATURES))
    rates = said[:, 0]
    eur = said[:, 1] / rates
    known = ~np.isnan(rates)
    out = said  # overwritten column by column
    out[:, 0] = np.where(known, np.log10(np.where(known, eur, 1.0)), _UNKNOWN_CURRENCY_LOG_AMOUNT)
    out[:, 1] = known & (np.where(known, eur, _TINY_EUR) < _TINY_EUR)
    return out


def _twin_row(txn: Transaction, twin: Twin | None) -> Sequence[float]:
    if twin is None or twin.count == 0:
        return _NO_HISTORY_ROW
    amount = float(txn.amount)
    mean, variance = twin.amount_moments
    std = math.sqrt(max(variance, 0.0))
    ratio = min(max(math.log10(amount / max(mean, 0.01)), -2.0), 3.0)
    zscore = min(max((amount - mean) / max(std, 0.25 * mean, 0.01), -3.0), 10.0)
    # Times as exact epoch microseconds: the same comparisons and differences as datetimes'
    # at a fraction of the cost (timedelta.total_seconds() is microseconds / 10**6 too).
    at = epoch_us(txn.timestamp)
    stamps = sorted([h.epoch_us for h in twin.history])
    before = bisect.bisect_left(stamps, at)  # stamps[:before] are the payments before this one
    row = [
        ratio,
        zscore,
        0.0 if txn.merchant_id in twin.merchants else 1.0,
        0.0 if txn.country in twin.countries else 1.0,
    ]
    for window in _WINDOWS_US:  # velocities (a loop, not a comprehension: it costs less)
        row.append(float(before - bisect.bisect_left(stamps, at - window, 0, before)))
    if before:
        row.append(math.log10(1.0 + (at - stamps[before - 1]) / 1_000_000))
    elif (last := epoch_us(twin.last_seen)) < at:
        row.append(math.log10(1.0 + (at - last) / 1_000_000))
    else:
        row.append(_NEVER)
    row.append(twin.decline_rate)
    row.append(1.0 if twin.count < _THIN_HISTORY else 0.0)
    return row


def twin_features(
    txns: Sequence[Transaction], twins: Mapping[str, Twin] | Sequence[Twin | None] | None
) -> np.ndarray:
    """One row per transaction, columns in :data:`TWIN_FEATURES` order.

    ``twins`` maps customer id to twin, or gives each transaction's twin in order (how
    training replays history); a customer without one gets :data:`NO_HISTORY`.
    """
    if isinstance(twins, Sequence):
        if len(twins) != len(txns):
            raise ValueError(f"{len(twins)} twins given for {len(txns)} transactions")
        per_row: Iterable[Twin | None] = twins
    else:
        known = twins or {}
        per_row = (known.get(t.customer_id) for t in txns)
    rows = [_twin_row(t, twin) for t, twin in zip(txns, per_row, strict=False)]
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(TWIN_FEATURES))


def feature_matrix(
    txns: Sequence[Transaction],
    twins: Mapping[str, Twin] | Sequence[Twin | None] | None = None,
    names: Sequence[str] = FEATURES,
) -> np.ndarray:
    """The ``names`` columns for a batch: one row per transaction, one column per name.

    ``twins`` is as for :func:`twin_features`; twin features are only computed when a name
    asks for one.

    Raises:
        ConfigurationError: a name is not a feature.
    """
    columns, with_twin = _columns(tuple(names))
    parts = [transaction_features(txns)]
    if with_twin:
        parts.append(twin_features(txns, twins))
    full = np.hstack(parts) if len(parts) > 1 else parts[0]
    return full[:, columns]


@functools.lru_cache(maxsize=256)
def _columns(names: tuple[str, ...]) -> tuple[np.ndarray, bool]:
    """Where ``names`` are in a full matrix, and whether any is a twin feature: worked out
    once per list of names (a model's), not for every batch.

    Raises:
        ConfigurationError: a name is not a feature (not kept: it is raised every time).
    """
    names = check_features(names)
    columns = np.array([_INDEX[n] for n in names], dtype=np.intp)
    columns.flags.writeable = False
    return columns, any(n in TWIN_FEATURES for n in names)
