"""CorePay's domain types: what travels on the bus and what is stored.

All are frozen attrs classes. Their JSON form (the wire format) lives in :mod:`corepay.wire`.
"""

from __future__ import annotations

import decimal
import enum
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from decimal import Decimal

import attrs

__all__ = [
    "AlertKind",
    "Decision",
    "DivergenceAlert",
    "HistoryEntry",
    "Outcome",
    "Path",
    "Timings",
    "Transaction",
    "Twin",
    "epoch_us",
]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)
# Wide enough for n * sum of squares of any amounts CorePay accepts, over billions of payments.
_WIDE = decimal.Context(prec=80)


def epoch_us(moment: datetime) -> int:
    """A datetime as whole microseconds since 1970-01-01T00:00Z (exact, unlike ``timestamp()``,
    a float). A naive datetime is taken as UTC.

    Differences of these are real elapsed time, also across a daylight-saving change of a
    ``zoneinfo`` zone, where Python compares two datetimes of the same zone by wall clock.
    """
    try:
        return (moment - _EPOCHS[moment.tzinfo]) // _MICROSECOND
    except (KeyError, TypeError):  # (TypeError: a tzinfo of its own that cannot be hashed)
        pass
    zone = moment.tzinfo
    if type(zone) is timezone and len(_EPOCHS) < _EPOCHS_MAX:
        _EPOCHS[zone] = _EPOCH.astimezone(zone)
        return (moment - _EPOCHS[zone]) // _MICROSECOND
    return (moment - _EPOCH) // _MICROSECOND


# The epoch as a datetime holding a given fixed-offset tzinfo object (naive: naive). Python
# subtracts two datetimes that hold the very same tzinfo field by field, without working out
# either offset (twice as fast); that is right for a fixed offset, whose offset never changes,
# and never happens for an equal but distinct tzinfo, which is worked out as usual.
_EPOCHS: dict[tzinfo | None, datetime] = {None: _NAIVE_EPOCH, UTC: _EPOCH}
_EPOCHS_MAX = 4096  # parsed stamps have at most a few thousand offsets (+-HH:MM)


class Decision(enum.StrEnum):
    """What a path decided for a payment."""

    APPROVE = "APPROVE"
    DECLINE = "DECLINE"
    REVIEW = "REVIEW"


class Path(enum.StrEnum):
    """Which of the two paths produced an outcome."""

    LIVE = "live"
    SIMULATION = "simulation"


class AlertKind(enum.StrEnum):
    """Why the detector raised a divergence alert."""

    #: Both paths answered, with different decisions.
    DECISION_MISMATCH = "DECISION_MISMATCH"
    #: The paths disagree, and the twin the simulation read was missing earlier payments.
    STALE_TWIN = "STALE_TWIN"
    #: A path failed (gateway outage, twin service down...) and answered with an error.
    PATH_ERROR = "PATH_ERROR"
    #: The simulation outcome arrived but the live one did not, within the pairing timeout.
    MISSING_LIVE = "MISSING_LIVE"
    #: The live outcome arrived but the simulation one did not, within the pairing timeout.
    MISSING_SIMULATION = "MISSING_SIMULATION"


@attrs.frozen
class Transaction:
    """A payment request, as validated by :func:`corepay.wire.parse_transaction`."""

    transaction_id: str
    customer_id: str
    amount: Decimal
    currency: str
    merchant_id: str
    merchant_category: str
    country: str
    channel: str
    timestamp: datetime

    def __bytes__(self) -> bytes:
        """The ``raw_transactions`` value (:func:`corepay.wire.encode_transaction`)."""
        from corepay.wire import encode_transaction  # (wire builds on these models)

        return encode_transaction(self)


@attrs.frozen
class Timings:
    """When and how fast a path decided.

    ``ingested_at`` is when the ingestion service put the transaction on the bus (``None`` when
    the transaction came from a producer that does not stamp it); ``elapsed_ms`` is the path's
    share of its batch's processing time; ``gateway_ms`` is the gateway's answer time
    (live path only).
    """

    decided_at: datetime
    elapsed_ms: float
    ingested_at: datetime | None = None
    gateway_ms: float | None = None


@attrs.frozen
class Outcome:
    """One path's decision on one transaction.

    ``error`` is set when the path could not decide normally (gateway timeout, twin service
    unavailable); the path still answers, so the transaction is never silently dropped.
    ``twin_version`` is the version of the twin the simulation path read (0: no twin yet) and
    ``twin_lag`` how many of the customer's earlier payments, already decided, that twin did
    not reflect yet (0: it was up to date); ``fresh_decision`` what the simulation would have
    decided on the twin with those payments applied (``None`` when it was up to date).
    ``score`` is the model's risk score in [0, 1], ``None`` when the path failed before scoring.
    """

    transaction: Transaction
    path: Path
    decision: Decision
    score: float | None
    reasons: tuple[str, ...]
    model_version: str
    timings: Timings
    twin_version: int | None = None
    twin_lag: int | None = None
    fresh_decision: Decision | None = None
    error: str | None = None

    @property
    def transaction_id(self) -> str:
        return self.transaction.transaction_id

    @property
    def customer_id(self) -> str:
        return self.transaction.customer_id

    def __bytes__(self) -> bytes:
        """The outcome topics' value (:func:`corepay.wire.encode_outcome`)."""
        from corepay.wire import encode_outcome  # (wire builds on these models)

        return encode_outcome(self)


@attrs.frozen
class DivergenceAlert:
    """The detector's verdict on a transaction whose two paths disagree (or did not both answer).

    ``alert_id`` is derived from the transaction id, so a redelivered alert keeps its id and
    consumers can drop duplicates.
    """

    alert_id: str
    kind: AlertKind
    transaction_id: str
    customer_id: str
    live: Outcome | None
    simulation: Outcome | None
    detected_at: datetime
    detail: str


@attrs.frozen
class HistoryEntry:
    """One of a twin's recent transactions, with the live decision it got."""

    transaction_id: str
    timestamp: datetime
    amount: Decimal
    merchant_id: str
    country: str
    channel: str
    decision: Decision
    #: ``timestamp`` as whole microseconds since 1970-01-01T00:00Z, exactly. Comparing aware
    #: datetimes works out both offsets every time; twin features compare a twin's history
    #: many times over, so they compare these instead, worked out as the entry is made.
    epoch_us: int = attrs.field(
        init=False,
        eq=False,
        repr=False,
        default=attrs.Factory(lambda self: epoch_us(self.timestamp), takes_self=True),
    )


#: Sums of amounts (at most 10**12, 4 places) are far inside these powers of ten; past them,
#: integer fractions get slow (and a float overflows), so the decimals' own way is taken.
_MOMENTS_DIGITS = 100


def _ids_in_order(ids: Iterable[str]) -> dict[str, None]:
    """A dict as it is, anything else as the keys of a new dict: an ordered set of ids."""
    return ids if type(ids) is dict else dict.fromkeys(ids)


@attrs.frozen
class Twin:
    """A customer's digital twin: profile, running statistics and bounded recent history.

    Statistics are exact: amounts are summed as decimals, so the mean and variance do not
    depend on the order outcomes were applied in. ``applied`` holds the ids of the most recent
    transactions applied (bounded), which makes applying a redelivered outcome a no-op: the
    keys of a dict, oldest first, so that asking for one id costs the same however many are
    kept (any iterable of ids given is made one). ``version`` increases by one with every
    stored change; the store's compare-and-swap uses it.
    """

    customer_id: str
    version: int
    first_seen: datetime
    last_seen: datetime
    count: int
    amount_sum: Decimal
    amount_sumsq: Decimal
    amount_min: Decimal
    amount_max: Decimal
    approvals: int
    declines: int
    reviews: int
    merchants: Mapping[str, int]
    countries: Mapping[str, int]
    channels: Mapping[str, int]
    history: tuple[HistoryEntry, ...]
    # Compared in order (dicts compare as sets): the order decides which id goes first.
    applied: Mapping[str, None] = attrs.field(converter=_ids_in_order, eq=tuple)

    @property
    def amount_mean(self) -> Decimal:
        return self.amount_sum / self.count if self.count else Decimal(0)

    @property
    def amount_variance(self) -> Decimal:
        """Population variance of the amounts seen."""
        if not self.count:
            return Decimal(0)
        # (n * sumsq - sum^2) / n^2 exactly, then one rounding: no cancellation error.
        n = Decimal(self.count)
        spread = _WIDE.subtract(
            _WIDE.multiply(n, self.amount_sumsq), _WIDE.multiply(self.amount_sum, self.amount_sum)
        )
        return +(spread / (n * n))

    @property
    def amount_moments(self) -> tuple[float, float]:
        """The mean and the population variance of the amounts as floats, each the float
        nearest its exact value: worked out on the exact sums as integer fractions, which
        costs half of :attr:`amount_mean` and :attr:`amount_variance` (the twin features
        read both for every payment)."""
        n, total, squares = self.count, self.amount_sum, self.amount_sumsq
        if not n:
            return 0.0, 0.0
        if not (
            total.is_finite()
            and squares.is_finite()
            and -_MOMENTS_DIGITS < total.adjusted() < _MOMENTS_DIGITS
            and -_MOMENTS_DIGITS < squares.adjusted() < _MOMENTS_DIGITS
        ):  # not sums of amounts apply_outcomes takes: as the decimals give them
            return float(self.amount_mean), float(self.amount_variance)
        a, b = total.as_integer_ratio()
        c, d = squares.as_integer_ratio()
        # mean a / bn; variance (c/d - (a/b)^2 / n) / n = (n c b^2 - a^2 d) / (d b^2 n^2);
        # the quotient of two ints is the float nearest it.
        bb = b * b
        return a / (b * n), (n * c * bb - a * a * d) / (d * bb * n * n)

    @property
    def decline_rate(self) -> float:
        return self.declines / self.count if self.count else 0.0

    @property
    def home_country(self) -> str | None:
        """The country the customer pays from most often (ties: alphabetical)."""
        if not self.countries:
            return None
        return min(self.countries, key=lambda c: (-self.countries[c], c))
