"""The wire format: validation of payment requests and the JSON form of every message.

This is CorePay's stable contract (schema version 1, documented in the README). Everything here
is pure: no I/O, no environment. Messages are compact UTF-8 JSON; amounts travel as decimal
strings, times as RFC 3339 with an offset.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any, SupportsBytes, overload

import orjson
import pycountry

from corepay.bus import Message
from corepay.errors import DecodeError, FieldError, ValidationError
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
from corepay.recent import Recent

__all__ = [
    "CHANNELS",
    "MAX_AMOUNT",
    "SCHEMA_VERSION",
    "TRANSACTION_FIELDS",
    "TwinDecoder",
    "alert_to_wire",
    "decode_alert",
    "decode_outcome",
    "decode_transaction",
    "decode_twin",
    "encode_alert",
    "encode_json",
    "encode_outcome",
    "encode_outcomes",
    "encode_transaction",
    "encode_twin",
    "encode_twins",
    "outcome_to_wire",
    "parse_json",
    "parse_transaction",
    "transaction_to_wire",
    "twin_to_wire",
]

SCHEMA_VERSION = 1

#: How a payment reached the merchant.
CHANNELS = frozenset({"pos", "ecommerce", "atm", "moto", "recurring"})

#: Largest accepted amount; with at most 4 decimal places, twin statistics stay exact.
MAX_AMOUNT = Decimal("999999999999.9999")
MAX_AMOUNT_PLACES = 4

TRANSACTION_FIELDS = (
    "transaction_id",
    "customer_id",
    "amount",
    "currency",
    "merchant_id",
    "merchant_category",
    "country",
    "channel",
    "timestamp",
)
_OPTIONAL_FIELDS = ("schema_version",)
_KNOWN_FIELDS = frozenset((*TRANSACTION_FIELDS, *_OPTIONAL_FIELDS))

_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_MCC = re.compile(r"[0-9]{4}")
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})"
)
# What _well_formed takes without the full rules: a positive amount of at most 12 integer
# digits (so within MAX_AMOUNT) and 4 places, and a stamp as datetime.isoformat writes it
# (or with Z for UTC), which datetime.fromisoformat reads as the rules do.
_PLAIN_AMOUNT = re.compile(r"(?:[1-9][0-9]{0,11}|0)(?:\.[0-9]{1,4})?")
_PLAIN_TIME = re.compile(
    r"(?:19[7-9][0-9]|2[0-9]{3})-(?:0[1-9]|1[0-2])-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9]"
    r"(?:\.[0-9]{6})?(?:Z|[+-][0-2][0-9]:[0-5][0-9])"
)
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(2999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
# Enum lookups by value through a dict: calling the enum costs several times more per message.
_DECISIONS: dict[str, Decision] = {d.value: d for d in Decision}
_PATHS: dict[str, Path] = {p.value: p for p in Path}
_CURRENCIES = frozenset(c.alpha_3 for c in pycountry.currencies)
_COUNTRIES = frozenset(c.alpha_2 for c in pycountry.countries)


def parse_json(body: bytes | str) -> Any:
    """Parse a JSON document keeping every number with a fraction as a :class:`Decimal`.

    Raises:
        ValidationError: the body is not JSON (the message says where it broke).
    """
    try:
        return json.loads(body, parse_float=Decimal, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValidationError([FieldError("body", "is nested too deeply")]) from None
    except ValueError as exc:  # bad JSON, bad UTF-8, or a number too long to convert
        raise ValidationError([FieldError("body", f"is not valid JSON: {exc}")]) from None


def _message_json(data: bytes | str) -> Any:
    """``data`` parsed for :func:`parse_transaction`; quicker for compact JSON as CorePay writes.

    When orjson's re-encoding of what it read is ``data`` itself, ``data`` has no duplicate
    key (the copy would be missing) and each number is written as the shortest form of its
    float, so the float stands for exactly the decimal :func:`parse_json` would give. Anything
    else goes through :func:`parse_json`.
    """
    try:
        raw = data.encode() if isinstance(data, str) else data
        obj = orjson.loads(raw)
        if orjson.dumps(obj) == raw:
            return obj
    except (UnicodeEncodeError, orjson.JSONDecodeError, orjson.JSONEncodeError):
        pass  # a lone surrogate, bad JSON, or nesting deeper than orjson writes: the rules say
    return parse_json(data)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        names = [k for k, _ in pairs]
        twice = next(k for k in names if names.count(k) > 1)
        # Parsers disagree on which copy wins, so a body that says two things is refused.
        raise ValidationError([FieldError(twice, "is given more than once")])
    return obj


def parse_transaction(data: Any) -> Transaction:
    """Validate a payment request (the POST body, or a ``raw_transactions`` value).

    Every field is checked and every failure reported, not just the first.

    Raises:
        ValidationError: with one :class:`FieldError` per invalid, missing or unknown field.
    """
    return _parse(data, remember=False)


def _parse(data: Any, *, remember: bool) -> Transaction:
    """:func:`parse_transaction`; ``remember``: a transaction read from the bus, which this
    process may read again soon (see :data:`_KNOWN_TRANSACTIONS`). A request a producer sends
    is seen once, so nothing is looked up or kept for it."""
    if type(data) is dict:
        txn = _well_formed(data, remember)
        if txn is not None:
            return txn
    return _by_the_rules(data)


def _by_the_rules(data: Any) -> Transaction:
    if not isinstance(data, Mapping):
        raise ValidationError([FieldError("body", "must be a JSON object")])
    errors: list[FieldError] = []
    if not _KNOWN_FIELDS.issuperset(data):
        errors.extend(
            FieldError(str(name), "is not a known field")
            for name in data
            if name not in _KNOWN_FIELDS
        )
    version = data.get("schema_version", SCHEMA_VERSION)
    if type(version) is not int or version != SCHEMA_VERSION:
        errors.append(FieldError("schema_version", f"must be {SCHEMA_VERSION} when given"))
    values: dict[str, Any] = {}
    for name in TRANSACTION_FIELDS:
        if name not in data or data[name] is None:
            errors.append(FieldError(name, "is required"))
            continue
        try:
            values[name] = _FIELD_RULES[name](data[name])
        except ValueError as exc:
            errors.append(FieldError(name, str(exc)))
    if errors:
        raise ValidationError(errors)
    return Transaction(**values)


def _well_formed(data: dict[str, Any], remember: bool) -> Transaction | None:
    """The transaction in ``data`` when it is plainly valid, else ``None``.

    The fast path for what well-behaved producers send (CorePay itself, on every hop): every
    field a string in its usual form. It accepts nothing the field rules refuse and builds the
    same transaction; anything unusual, valid or not, is left to the rules, which also name
    every fault. Each message is validated again on every hop, so this is most of the cost.
    """
    if len(data) != len(TRANSACTION_FIELDS):
        version = data.get("schema_version")
        if len(data) != len(TRANSACTION_FIELDS) + 1 or type(version) is not int:
            return None
        if version != SCHEMA_VERSION:
            return None
    try:
        tid = data["transaction_id"]
        cid = data["customer_id"]
        amount = data["amount"]
        currency = data["currency"]
        mid = data["merchant_id"]
        mcc = data["merchant_category"]
        country = data["country"]
        channel = data["channel"]
        stamp = data["timestamp"]
    except KeyError:
        return None
    if not (
        type(tid) is str
        and type(cid) is str
        and type(mid) is str
        and type(amount) is str
        and type(mcc) is str
        and type(stamp) is str
        and type(currency) is str
        and type(country) is str
        and type(channel) is str
    ):
        return None
    # The same fields are validated again on every hop (an outcome carries its transaction):
    # the same text makes the same transaction, so it is built once.
    if remember:
        key = (tid, cid, amount, currency, mid, mcc, country, channel, stamp)
        known = _KNOWN_TRANSACTIONS.get(key)
        if known is not None:
            return known
    if not (
        _ID.fullmatch(tid)
        and _ID.fullmatch(cid)
        and _ID.fullmatch(mid)
        and _PLAIN_AMOUNT.fullmatch(amount)
        and _MCC.fullmatch(mcc)
        and _PLAIN_TIME.fullmatch(stamp)
        and currency in _CURRENCIES
        and country in _COUNTRIES
        and channel in CHANNELS
    ):
        return None
    value = Decimal(amount)
    if not value:  # the pattern allows zero, which the rule refuses
        return None
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:  # a day or hour the pattern lets through, such as February 30
        return None
    # The pattern holds the year to 1970-2999, so only a stamp in the first or the last year
    # can be out of range (by its offset); comparing aware datetimes costs about 1 us.
    if not "1970" < stamp[:4] < "2999" and not _EARLIEST <= moment <= _LATEST:
        return None
    txn = Transaction(tid, cid, value, currency, mid, mcc, country, channel, _one_zone(moment))
    if remember:
        _KNOWN_TRANSACTIONS[key] = txn
    _VALIDATED[id(txn)] = txn
    return txn


#: Transactions :func:`_well_formed` built, by the text of their fields; a transaction meets
#: every service (in one process) or both outcomes of it meet the detector soon after.
_KNOWN_TRANSACTIONS_MAX = 8192
_KNOWN_TRANSACTIONS: Recent[tuple[str, ...], Transaction] = Recent(_KNOWN_TRANSACTIONS_MAX)
#: The same transactions by identity (held, so that an id is not reused meanwhile).
_VALIDATED: Recent[int, Transaction] = Recent(_KNOWN_TRANSACTIONS_MAX)


def _identifier(value: Any) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ValueError("must be a string of 1-64 characters from A-Z a-z 0-9 . _ : -")
    return value


def _amount(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal | float):
        raise ValueError('must be a positive decimal, as a string ("12.50") or a number')
    try:
        if isinstance(value, str) and not _DECIMAL.fullmatch(value):
            raise InvalidOperation
        amount = Decimal(value) if isinstance(value, str) else Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f'{value!r} is not a decimal number such as "12.50"') from None
    if not amount.is_finite() or amount <= 0:
        raise ValueError("must be a positive, finite decimal")
    if amount > MAX_AMOUNT:
        raise ValueError(f"must be at most {MAX_AMOUNT}")
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_AMOUNT_PLACES:
        raise ValueError(f"must have at most {MAX_AMOUNT_PLACES} decimal places")
    if isinstance(exponent, int) and exponent > 0:
        amount = amount.quantize(Decimal(1))  # 1E+2 travels as "100", never in exponent form
    return amount


def _currency(value: Any) -> str:
    if not isinstance(value, str) or value not in _CURRENCIES:
        raise ValueError('must be an ISO 4217 alpha-3 currency code in capitals, such as "EUR"')
    return value


def _mcc(value: Any) -> str:
    if not isinstance(value, str) or not _MCC.fullmatch(value):
        raise ValueError('must be a 4-digit merchant category code as a string, such as "5411"')
    return value


def _country(value: Any) -> str:
    if not isinstance(value, str) or value not in _COUNTRIES:
        raise ValueError('must be an ISO 3166-1 alpha-2 country code in capitals, such as "DE"')
    return value


def _channel(value: Any) -> str:
    if not isinstance(value, str) or value not in CHANNELS:
        raise ValueError(f"must be one of {', '.join(sorted(CHANNELS))}")
    return value


def _timestamp(value: Any) -> datetime:
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(
            'must be an RFC 3339 date-time with an offset, such as "2026-11-24T09:30:00Z"'
        )
    date, time, fraction, offset = match.groups()
    if value[10] == "T" and offset != "z" and (fraction is None or len(fraction) <= 7):
        text = value  # already in a form fromisoformat reads, as CorePay itself writes it
    else:
        fraction = (fraction or "")[:7]  # Python keeps microseconds; finer digits are dropped.
        offset = "+00:00" if offset in ("Z", "z") else offset
        text = f"{date}T{time}{fraction}{offset}"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"is not a valid date-time: {exc}") from None
    if not _EARLIEST <= moment <= _LATEST:
        raise ValueError("must be between 1970-01-01T00:00:00Z and 2999-12-31T23:59:59Z")
    return _one_zone(moment)


# One tzinfo object per UTC offset read from a stamp (the pattern allows +-HH:MM: a few
# thousand at most). Python compares (and subtracts) two aware datetimes without working out
# either offset when both hold the same tzinfo object, about 15 times faster; a customer's
# payments mostly share an offset, and a twin compares them on every update.
_ZONES: dict[tzinfo, tzinfo] = {}


def _one_zone(moment: datetime) -> datetime:
    zone = moment.tzinfo
    assert zone is not None  # (the pattern requires an offset)
    shared = _ZONES.setdefault(zone, zone)
    return moment if shared is zone else moment.astimezone(shared)


_FIELD_RULES: dict[str, Callable[[Any], Any]] = {
    "transaction_id": _identifier,
    "customer_id": _identifier,
    "amount": _amount,
    "currency": _currency,
    "merchant_id": _identifier,
    "merchant_category": _mcc,
    "country": _country,
    "channel": _channel,
    "timestamp": _timestamp,
}


# --- encoding ------------------------------------------------------------------------------


def encode_json(obj: Any) -> bytes:
    """JSON as CorePay writes it on every topic: compact UTF-8, as
    ``json.dumps(separators=(",", ":"))`` but faster (orjson).

    orjson writes into a buffer of at least 1 KiB from the system allocator and shrinks it in
    place. When the result is kept (the memory bus and store keep every value), the space cut
    off is too small to be reused, so each encoding touches fresh memory: about 10 us instead
    of 1 for a 700-byte outcome, and more resident memory. A right-sized copy, made at once and
    the buffer freed, costs about 0.1 us.
    """
    return memoryview(orjson.dumps(obj)).tobytes()


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def transaction_to_wire(txn: Transaction) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "transaction_id": txn.transaction_id,
        "customer_id": txn.customer_id,
        "amount": format(txn.amount, "f"),
        "currency": txn.currency,
        "merchant_id": txn.merchant_id,
        "merchant_category": txn.merchant_category,
        "country": txn.country,
        "channel": txn.channel,
        "timestamp": txn.timestamp.isoformat(),
    }


def outcome_to_wire(outcome: Outcome) -> dict[str, Any]:
    return _outcome_document(outcome, transaction_to_wire(outcome.transaction), _time)


def _outcome_document(
    outcome: Outcome, transaction: Any, time: Callable[[datetime | None], Any]
) -> dict[str, Any]:
    # ``time`` is as for _twin_document; ``transaction`` is the embedded transaction's wire
    # form, or that form already encoded (an orjson.Fragment) when it is shared.
    timings = outcome.timings
    txn = outcome.transaction
    return {
        "schema_version": SCHEMA_VERSION,
        "transaction_id": txn.transaction_id,
        "customer_id": txn.customer_id,
        "path": outcome.path.value,
        "decision": outcome.decision.value,
        "score": outcome.score,
        "reasons": list(outcome.reasons),
        "error": outcome.error,
        "model_version": outcome.model_version,
        "twin_version": outcome.twin_version,
        "twin_lag": outcome.twin_lag,
        "fresh_decision": None if outcome.fresh_decision is None else outcome.fresh_decision.value,
        "timings": {
            "ingested_at": time(timings.ingested_at),
            "decided_at": time(timings.decided_at),
            "elapsed_ms": timings.elapsed_ms,
            "gateway_ms": timings.gateway_ms,
        },
        "transaction": transaction,
    }


def alert_to_wire(alert: DivergenceAlert) -> dict[str, Any]:
    return _alert_document(alert, outcome_to_wire, datetime.isoformat)


def _alert_document(
    alert: DivergenceAlert,
    outcome: Callable[[Outcome], Any],
    time: Callable[[datetime], Any],
) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "alert_id": alert.alert_id,
        "kind": alert.kind.value,
        "transaction_id": alert.transaction_id,
        "customer_id": alert.customer_id,
        "detail": alert.detail,
        "detected_at": time(alert.detected_at),
        "live": None if alert.live is None else outcome(alert.live),
        "simulation": None if alert.simulation is None else outcome(alert.simulation),
    }


def twin_to_wire(twin: Twin) -> dict[str, Any]:
    return _twin_document(twin, datetime.isoformat)


def _twin_document(
    twin: Twin, time: Callable[[datetime], Any], applied: list[str] | None = None
) -> dict[str, Any]:
    # ``time`` is isoformat for a JSON-ready dict, or leaves the datetime to orjson, which
    # writes the very same text several times faster (a twin carries ~20 of them).
    # ``applied``: what to send instead of the twin's own (up to 1,000 ids).
    return {
        "schema_version": SCHEMA_VERSION,
        "customer_id": twin.customer_id,
        "version": twin.version,
        "first_seen": time(twin.first_seen),
        "last_seen": time(twin.last_seen),
        "count": twin.count,
        "amount_sum": str(twin.amount_sum),
        "amount_sumsq": str(twin.amount_sumsq),
        "amount_min": str(twin.amount_min),
        "amount_max": str(twin.amount_max),
        "amount_mean": str(twin.amount_mean),
        "approvals": twin.approvals,
        "declines": twin.declines,
        "reviews": twin.reviews,
        "merchants": dict(twin.merchants),
        "countries": dict(twin.countries),
        "channels": dict(twin.channels),
        "history": [
            [
                h.transaction_id,
                time(h.timestamp),
                str(h.amount),
                h.merchant_id,
                h.country,
                h.channel,
                h.decision.value,
            ]
            for h in twin.history
        ],
        "applied": list(twin.applied) if applied is None else applied,
    }


@overload
def encode_transaction(txn: Transaction) -> bytes: ...
@overload
def encode_transaction(txn: Transaction, *, in_process: bool) -> bytes | Transaction: ...
def encode_transaction(txn: Transaction, *, in_process: bool = False) -> bytes | Transaction:
    """The ``raw_transactions`` value of ``txn``.

    With ``in_process`` (as for :func:`encode_outcomes`), a transaction this process
    validated is the value itself, for a bus in this process to carry (:func:`carry`).
    """
    if in_process and _validated(txn):
        return txn
    return encode_json(transaction_to_wire(txn))


def encode_outcome(outcome: Outcome) -> bytes:
    return encode_outcomes((outcome,))[0]


@overload
def encode_outcomes(outcomes: Iterable[Outcome]) -> list[bytes]: ...
@overload
def encode_outcomes(outcomes: Iterable[Outcome], *, in_process: bool) -> list[bytes | Outcome]: ...
def encode_outcomes(
    outcomes: Iterable[Outcome], *, in_process: bool = False
) -> list[bytes] | list[bytes | Outcome]:
    """:func:`encode_outcome` of each; a transaction several of them share is encoded once (the
    engine's live and simulation outcomes of a batch share every transaction).

    With ``in_process`` (the values are read in this process: a memory bus), each outcome is
    the value itself, for the bus to carry (:func:`carry`): its readers get the outcome rather
    than an equal copy, and it is encoded (``bytes(outcome)``) only if one asks for the
    message's bytes. So a pipeline in one process encodes and decodes nothing no one reads as
    bytes. (An outcome of a subclass of ``Outcome`` is encoded here.)
    """
    shared = _SharedTransactions()
    if not in_process:
        return [encode_json(shared.document(o)) for o in outcomes]
    return [o if type(o) is Outcome else encode_json(shared.document(o)) for o in outcomes]


def carry(value: bytes | SupportsBytes, checked: set[int]) -> bytes | Transaction | Outcome:
    """What a bus in this process keeps of a value published: bytes as they are; as itself, a
    transaction this process validated or an outcome that would decode exactly as itself
    (type for type, its transaction one this process validated), to be encoded only if
    someone reads the message's bytes; any other object encoded now, so that what cannot be
    encoded is refused at publish, as on any bus. ``checked``: ids of Timings found to
    decode as themselves already, for the values of one publish (this adds to it).

    Raises:
        Exception: whatever encoding the object raises.
    """
    if type(value) is bytes:
        return value
    if type(value) is Transaction and _validated(value):
        return value
    if type(value) is Outcome and _decodes_as_itself(value, checked):
        return value
    encoded = bytes(value)
    # (``bytes()`` passes a subclass of bytes from ``__bytes__`` through as it is.)
    return encoded if type(encoded) is bytes else bytes(memoryview(encoded))


def _decodes_as_itself(outcome: Outcome, plain: set[int]) -> bool:
    """Whether decoding ``outcome``'s value gives an outcome equal to it, field by field and
    type by type: what the engine decides does; one built by hand need not. ``plain``: the
    ids of Timings found to decode as themselves already (this adds to it)."""
    # Checked for every outcome published in one process (two a payment), so the checks are
    # written out. A number: a float, finite (JSON has no NaN or infinity, and an int would
    # come back a float); an int, within what orjson writes.
    if type(outcome) is not Outcome:
        return False
    txn = outcome.transaction
    if _VALIDATED.get(id(txn)) is not txn:
        return False
    score, reasons, version = outcome.score, outcome.reasons, outcome.model_version
    twin_version, lag, error = outcome.twin_version, outcome.twin_lag, outcome.error
    return (
        type(outcome.path) is Path
        and type(outcome.decision) is Decision
        and (score is None or (type(score) is float and math.isfinite(score)))
        and type(reasons) is tuple
        and (not reasons or all(_plain_text(r) for r in reasons))
        and type(version) is str
        and (version.isascii() or _plain_text(version))
        and (
            twin_version is None
            or (type(twin_version) is int and _INT64 <= twin_version < _UINT64_END)
        )
        and (lag is None or (type(lag) is int and _INT64 <= lag < _UINT64_END))
        and (outcome.fresh_decision is None or type(outcome.fresh_decision) is Decision)
        and (error is None or _plain_text(error))
        and (id(outcome.timings) in plain or _plain_timings(outcome.timings, plain))
    )


def _plain_timings(timings: Timings, plain: set[int]) -> bool:
    if type(timings) is not Timings:
        return False
    # (The live path's timings are each its own, so each is checked.) A time decodes as
    # itself only in UTC itself: other zones come back as fixed offsets, rounded.
    decided, ingested = timings.decided_at, timings.ingested_at
    elapsed, gateway = timings.elapsed_ms, timings.gateway_ms
    if not (
        type(decided) is datetime
        and decided.tzinfo is UTC
        and not decided.fold
        and (
            ingested is None
            or (type(ingested) is datetime and ingested.tzinfo is UTC and not ingested.fold)
        )
        and type(elapsed) is float
        and math.isfinite(elapsed)
        and (gateway is None or (type(gateway) is float and math.isfinite(gateway)))
    ):
        return False
    plain.add(id(timings))  # (the outcome holds it, so the id is not reused meanwhile)
    return True


def _plain_text(value: object) -> bool:
    # A str (not a subclass) that JSON can carry: UTF-8 has no lone surrogates.
    if type(value) is not str:
        return False
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


#: The ints orjson writes: of 64 bits, signed or unsigned (it refuses larger ones).
_INT64, _UINT64_END = -(2**63), 2**64


def _validated(txn: Transaction) -> bool:
    """Whether this process validated ``txn`` itself (see :data:`_VALIDATED`)."""
    return _VALIDATED.get(id(txn)) is txn


def encode_alert(alert: DivergenceAlert) -> bytes:
    return encode_json(_alert_document(alert, _SharedTransactions().document, _as_is))


class _SharedTransactions:
    """Outcome documents for orjson, each transaction encoded once per transaction object."""

    def __init__(self) -> None:
        # By identity, holding each transaction so that its id is not reused meanwhile.
        self._done: dict[int, tuple[Transaction, orjson.Fragment]] = {}

    def encoded(self, txn: Transaction) -> orjson.Fragment:
        done = self._done.get(id(txn))
        if done is None:
            done = self._done[id(txn)] = (txn, orjson.Fragment(encode_transaction(txn)))
        return done[1]

    def document(self, outcome: Outcome) -> dict[str, Any]:
        return _outcome_document(outcome, self.encoded(outcome.transaction), _as_is)


def encode_twin(twin: Twin) -> bytes:
    return encode_json(_twin_document(twin, _as_is))


def encode_twins(
    twins: Iterable[Twin], applied_of: Mapping[str, Iterable[str]] | None = None
) -> bytes:
    """``{"twins": [...]}``: the twin service's answer to a batch read.

    With ``applied_of`` (transaction ids per customer), each twin's ``applied`` holds only
    those of its customer's ids it has applied, sorted: for a reader that only asks whether
    a twin shows some given payments, whatever else it applied is left out.
    """
    if applied_of is None:
        return encode_json({"twins": [_twin_document(t, _as_is) for t in twins]})
    docs = []
    for twin in twins:
        asked = frozenset(applied_of.get(twin.customer_id, ()))
        shown = sorted(i for i in asked if i in twin.applied)
        docs.append(_twin_document(twin, _as_is, shown))
    return encode_json({"twins": docs})


def _as_is(value: Any) -> Any:
    return value


# --- decoding of CorePay's own messages --------------------------------------------------


def _load(data: bytes | str | Mapping[str, Any], what: str) -> Mapping[str, Any]:
    if isinstance(data, Mapping):
        return data
    try:
        obj = orjson.loads(data)
    except ValueError as exc:  # bad JSON, bad UTF-8, too deeply nested, an integer too big
        raise DecodeError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"{what} must be a JSON object, got {type(obj).__name__}")
    if obj.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise DecodeError(f"{what} has unsupported schema_version {obj.get('schema_version')!r}")
    return obj


def _embedded_transaction(d: Any) -> Transaction:
    # Any producer can write to an outcome topic, so the embedded transaction is checked by
    # the same rules as at ingestion: a bad one is a DecodeError, never a bad key downstream.
    try:
        return _parse(d, remember=True)
    except ValidationError as exc:
        raise ValueError(f"embedded transaction: {exc}") from None


def _optional_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def decode_transaction(data: bytes | str | SupportsBytes) -> Transaction:
    """Decode and validate a ``raw_transactions`` value (any producer may have written it).

    A transaction object is itself if this process validated it, and is otherwise checked
    as its bytes would be.

    Raises:
        DecodeError: not JSON, or not a valid transaction (the message lists the fields).
    """
    if type(data) is Transaction and _validated(data):
        return data
    if not isinstance(data, bytes | str):
        data = _bytes_of(data, "transaction")
    try:
        return _parse(_message_json(data), remember=True)
    except ValidationError as exc:
        raise DecodeError(f"invalid transaction: {exc}") from None


def _outcome_from(d: Mapping[str, Any]) -> Outcome:
    t = d["timings"]
    return Outcome(
        transaction=_embedded_transaction(d["transaction"]),
        path=_PATHS[d["path"]],
        decision=_DECISIONS[d["decision"]],
        score=None if d["score"] is None else float(d["score"]),
        reasons=tuple(d["reasons"]),
        model_version=d["model_version"],
        twin_version=d.get("twin_version"),
        twin_lag=d.get("twin_lag"),
        fresh_decision=None if d.get("fresh_decision") is None else _DECISIONS[d["fresh_decision"]],
        error=d.get("error"),
        timings=Timings(
            decided_at=datetime.fromisoformat(t["decided_at"]),
            elapsed_ms=float(t["elapsed_ms"]),
            ingested_at=_optional_time(t.get("ingested_at")),
            gateway_ms=t.get("gateway_ms"),
        ),
    )


def _decoding(what: str, build: Callable[[Mapping[str, Any]], Any], data: Any) -> Any:
    obj = _load(data, what)
    try:
        return build(obj)
    except (LookupError, TypeError, ValueError, ArithmeticError) as exc:
        raise DecodeError(f"{what} is malformed: {type(exc).__name__}: {exc}") from None


def decode_outcome(data: bytes | str | Mapping[str, Any] | SupportsBytes) -> Outcome:
    """Decode a ``live_outcome`` or ``simulation_outcome`` value.

    An outcome object is itself if it would decode exactly as itself (see :func:`carry`), and
    is otherwise decoded from its bytes.

    Raises:
        DecodeError: not an outcome in this wire format.
    """
    if type(data) is Outcome and _decodes_as_itself(data, set()):
        return data
    if not isinstance(data, bytes | str | Mapping):
        data = _bytes_of(data, "outcome")
    return _decoding("outcome", _outcome_from, data)  # type: ignore[no-any-return]


def _bytes_of(data: SupportsBytes, what: str) -> bytes:
    try:
        return bytes(data)
    except Exception as exc:  # whatever the object's own encoding raises
        raise DecodeError(f"{what} object cannot be encoded: {type(exc).__name__}: {exc}") from None


def transaction_of(message: Message) -> Transaction:
    """The transaction a ``raw_transactions`` message holds: the one a bus in this process
    carried (:func:`carry` vouched for it), or its value decoded (:func:`decode_transaction`).
    """
    carried = message.carried
    return carried if type(carried) is Transaction else decode_transaction(message.value)


def outcome_of(message: Message) -> Outcome:
    """The outcome an outcome message holds: the one a bus in this process carried
    (:func:`carry` vouched for it), or its value decoded (:func:`decode_outcome`)."""
    carried = message.carried
    return carried if type(carried) is Outcome else decode_outcome(message.value)


def _alert_from(d: Mapping[str, Any]) -> DivergenceAlert:
    return DivergenceAlert(
        alert_id=d["alert_id"],
        kind=AlertKind(d["kind"]),
        transaction_id=d["transaction_id"],
        customer_id=d["customer_id"],
        detail=d["detail"],
        detected_at=datetime.fromisoformat(d["detected_at"]),
        live=None if d.get("live") is None else _outcome_from(d["live"]),
        simulation=None if d.get("simulation") is None else _outcome_from(d["simulation"]),
    )


def decode_alert(data: bytes | str | Mapping[str, Any]) -> DivergenceAlert:
    """Decode a ``divergence_alert`` value.

    Raises:
        DecodeError: not an alert in this wire format.
    """
    return _decoding("alert", _alert_from, data)  # type: ignore[no-any-return]


def _twin_from(
    d: Mapping[str, Any], known: dict[tuple[Any, ...], HistoryEntry] | None = None
) -> Twin:
    fromiso, decimal = datetime.fromisoformat, Decimal
    history = []
    for raw in d["history"]:
        entry = None if known is None else known.get(tuple(raw))
        if entry is None:
            tid, at, amount, merchant, country, channel, decision = raw
            entry = HistoryEntry(
                tid, fromiso(at), decimal(amount), merchant, country, channel, _DECISIONS[decision]
            )
            # Only all-text entries are kept: in a tuple 1 == 1.0 == True, so a key with other
            # values could stand for an entry that decodes differently.
            if known is not None and all(type(v) is str for v in raw):
                known[tuple(raw)] = entry
        history.append(entry)
    return Twin(
        customer_id=d["customer_id"],
        version=int(d["version"]),
        first_seen=fromiso(d["first_seen"]),
        last_seen=fromiso(d["last_seen"]),
        count=int(d["count"]),
        amount_sum=decimal(d["amount_sum"]),
        amount_sumsq=decimal(d["amount_sumsq"]),
        amount_min=decimal(d["amount_min"]),
        amount_max=decimal(d["amount_max"]),
        approvals=int(d["approvals"]),
        declines=int(d["declines"]),
        reviews=int(d["reviews"]),
        merchants=dict(d["merchants"]),
        countries=dict(d["countries"]),
        channels=dict(d["channels"]),
        history=tuple(history),
        applied=d["applied"],  # (Twin makes the list its ordered dict)
    )


class TwinDecoder:
    """:func:`decode_twin` for a reader that decodes the same twins again and again.

    A twin's history changes by an entry or two between reads, so the entries decoded before
    are kept (up to ``remember``, keyed by their wire form) and reused: an entry is immutable,
    and the same wire form decodes to the same entry. Threads may share one decoder.
    """

    def __init__(self, remember: int = 50_000) -> None:
        self.remember = remember
        self._known: dict[tuple[Any, ...], HistoryEntry] = {}

    def decode(self, data: bytes | str | Mapping[str, Any]) -> Twin:
        """As :func:`decode_twin`.

        Raises:
            DecodeError: not a twin in this format.
        """
        if len(self._known) > self.remember:
            self._known.clear()  # simpler than LRU; the next reads refill it
        twin = _decoding("twin", lambda d: _twin_from(d, self._known), data)
        return twin  # type: ignore[no-any-return]


def decode_twin(data: bytes | str | Mapping[str, Any]) -> Twin:
    """Decode a stored twin document.

    Raises:
        DecodeError: not a twin in this format.
    """
    return _decoding("twin", _twin_from, data)  # type: ignore[no-any-return]
