"""A bounded memory of the most recent keys, first in, first out."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar, overload

__all__ = ["Recent"]

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")


class Recent(Generic[K, V]):
    """A dict-like memory of the ``size`` keys first set most recently; the oldest go first.

    Setting a key again changes its value but not its place. Safe to share between threads.
    Every operation is O(1): a dict whose oldest key is deleted one at a time
    (``del d[next(iter(d))]``) slows down as it grows, because CPython finds the first key by
    scanning past every slot deleted before it. Kept at 100,000 ids that is about 25 us per id
    added, and ten times that at a million.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self._values: dict[K, V] = {}
        self._order: deque[K] = deque()
        self._lock = threading.Lock()

    def __setitem__(self, key: K, value: V) -> None:
        # Reads are one dict lookup each; a write is several steps, which threads must not
        # interleave (a key set again while it is let go would stay for good).
        with self._lock:
            if key not in self._values:
                self._order.append(key)
                if len(self._order) > self.size:
                    del self._values[self._order.popleft()]
            self._values[key] = value

    def __getitem__(self, key: K) -> V:
        return self._values[key]

    @overload
    def get(self, key: K) -> V | None: ...
    @overload
    def get(self, key: K, default: D) -> V | D: ...
    def get(self, key: K, default: object = None) -> object:
        return self._values.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._order.clear()

    def __iter__(self) -> Iterator[K]:
        """Oldest first (while no other thread sets a key)."""
        return iter(self._values)
