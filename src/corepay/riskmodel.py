"""Risk models: what scores a payment, the metadata that travels with it, and its file format.

A model file is written with joblib and holds the fitted estimator together with its
:class:`ModelMetadata`: version, which path it is for, the feature names in order, the decision
thresholds, how it was trained and its held-out metrics. Loading checks all of it and refuses
a model that CorePay could not feed correctly, with an error saying why.

Any estimator with ``predict_proba`` plugs in (a scikit-learn pipeline, say): save it with
:func:`save_model`, naming the features it was fitted on. CorePay's own estimator is
:class:`LogisticRegression`, fitted by ``corepay train``.

Model files are pickles: load only files you trust, as with any joblib or pickle file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import joblib
import numpy as np

from corepay.errors import ConfigurationError
from corepay.features import FEATURES, TRANSACTION_FEATURES, check_features, feature_matrix
from corepay.models import Transaction, Twin
from corepay.scoring import Thresholds

__all__ = [
    "FORMAT",
    "LogisticRegression",
    "ModelMetadata",
    "RiskModel",
    "load_model",
    "save_model",
]

#: What a CorePay model file says it is; a file without it is not loaded as one.
FORMAT = "corepay-model/1"
PATHS = ("live", "simulation")
#: The features each path can give a model: the live path decides from the request alone.
PATH_FEATURES: Mapping[str, tuple[str, ...]] = {
    "live": TRANSACTION_FEATURES,
    "simulation": FEATURES,
}


class Estimator(Protocol):
    def predict_proba(self, x: Any) -> Any: ...


class LogisticRegression:
    """L2-regularised logistic regression on standardised features, fitted by Newton's method.

    Deterministic (no random initialisation) and exact to convergence; the scikit-learn
    estimator interface in the parts CorePay uses: ``fit``, ``predict_proba``,
    ``n_features_in_``, ``coef_``, ``intercept_``.
    """

    def __init__(self, *, l2: float = 1.0, max_iter: int = 50, tol: float = 1e-9) -> None:
        self.l2 = l2
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, x: np.ndarray, y: np.ndarray) -> LogisticRegression:
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.ndim != 2 or y.shape != (x.shape[0],):
            raise ValueError(
                f"fit needs x of shape (n, k) and y of shape (n,), got {x.shape}, {y.shape}"
            )
        if not np.isin(y, (0.0, 1.0)).all() or y.min() == y.max():
            raise ValueError("labels must be 0 and 1, with both present")
        self.mean_ = x.mean(axis=0)
        scale = x.std(axis=0)
        self.scale_ = np.where(scale > 0, scale, 1.0)
        z = np.hstack([np.ones((x.shape[0], 1)), (x - self.mean_) / self.scale_])
        penalty = np.full(z.shape[1], self.l2)
        penalty[0] = 0.0  # the intercept is not shrunk
        w = np.zeros(z.shape[1])
        w[0] = np.log(y.mean() / (1.0 - y.mean()))

        def loss(w: np.ndarray) -> float:
            logits = z @ w
            # log(1 + e^t) - y t, computed without overflow; plus the ridge penalty.
            nll = np.logaddexp(0.0, logits) - y * logits
            return float(nll.sum() + 0.5 * (penalty * w * w).sum())

        current = loss(w)
        iteration = 0
        while iteration < self.max_iter:
            iteration += 1
            p = _sigmoid(z @ w)
            gradient = z.T @ (p - y) + penalty * w
            hessian = (z * (p * (1.0 - p))[:, None]).T @ z + np.diag(penalty + 1e-9)
            step = np.linalg.solve(hessian, gradient)
            # Newton step, halved until the loss goes down (near-separable data overshoots).
            scale = 1.0
            candidate = loss(w - step)
            while candidate > current and scale > 1e-6:
                scale /= 2.0
                candidate = loss(w - scale * step)
            if candidate > current:
                break  # no step lowers the loss: converged as far as floats allow
            w = w - scale * step
            improvement, current = current - candidate, candidate
            if float(np.max(np.abs(scale * step))) < self.tol or improvement < self.tol:
                break
        self.n_iter_ = iteration
        self.n_features_in_ = x.shape[1]
        self.intercept_ = float(w[0])
        self.coef_ = w[1:].copy()
        return self

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        logits: np.ndarray = ((x - self.mean_) / self.scale_) @ self.coef_ + self.intercept_
        return logits

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        p = _sigmoid(self.decision_function(x))
        return np.column_stack([1.0 - p, p])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # (np.minimum/np.maximum: np.clip's Python wrapper costs more than the clipping itself
    # on a batch of a few dozen rows, the engine's smallest.)
    out: np.ndarray = 1.0 / (1.0 + np.exp(-np.minimum(np.maximum(z, -500.0), 500.0)))
    return out


def _names(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(names)


@attrs.frozen
class ModelMetadata:
    """What a model is and how it was made; saved with it and checked on load.

    Attributes:
        version: stamped on every outcome the model decides.
        path: ``live`` or ``simulation``: the path whose features it uses.
        features: the feature names, in the column order the estimator was fitted on.
        thresholds: the decision thresholds chosen with it.
        training: how it was trained (seed, transactions, customers, ...); free-form.
        metrics: held-out metrics (``roc_auc``, ``precision``, ``recall``, ...).
    """

    version: str
    path: str
    features: tuple[str, ...] = attrs.field(converter=_names)
    thresholds: Thresholds = Thresholds()
    training: Mapping[str, Any] = attrs.field(factory=dict)
    metrics: Mapping[str, Any] = attrs.field(factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "path": self.path,
            "features": list(self.features),
            "thresholds": {"review": self.thresholds.review, "decline": self.thresholds.decline},
            "training": dict(self.training),
            "metrics": dict(self.metrics),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelMetadata:
        if not isinstance(data, Mapping):
            raise ConfigurationError(
                f"model metadata is malformed: a mapping is expected, not {type(data).__name__}"
            )
        try:
            thresholds = data.get("thresholds") or {}
            return cls(
                version=str(data["version"]),
                path=str(data["path"]),
                features=tuple(data["features"]),
                thresholds=Thresholds(
                    float(thresholds.get("review", 0.5)), float(thresholds.get("decline", 0.8))
                ),
                training=dict(data.get("training") or {}),
                metrics=dict(data.get("metrics") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"model metadata is malformed: {exc}") from None


class RiskModel:
    """A fitted estimator with its metadata: scores a batch of payments in one go.

    Raises:
        ConfigurationError: the metadata and the estimator do not fit together, or the model
            uses features its path cannot provide.
    """

    def __init__(self, estimator: Estimator, metadata: ModelMetadata) -> None:
        if not callable(getattr(estimator, "predict_proba", None)):
            raise ConfigurationError(
                f"model {metadata.version}: {type(estimator).__name__} has no predict_proba"
            )
        if metadata.path not in PATHS:
            raise ConfigurationError(
                f"model {metadata.version} is for path {metadata.path!r}; "
                f"a model is for one of {list(PATHS)}"
            )
        try:
            check_features(metadata.features, allowed=PATH_FEATURES[metadata.path])
        except ConfigurationError as exc:
            raise ConfigurationError(
                f"model {metadata.version} ({metadata.path} path) does not fit: {exc}"
            ) from None
        expected = getattr(estimator, "n_features_in_", None)
        if expected is not None and int(expected) != len(metadata.features):
            raise ConfigurationError(
                f"model {metadata.version}: the estimator was fitted on {expected} features "
                f"but the metadata names {len(metadata.features)}: {list(metadata.features)}"
            )
        fitted_names = getattr(estimator, "feature_names_in_", None)
        if fitted_names is not None and tuple(fitted_names) != metadata.features:
            raise ConfigurationError(
                f"model {metadata.version}: the estimator was fitted on features "
                f"{list(fitted_names)}, the metadata names {list(metadata.features)}"
            )
        self.estimator = estimator
        self.metadata = metadata
        try:  # an estimator that cannot score one row now would fail every batch later
            self.score(np.zeros((1, len(metadata.features))))
        except Exception as exc:
            raise ConfigurationError(
                f"model {metadata.version} could not score a row of {len(metadata.features)} "
                f"features: {type(exc).__name__}: {exc}"
            ) from None

    @property
    def version(self) -> str:
        return self.metadata.version

    @property
    def features(self) -> tuple[str, ...]:
        return self.metadata.features

    @property
    def thresholds(self) -> Thresholds:
        return self.metadata.thresholds

    def features_of(
        self, txns: Sequence[Transaction], twins: Mapping[str, Twin] | None = None
    ) -> np.ndarray:
        """The model's feature matrix for a batch."""
        return feature_matrix(txns, twins, self.features)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Risk in [0, 1], one per row of ``features`` (columns in :attr:`features` order)."""
        if features.ndim != 2 or features.shape[1] != len(self.features):
            raise ValueError(
                f"model {self.version} expects {len(self.features)} feature columns, "
                f"got shape {features.shape}"
            )
        if not len(features):
            return np.zeros(0)
        proba = np.asarray(self.estimator.predict_proba(features), dtype=np.float64)
        if proba.ndim != 2 or proba.shape[0] != len(features) or proba.shape[1] < 2:
            raise ValueError(
                f"model {self.version}: predict_proba returned shape {proba.shape} "
                f"for {len(features)} rows; expected ({len(features)}, 2)"
            )
        scores = proba[:, 1]
        if not np.logical_and.reduce(np.isfinite(scores)):
            raise ValueError(f"model {self.version} returned a score that is not a number")
        clipped: np.ndarray = np.minimum(np.maximum(scores, 0.0), 1.0)
        return clipped

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model with joblib; returns the path written."""
        return save_model(self.estimator, path, self.metadata)

    def __repr__(self) -> str:
        meta = self.metadata
        return f"RiskModel({meta.version!r}, path={meta.path!r}, features={len(meta.features)})"


def save_model(estimator: Estimator, path: str | os.PathLike[str], metadata: ModelMetadata) -> Path:
    """Save any estimator with ``predict_proba`` as a CorePay model file.

    The metadata is checked first (:class:`RiskModel`), so what is saved can be loaded.
    The file is written next to its destination and renamed into place.
    """
    RiskModel(estimator, metadata)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    joblib.dump({"format": FORMAT, "metadata": metadata.to_json(), "estimator": estimator}, partial)
    os.replace(partial, target)
    return target


def load_model(path: str | os.PathLike[str], *, for_path: str | None = None) -> RiskModel:
    """Load a model file written by :func:`save_model` (or ``corepay train``).

    Args:
        for_path: when given (``live`` or ``simulation``), refuse a model made for the other.

    Raises:
        ConfigurationError: the file is missing, not a CorePay model, or does not fit.
    """
    source = Path(path)
    if not source.is_file():
        raise ConfigurationError(f"model file {source} does not exist")
    try:
        content = joblib.load(source)
    except Exception as exc:  # unpickling can raise almost anything
        raise ConfigurationError(
            f"model file {source} could not be read: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise ConfigurationError(
            f"{source} is not a CorePay model file (expected format {FORMAT}); save an "
            "estimator with corepay.riskmodel.save_model to give it the metadata it needs"
        )
    metadata = ModelMetadata.from_json(content.get("metadata") or {})
    if for_path is not None and metadata.path != for_path:
        raise ConfigurationError(
            f"model {metadata.version} in {source} is for the {metadata.path} path, "
            f"not the {for_path} path"
        )
    estimator: Estimator = content.get("estimator")  # type: ignore[assignment]
    return RiskModel(estimator, metadata)
