"""The garbage collector's settings for CorePay's long runs: the services and in-process runs.

CPython collects its youngest objects often and cheaply, and now and then walks every tracked
object in the process (a full collection). Twins are immutable values, so every payment
replaces one: a full collection comes round often and walks every twin in memory, every field
of every history entry. With 10,000 customers in a memory twin store that is 75-150 ms on the
2-core machine the benchmarks run on; at CPython's default pace it ran every 3,000-4,000
payments and took about a sixth of an in-process run's time and set its p99 latency.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Iterator

__all__ = ["FULL_COLLECTION_INTERVAL", "fewer_full_collections", "settle"]

log = logging.getLogger(__name__)

#: Collections of the middle generation between two full ones (CPython's default is 10).
#: Young collections, which find the reference cycles a run makes, go on as often as before.
FULL_COLLECTION_INTERVAL = 100


def _spaced(interval: int) -> None:
    young, middle, oldest = gc.get_threshold()
    gc.set_threshold(young, middle, max(oldest, interval))


@contextlib.contextmanager
def fewer_full_collections(interval: int = FULL_COLLECTION_INTERVAL) -> Iterator[None]:
    """Within the block, a full collection at most every ``interval`` middle-generation
    collections (CPython: 10); the thresholds the process had are restored on the way out.

    For long in-process runs (:func:`corepay.demo.run_demo` uses it). Garbage that is not in a
    reference cycle is freed as soon as it is dropped, whatever this says; cycles that live
    long enough to reach the oldest generation wait longer to be freed.
    """
    before = gc.get_threshold()
    _spaced(interval)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def settle(interval: int = FULL_COLLECTION_INTERVAL) -> None:
    """Move everything built so far out of the collector's way, for a service's whole life.

    A service builds its long-lived objects (modules, models, clients; the twin service its
    rebuilt twins) before its loop. Left in the collector's oldest generation, every full
    collection walks them all again: in the engine that was a 60-150 ms pause every few
    seconds under load, which each payment in flight waited out. Frozen, they are skipped.
    A frozen object is still freed when its last reference goes; only a reference cycle among
    frozen objects is never collected, and these long-lived ones form none that is ever
    dropped. Full collections are spaced out as in :func:`fewer_full_collections`.
    """
    gc.collect()
    gc.freeze()
    _spaced(interval)
    log.debug(
        "%d objects frozen; collection thresholds %s", gc.get_freeze_count(), gc.get_threshold()
    )
