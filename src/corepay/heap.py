"""The garbage collector's settings for CorePay's long runs: the services and in-process runs.

CPython collects its youngest objects often and cheaply, and now and then walks every tracked
object in the process (a full collection). Twins are immutable values, so every payment
replaces one, and the survivors fill the oldest generation fast: at CPython's default pace a
full collection came every 3,000-4,000 payments of an in-process run. Each walks every twin in
memory, every field of every history entry (about 75 ms for 10,000 customers in a memory twin
store on the 2-core machine the benchmarks run on), and everything else the run keeps, such as
the memory bus's log: 120-290 ms each, a sixth of the run's time, and its p99 latency.

Between the two, CPython collects the middle generation every 10 young collections, walking
the survivors of all ten at once: in an in-process run with batches of 50, 0.4-0.5 ms once in
every 10 batches, which set the p99. Collected after every young collection instead, the same
objects are walked as often in all, a tenth as many at a time (0.13 ms).

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

#: Young collections between two full ones (CPython's default: 10 x 10 = 100). Young
#: collections, which find the reference cycles a run makes, go on as often as before.
FULL_COLLECTION_INTERVAL = 1000

_Older = tuple[int, int]  # the middle and the oldest generation's thresholds


def _spaced(interval: int) -> tuple[_Older, _Older]:
    """Collect the middle generation after every young collection and space full collections
    out to ``interval`` young ones; the older thresholds before and after."""
    young, middle, oldest = gc.get_threshold()
    if oldest == 0:  # an incremental collector: nothing to space out
        return (middle, oldest), (middle, oldest)
    # A process that already spaces full collections further apart keeps its spacing.
    spaced = (1, max(middle * oldest, interval))
    gc.set_threshold(young, *spaced)
    return (middle, oldest), spaced


@contextlib.contextmanager
def fewer_full_collections(interval: int = FULL_COLLECTION_INTERVAL) -> Iterator[None]:
    """Within the block, the middle generation is collected after every young collection,
    and a full collection comes at most every ``interval`` young collections (CPython: 100;
    a process that already has more keeps its own).

    For long in-process runs (:func:`corepay.demo.run_demo` uses it). On the way out the
    middle and oldest generations' thresholds are put back, unless something else changed
    them meanwhile, which then stands; the young threshold is never touched. Garbage that is
    not in a reference cycle is freed as soon as it is dropped, whatever this says; cycles
    that live long enough to reach the oldest generation wait longer to be freed.
    """
    before, spaced = _spaced(interval)
    try:
        yield
    finally:
        young, middle, oldest = gc.get_threshold()
        if (middle, oldest) == spaced:
            gc.set_threshold(young, *before)


def settle(interval: int = FULL_COLLECTION_INTERVAL) -> None:
    """Move everything built so far out of the collector's way, for a service's whole life.

    A service builds its long-lived objects (modules, models, clients; the twin service its
    rebuilt twins) before its loop. Left in the collector's oldest generation, every full
    collection walks them all again: in the engine that was a 60-150 ms pause every few
    seconds under load, which each payment in flight waited out. Frozen, they are skipped.
    A frozen object is still freed when its last reference goes; only a reference cycle among
    frozen objects is never collected, and these long-lived ones form none that is ever
    dropped. The older generations are collected as in :func:`fewer_full_collections`.
    """
    gc.collect()
    gc.freeze()
    _spaced(interval)
    log.debug(
        "%d objects frozen; collection thresholds %s", gc.get_freeze_count(), gc.get_threshold()
    )
