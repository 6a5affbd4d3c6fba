"""Risk scores and the decision policy that turns a score into a decision with reasons. Pure."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np

from corepay.models import Decision

__all__ = ["LIVE_MODEL", "TWIN_MODEL", "LogisticModel", "Thresholds"]


@attrs.frozen
class Thresholds:
    """Scores at or above ``decline`` are declined; at or above ``review``, held for review."""

    review: float = 0.5
    decline: float = 0.8

    def __attrs_post_init__(self) -> None:
        if not 0.0 < self.review <= self.decline <= 1.0:
            raise ValueError("thresholds must satisfy 0 < review <= decline <= 1")

    def decide(self, score: float) -> tuple[Decision, tuple[str, ...]]:
        if score >= self.decline:
            return Decision.DECLINE, ("HIGH_RISK_SCORE",)
        if score >= self.review:
            return Decision.REVIEW, ("ELEVATED_RISK_SCORE",)
        return Decision.APPROVE, ()


@attrs.frozen
class LogisticModel:
    """A logistic-regression scorer over named features: ``sigmoid(X @ weights + bias)``."""

    version: str
    feature_names: tuple[str, ...]
    weights: tuple[float, ...]
    bias: float

    def __attrs_post_init__(self) -> None:
        if len(self.weights) != len(self.feature_names):
            raise ValueError(
                f"model {self.version} has {len(self.weights)} weights "
                f"for {len(self.feature_names)} features"
            )

    def score(self, features: np.ndarray) -> np.ndarray:
        """Scores in [0, 1], one per row of ``features`` (columns in ``feature_names`` order)."""
        if features.ndim != 2 or features.shape[1] != len(self.feature_names):
            raise ValueError(
                f"model {self.version} expects {len(self.feature_names)} feature columns, "
                f"got shape {features.shape}"
            )
        z = features @ np.asarray(self.weights) + self.bias
        scores: np.ndarray = 1.0 / (1.0 + np.exp(-z))
        return scores

    def contributions(self, row: Sequence[float]) -> dict[str, float]:
        """Each feature's share of the logit for one row (what pushed the score up)."""
        return {n: w * x for n, w, x in zip(self.feature_names, self.weights, row, strict=True)}


#: The live path's risk model: transaction features only, as a production authorizer sees them.
LIVE_MODEL = LogisticModel(
    version="live-logit-1",
    feature_names=("log_amount", "card_not_present", "high_risk_mcc", "cross_border", "night"),
    weights=(1.15, 0.7, 1.9, 1.5, 0.6),
    bias=-5.2,
)

#: The simulation path's model: what the customer's own history says about this payment.
TWIN_MODEL = LogisticModel(
    version="twin-logit-1",
    feature_names=(
        "amount_ratio",
        "new_merchant",
        "new_country",
        "velocity_1h",
        "decline_rate",
        "thin_history",
    ),
    weights=(2.2, 0.6, 1.6, 0.45, 3.0, 0.5),
    bias=-3.6,
)
