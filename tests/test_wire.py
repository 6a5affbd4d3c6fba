"""The wire format: validation of payment requests, and the JSON form of every message."""

from __future__ import annotations

import contextlib
import json
import math
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import attrs
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import strategies as cst
from corepay import wire
from corepay.errors import DecodeError, ValidationError
from corepay.models import Decision, Outcome, Path, Timings
from corepay.wire import (
    MAX_AMOUNT,
    TRANSACTION_FIELDS,
    TwinDecoder,
    alert_to_wire,
    carry,
    decode_alert,
    decode_outcome,
    decode_transaction,
    decode_twin,
    encode_alert,
    encode_outcome,
    encode_outcomes,
    encode_transaction,
    encode_twin,
    encode_twins,
    outcome_to_wire,
    parse_json,
    parse_transaction,
    twin_to_wire,
)

VALID = {
    "transaction_id": "txn-0001",
    "customer_id": "cust:42",
    "amount": "12.50",
    "currency": "EUR",
    "merchant_id": "m_7.a",
    "merchant_category": "5411",
    "country": "DE",
    "channel": "pos",
    "timestamp": "2026-11-24T09:30:00Z",
}


def decode_twin_reusing(data: Any) -> Any:
    """decode_twin through a TwinDecoder that has decoded the fixture twin, so it reuses entries."""
    decoder = TwinDecoder()
    decoder.decode(TWIN_WIRE)
    return decoder.decode(data)


DECODERS = [decode_transaction, decode_outcome, decode_alert, decode_twin, decode_twin_reusing]


def with_(**changes: Any) -> dict[str, Any]:
    return {**VALID, **changes}


def broken_fields(payload: Any) -> list[str]:
    with pytest.raises(ValidationError) as info:
        parse_transaction(payload)
    return sorted(error.field for error in info.value.errors)


# --- accepting and round-tripping transactions ------------------------------------------------


@given(cst.payload_cases())
def test_every_valid_payload_is_accepted_as_given(case: tuple[dict[str, Any], Any]) -> None:
    payload, expected = case

    txn = parse_transaction(payload)

    assert txn == expected
    assert txn.timestamp.utcoffset() == expected.timestamp.utcoffset()
    assert type(txn.amount) is Decimal


@given(cst.payload_cases())
def test_every_valid_payload_is_accepted_through_json(case: tuple[dict[str, Any], Any]) -> None:
    payload, expected = case

    txn = parse_transaction(parse_json(json.dumps(payload).encode()))

    assert txn == expected
    assert type(txn.amount) is Decimal


@given(cst.transactions())
def test_transaction_round_trips_through_its_encoding(txn: Any) -> None:
    encoded = encode_transaction(txn)

    decoded = decode_transaction(encoded)

    assert decoded == txn
    assert str(decoded.amount) == str(txn.amount)
    assert decoded.timestamp.utcoffset() == txn.timestamp.utcoffset()
    # What CorePay writes is itself a valid payment request.
    assert parse_transaction(json.loads(encoded)) == txn


# --- the fast paths agree with the rules -------------------------------------------------------

# Payloads near the edges of what the fast path takes: its patterns allow a few values that only
# the rules can refuse (a zero amount, February 30, a far offset at either end of the range).
_OWN = {**VALID, "timestamp": "2026-11-24T09:30:00+00:00"}  # as CorePay writes it


def _own(**changes: Any) -> dict[str, Any]:
    return {**_OWN, **changes}


_EDGES = [
    _OWN,
    VALID,
    _own(amount="0"),
    _own(amount="0.0000"),
    _own(amount="0.0001"),
    _own(amount="999999999999.9999"),
    _own(amount="1000000000000"),
    _own(amount="12.34567"),
    _own(timestamp="2026-02-30T09:30:00+00:00"),
    _own(timestamp="2026-11-24T24:00:00+00:00"),
    _own(timestamp="1970-01-01T00:30:00+01:00"),
    _own(timestamp="1970-01-01T00:30:00-01:00"),
    _own(timestamp="2999-12-31T23:30:00-01:00"),
    _own(timestamp="2999-12-31T23:30:00+01:00"),
    _own(timestamp="2026-11-24T09:30:00.123456+00:00"),
    _own(timestamp="2026-11-24T09:30:00.1234567+00:00"),
    _own(timestamp="2026-11-24T09:30:00+29:59"),
    _own(schema_version=1),
    _own(schema_version=True),
    _own(schema_version=1.0),
    _own(schema_version=2),
    _own(schema_version=0),
    {**_own(schema_version=1), "extra": 1},
    _own(timestamp="2026-11-24T09:30:00z"),
    _own(timestamp="2026-11-24 09:30:00Z"),
    _own(timestamp="2026-11-24T09:30:00.000001Z"),
    {k: v for k, v in _OWN.items() if k != "country"} | {"extra": "DE"},
]


def _own_form(txn: Any) -> dict[str, Any]:
    return json.loads(encode_transaction(txn))  # type: ignore[no-any-return]


def _by_the_rules(payload: Any) -> Any:
    try:
        return wire._by_the_rules(payload)
    except ValidationError as exc:
        return sorted(e.field for e in exc.errors)


@given(
    st.one_of(
        cst.transactions().map(_own_form),
        cst.valid_payloads(),
        cst.invalid_payloads(objects_only=True).map(lambda case: case.payload),
        st.sampled_from(_EDGES),
    )
)
def test_the_fast_path_takes_only_what_the_rules_take_and_builds_the_same(payload: Any) -> None:
    fast = wire._well_formed(payload, False)
    assert wire._well_formed(payload, True) == fast  # looked up and kept, or not: the same

    if fast is not None:
        ruled = _by_the_rules(payload)
        assert fast == ruled
        assert str(fast.amount) == str(ruled.amount)
        assert fast.timestamp.utcoffset() == ruled.timestamp.utcoffset()


@given(cst.transactions())
def test_the_fast_path_takes_what_corepay_writes(txn: Any) -> None:
    assert wire._well_formed(_own_form(txn), True) == txn


_H1, _H5_30, _M5 = (timezone(timedelta(minutes=m)) for m in (60, 330, -300))


@pytest.mark.parametrize(
    ("stamps", "expected"),
    [
        (  # as CorePay writes them (the fast path)
            ("2026-11-24T09:30:00+01:00", "2026-11-24T09:31:00.500000+01:00"),
            (
                datetime(2026, 11, 24, 9, 30, tzinfo=_H1),
                datetime(2026, 11, 24, 9, 31, 0, 500000, tzinfo=_H1),
            ),
        ),
        (  # in forms only the rules read
            ("2026-11-24t09:30:00+05:30", "2026-11-24 09:31:00.1234567+05:30"),
            (
                datetime(2026, 11, 24, 9, 30, tzinfo=_H5_30),
                datetime(2026, 11, 24, 9, 31, 0, 123456, tzinfo=_H5_30),
            ),
        ),
        (  # two offsets
            ("2026-11-24T09:30:00-05:00", "2026-11-24T09:31:00z"),
            (datetime(2026, 11, 24, 9, 30, tzinfo=_M5), datetime(2026, 11, 24, 9, 31, tzinfo=UTC)),
        ),
        (
            ("2026-11-24T09:30:00Z", "2026-11-24T09:31:00+00:00"),
            (datetime(2026, 11, 24, 9, 30, tzinfo=UTC), datetime(2026, 11, 24, 9, 31, tzinfo=UTC)),
        ),
    ],
)
def test_stamps_of_one_offset_share_one_tzinfo_and_keep_their_instant_and_form(
    stamps: tuple[str, str], expected: tuple[datetime, datetime]
) -> None:
    # Python compares two aware datetimes holding the same tzinfo object much faster.
    parsed = [
        parse_transaction({**VALID, "transaction_id": f"tx-zone-{i}", "timestamp": stamp}).timestamp
        for i, stamp in enumerate(stamps)
    ]

    assert parsed == list(expected)
    assert [p.isoformat() for p in parsed] == [e.isoformat() for e in expected]
    same_offset = expected[0].utcoffset() == expected[1].utcoffset()
    assert (parsed[0].tzinfo is parsed[1].tzinfo) == same_offset


@pytest.mark.parametrize("payload", _EDGES)
def test_edge_payloads_parse_as_the_rules_say(payload: dict[str, Any]) -> None:
    try:
        parsed: Any = parse_transaction(payload)
    except ValidationError as exc:
        parsed = sorted(e.field for e in exc.errors)

    assert parsed == _by_the_rules(payload)


_ODD_BODIES = [
    b'{"amount":"1.00","amount":"2.00"}',
    orjson.dumps(_OWN)[:-1] + b',"country":"FR"}',
    orjson.dumps(_own(amount=12.5)),
    orjson.dumps(_own(amount=12.5)).replace(b"12.5", b"12.50"),
    orjson.dumps(_own(amount=0.1)),
    orjson.dumps(_own(amount=1e-5)),
    orjson.dumps(_own(amount=1e16)),
    orjson.dumps(_own(schema_version=1.0)),
    json.dumps(_own(amount=float("nan"))).encode(),
    b'{"x":' + b"[" * 300 + b"]" * 300 + b"}",  # deeper than orjson writes, not than it reads
    b"[" * 1100 + b"]" * 1100,  # deeper than orjson reads
]


@pytest.mark.parametrize(
    "text",
    ['{"transaction_id":"\\ud800"}', '{"transaction_id":"\ud800"}'],
    ids=["escaped", "raw"],
)
def test_a_message_value_with_a_lone_surrogate_is_a_decode_error(text: str) -> None:
    with pytest.raises(DecodeError):
        decode_transaction(text)


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _bodies() -> st.SearchStrategy[bytes]:
    payloads = st.one_of(
        cst.transactions().map(_own_form), cst.valid_payloads(), st.sampled_from(_EDGES)
    )
    return st.one_of(
        payloads.map(orjson.dumps),
        payloads.map(lambda p: json.dumps(p).encode()),
        cst.invalid_payloads().map(lambda case: _compact(case.payload)),
        cst.arbitrary_bodies(),
    )


def _read(parse: Any, body: bytes) -> Any:
    try:
        txn = parse_transaction(parse(body))
    except ValidationError as exc:
        return sorted(e.field for e in exc.errors)
    return txn, str(txn.amount), txn.timestamp.utcoffset()


@given(_bodies())
def test_message_values_parse_as_request_bodies_do(body: bytes) -> None:
    assert _read(wire._message_json, body) == _read(parse_json, body)


@pytest.mark.parametrize("body", _ODD_BODIES)
def test_odd_message_values_parse_as_request_bodies_do(body: bytes) -> None:
    assert _read(wire._message_json, body) == _read(parse_json, body)


def test_amount_string_keeps_its_decimal_value() -> None:
    txn = parse_transaction(with_(amount="0.10"))

    assert type(txn.amount) is Decimal
    assert txn.amount == Decimal("0.1")
    assert json.loads(encode_transaction(txn))["amount"] in ("0.10", "0.1")


def test_json_number_amount_is_parsed_as_decimal_not_float() -> None:
    body = json.dumps(with_(amount="AMOUNT")).replace('"AMOUNT"', "0.1")

    assert parse_json('{"amount": 0.1}')["amount"] == Decimal("0.1")
    assert type(parse_json('{"amount": 0.1}')["amount"]) is Decimal
    txn = parse_transaction(parse_json(body))
    assert type(txn.amount) is Decimal
    assert txn.amount == Decimal("0.1")  # Decimal(0.1), the float, is not equal to this


def test_amounts_add_up_exactly() -> None:
    amounts = [parse_transaction(with_(amount=a)).amount for a in ("0.1", "0.2")]

    assert sum(amounts) == Decimal("0.3")


@pytest.mark.parametrize(
    "amount", ["0.0001", str(MAX_AMOUNT), MAX_AMOUNT, "1.2345", "12.50", 5, 0.5, "100"]
)
def test_boundary_amounts_are_accepted(amount: Any) -> None:
    assert parse_transaction(with_(amount=amount)).amount == Decimal(str(amount))


# --- rejecting invalid payloads ---------------------------------------------------------------


@settings(max_examples=200)
@given(cst.invalid_payloads())
def test_invalid_payload_names_exactly_the_broken_fields(case: cst.Invalid) -> None:
    with pytest.raises(ValidationError) as info:
        parse_transaction(case.payload)

    errors = info.value.errors
    assert sorted(e.field for e in errors) == sorted(case.fields)  # each field once
    assert all(e.message for e in errors)
    assert isinstance(info.value, ValueError)


@settings(max_examples=100)
@given(cst.invalid_payloads())
def test_invalid_json_body_names_exactly_the_broken_fields(case: cst.Invalid) -> None:
    body = json.dumps(case.payload).encode()

    with pytest.raises(ValidationError) as info:
        parse_transaction(parse_json(body))

    assert sorted(e.field for e in info.value.errors) == sorted(case.fields)


def test_every_broken_field_is_reported_at_once() -> None:
    payload = {
        "transaction_id": "",
        "customer_id": 42,
        "amount": "-3",
        "currency": "euro",
        "merchant_id": "a b",
        "merchant_category": 5411,
        "country": "XX",
        "channel": "web",
        "timestamp": "2026-11-24",
        "schema_version": 2,
        "colour": "blue",
    }

    assert broken_fields(payload) == sorted([*TRANSACTION_FIELDS, "schema_version", "colour"])


def test_missing_fields_are_each_reported() -> None:
    assert broken_fields({}) == sorted(TRANSACTION_FIELDS)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("currency", "eur"),
        ("currency", "EURO"),
        ("country", "XX"),
        ("country", "de"),
        ("merchant_category", 5411),
        ("merchant_category", "541"),
        ("channel", "web"),
        ("timestamp", "2026-11-24T09:30:00"),
        ("timestamp", "2026-11-24"),
        ("timestamp", "2026-02-30T09:30:00Z"),
        ("amount", "-1"),
        ("amount", -1),
        ("amount", "0"),
        ("amount", 0),
        ("amount", "NaN"),
        ("amount", float("nan")),
        ("amount", "Infinity"),
        ("amount", "-Infinity"),
        ("amount", float("inf")),
        ("amount", "1.00001"),
        ("amount", "0.00001"),
        ("amount", str(MAX_AMOUNT + Decimal("0.0001"))),
        ("amount", True),
        ("amount", False),
        ("amount", "twelve"),
        ("transaction_id", "x" * 65),
        ("customer_id", "alice smith"),
    ],
)
def test_rule_violation_names_the_field_and_the_rule(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        parse_transaction(with_(**{field: value}))

    assert [e.field for e in info.value.errors] == [field]
    assert str(info.value).startswith(f"{field}: ")
    assert len(info.value.errors[0].message) > len("is invalid")


@pytest.mark.parametrize(
    "body", [b"NaN", b'{"amount": NaN}', b'{"amount": Infinity}', b'{"amount": 1e400}']
)
def test_json_special_numbers_are_field_errors(body: bytes) -> None:
    with pytest.raises(ValidationError):
        parse_transaction(parse_json(body))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"\xff\xfe\xfa",
        b'{"amount": 1' + b"0" * 5000 + b"}",  # longer than Python's int conversion limit
        b"[" * 50_000 + b"]" * 50_000,  # deeper than the recursion limit
    ],
    ids=["empty", "truncated", "not-utf8", "5000-digit-number", "deeply-nested"],
)
def test_parse_json_rejects_unparseable_bodies_as_validation_errors(body: bytes) -> None:
    with pytest.raises(ValidationError) as info:
        parse_json(body)

    assert [e.field for e in info.value.errors] == ["body"]


# --- CorePay's own messages -------------------------------------------------------------------


@given(cst.outcomes())
def test_outcome_round_trips(outcome: Any) -> None:
    assert decode_outcome(encode_outcome(outcome)) == outcome
    assert decode_outcome(outcome_to_wire(outcome)) == outcome


@given(cst.alerts())
def test_alert_round_trips(alert: Any) -> None:
    assert decode_alert(encode_alert(alert)) == alert
    assert decode_alert(alert_to_wire(alert)) == alert


@given(cst.twins())
def test_twin_round_trips(twin: Any) -> None:
    decoded = decode_twin(encode_twin(twin))

    assert decoded == twin
    assert decode_twin(twin_to_wire(twin)) == twin
    assert [type(v) for v in (decoded.amount_sum, decoded.amount_min)] == [Decimal, Decimal]


# The encoders hand datetimes to orjson, and the outcome encoders share each transaction's
# encoding; the bytes must be exactly the compact JSON of the wire form all the same (as orjson
# writes it: its floats are as short as the stdlib's but may differ in form, 0.00001 for 1e-05).
def compact(obj: Any) -> bytes:
    return orjson.dumps(obj)


@given(st.lists(cst.outcomes(), max_size=4))
def test_encoded_outcomes_are_exactly_the_json_of_their_wire_form(outcomes: list[Any]) -> None:
    shared = [*outcomes, *(attrs.evolve(o, path=Path.SIMULATION) for o in outcomes)]

    expected = [compact(outcome_to_wire(o)) for o in shared]

    assert encode_outcomes(shared) == expected
    assert [encode_outcome(o) for o in shared] == expected


@given(cst.outcomes())
def test_encoded_outcomes_from_a_generator_each_carry_their_own_transaction(outcome: Any) -> None:
    # Each outcome (and its transaction) is dropped once encoded, so object ids are reused.
    def outcomes() -> Any:
        for i in range(50):
            txn = parse_transaction(_own(transaction_id=f"txn-{i}"))
            yield attrs.evolve(outcome, transaction=txn)

    encoded = [json.loads(v) for v in encode_outcomes(outcomes())]

    assert [o["transaction"]["transaction_id"] for o in encoded] == [f"txn-{i}" for i in range(50)]


@given(cst.alerts())
def test_encoded_alerts_are_exactly_the_json_of_their_wire_form(alert: Any) -> None:
    assert encode_alert(alert) == compact(alert_to_wire(alert))


@given(st.lists(cst.twins(), max_size=3))
def test_encoded_twins_are_exactly_the_json_of_their_wire_form(twins: list[Any]) -> None:
    for twin in twins:
        assert encode_twin(twin) == compact(twin_to_wire(twin))
    assert encode_twins(twins) == compact({"twins": [twin_to_wire(t) for t in twins]})


@settings(max_examples=100)
@given(cst.arbitrary_bodies())
def test_decoding_garbage_raises_decode_error(data: bytes) -> None:
    for decode in DECODERS:
        with pytest.raises(DecodeError):
            decode(data)


@pytest.mark.parametrize("decode", DECODERS, ids=lambda d: d.__name__)
@pytest.mark.parametrize(
    "data",
    [
        b'{"schema_version": 1' + b"1" * 5000 + b"}",
        b'{"x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    ],
    ids=["5000-digit-number", "deeply-nested"],
)
def test_decoding_pathological_json_raises_decode_error(decode: Any, data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = []
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, child in items:
        found.append((*prefix, key))
        found.extend(_paths(child, (*prefix, key)))
    return found


def _mutate(wire: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """A copy of ``wire`` with one value anywhere in it deleted or replaced by any JSON."""
    copy = json.loads(json.dumps(wire))
    path = data.draw(st.sampled_from(_paths(copy)))
    parent = copy
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(cst.json_values())
    return copy


def _decodes_or_raises_decode_error(decode: Any, wire: dict[str, Any]) -> None:
    with contextlib.suppress(DecodeError):
        decode(json.dumps(wire).encode())


@settings(max_examples=150)
@given(st.one_of(cst.outcomes().map(outcome_to_wire), cst.alerts().map(alert_to_wire)), st.data())
def test_decoding_damaged_messages_raises_only_decode_error(
    wire: dict[str, Any], data: st.DataObject
) -> None:
    decode = decode_alert if "alert_id" in wire else decode_outcome

    _decodes_or_raises_decode_error(decode, _mutate(wire, data))


TWIN_WIRE = {
    "schema_version": 1,
    "customer_id": "c",
    "version": 3,
    "first_seen": "2026-01-01T00:00:00+00:00",
    "last_seen": "2026-01-02T00:00:00+01:00",
    "count": 2,
    "amount_sum": "3.50",
    "amount_sumsq": "7.2500",
    "amount_min": "1.00",
    "amount_max": "2.50",
    "amount_mean": "1.75",
    "approvals": 1,
    "declines": 1,
    "reviews": 0,
    "merchants": {"m-1": 2},
    "countries": {"DE": 1, "FR": 1},
    "channels": {"pos": 2},
    "history": [
        ["t1", "2026-01-01T00:00:00+00:00", "1.00", "m-1", "DE", "pos", "APPROVE"],
        ["t2", "2026-01-02T00:00:00+01:00", "2.50", "m-1", "FR", "pos", "DECLINE"],
    ],
    "applied": ["t1", "t2"],
}


def test_twin_fixture_decodes() -> None:
    assert decode_twin(json.dumps(TWIN_WIRE)).count == 2


@settings(max_examples=150)
@given(st.data())
def test_decoding_damaged_twins_raises_only_decode_error(data: st.DataObject) -> None:
    damaged = _mutate(TWIN_WIRE, data)
    _decodes_or_raises_decode_error(decode_twin, damaged)
    _decodes_or_raises_decode_error(decode_twin_reusing, damaged)


@pytest.mark.parametrize("decode", [decode_twin, decode_twin_reusing], ids=lambda d: d.__name__)
@pytest.mark.parametrize(
    "entry", [[], ["t1"], "ab", [["t1"], *["x"] * 6]], ids=["empty", "short", "string", "nested"]
)
def test_decoding_twin_with_short_history_entry_raises_decode_error(
    decode: Any, entry: Any
) -> None:
    twin = {**TWIN_WIRE, "history": [entry]}

    with pytest.raises(DecodeError):
        decode(json.dumps(twin))


@settings(max_examples=50)
@given(st.lists(cst.twins(), min_size=1, max_size=8), st.integers(1, 40))
def test_a_twin_decoder_decodes_as_decode_twin_does(twins: list[Any], remember: int) -> None:
    decoder = TwinDecoder(remember=remember)
    # The same twins over and over, as an engine reads them: entries are reused, and forgotten.
    for twin in [*twins, *reversed(twins), *twins]:
        for data in (encode_twin(twin), twin_to_wire(twin)):
            decoded = decoder.decode(data)

            assert decoded == decode_twin(data) == twin
            assert [type(h.amount) for h in decoded.history] == [Decimal] * len(twin.history)


def test_a_twin_decoder_decodes_values_that_compare_equal_each_as_itself() -> None:
    # In a tuple 1 == 1.0 == True: entries with such values must not stand for one another.
    entry = TWIN_WIRE["history"][0]
    decoder = TwinDecoder()

    for tid in (1, True, 1.0, "1"):
        twin = {**TWIN_WIRE, "history": [[tid, *entry[1:]]]}
        decoded = decoder.decode(json.dumps(twin))

        assert decoded == decode_twin(json.dumps(twin))
        assert type(decoded.history[0].transaction_id) is type(tid)


def test_a_twin_decoder_reuses_the_entries_it_decoded() -> None:
    decoder = TwinDecoder()
    first = decoder.decode(json.dumps(TWIN_WIRE))

    again = decoder.decode(json.dumps(TWIN_WIRE))

    assert again == first
    assert all(a is b for a, b in zip(again.history, first.history, strict=True))
    assert again.history


def test_the_same_fields_decode_to_the_same_transaction_and_any_other_text_to_its_own() -> None:
    first = decode_transaction(json.dumps(_OWN))
    assert decode_transaction(json.dumps(dict(reversed(list(_OWN.items()))))) is first  # once
    # What a producer sends is seen once: a request is neither looked up nor kept.
    request = parse_transaction(dict(_OWN))
    assert request == first and request is not first
    assert parse_transaction(dict(_OWN)) is not request
    others = {
        "transaction_id": "txn-other",
        "customer_id": "cust-other",
        "amount": "12.5",  # the same number, written otherwise
        "currency": "USD",
        "merchant_id": "m-other",
        "merchant_category": "5999",
        "country": "FR",
        "channel": "ecommerce" if _OWN["channel"] != "ecommerce" else "pos",
        "timestamp": "2026-11-24T10:30:00+01:00",  # the same instant, another offset
    }
    for field, text in others.items():
        parsed = decode_transaction(json.dumps(_own(**{field: text})))
        assert parsed is not first
        assert repr(parsed) == repr(_by_the_rules(_own(**{field: text})))  # offsets, digits
    for refused in ({**_OWN, "extra": 1}, {**_OWN, "schema_version": 2}):
        with pytest.raises(DecodeError):  # what the rules refuse stays refused
            decode_transaction(json.dumps(refused))
        with pytest.raises(ValidationError):
            parse_transaction(refused)


def test_the_transactions_kept_for_reuse_are_bounded() -> None:
    for i in range(wire._KNOWN_TRANSACTIONS_MAX + 10):
        decode_transaction(json.dumps(_own(transaction_id=f"txn-bound-{i}")))
    assert 0 < len(wire._KNOWN_TRANSACTIONS) <= wire._KNOWN_TRANSACTIONS_MAX


# --- outcomes carried within one process -----------------------------------------------------


def _validated(outcome: Any) -> Any:
    """``outcome`` with its transaction as validation in this process builds it."""
    return attrs.evolve(
        outcome, transaction=parse_transaction(wire.transaction_to_wire(outcome.transaction))
    )


@given(st.lists(cst.outcomes(), min_size=1, max_size=4))
def test_outcomes_encoded_for_this_process_decode_exactly_as_decoding_them_would(
    outcomes: list[Any],
) -> None:
    outcomes = [_validated(o) for o in outcomes]

    values = encode_outcomes(outcomes, in_process=True)

    assert [bytes(v) for v in values] == encode_outcomes(outcomes)  # the same bytes either way
    for value in values:
        carried = decode_outcome(value)
        # As decoding it would have built it, down to the types and time zones.
        assert repr(carried) == repr(decode_outcome(bytes(value).decode()))


def test_outcomes_as_the_engine_decides_them_are_carried() -> None:
    outcome = Outcome(
        transaction=parse_transaction(VALID),
        path=Path.SIMULATION,
        decision=Decision.REVIEW,
        score=0.625,
        reasons=("ELEVATED_RISK_SCORE", "NEW_COUNTRY"),
        model_version="twin-logit-1",
        twin_version=3,
        twin_lag=1,
        fresh_decision=Decision.APPROVE,
        timings=Timings(
            decided_at=datetime(2026, 11, 25, 7, 0, 0, 250_000, tzinfo=UTC),
            elapsed_ms=0.125,
            ingested_at=datetime(2026, 11, 25, 7, 0, 0, 125_000, tzinfo=UTC),
        ),
    )
    (value,) = encode_outcomes([outcome], in_process=True)

    assert value is outcome
    assert carry(value, set()) is outcome
    assert decode_outcome(value) is outcome


@given(cst.outcomes())
def test_outcomes_encoded_for_other_processes_are_decoded_anew(outcome: Any) -> None:
    outcome = _validated(outcome)
    (value,) = encode_outcomes([outcome])

    decoded = decode_outcome(value)

    assert decoded == outcome and decoded is not outcome


@pytest.mark.parametrize(
    "change",
    [
        {"score": math.nan},  # JSON has no NaN: null
        {"score": 2**53 + 1},  # an int comes back a float, and this one rounded
        {"reasons": ["HIGH_RISK_SCORE"]},  # a list comes back a tuple
        {"reasons": (Decision.DECLINE,)},  # a str of a subclass comes back a plain str
        {"twin_lag": math.nan},
        {"twin_version": True},
        {"twin_version": 2**70},  # orjson writes 64 bits at most
        {"twin_lag": -(2**64)},
        {"reasons": ("\ud800",)},  # a lone surrogate: no UTF-8 for it
        {"model_version": "m\udfff"},
        {"error": "\ud800 lost"},
        {"timings": {"elapsed_ms": math.inf}},
        {"timings": {"gateway_ms": math.inf}},
        {"timings": {"elapsed_ms": 1}},
        {"timings": {"decided_at": datetime(2026, 11, 25, tzinfo=ZoneInfo("Europe/Paris"))}},
        {"timings": {"decided_at": datetime(2026, 11, 25, tzinfo=timezone(timedelta(seconds=30)))}},
        {"timings": {"decided_at": datetime(2026, 11, 25)}},
        {"timings": {"decided_at": date(2026, 11, 25)}},
        {"timings": {"decided_at": None}},
        {"timings": {"decided_at": datetime(2026, 11, 25, tzinfo=UTC, fold=1)}},  # fold: lost
        {"timings": {"ingested_at": datetime(2026, 11, 25, tzinfo=UTC, fold=1)}},
        {"transaction": {"amount": Decimal("0")}},  # not validated here (and invalid)
    ],
    ids=repr,
)
def test_an_outcome_that_would_not_decode_exactly_as_itself_is_never_carried(
    change: dict[str, Any],
) -> None:
    outcome = _plain_outcome()
    txn = outcome.transaction
    fields = {k: v for k, v in change.items() if k not in ("timings", "transaction")}
    if "timings" in change:
        fields["timings"] = attrs.evolve(outcome.timings, **change["timings"])
    if "transaction" in change:
        fields["transaction"] = attrs.evolve(txn, **change["transaction"])
    odd = attrs.evolve(outcome, **fields)

    try:
        value = carry(odd, set())
    except TypeError:
        return  # orjson cannot write it at all: refused at publish, as any bus refuses it
    assert type(value) is bytes and value == bytes(odd)  # encoded at once
    # Handed to decode_outcome as an object, it is what its bytes give, not itself.
    assert _decoded_or_error(odd) == _decoded_or_error(value)


def test_outcomes_sharing_timings_are_carried_only_if_those_decode_as_themselves() -> None:
    plain = _plain_outcome()
    paris = attrs.evolve(
        plain.timings, decided_at=datetime(2026, 11, 25, tzinfo=ZoneInfo("Europe/Paris"))
    )
    outcomes = [
        plain,
        attrs.evolve(plain, model_version="m2"),  # the same Timings object as the first
        attrs.evolve(plain, timings=paris),
        attrs.evolve(plain, model_version="m3", timings=paris),
    ]

    checked: set[int] = set()

    values = [carry(v, checked) for v in encode_outcomes(outcomes, in_process=True)]

    assert [type(v) for v in values] == [Outcome, Outcome, bytes, bytes]


def _decoded_or_error(value: Any) -> Any:
    try:
        return repr(decode_outcome(value))
    except DecodeError as exc:
        return f"DecodeError: {exc}"


def _plain_outcome(**changes: Any) -> Outcome:
    """A live outcome of the VALID transaction that decodes exactly as itself."""
    outcome = Outcome(
        transaction=parse_transaction(VALID),
        path=Path.LIVE,
        decision=Decision.APPROVE,
        score=0.25,
        reasons=(),
        model_version="m1",
        timings=Timings(decided_at=datetime(2026, 11, 25, tzinfo=UTC), elapsed_ms=1.0),
    )
    return attrs.evolve(outcome, **changes)


class _OwnOutcome(Outcome):
    """An outcome of a subclass, as a library user might make one."""


def test_an_outcome_of_a_subclass_is_decoded_as_any_other() -> None:
    outcome = _OwnOutcome(**attrs.asdict(_plain_outcome(), recurse=False))
    (value,) = encode_outcomes([outcome], in_process=True)

    assert type(value) is bytes
    assert type(decode_outcome(value)) is Outcome


@given(cst.outcomes())
def test_a_transaction_encoded_for_this_process_is_carried_as_itself(outcome: Any) -> None:
    outcome = _validated(outcome)
    txn = outcome.transaction

    value = encode_transaction(txn, in_process=True)

    assert value is txn
    assert bytes(value) == encode_transaction(txn)
    assert decode_transaction(value) is txn
    with pytest.raises(DecodeError):  # a transaction is no outcome, carried or not
        decode_outcome(value)
    (encoded,) = encode_outcomes([outcome], in_process=True)
    assert bytes(encoded) == compact(outcome_to_wire(outcome))
    with pytest.raises(DecodeError):  # carried or not
        decode_transaction(encoded)


def test_a_transaction_not_validated_here_is_encoded_at_once() -> None:
    txn = parse_transaction(VALID)
    unchecked = attrs.evolve(txn, transaction_id="txn-unchecked")

    value = encode_transaction(unchecked, in_process=True)

    assert type(value) is bytes
    decoded = decode_transaction(value)
    assert decoded == unchecked and decoded is not unchecked


def test_an_object_published_as_is_is_read_as_itself_only_once_validated_here() -> None:
    txn = parse_transaction(VALID)
    built = attrs.evolve(txn, transaction_id="txn-built-by-hand")
    broken = attrs.evolve(txn, transaction_id="txn-broken", amount=Decimal("-5"))
    outcome = _plain_outcome(transaction=built)

    # Not validated here: checked as its bytes would be, as if it came over the wire.
    decoded = decode_transaction(built)
    assert decoded == built and decoded is not built
    with pytest.raises(DecodeError, match="amount"):
        decode_transaction(broken)
    assert decode_outcome(outcome) == outcome and decode_outcome(outcome) is not outcome
    with pytest.raises(DecodeError, match="amount"):
        decode_outcome(attrs.evolve(outcome, transaction=broken))
    assert decode_transaction(txn) is txn  # validated here: itself
    # Its transaction validated here, but itself not what decoding its bytes gives.
    listed = _plain_outcome(reasons=["HIGH_RISK_SCORE"])
    assert decode_outcome(listed).reasons == ("HIGH_RISK_SCORE",)
    with pytest.raises(DecodeError, match="outcome object cannot be encoded"):
        decode_outcome(_plain_outcome(decision="APPROVE"))  # a str, not a Decision
