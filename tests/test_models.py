"""Features, the decision policy, training and model files (``corepay.features``,
``corepay.scoring``, ``corepay.riskmodel``, ``corepay.training``)."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any

import attrs
import joblib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corepay import MemoryBus, MemoryTwinStore, Pipeline, TrafficGenerator, parse_transaction
from corepay.bus import SIMULATION_OUTCOME
from corepay.errors import ConfigurationError
from corepay.features import (
    FEATURES,
    NO_HISTORY,
    TRANSACTION_FEATURES,
    TWIN_FEATURES,
    feature_matrix,
    transaction_features,
    twin_features,
)
from corepay.models import Decision, Transaction, Twin, epoch_us
from corepay.riskmodel import LogisticRegression, ModelMetadata, RiskModel, load_model, save_model
from corepay.scoring import REASON_RULES, DecisionPolicy, Thresholds
from corepay.training import TrainingConfig, build_dataset, default_model, roc_auc, train
from corepay.twin import apply_outcome, live_decision
from corepay.wire import decode_outcome
from strategies import transactions


def _txns(n: int, customers: int = 20, seed: int = 0) -> list[Transaction]:
    generator = TrafficGenerator(customers=customers, seed=seed)
    return [parse_transaction(r) for r in generator.requests(n)]


def _twin_of(txns: list[Transaction], decision: Decision = Decision.APPROVE) -> Twin:
    twin: Twin | None = None
    for txn in txns:
        twin = apply_outcome(twin, live_decision(txn, decision, "test"))
    assert twin is not None
    return twin


# --- features --------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        transactions(customer_id="c1"), min_size=1, max_size=8, unique_by=lambda t: t.transaction_id
    ),
    st.data(),
)
def test_any_subset_of_features_is_the_same_columns_of_the_full_matrix(txns, data):
    history = _twin_of(txns[:-1]) if len(txns) > 1 else None
    twins = {} if history is None else {"c1": history}
    full = feature_matrix(txns, twins, FEATURES)
    names = data.draw(st.permutations(FEATURES).map(lambda p: p[: data.draw(st.integers(1, 17))]))
    subset = feature_matrix(txns, twins, names)
    assert subset.shape == (len(txns), len(names))
    for j, name in enumerate(names):
        np.testing.assert_array_equal(subset[:, j], full[:, FEATURES.index(name)])
    assert np.isfinite(full).all()
    # Transaction features do not depend on any twin.
    np.testing.assert_array_equal(
        feature_matrix(txns, None, TRANSACTION_FEATURES), transaction_features(txns)
    )


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        transactions(customer_id="c1"),
        min_size=1,
        max_size=12,
        unique_by=lambda t: t.transaction_id,
    )
)
def test_twin_features_follow_the_history(txns):
    cid = "c1"
    twin = _twin_of(txns[:-1]) if len(txns) > 1 else None
    values = twin_features([txns[-1]], {cid: twin} if twin else {})[0]
    row = dict(zip(TWIN_FEATURES, values, strict=True))
    if twin is None:
        assert row == NO_HISTORY
        return
    last = txns[-1]
    assert row["new_merchant"] == (0.0 if last.merchant_id in twin.merchants else 1.0)
    assert row["new_country"] == (0.0 if last.country in twin.countries else 1.0)
    assert row["velocity_10m"] <= row["velocity_1h"] <= row["velocity_24h"] <= len(twin.history)
    assert -2.0 <= row["amount_ratio"] <= 3.0 and -3.0 <= row["amount_zscore"] <= 10.0
    assert row["thin_history"] == (1.0 if twin.count < 3 else 0.0)
    assert row["decline_rate"] == 0.0


def test_velocity_counts_the_payments_in_each_window_before_this_one():
    first = _txns(1)[0]
    burst = [
        attrs.evolve(first, transaction_id=f"t{i}", timestamp=at)
        for i, at in enumerate(
            first.timestamp + timedelta(minutes=m) for m in (0, 1000, 1400, 1439, 1445, 1448)
        )
    ]
    twin = _twin_of(burst[:-1], Decision.DECLINE)
    values = twin_features([burst[-1]], {first.customer_id: twin})[0]
    row = dict(zip(TWIN_FEATURES, values, strict=True))
    # At minute 1448: 1439 and 1445 are within 10 minutes, 1400 within the hour, 1000 within
    # the day, and minute 0 is more than a day ago.
    assert (row["velocity_10m"], row["velocity_1h"], row["velocity_24h"]) == (2.0, 3.0, 4.0)
    assert row["log_since_last"] == pytest.approx(np.log10(181.0))
    assert row["decline_rate"] == 1.0 and row["thin_history"] == 0.0
    assert row["new_merchant"] == 0.0


_OFFSETS = st.sampled_from((0, 60, -300, 330, 345, 840)).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(0, 3000), min_size=1, max_size=20),
    st.data(),
)
def test_velocities_and_recency_match_counting_the_history_directly(minutes, data):
    # Often exactly a window's length after a payment in the history, or a microsecond either
    # side of it: the edges count. Each time is written in an offset of its own.
    now = data.draw(
        st.integers(0, 3000)
        | st.tuples(st.sampled_from(minutes), st.sampled_from((0, 10, 60, 1440))).map(sum)
    )
    nudge = timedelta(microseconds=data.draw(st.sampled_from((0, 0, 1, -1, 999_999))))
    first = _txns(1)[0]
    start = first.timestamp
    history = [
        attrs.evolve(
            first,
            transaction_id=f"t{i}",
            timestamp=(start + timedelta(minutes=m)).astimezone(data.draw(_OFFSETS)),
        )
        for i, m in enumerate(minutes)
    ]
    at = (start + timedelta(minutes=now) + nudge).astimezone(data.draw(_OFFSETS))
    twin = _twin_of(history)
    row = dict(
        zip(
            TWIN_FEATURES,
            twin_features([attrs.evolve(first, transaction_id="now", timestamp=at)], [twin])[0],
            strict=True,
        )
    )
    earlier = [h.timestamp for h in twin.history if h.timestamp < at]
    for name, window in (("velocity_10m", 10), ("velocity_1h", 60), ("velocity_24h", 1440)):
        assert row[name] == sum(1 for ts in earlier if ts >= at - timedelta(minutes=window))
    if earlier:
        assert row["log_since_last"] == math.log10(1.0 + (at - max(earlier)).total_seconds())


@given(
    st.datetimes(
        min_value=datetime(1971, 1, 1),
        max_value=datetime(2999, 12, 30),
        timezones=st.one_of(
            st.none(),
            st.just(UTC),
            st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23)).map(
                timezone
            ),
            st.timezones(),  # zoneinfo zones, with daylight-saving changes
        ),
    )
)
def test_epoch_microseconds_are_the_exact_elapsed_time_since_1970(moment: datetime) -> None:
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    elapsed = aware.astimezone(UTC).replace(tzinfo=None) - datetime(1970, 1, 1)
    expected = (elapsed.days * 86_400 + elapsed.seconds) * 1_000_000 + elapsed.microseconds

    assert epoch_us(moment) == expected
    assert epoch_us(moment) == expected  # (the second time through its cached epoch)


def test_epoch_microseconds_of_a_stamp_in_a_tzinfo_that_cannot_be_hashed() -> None:
    class Unhashable(tzinfo):  # defines __eq__ and not __hash__
        def utcoffset(self, dt: datetime | None) -> timedelta:
            return timedelta(hours=2)

        def dst(self, dt: datetime | None) -> timedelta:
            return timedelta(0)

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Unhashable)

    moment = datetime(2026, 1, 1, 2, 0, 0, 5, tzinfo=Unhashable())
    assert epoch_us(moment) == epoch_us(datetime(2026, 1, 1, 0, 0, 0, 5, tzinfo=UTC))


def test_twin_features_take_naive_times_as_utc():
    txns = _txns(40, customers=1)
    naive = [
        attrs.evolve(t, timestamp=t.timestamp.astimezone(UTC).replace(tzinfo=None)) for t in txns
    ]
    aware = twin_features([txns[-1]], [_twin_of(txns[:-1])])
    assert twin_features([naive[-1]], [_twin_of(naive[:-1])]).tolist() == aware.tolist()


def test_unknown_or_repeated_features_are_refused_by_name():
    txns = _txns(3)
    for _ in range(2):  # (each time: the columns of a list of names are kept once checked)
        with pytest.raises(ConfigurationError, match="unknown features \\['shoe_size'\\]"):
            feature_matrix(txns, None, ("log_amount", "shoe_size"))
    with pytest.raises(ConfigurationError, match="listed twice: \\['night'\\]"):
        feature_matrix(txns, None, ("night", "night"))


# --- decision policy -------------------------------------------------------------------------


def test_thresholds_split_approve_review_decline_at_their_bounds():
    t = Thresholds(review=0.3, decline=0.7)
    assert t.decide(0.2999)[0] is Decision.APPROVE
    assert t.decide(0.3) == (Decision.REVIEW, ("ELEVATED_RISK_SCORE",))
    assert t.decide(0.7) == (Decision.DECLINE, ("HIGH_RISK_SCORE",))
    for bad in ((0.0, 0.5), (0.6, 0.5), (0.5, 1.5), (float("nan"), 0.9)):
        with pytest.raises(ValueError, match="0 < review <= decline <= 1"):
            Thresholds(*bad)


def test_policy_explains_what_it_does_not_approve_with_reason_codes():
    names = (
        "tiny_amount",
        "high_risk_mcc",
        "new_country",
        "new_merchant",
        "thin_history",
        "velocity_10m",
        "amount_ratio",
    )
    features = np.array(
        [
            [1, 1, 1, 1, 0, 4, 0.0],  # card testing at a new merchant, abroad
            [0, 0, 1, 1, 1, 0, 0.0],  # a new customer: novelty explains nothing
            [0, 0, 0, 0, 0, 0, 1.5],  # an amount anomaly, approved anyway (low score)
        ],
        dtype=float,
    )
    decided = DecisionPolicy(Thresholds(0.4, 0.8)).decide(
        np.array([0.9, 0.5, 0.1]), features, names
    )
    assert decided[0] == (
        Decision.DECLINE,
        (
            "HIGH_RISK_SCORE",
            "NEW_COUNTRY",
            "NEW_MERCHANT",
            "VELOCITY",
            "CARD_TESTING_AMOUNT",
            "HIGH_RISK_MERCHANT",
        ),
    )
    assert decided[1] == (Decision.REVIEW, ("ELEVATED_RISK_SCORE", "NO_HISTORY"))
    assert decided[2] == (Decision.APPROVE, ())


def _explained(thresholds: Thresholds, score: float, row: dict[str, float]) -> Any:
    """What the policy decides for one row, rule by rule, as REASON_RULES reads."""
    decision, reasons = thresholds.decide(score)
    if decision is Decision.APPROVE:
        return decision, reasons
    codes: list[str] = []
    for name, at_least, code in REASON_RULES:
        if name not in row or row[name] < at_least or code in codes:
            continue
        if code in ("NEW_COUNTRY", "NEW_MERCHANT") and row.get("thin_history", 0.0) >= 1.0:
            continue  # everything is new to a customer without history
        codes.append(code)
    return decision, reasons + tuple(codes)


@given(st.data(), st.integers(0, 12))
def test_policy_reasons_are_each_rule_applied_row_by_row(data: st.DataObject, rows: int) -> None:
    names = data.draw(st.lists(st.sampled_from(FEATURES), unique=True, min_size=1))
    values = st.sampled_from([0.0, 0.3, 0.5, 1.0, 1.5, 2.99, 3.0, 4.0, 5.0, -1.0])
    features = np.array(
        [[data.draw(values) for _ in names] for _ in range(rows)], dtype=float
    ).reshape(rows, len(names))
    scores = np.array([data.draw(st.floats(0.0, 1.0)) for _ in range(rows)])
    thresholds = Thresholds(0.4, 0.8)

    decided = DecisionPolicy(thresholds).decide(scores, features, names)

    assert decided == [
        _explained(thresholds, score, dict(zip(names, row, strict=True)))
        for score, row in zip(scores.tolist(), features.tolist(), strict=True)
    ]


# --- fitting and measuring -------------------------------------------------------------------


def test_logistic_regression_recovers_known_weights_deterministically():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4000, 3))
    true = np.array([2.0, -1.0, 0.0])
    y = (rng.random(4000) < 1 / (1 + np.exp(-(x @ true - 1.0)))).astype(float)
    a = LogisticRegression(l2=0.01).fit(x, y)
    b = LogisticRegression(l2=0.01).fit(x, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    # coef_ is per standardised feature: divide by the scale to compare with the truth.
    np.testing.assert_allclose(a.coef_ / a.scale_, true, atol=0.15)
    proba = a.predict_proba(x)
    assert proba.shape == (4000, 2) and np.allclose(proba.sum(axis=1), 1.0)


def test_logistic_regression_stays_finite_on_separable_data():
    x = np.array([[0.0], [1.0], [2.0], [3.0]] * 50)
    y = np.array([0.0, 0.0, 1.0, 1.0] * 50)
    model = LogisticRegression(l2=1e-6).fit(x, y)
    p = model.predict_proba(x)[:, 1]
    assert np.isfinite(model.coef_).all() and (p[y == 1] > 0.99).all() and (p[y == 0] < 0.01).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), min_size=2, max_size=40))
def test_roc_auc_is_the_share_of_positive_negative_pairs_ranked_right(pairs):
    y = np.array([float(p) for p, _ in pairs])
    scores = np.array([float(s) for _, s in pairs])
    if y.min() == y.max():
        with pytest.raises(ValueError):
            roc_auc(y, scores)
        return
    wins = [
        1.0 if sp > sn else 0.5 if sp == sn else 0.0
        for (sp, lp), (sn, ln) in itertools.product(zip(scores, y, strict=True), repeat=2)
        if lp == 1 and ln == 0
    ]
    assert roc_auc(y, scores) == pytest.approx(sum(wins) / len(wins))


@pytest.fixture(scope="module")
def small_world():
    return build_dataset(transactions=6000, customers=300, seed=11)


@pytest.mark.parametrize("path", ["live", "simulation"])
def test_training_learns_the_generated_fraud_and_reports_held_out_metrics(small_world, path):
    config = TrainingConfig(path=path, seed=11, transactions=6000, customers=300)
    model = train(config, small_world)
    meta = model.metadata
    assert meta.path == path and meta.features == (
        TRANSACTION_FEATURES if path == "live" else FEATURES
    )
    assert meta.training["train_transactions"] == 4500
    m = meta.metrics
    assert m["transactions"] == 1500 and 0.01 < m["fraud_rate"] < 0.1
    assert m["roc_auc"] > 0.9
    assert 0 < meta.thresholds.review <= meta.thresholds.decline <= 1
    assert m["recall"] >= m["recall_at_decline"] and m["precision"] > 0.2
    # Deterministic: the same world and seed give the same model.
    again = train(config, small_world)
    np.testing.assert_array_equal(again.estimator.coef_, model.estimator.coef_)
    assert again.metadata == meta


def test_the_twin_model_beats_the_live_model_on_held_out_payments(small_world):
    live = train(
        TrainingConfig(path="live", seed=11, transactions=6000, customers=300), small_world
    )
    twin = train(
        TrainingConfig(path="simulation", seed=11, transactions=6000, customers=300), small_world
    )
    assert twin.metadata.metrics["roc_auc"] > live.metadata.metrics["roc_auc"]


def test_fixed_thresholds_are_kept_and_measured():
    model = train(TrainingConfig(transactions=3000, customers=200, review=0.2, decline=0.6))
    assert model.thresholds == Thresholds(0.2, 0.6)


def test_the_default_models_are_trained_once_per_process():
    assert default_model("live") is default_model("live")
    assert default_model("simulation").metadata.path == "simulation"


# --- model files -----------------------------------------------------------------------------


def test_a_saved_model_loads_with_its_metadata_and_scores_the_same(tmp_path: Path):
    model = default_model("simulation")
    path = model.save(tmp_path / "models" / "twin.joblib")
    loaded = load_model(path, for_path="simulation")
    assert loaded.metadata == model.metadata
    txns = _txns(50)
    np.testing.assert_array_equal(
        loaded.score(loaded.features_of(txns)), model.score(model.features_of(txns))
    )


def test_loading_refuses_what_corepay_could_not_feed(tmp_path: Path):
    live = default_model("live")
    path = live.save(tmp_path / "live.joblib")
    with pytest.raises(ConfigurationError, match="is for the live path, not the simulation"):
        load_model(path, for_path="simulation")
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_model(tmp_path / "nothing.joblib")
    (tmp_path / "junk.joblib").write_bytes(b"not a pickle")
    with pytest.raises(ConfigurationError, match="could not be read"):
        load_model(tmp_path / "junk.joblib")
    joblib.dump(live.estimator, tmp_path / "bare.joblib")
    with pytest.raises(ConfigurationError, match="not a CorePay model file"):
        load_model(tmp_path / "bare.joblib")
    # Metadata edited to name features the estimator was not fitted on.
    content = joblib.load(path)
    content["metadata"]["features"] = list(TRANSACTION_FEATURES[:-1])
    joblib.dump(content, tmp_path / "short.joblib")
    with pytest.raises(ConfigurationError, match="fitted on 7 features but the metadata names 6"):
        load_model(tmp_path / "short.joblib")
    content["metadata"]["features"] = [*TRANSACTION_FEATURES[:-1], "velocity_1h"]
    joblib.dump(content, tmp_path / "twinfeature.joblib")
    with pytest.raises(ConfigurationError, match=r"live path.*velocity_1h"):
        load_model(tmp_path / "twinfeature.joblib")


def test_a_scikit_learn_pipeline_plugs_in(tmp_path: Path, small_world):
    sklearn = pytest.importorskip("sklearn", reason="scikit-learn comes with corepay[test]")
    from sklearn.ensemble import HistGradientBoostingClassifier

    names = FEATURES
    boosted = HistGradientBoostingClassifier(max_iter=60, random_state=0)
    boosted.fit(small_world.features, small_world.y)
    meta = ModelMetadata(
        version=f"twin-hgb-sklearn{sklearn.__version__}", path="simulation", features=names
    )
    path = save_model(boosted, tmp_path / "hgb.joblib", meta)
    loaded = load_model(path, for_path="simulation")
    txns = list(small_world.transactions[:200])
    scores = loaded.score(loaded.features_of(txns))
    assert scores.shape == (200,) and ((scores >= 0) & (scores <= 1)).all()
    # The wrong feature list is refused at save time already.
    with pytest.raises(ConfigurationError, match="fitted on 17 features"):
        save_model(boosted, tmp_path / "x.joblib", ModelMetadata("x", "simulation", names[:5]))


def test_an_estimator_without_predict_proba_is_refused():
    with pytest.raises(ConfigurationError, match="has no predict_proba"):
        RiskModel(object(), ModelMetadata("x", "live", TRANSACTION_FEATURES))  # type: ignore[arg-type]


class _Answers:
    """An estimator that answers a batch of ``rows`` with these probabilities of the risky
    class (and any other batch, such as the check of a model as it is made, with 0.5s)."""

    def __init__(self, p: list[float], rows: int = 4) -> None:
        self.p, self.rows = np.array(p), rows

    def predict_proba(self, x: Any) -> Any:
        p = self.p if len(x) == self.rows else np.full(len(x), 0.5)
        return np.column_stack([1.0 - p, p])


def test_scores_are_clipped_to_0_1_and_a_non_number_is_refused():
    meta = ModelMetadata("odd", "live", TRANSACTION_FEATURES)
    rows = np.zeros((4, len(TRANSACTION_FEATURES)))

    scores = RiskModel(_Answers([-0.5, 0.25, 1.0, 7.0]), meta).score(rows)

    assert scores.tolist() == [0.0, 0.25, 1.0, 1.0]
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="returned a score that is not a number"):
            RiskModel(_Answers([0.5, bad, 0.5, 0.5]), meta).score(rows)
    with pytest.raises(ValueError, match=r"predict_proba returned shape \(3, 2\)"):
        RiskModel(_Answers([0.5, 0.5, 0.5]), meta).score(rows)


def test_what_training_computes_is_what_the_running_pipeline_computes():
    # No train/serve skew: replay a world for training, run the same world through the
    # pipeline (one payment per step, so each twin is current), and the twin model scores
    # each payment the same from the features training computed for it.
    world = {"transactions": 1200, "customers": 40, "seed": 21}
    live = train(TrainingConfig(path="live", **world), build_dataset(**world))
    dataset = build_dataset(**world, live=live)
    twin_model = train(TrainingConfig(path="simulation", **world), dataset)
    requests = [
        r for r, _ in TrafficGenerator(customers=40, seed=21).labelled(world["transactions"])
    ]
    with Pipeline(
        MemoryBus(),
        MemoryTwinStore(),
        seed=21,
        batch_size=1,
        live_model=live,
        twin_model=twin_model,
    ) as pipeline:
        for request in requests:
            pipeline.submit(request)
            pipeline.drain()
        bus = pipeline.bus
    served = {
        decode_outcome(m.value).transaction_id: decode_outcome(m.value).score
        for m in bus.messages(SIMULATION_OUTCOME)
    }
    trained = twin_model.score(
        dataset.features[:, [FEATURES.index(n) for n in twin_model.features]]
    )
    ids = [t.transaction_id for t in dataset.transactions]
    assert len(served) == len(ids)
    np.testing.assert_allclose([served[i] for i in ids], trained, rtol=0, atol=1e-12)


def test_loading_refuses_malformed_metadata_and_an_unfitted_estimator(tmp_path: Path):
    joblib.dump({"format": "corepay-model/1", "metadata": ["not", "a", "mapping"]}, tmp_path / "m")
    with pytest.raises(ConfigurationError, match="metadata is malformed"):
        load_model(tmp_path / "m")
    unfitted = {
        "format": "corepay-model/1",
        "metadata": ModelMetadata("raw", "live", TRANSACTION_FEATURES).to_json(),
        "estimator": LogisticRegression(),
    }
    joblib.dump(unfitted, tmp_path / "u")
    with pytest.raises(ConfigurationError, match="could not score"):
        load_model(tmp_path / "u")
