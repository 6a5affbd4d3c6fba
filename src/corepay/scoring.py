"""The decision policy: risk scores become decisions, with reason codes. Pure.

A score at or above ``Thresholds.decline`` is declined (``HIGH_RISK_SCORE``), at or above
``Thresholds.review`` held for review (``ELEVATED_RISK_SCORE``), and approved below. A payment
that is not approved also carries the codes of the features that explain it, whichever model
scored it:

=======================  ========================================================
``AMOUNT_ANOMALY``       ten times the customer's mean, or 4 deviations above it
``NEW_COUNTRY``          a country the customer never paid from (customers with history)
``NEW_MERCHANT``         a merchant the customer never paid (customers with history)
``VELOCITY``             3+ payments in the last 10 minutes, or 5+ in the last hour
``HIGH_DECLINE_RATE``    30% or more of the customer's payments were declined
``NO_HISTORY``           the customer's twin holds fewer than 3 payments
``CARD_TESTING_AMOUNT``  under 3 euro
``HIGH_RISK_MERCHANT``   a high-risk merchant category
``CROSS_BORDER``         the currency is not the country's own
``LARGE_AMOUNT``         1,000 euro or more
``NIGHT``                between 0:00 and 5:59 local time
=======================  ========================================================

The live path adds the gateway's own codes (``GATEWAY_DECLINED`` with the issuer's code,
``GATEWAY_TIMEOUT``, ``GATEWAY_UNAVAILABLE``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import numpy as np

from corepay.models import Decision

__all__ = ["REASON_RULES", "DecisionPolicy", "Thresholds"]


@attrs.frozen
class Thresholds:
    """Scores at or above ``decline`` are declined; at or above ``review``, held for review."""

    review: float = 0.5
    decline: float = 0.8

    def __attrs_post_init__(self) -> None:
        if not (
            math.isfinite(self.review)
            and math.isfinite(self.decline)
            and 0.0 < self.review <= self.decline <= 1.0
        ):
            raise ValueError(
                f"thresholds must satisfy 0 < review <= decline <= 1, "
                f"got review={self.review}, decline={self.decline}"
            )

    def decide(self, score: float) -> tuple[Decision, tuple[str, ...]]:
        """The decision for one score, with its score reason code."""
        if score >= self.decline:
            return Decision.DECLINE, ("HIGH_RISK_SCORE",)
        if score >= self.review:
            return Decision.REVIEW, ("ELEVATED_RISK_SCORE",)
        return Decision.APPROVE, ()


#: (feature, value at or above which it explains a non-approval, reason code), in the order
#: codes are listed on an outcome.
REASON_RULES: tuple[tuple[str, float, str], ...] = (
    ("amount_ratio", 1.0, "AMOUNT_ANOMALY"),
    ("amount_zscore", 4.0, "AMOUNT_ANOMALY"),
    ("new_country", 1.0, "NEW_COUNTRY"),
    ("new_merchant", 1.0, "NEW_MERCHANT"),
    ("velocity_10m", 3.0, "VELOCITY"),
    ("velocity_1h", 5.0, "VELOCITY"),
    ("decline_rate", 0.3, "HIGH_DECLINE_RATE"),
    ("thin_history", 1.0, "NO_HISTORY"),
    ("tiny_amount", 1.0, "CARD_TESTING_AMOUNT"),
    ("high_risk_mcc", 1.0, "HIGH_RISK_MERCHANT"),
    ("cross_border", 1.0, "CROSS_BORDER"),
    ("log_amount", 3.0, "LARGE_AMOUNT"),
    ("night", 1.0, "NIGHT"),
)
# Novelty means nothing for a customer without history: everything is new to them.
_NOVELTY = frozenset({"NEW_COUNTRY", "NEW_MERCHANT"})


@attrs.frozen
class DecisionPolicy:
    """Turns a batch of scores, and the features they came from, into decisions and reasons."""

    thresholds: Thresholds = Thresholds()

    def decide(
        self, scores: np.ndarray, features: np.ndarray, names: Sequence[str]
    ) -> list[tuple[Decision, tuple[str, ...]]]:
        """One ``(decision, reasons)`` per score; ``features`` has one column per name."""
        if features.shape != (len(scores), len(names)):
            raise ValueError(
                f"features of shape {features.shape} do not match {len(scores)} scores "
                f"and {len(names)} feature names"
            )
        column = {n: i for i, n in enumerate(names)}
        rules = [(column[f], v, code) for f, v, code in REASON_RULES if f in column]
        thin_at = column.get("thin_history")
        decided: list[tuple[Decision, tuple[str, ...]]] = []
        fired: list[list[bool]] | None = None  # per row, whether each rule fired: when needed
        thresholds = self.thresholds
        below = thresholds.review if type(thresholds) is Thresholds else -math.inf
        approved = (Decision.APPROVE, ())  # most payments: one tuple for all of them
        for i, score in enumerate(scores.tolist()):
            if score < below:
                decided.append(approved)
                continue
            decision, reasons = thresholds.decide(score)
            if decision is not Decision.APPROVE:
                if fired is None:  # every rule over the whole batch at once
                    at = [c for c, _, _ in rules]
                    fired = (features[:, at] >= np.array([v for _, v, _ in rules])).tolist()
                thin = thin_at is not None and features[i, thin_at] >= 1.0
                codes: list[str] = []
                for hit, (_, _, code) in zip(fired[i], rules, strict=True):
                    if hit and code not in codes:
                        if thin and code in _NOVELTY:
                            continue
                        codes.append(code)
                reasons += tuple(codes)
            decided.append((decision, reasons))
        return decided
