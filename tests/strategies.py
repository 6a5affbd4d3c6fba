"""Shared hypothesis strategies: wire-format payloads, valid and broken, and domain objects.

Valid payloads are built from the wire format's rules as the README states them (ids of 1-64
characters from ``A-Za-z0-9._:-``, positive amounts of at most 4 decimal places up to
``MAX_AMOUNT``, ISO 4217 / ISO 3166 codes, 4-digit MCC strings, RFC 3339 timestamps with an
offset), together with the :class:`Transaction` each one must parse to, so tests compare
against an expectation built here rather than against the parser's own output.
"""

from __future__ import annotations

import json
import re
import string
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, NamedTuple, TypeVar

import pycountry
from hypothesis import strategies as st

from corepay.models import (
    AlertKind,
    Decision,
    DivergenceAlert,
    HistoryEntry,
    Outcome,
    Path,
    Timings,
    Transaction,
    Twin,
)
from corepay.wire import CHANNELS, MAX_AMOUNT, TRANSACTION_FIELDS

__all__ = [
    "COUNTRIES",
    "CURRENCIES",
    "ID_ALPHABET",
    "Invalid",
    "alerts",
    "amounts",
    "arbitrary_bodies",
    "aware_datetimes",
    "identifiers",
    "invalid_payloads",
    "json_values",
    "outcomes",
    "payload_cases",
    "rfc3339_timestamps",
    "transactions",
    "twins",
    "valid_payloads",
]

T = TypeVar("T")

ID_ALPHABET = string.ascii_letters + string.digits + "._:-"
CURRENCIES = tuple(sorted(c.alpha_3 for c in pycountry.currencies))
COUNTRIES = tuple(sorted(c.alpha_2 for c in pycountry.countries))
_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_MCC = re.compile(r"[0-9]{4}")
_OPTIONAL = ("schema_version",)
_MAX_OFFSET_MINUTES = 23 * 60 + 59


def _pick(
    draw: st.DrawFn, value: T | st.SearchStrategy[T] | None, default: st.SearchStrategy[T]
) -> T:
    """``value`` itself, a draw from it when it is a strategy, or a draw from ``default``."""
    if value is None:
        return draw(default)
    if isinstance(value, st.SearchStrategy):
        return draw(value)
    return value


# --- valid wire values ----------------------------------------------------------------------


def identifiers() -> st.SearchStrategy[str]:
    return st.text(ID_ALPHABET, min_size=1, max_size=64)


@st.composite
def amounts(draw: st.DrawFn) -> tuple[Any, Decimal]:
    """A valid wire amount (string, int or float) and the decimal it stands for."""
    places = draw(st.integers(0, 4))
    scale = 10**places
    top = int(MAX_AMOUNT * scale)
    units = draw(st.one_of(st.integers(1, 100 * scale), st.integers(1, top)))
    value = Decimal(units).scaleb(-places)
    forms: list[Any] = [str(value)]
    if places == 0:
        forms.append(int(value))
    as_float = float(value)
    if Decimal(repr(as_float)) == value:  # only floats that JSON carries exactly
        forms.append(as_float)
    return draw(st.sampled_from(forms)), value


@st.composite
def rfc3339_timestamps(draw: st.DrawFn) -> tuple[str, datetime]:
    """An RFC 3339 date-time with an offset (``Z``, ``z`` or ``+hh:mm``) and its value.

    Fractions have 0-9 digits; Python keeps microseconds, so digits past the sixth are dropped
    from the expected value.
    """
    # The accepted range is 1970-01-01Z to 2999-12-31Z; a day's margin covers any offset.
    naive = draw(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2999, 12, 30)))
    digits = draw(st.text("0123456789", max_size=9))
    naive = naive.replace(microsecond=int(digits[:6].ljust(6, "0")) if digits else 0)
    minutes = draw(st.one_of(st.none(), st.integers(-_MAX_OFFSET_MINUTES, _MAX_OFFSET_MINUTES)))
    if minutes is None:
        offset, tz = draw(st.sampled_from(["Z", "z"])), UTC
    else:
        sign = "-" if minutes < 0 or (minutes == 0 and draw(st.booleans())) else "+"
        hours, mins = divmod(abs(minutes), 60)
        offset, tz = f"{sign}{hours:02d}:{mins:02d}", timezone(timedelta(minutes=minutes))
    separator = draw(st.sampled_from("TTTt "))
    text = (
        f"{naive.year:04d}-{naive.month:02d}-{naive.day:02d}{separator}"
        f"{naive.hour:02d}:{naive.minute:02d}:{naive.second:02d}"
        f"{'.' + digits if digits else ''}{offset}"
    )
    return text, naive.replace(tzinfo=tz)


@st.composite
def payload_cases(
    draw: st.DrawFn,
    *,
    customer_id: str | st.SearchStrategy[str] | None = None,
    transaction_id: str | st.SearchStrategy[str] | None = None,
) -> tuple[dict[str, Any], Transaction]:
    """A valid wire-format payload and the :class:`Transaction` it must parse to."""
    amount_wire, amount = draw(amounts())
    timestamp_wire, timestamp = draw(rfc3339_timestamps())
    fields = {
        "transaction_id": _pick(draw, transaction_id, identifiers()),
        "customer_id": _pick(draw, customer_id, identifiers()),
        "currency": draw(st.sampled_from(CURRENCIES)),
        "merchant_id": draw(identifiers()),
        "merchant_category": draw(st.text("0123456789", min_size=4, max_size=4)),
        "country": draw(st.sampled_from(COUNTRIES)),
        "channel": draw(st.sampled_from(sorted(CHANNELS))),
    }
    payload: dict[str, Any] = {**fields, "amount": amount_wire, "timestamp": timestamp_wire}
    if draw(st.booleans()):
        payload["schema_version"] = 1
    order = draw(st.permutations(sorted(payload)))
    payload = {name: payload[name] for name in order}
    return payload, Transaction(**fields, amount=amount, timestamp=timestamp)


def valid_payloads() -> st.SearchStrategy[dict[str, Any]]:
    return payload_cases().map(lambda case: case[0])


def transactions(
    *,
    customer_id: str | st.SearchStrategy[str] | None = None,
    transaction_id: str | st.SearchStrategy[str] | None = None,
) -> st.SearchStrategy[Transaction]:
    """Transactions as :func:`corepay.wire.parse_transaction` returns them for valid payloads."""
    return payload_cases(customer_id=customer_id, transaction_id=transaction_id).map(
        lambda case: case[1]
    )


# --- domain objects -------------------------------------------------------------------------


def aware_datetimes() -> st.SearchStrategy[datetime]:
    offsets = st.integers(-_MAX_OFFSET_MINUTES, _MAX_OFFSET_MINUTES).map(
        lambda m: timezone(timedelta(minutes=m))
    )
    return st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=offsets
    )


_ERRORS: st.SearchStrategy[str | None] = st.none() | st.text(min_size=1, max_size=40)
_MS = st.floats(0, 1e6, allow_nan=False, allow_infinity=False)


@st.composite
def outcomes(
    draw: st.DrawFn,
    *,
    path: Path | st.SearchStrategy[Path] | None = None,
    transaction: Transaction | st.SearchStrategy[Transaction] | None = None,
    decision: Decision | st.SearchStrategy[Decision] | None = None,
    error: str | st.SearchStrategy[str | None] | None = _ERRORS,
) -> Outcome:
    """An outcome; ``path``, ``transaction`` and ``decision`` are drawn unless given.

    ``error`` is drawn from the strategy given (by default: ``None`` or a message); any other
    value, ``None`` included, is used as is.
    """
    chosen_path = _pick(draw, path, st.sampled_from(Path))
    return Outcome(
        transaction=_pick(draw, transaction, transactions()),
        path=chosen_path,
        decision=_pick(draw, decision, st.sampled_from(Decision)),
        score=draw(st.none() | st.floats(0, 1)),
        reasons=tuple(draw(st.lists(st.text(max_size=20), max_size=3))),
        model_version=draw(st.text(min_size=1, max_size=20)),
        timings=Timings(
            decided_at=draw(aware_datetimes()),
            elapsed_ms=draw(_MS),
            ingested_at=draw(st.none() | aware_datetimes()),
            gateway_ms=draw(st.none() | _MS) if chosen_path is Path.LIVE else None,
        ),
        twin_version=draw(st.none() | st.integers(0, 2**40)),
        error=draw(error) if isinstance(error, st.SearchStrategy) else error,
    )


@st.composite
def alerts(draw: st.DrawFn) -> DivergenceAlert:
    txn = draw(transactions())
    kind = draw(st.sampled_from(AlertKind))
    live = (
        None if kind is AlertKind.MISSING_LIVE else draw(outcomes(path=Path.LIVE, transaction=txn))
    )
    simulation = (
        None
        if kind is AlertKind.MISSING_SIMULATION
        else draw(outcomes(path=Path.SIMULATION, transaction=txn))
    )
    return DivergenceAlert(
        alert_id=str(draw(st.uuids())),
        kind=kind,
        transaction_id=txn.transaction_id,
        customer_id=txn.customer_id,
        live=live,
        simulation=simulation,
        detected_at=draw(aware_datetimes()),
        detail=draw(st.text(max_size=60)),
    )


def _history_entries() -> st.SearchStrategy[HistoryEntry]:
    return st.builds(
        HistoryEntry,
        transaction_id=identifiers(),
        timestamp=aware_datetimes(),
        amount=amounts().map(lambda pair: pair[1]),
        merchant_id=identifiers(),
        country=st.sampled_from(COUNTRIES),
        channel=st.sampled_from(sorted(CHANNELS)),
        decision=st.sampled_from(Decision),
    )


@st.composite
def twins(draw: st.DrawFn, *, min_history: int = 0) -> Twin:
    """Twins with arbitrary (not necessarily consistent) statistics: for wire round trips."""
    sums = st.decimals(min_value=0, max_value=10**30, places=8)
    amount = amounts().map(lambda pair: pair[1])
    counters = st.dictionaries(identifiers(), st.integers(1, 10**9), max_size=4)
    first, last = sorted([draw(aware_datetimes()), draw(aware_datetimes())])
    return Twin(
        customer_id=draw(identifiers()),
        version=draw(st.integers(1, 2**53)),
        first_seen=first,
        last_seen=last,
        count=draw(st.integers(1, 10**9)),
        amount_sum=draw(sums),
        amount_sumsq=draw(sums),
        amount_min=draw(amount),
        amount_max=draw(amount),
        approvals=draw(st.integers(0, 10**9)),
        declines=draw(st.integers(0, 10**9)),
        reviews=draw(st.integers(0, 10**9)),
        merchants=draw(counters),
        countries=draw(st.dictionaries(st.sampled_from(COUNTRIES), st.integers(1, 99), max_size=3)),
        channels=draw(
            st.dictionaries(st.sampled_from(sorted(CHANNELS)), st.integers(1, 99), max_size=3)
        ),
        history=tuple(draw(st.lists(_history_entries(), min_size=min_history, max_size=4))),
        applied=tuple(draw(st.lists(identifiers(), max_size=6))),
    )


# --- broken payloads --------------------------------------------------------------------------


def json_values() -> st.SearchStrategy[Any]:
    """Any JSON document (no NaN), nested a little."""
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=6,
    )


def _not_text() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.integers(),
        st.floats(allow_nan=False),
        st.booleans(),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    )


_TEXT = st.text(max_size=70)
_BAD_AMOUNT_TEXT = st.text("abcdghjkmopqruvwxyz!@#,/% ", min_size=1, max_size=10)


def _too_many_places() -> st.SearchStrategy[str]:
    return st.builds(
        lambda units, places: str(Decimal(units).scaleb(-places)),
        st.integers(1, 10**8),
        st.integers(5, 10),
    )


_INVALID_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "transaction_id": st.one_of(
        st.sampled_from(["", "a" * 65, "a b", "café", "a/b", "id\n", "x" * 200]),
        _TEXT.filter(lambda s: not _ID.fullmatch(s)),
        _not_text(),
    ),
    "amount": st.one_of(
        st.sampled_from(
            [
                "0",
                "0.0000",
                "-0",
                "-1",
                "-12.50",
                "NaN",
                "sNaN",
                "Infinity",
                "-Infinity",
                "inf",
                "",
                "  ",
                "12,50",
                "1.2.3",
                "1.00001",
                "0.00001",
                "€12",
                "1e13",
                str(MAX_AMOUNT + Decimal("0.0001")),
                float("nan"),
                float("inf"),
                float("-inf"),
                True,
                False,
                0,
                -1,
                10**13,
                0.00001,
            ]
        ),
        st.integers(max_value=0),
        st.decimals(max_value=0, allow_nan=False, allow_infinity=False).map(str),
        st.floats(max_value=0),
        _too_many_places(),
        _BAD_AMOUNT_TEXT,
        st.lists(st.integers(1, 9), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    ),
    "currency": st.one_of(
        st.sampled_from(["eur", "EURO", "EU", "", "ZZZ", "usd", "E U R", "€"]),
        st.text(max_size=5).filter(lambda s: s not in CURRENCIES),
        _not_text(),
    ),
    "merchant_category": st.one_of(
        st.sampled_from(
            ["541", "54111", "54a1", "", "\uff15\uff14\uff11\uff11", " 5411", "5411\n", "54.1"]
        ),
        st.text(max_size=6).filter(lambda s: not _MCC.fullmatch(s)),
        _not_text(),
    ),
    "country": st.one_of(
        st.sampled_from(["de", "XX", "DEU", "", "D", "ZZ", "GB "]),
        st.text(max_size=4).filter(lambda s: s not in COUNTRIES),
        _not_text(),
    ),
    "channel": st.one_of(
        st.sampled_from(["web", "POS", "online", "", "e-commerce", "Ecommerce", "atm "]),
        st.text(max_size=12).filter(lambda s: s not in CHANNELS),
        _not_text(),
    ),
    "timestamp": st.one_of(
        st.sampled_from(
            [
                "2026-11-24T09:30:00",
                "2026-11-24",
                "2026-13-01T00:00:00Z",
                "2026-02-30T00:00:00Z",
                "2026-11-24T24:00:00Z",
                "2026-11-24T09:60:00Z",
                "2026-11-24T09:30:00+24:00",
                "2026-11-24T09:30:00+0100",
                "2026-11-24T09:30Z",
                "24/11/2026 09:30:00Z",
                "2026-11-24T09:30:00.Z",
                "0000-01-01T00:00:00Z",
                "0001-01-01T00:30:00+01:00",
                "1969-12-31T23:59:59Z",
                "3000-01-01T00:00:00Z",
                "yesterday",
                "",
                "2026-11-24T09:30:00 Z",
                "2026-11-24T09:30:00.1234567890Z",
            ]
        ),
        st.datetimes().map(datetime.isoformat),  # naive: no offset
        st.dates().map(lambda d: d.isoformat()),
        st.text(max_size=30).filter(lambda s: not re.match(r"\d{4}-", s)),
        _not_text(),
    ),
    "schema_version": st.sampled_from([0, 2, -1, "1", True, False, 1.5, 1.0, [1], {"v": 1}]),
}
_INVALID_VALUES["customer_id"] = _INVALID_VALUES["transaction_id"]
_INVALID_VALUES["merchant_id"] = _INVALID_VALUES["transaction_id"]


class Invalid(NamedTuple):
    """A payload that breaks the wire format, and exactly the fields a validator must name."""

    payload: Any
    fields: frozenset[str]


_UNKNOWN_NAMES = st.text(max_size=20).filter(
    lambda name: name not in TRANSACTION_FIELDS and name not in _OPTIONAL
)


@st.composite
def _invalid_objects(draw: st.DrawFn) -> Invalid:
    payload, _ = draw(payload_cases())
    extra = draw(st.lists(_UNKNOWN_NAMES, max_size=3, unique=True))
    broken = draw(
        st.sets(st.sampled_from((*TRANSACTION_FIELDS, *_OPTIONAL)), min_size=0 if extra else 1)
    )
    for name in sorted(broken):
        how = (
            "invalid"
            if name in _OPTIONAL
            else draw(st.sampled_from(["invalid", "missing", "null"]))
        )
        if how == "missing":
            payload.pop(name, None)
        elif how == "null":
            payload[name] = None
        else:
            payload[name] = draw(_INVALID_VALUES[name])
    for name in extra:
        payload[name] = draw(json_values())
    return Invalid(payload, frozenset(broken | set(extra)))


def invalid_payloads(*, objects_only: bool = False) -> st.SearchStrategy[Invalid]:
    """Broken payloads: fields invalid, of the wrong type, missing or null; unknown fields;
    and (unless ``objects_only``) bodies that are not JSON objects, which break ``body``."""
    objects = _invalid_objects()
    if objects_only:
        return objects
    non_objects = json_values().filter(lambda v: not isinstance(v, dict))
    return objects | non_objects.map(lambda v: Invalid(v, frozenset({"body"})))


def arbitrary_bodies() -> st.SearchStrategy[bytes]:
    """Request bodies that are anything but a valid transaction: raw bytes, text, JSON."""
    return st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        json_values().map(lambda v: json.dumps(v).encode()),
    )
