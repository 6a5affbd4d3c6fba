"""Latency recording with a bounded footprint."""

from __future__ import annotations

import random

import numpy as np

__all__ = ["LatencyRecorder"]


class LatencyRecorder:
    """Keeps every sample up to ``capacity``, then a uniform reservoir sample of them all."""

    def __init__(self, capacity: int = 1_000_000, seed: int = 0) -> None:
        self.capacity = capacity
        self.count = 0
        self._samples: list[float] = []
        self._rng = random.Random(seed)

    def add(self, value: float) -> None:
        self.count += 1
        if len(self._samples) < self.capacity:
            self._samples.append(value)
            return
        slot = self._rng.randrange(self.count)
        if slot < self.capacity:
            self._samples[slot] = value

    def percentiles(self, *qs: float) -> dict[str, float]:
        """``{"p50": ..., "p99": ...}`` for ``qs=(50, 99)``; zeros before any sample."""
        names = [f"p{q:g}".replace(".", "") for q in qs]
        if not self._samples:
            return dict.fromkeys(names, 0.0)
        values = np.percentile(np.asarray(self._samples), qs)
        return {n: round(float(v), 3) for n, v in zip(names, values, strict=True)}
