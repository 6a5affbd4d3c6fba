"""Training the risk models on the synthetic payments world, and measuring them.

:func:`build_dataset` generates a labelled world (:class:`~corepay.traffic.TrafficGenerator`)
and replays it in order the way the pipeline lives it: each payment's features are computed
from the customer's twin as it stood before the payment, then the payment's live outcome (the
simulated gateway's answer) is applied to the twin. The same feature module serves this and
the engine, so a model is scored on what it learned from.

:func:`train` fits :class:`~corepay.riskmodel.LogisticRegression` on the earlier part of the
stream and measures it on the later part (held out by time, as a model meets the future),
choosing thresholds on the training part. Everything is deterministic per seed.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import attrs
import numpy as np

from corepay.errors import CorepayError
from corepay.features import FEATURES, feature_matrix
from corepay.gateway import SimulatedGateway
from corepay.models import Decision, Transaction, Twin
from corepay.riskmodel import (
    PATH_FEATURES,
    LogisticRegression,
    ModelMetadata,
    RiskModel,
    load_model,
)
from corepay.scoring import DecisionPolicy, Thresholds
from corepay.traffic import Label, TrafficGenerator
from corepay.twin import apply_outcome, live_decision
from corepay.wire import parse_transaction

__all__ = [
    "DEFAULT_TRAINING",
    "Dataset",
    "TrainingConfig",
    "build_dataset",
    "default_model",
    "evaluate",
    "model_for",
    "roc_auc",
    "train",
]


@attrs.frozen
class TrainingConfig:
    """How a model is trained.

    Attributes:
        path: ``live`` (transaction features only) or ``simulation`` (also the twin's).
        seed: seeds the generated world (and nothing else: the fit is deterministic).
        transactions, customers: the size of the generated world.
        holdout: the share of the stream, the latest payments, kept out of training.
        l2: regularisation strength on standardised features.
        review_precision, decline_precision: thresholds are chosen as the lowest scores whose
            precision on the training part reaches these; ``review`` / ``decline`` fix them.
    """

    path: str = attrs.field(default="live", validator=attrs.validators.in_(tuple(PATH_FEATURES)))
    seed: int = 0
    transactions: int = attrs.field(default=20_000, validator=attrs.validators.ge(1000))
    customers: int = attrs.field(default=1000, validator=attrs.validators.ge(1))
    holdout: float = 0.25
    l2: float = 1.0
    review_precision: float = 0.5
    decline_precision: float = 0.9
    review: float | None = None
    decline: float | None = None

    def __attrs_post_init__(self) -> None:
        if not 0.05 <= self.holdout <= 0.5:
            raise ValueError("holdout must be between 0.05 and 0.5")
        if self.review is not None and self.decline is not None:
            Thresholds(self.review, self.decline)


#: What ``corepay demo`` and the engine use when no model file is given.
DEFAULT_TRAINING = {
    "live": TrainingConfig(path="live"),
    "simulation": TrainingConfig(path="simulation"),
}


@attrs.frozen
class Dataset:
    """A replayed world: every feature (columns in :data:`~corepay.features.FEATURES` order)."""

    transactions: tuple[Transaction, ...]
    labels: tuple[Label, ...]
    features: np.ndarray
    y: np.ndarray


def build_dataset(
    *, transactions: int, customers: int, seed: int, live: RiskModel | None = None
) -> Dataset:
    """Generate a labelled world and compute every payment's features as the engine would.

    The world is replayed in order through the live path as the pipeline runs it: ``live``
    scores each payment and its policy declines or holds the risky ones, the simulated
    gateway (seeded with ``seed``, as ``corepay demo --seed`` seeds it) authorizes the rest,
    and that decision goes into the customer's twin before their next payment. Without
    ``live`` only the gateway decides (enough to train a live model: its features do not
    depend on twins).
    """
    generator = TrafficGenerator(customers=customers, seed=seed)
    pairs = [(parse_transaction(r), label) for r, label in generator.labelled(transactions)]
    txns = [t for t, _ in pairs]
    labels = [label for _, label in pairs]
    decisions = _live_decisions(txns, SimulatedGateway(seed), live)
    twins: dict[str, Twin] = {}
    before: list[Twin | None] = []
    for txn, decision in zip(txns, decisions, strict=True):
        before.append(twins.get(txn.customer_id))
        twins[txn.customer_id] = apply_outcome(before[-1], live_decision(txn, decision, "training"))
    matrix = feature_matrix(txns, before, FEATURES)
    y = np.fromiter((label.is_fraud for label in labels), np.float64, len(labels))
    return Dataset(tuple(txns), tuple(labels), matrix, y)


def _live_decisions(
    txns: list[Transaction], gateway: SimulatedGateway, live: RiskModel | None
) -> list[Decision]:
    """What the live path decides for each payment (transaction features only: no twins)."""
    if live is None:
        policy_says = [Decision.APPROVE] * len(txns)
    else:
        matrix = live.features_of(txns)
        decided = DecisionPolicy(live.thresholds).decide(live.score(matrix), matrix, live.features)
        policy_says = [decision for decision, _ in decided]
    decisions = []
    for txn, decision in zip(txns, policy_says, strict=True):
        if decision is Decision.APPROVE:
            try:
                answer = gateway.authorize(txn)
            except CorepayError:
                decision = Decision.REVIEW
            else:
                decision = Decision.APPROVE if answer.approved else Decision.DECLINE
        decisions.append(decision)
    return decisions


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic; ties count half)."""
    positives = int(y.sum())
    negatives = len(y) - positives
    if not positives or not negatives:
        raise ValueError("ROC AUC needs both classes")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(average, counts)
    u = ranks[y == 1].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def _precision_recall(y: np.ndarray, flagged: np.ndarray) -> tuple[float, float]:
    hits = float((flagged & (y == 1)).sum())
    precision = hits / flagged.sum() if flagged.any() else 0.0
    recall = hits / y.sum() if y.any() else 0.0
    return float(precision), float(recall)


def evaluate(y: np.ndarray, scores: np.ndarray, thresholds: Thresholds) -> dict[str, float]:
    """Held-out metrics: ROC AUC, and precision and recall of what the thresholds flag.

    ``precision`` and ``recall`` count a payment as flagged when it is not approved (review or
    decline); the ``*_at_decline`` pair counts declines only.
    """
    precision, recall = _precision_recall(y, scores >= thresholds.review)
    precision_d, recall_d = _precision_recall(y, scores >= thresholds.decline)
    return {
        "roc_auc": round(roc_auc(y, scores), 4),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "precision_at_decline": round(precision_d, 4),
        "recall_at_decline": round(recall_d, 4),
        "fraud_rate": round(float(y.mean()), 4),
        "transactions": len(y),
    }


def _threshold_for(y: np.ndarray, scores: np.ndarray, precision: float) -> float | None:
    """The lowest score whose flagged set (score >= it) reaches ``precision``."""
    order = np.argsort(-scores, kind="mergesort")
    hits = np.cumsum(y[order])
    flagged = np.arange(1, len(y) + 1)
    reached = np.nonzero(hits / flagged >= precision)[0]
    if not len(reached):
        return None
    return float(scores[order][reached[-1]])


def train(config: TrainingConfig = TrainingConfig(), dataset: Dataset | None = None) -> RiskModel:
    """Fit a model for ``config.path`` on a generated world; metrics are held out by time.

    A simulation model learns from twins shaped by the live path's decisions, as in the
    running pipeline: a live model is trained on the same world first, unless ``dataset``
    (replayed by the caller) is given.
    """
    data = dataset
    if data is None:
        n, customers, seed = config.transactions, config.customers, config.seed
        data = build_dataset(transactions=n, customers=customers, seed=seed)
        if config.path == "simulation":
            live = train(attrs.evolve(config, path="live", review=None, decline=None), data)
            data = build_dataset(transactions=n, customers=customers, seed=seed, live=live)
    names = PATH_FEATURES[config.path]
    columns = [FEATURES.index(n) for n in names]
    x = data.features[:, columns]
    cut = int(len(data.y) * (1.0 - config.holdout))
    estimator = LogisticRegression(l2=config.l2).fit(x[:cut], data.y[:cut])
    fitted = estimator.predict_proba(x[:cut])[:, 1]
    review = config.review or _threshold_for(data.y[:cut], fitted, config.review_precision)
    decline = config.decline or _threshold_for(data.y[:cut], fitted, config.decline_precision)
    review = config.review or min(max(round(review or 0.5, 4), 0.01), 1.0)
    decline = config.decline or min(max(round(decline or 0.8, 4), 0.01), 1.0)
    if review > decline:
        fixed, chosen = ("review", "decline") if config.review else ("decline", "review")
        raise ValueError(
            f"the {chosen} threshold chosen from the data ({decline if config.review else review}"
            f") does not fit the {fixed} threshold given ({config.review or config.decline}): "
            "review <= decline is needed; give both thresholds"
        )
    thresholds = Thresholds(review, decline)
    held_out = estimator.predict_proba(x[cut:])[:, 1]
    metadata = ModelMetadata(
        version=f"{config.path}-logit-s{config.seed}-n{config.transactions}",
        path=config.path,
        features=names,
        thresholds=thresholds,
        training={
            "seed": config.seed,
            "transactions": config.transactions,
            "customers": config.customers,
            "train_transactions": cut,
            "holdout": config.holdout,
            "l2": config.l2,
            "estimator": "corepay.riskmodel.LogisticRegression",
            "iterations": estimator.n_iter_,
        },
        metrics=evaluate(data.y[cut:], held_out, thresholds),
    )
    return RiskModel(estimator, metadata)


@functools.cache
def _default_dataset() -> Dataset:
    config = DEFAULT_TRAINING["live"]
    return build_dataset(
        transactions=config.transactions, customers=config.customers, seed=config.seed
    )


@functools.cache
def default_model(path: str) -> RiskModel:
    """The model a path uses when none is given: trained on first use, deterministically.

    The default simulation model learns from twins shaped by the default live model.
    """
    if path == "simulation":
        config = DEFAULT_TRAINING["simulation"]
        dataset = build_dataset(
            transactions=config.transactions,
            customers=config.customers,
            seed=config.seed,
            live=default_model("live"),
        )
        return train(config, dataset)
    return train(DEFAULT_TRAINING[path], _default_dataset())


def model_for(path: str, file: str | None) -> RiskModel:
    """The model in ``file`` for ``path``, checked; the default model when ``file`` is None."""
    return load_model(file, for_path=path) if file else default_model(path)


def feature_table(model: RiskModel) -> Sequence[tuple[str, float]]:
    """The fitted weights of a :class:`LogisticRegression` model, by feature (for reports)."""
    coef = getattr(model.estimator, "coef_", None)
    if coef is None:
        return ()
    return tuple(zip(model.features, (round(float(c), 3) for c in coef), strict=True))
