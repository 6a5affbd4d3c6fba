"""How benchmarks/run.py sums up repeated runs and judges the targets on them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmarks/ is run from a checkout, not installed
    sys.path.insert(0, str(ROOT))

from benchmarks import run  # noqa: E402


def _run(tps: float, p50: float, p99: float, batch: int = 50) -> dict[str, Any]:
    return {
        "transactions": 100_000,
        "batch_size": batch,
        "seconds": round(100_000 / tps, 2),
        "tps": tps,
        "latency_ms": {"p50": p50, "p99": p99},
        "processing_us_per_txn": round(1e6 / tps, 1),
        "divergences": 296,
    }


def test_repeated_runs_are_summed_up_by_the_median_of_each_figure() -> None:
    runs = [_run(20_500, 1.3, 1.58), _run(19_800, 1.4, 1.61), _run(21_000, 1.2, 1.50)]
    summary = run._medians(runs)
    assert summary["tps"] == 20_500
    assert summary["latency_ms"] == {"p50": 1.3, "p99": 1.58}
    assert summary["seconds"] == round(100_000 / 20_500, 2)
    assert summary["processing_us_per_txn"] == round(1e6 / 20_500, 1)
    assert summary["batch_size"] == 50 and summary["divergences"] == 296
    # Every run as it came, in the order it ran.
    assert summary["runs"] == [
        {"tps": 20_500, "p99_ms": 1.58},
        {"tps": 19_800, "p99_ms": 1.61},
        {"tps": 21_000, "p99_ms": 1.50},
    ]
    assert run._spread(summary) == "median of 3: 19,800-21,000 txn/s, p99 1.50-1.61 ms"


def test_a_single_run_is_reported_as_it_is() -> None:
    summary = run._medians([_run(20_100, 1.3, 1.6)])
    assert summary["tps"] == 20_100 and summary["latency_ms"]["p99"] == 1.6
    assert run._spread(summary) == ""


def test_the_bare_loop_has_no_latency_to_sum_up() -> None:
    bare = [
        {"transactions": 10, "batch_size": 500, "seconds": s, "tps": t}
        for s, t in [(1.0, 40_000.0), (2.0, 38_000.0)]
    ]
    summary = run._medians(bare)
    assert summary["tps"] == 39_000 and summary["seconds"] == 1.5
    assert "latency_ms" not in summary
    assert run._spread(summary) == "median of 2: 38,000-40,000 txn/s"


def _verdict(sizes: list[list[dict[str, Any]]]) -> str:
    results = {"in_process": [run._medians(runs) for runs in sizes]}
    (line,) = [x for x in run._targets(results) if x.startswith("target in process")]
    return line


def test_the_target_is_judged_on_the_medians_and_says_how_many_runs_met_it() -> None:
    line = _verdict(
        [
            [_run(23_000, 11.0, 14.0, 500)] * 3,  # faster, but its p99 is over 2 ms
            [_run(20_500, 1.3, 1.5), _run(19_900, 1.3, 1.6), _run(20_800, 1.3, 1.5)],
        ]
    )
    assert "fastest batch within that p99 20,500 txn/s, p99 1.50 ms" in line
    assert "(batch 50, medians; 2 of its 3 runs met both): met" in line


def test_a_median_under_the_rate_is_not_met_whatever_one_run_did() -> None:
    line = _verdict([[_run(19_500, 1.3, 1.5), _run(21_000, 1.3, 1.5), _run(19_900, 1.3, 1.5)]])
    assert line.endswith("1 of its 3 runs met both): NOT met")


def test_a_median_p99_over_the_target_is_not_met() -> None:
    line = _verdict([[_run(21_000, 1.3, 2.1), _run(21_000, 1.3, 1.9), _run(21_000, 1.3, 2.2)]])
    assert "no batch within that p99; fastest 21,000 txn/s, p99 2.10 ms" in line
    assert line.endswith("1 of its 3 runs met both): NOT met")


def test_repeat_must_be_at_least_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run.main(["--repeat", "0"])
    assert exited.value.code == 2
    assert "--repeat must be at least 1, not 0" in capsys.readouterr().err


def test_the_in_process_benchmarks_run_and_agree_with_each_other() -> None:
    # Small, so that the suite notices when the benchmarks no longer run against the code
    # they measure; their speed is for benchmarks.run to print, not for a test to assert.
    pipeline = run.in_process(2_000, 100, 50)
    bare = run.baseline_python(2_000, 100, 50)
    assert (pipeline["transactions"], pipeline["batch_size"]) == (2_000, 50)
    assert pipeline["tps"] > 0 and bare["tps"] > 0
    assert 0 < pipeline["latency_ms"]["p50"] <= pipeline["latency_ms"]["p99"]
    # The same payments through the pipeline and through the bare loop diverge about as
    # often (not exactly: the pipeline also tells stale twins and gateway errors apart).
    assert pipeline["divergences"] > 20
    assert abs(pipeline["divergences"] - bare["divergences"]) <= 0.1 * bare["divergences"]


def test_the_memory_benchmarks_run() -> None:
    memory = run.memory(customers=50, per_customer=20, pending=500)
    assert memory["twins"] == 50 and memory["detector_pending"] == 500
    assert 1_000 < memory["bytes_per_twin_in_memory"] < 20_000
    assert 500 < memory["bytes_per_twin_document"] < memory["bytes_per_twin_in_memory"]
    assert 200 < memory["bytes_per_pending_transaction"] < 10_000
    long_run = run.detector_long_run(1_000)
    assert long_run["pairs"] == 4_000 and long_run["us_per_pair_last"] > 0
