"""The bounded memory of recent keys the detector keeps resolved transactions in."""

from __future__ import annotations

import sys
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corepay.recent import Recent


@given(
    st.integers(1, 6),
    st.lists(st.tuples(st.integers(0, 12), st.integers()), max_size=60),
)
def test_recent_keeps_the_keys_first_set_most_recently(
    size: int, writes: list[tuple[int, int]]
) -> None:
    # The model: a dict in insertion order, cut to its newest ``size`` keys after each write.
    model: dict[int, int] = {}
    recent: Recent[int, int] = Recent(size)
    for key, value in writes:
        model[key] = value
        while len(model) > size:
            del model[next(iter(model))]
        recent[key] = value

        assert list(recent) == list(model)
        assert len(recent) == len(model)
        assert {k: recent[k] for k in recent} == model
        assert all((k in recent) == (k in model) for k in range(13))
        assert all(recent.get(k) == model.get(k) for k in range(13))
        assert recent.get(99, "none") == "none"


def test_setting_a_key_again_does_not_renew_it() -> None:
    recent: Recent[str, int] = Recent(2)
    recent["a"], recent["b"] = 1, 2
    recent["a"] = 3  # still the oldest
    recent["c"] = 4

    assert list(recent) == ["b", "c"] and "a" not in recent
    with pytest.raises(KeyError):
        recent["a"]


def test_a_recent_memory_holds_at_least_one_key() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Recent(0)


def test_threads_setting_the_same_keys_keep_it_bounded_and_consistent() -> None:
    recent: Recent[int, int] = Recent(64)
    errors: list[BaseException] = []

    def write(seed: int) -> None:
        try:
            for i in range(30_000):
                recent[i % 200] = seed  # as two readers of one message set the same keys
        except BaseException as exc:  # any failure of a writer is the finding
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        threads = [threading.Thread(target=write, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)

    assert errors == []
    assert len(recent) == len(list(recent)) == 64
    # Which 64 are kept depends on how the threads interleaved to the end (a thread a lap
    # behind the others adds keys after they finished). Consistent: what is kept is what is
    # queued to go, each once; and first in, first out from there on.
    assert sorted(recent._order) == sorted(recent._values) == sorted(set(recent))
    assert set(recent) <= set(range(200))
    for i in range(1000, 1064):
        recent[i] = -1
    assert list(recent) == list(range(1000, 1064))
