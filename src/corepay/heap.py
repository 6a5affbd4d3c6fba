"""The garbage collector's settings for CorePay's long runs: the services and in-process runs.

CPython collects its youngest objects often and cheaply, and now and then walks every tracked
object in the process (a full collection). Twins are immutable values, so every payment
replaces one, and the survivors fill the oldest generation fast: at CPython's default pace a
full collection came every 3,000-4,000 payments of an in-process run. Each walks every twin in
memory, every field of every history entry (about 75 ms for 10,000 customers in a memory twin
store on the 2-core machine the benchmarks run on), and everything else the run keeps, such as
the memory bus's log: 120-290 ms each, a sixth of the run's time, and its p99 latency.

These settings are the process's own, shared by every thread. On a CPython whose collector
is incremental (no full collections to space out; ``gc.get_threshold()[2]`` is then always 0)
they change nothing.
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


def _spaced(interval: int) -> tuple[int, int]:
    """Space full collections out to ``interval``; the oldest threshold before and after."""
    young, middle, oldest = gc.get_threshold()
    spaced = max(oldest, interval)
    gc.set_threshold(young, middle, spaced)
    return oldest, spaced


@contextlib.contextmanager
def fewer_full_collections(interval: int = FULL_COLLECTION_INTERVAL) -> Iterator[None]:
    """Within the block, a full collection at most every ``interval`` middle-generation
    collections (CPython: 10; a process that already has more keeps its own).

    For long in-process runs (:func:`corepay.demo.run_demo` uses it). On the way out the
    oldest generation's threshold is put back, unless something else changed it meanwhile,
    which then stands; the young thresholds are never touched. Garbage that is not in a
    reference cycle is freed as soon as it is dropped, whatever this says; cycles that live
    long enough to reach the oldest generation wait longer to be freed.
    """
    before, spaced = _spaced(interval)
    try:
        yield
    finally:
        young, middle, oldest = gc.get_threshold()
        if oldest == spaced:
            gc.set_threshold(young, middle, before)


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
