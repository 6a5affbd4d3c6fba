"""The garbage collector's settings for long runs (corepay.heap)."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import pytest

from corepay import heap
from corepay.demo import run_demo
from corepay.training import default_model


def _generational() -> bool:
    """Whether this CPython's collector has an oldest-generation threshold to space out."""
    before = gc.get_threshold()
    try:
        gc.set_threshold(before[0], before[1], 17)
        return gc.get_threshold()[2] == 17
    finally:
        gc.set_threshold(*before)


pytestmark = pytest.mark.skipif(
    not _generational(), reason="this CPython's collector is incremental: nothing to space out"
)


@pytest.fixture
def thresholds():
    before = gc.get_threshold()
    yield before
    gc.set_threshold(*before)


def test_full_collections_are_spaced_within_the_block_and_restored_after(thresholds) -> None:
    gc.set_threshold(700, 10, 10)
    with heap.fewer_full_collections(250):
        # The middle generation after every young collection; a full one every 250 of them.
        assert gc.get_threshold() == (700, 1, 250)
    assert gc.get_threshold() == (700, 10, 10)


def test_the_thresholds_are_restored_when_the_block_fails(thresholds) -> None:
    gc.set_threshold(500, 7, 10)
    with pytest.raises(RuntimeError), heap.fewer_full_collections():
        raise RuntimeError("the run broke")
    assert gc.get_threshold() == (500, 7, 10)


def test_a_change_made_within_the_block_stands(thresholds) -> None:
    gc.set_threshold(700, 10, 10)
    with heap.fewer_full_collections(100):
        gc.set_threshold(2000, 10, 50)
    assert gc.get_threshold() == (2000, 10, 50)


def test_the_young_threshold_changed_within_the_block_is_kept(thresholds) -> None:
    gc.set_threshold(700, 10, 10)
    with heap.fewer_full_collections(300):
        gc.set_threshold(5000, *gc.get_threshold()[1:])
    assert gc.get_threshold() == (5000, 10, 10)


def test_overlapping_blocks_leave_the_process_as_it_was(thresholds) -> None:
    # Two runs in two threads, the first finishing first: neither leaves its setting behind.
    gc.set_threshold(700, 10, 10)
    first, second = heap.fewer_full_collections(100), heap.fewer_full_collections(100)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    second.__exit__(None, None, None)
    assert gc.get_threshold() == (700, 10, 10)


def test_nested_blocks_restore_in_turn(thresholds) -> None:
    gc.set_threshold(700, 10, 10)
    with heap.fewer_full_collections(200):
        with heap.fewer_full_collections(300):
            assert gc.get_threshold() == (700, 1, 300)
        assert gc.get_threshold() == (700, 1, 200)
    assert gc.get_threshold() == (700, 10, 10)


def test_a_process_that_collects_fully_less_often_already_is_left_so(thresholds) -> None:
    gc.set_threshold(700, 10, 1000)  # a full collection every 10,000 young ones
    with heap.fewer_full_collections(1000):
        assert gc.get_threshold() == (700, 1, 10_000)


def test_the_demo_runs_with_full_collections_spaced(thresholds) -> None:
    gc.set_threshold(700, 10, 10)
    seen: list[tuple[int, int, int]] = []
    run_demo(
        transactions=200,
        customers=10,
        progress=lambda _n: seen.append(gc.get_threshold()),
        live_model=default_model("live"),
        twin_model=default_model("simulation"),
    )
    assert seen and all(t == (700, 1, heap.FULL_COLLECTION_INTERVAL) for t in seen)
    assert gc.get_threshold() == (700, 10, 10)


def test_a_settled_service_has_its_heap_frozen_and_full_collections_spaced() -> None:
    # In a process of its own: a frozen heap stays frozen for the rest of the process.
    code = (
        "import gc, json; gc.set_threshold(700, 10, 10); from corepay import heap; "
        "heap.settle(); print(json.dumps([gc.get_threshold(), gc.get_freeze_count()]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    threshold, frozen = json.loads(out.stdout)
    assert threshold == [700, 1, heap.FULL_COLLECTION_INTERVAL]
    assert frozen > 1000
