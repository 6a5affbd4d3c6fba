"""The ``corepay`` command line."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from corepay import __version__
from corepay.errors import CorepayError
from corepay.settings import Settings

__all__ = ["main"]


class _Group(click.Group):
    """Turns CorePay's own errors into a one-line message and exit status 1, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CorepayError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="corepay")
def main() -> None:
    """CorePay: shadow-test payment decisions against customers' digital twins."""


@main.command()
@click.option(
    "--transactions",
    "-n",
    default=5000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Payments to generate.",
)
@click.option(
    "--customers",
    "-c",
    default=200,
    show_default=True,
    type=click.IntRange(min=1),
    help="Customers to generate.",
)
@click.option(
    "--seed",
    "-s",
    default=0,
    show_default=True,
    type=int,
    help="Same seed, same decisions and divergences.",
)
@click.option(
    "--batch-size",
    default=500,
    show_default=True,
    type=click.IntRange(min=1),
    help="Messages each service handles per step.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write every topic and the final twins as JSON Lines into this folder.",
)
def demo(
    transactions: int, customers: int, seed: int, batch_size: int, as_json: bool, out: Path | None
) -> None:
    """Run the whole pipeline in one process on generated traffic, and summarize it."""
    from corepay.demo import run_demo

    with _progress(transactions) as progress:
        summary = run_demo(
            transactions=transactions,
            customers=customers,
            seed=seed,
            batch_size=batch_size,
            out=out,
            progress=progress,
        )
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
    else:
        click.echo(_render(summary))
    if out is not None and not as_json:
        click.echo(f"\nwrote every topic and twins.jsonl to {out}/")


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal; elsewhere (logs, CI) a line at every tenth of the way."""
    if sys.stderr.isatty():
        with click.progressbar(
            length=total, label="transactions", file=sys.stderr, show_pos=True
        ) as bar:
            yield bar.update
        return
    done = 0
    step = max(total // 10, 1)

    def update(n: int) -> None:
        nonlocal done
        before, done = done, done + n
        if done // step > before // step or done == total:
            click.echo(f"transactions {done:,}/{total:,}", err=True)

    yield update


def _table(title: str, counts: dict[str, int], total: int) -> list[str]:
    lines = [f"{title}:"]
    for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        share = 100.0 * n / total if total else 0.0
        lines.append(f"  {name:<22}{n:>9,}  {share:5.1f}%")
    if not counts:
        lines.append("  (none)")
    return lines


def _render(s: dict[str, Any]) -> str:
    n = s["transactions"]
    lines = [
        "",
        f"CorePay demo  seed {s['seed']}, {s['customers']:,} customers",
        f"  transactions accepted {n:>9,}",
        f"  requests rejected     {s['rejected']:>9,}  (malformed on purpose: "
        + (", ".join(f"{k} {v}" for k, v in s["rejected_by_field"].items()) or "none")
        + ")",
        f"  live outcomes         {s['live_outcomes']:>9,}",
        f"  simulation outcomes   {s['simulation_outcomes']:>9,}",
        f"  twins                 {s['twins']:>9,}",
        f"  unpaired              {s['unpaired']:>9,}",
        "",
    ]
    lines += _table("live decisions", s["decisions"]["live"], n)
    lines += _table("simulation decisions", s["decisions"]["simulation"], n)
    lines += [
        f"divergences: {s['divergences']:,} ({100.0 * s['divergences'] / n:.1f}%)"
        if n
        else "divergences: 0"
    ]
    lines += _table("divergences by kind", s["divergences_by_kind"], s["divergences"])[1:]
    lat = s["latency_ms"]
    lines += [
        "",
        f"throughput  {s['throughput_tps']:,.0f} transactions/s  ({s['elapsed_s']:.2f} s)",
        f"latency     ingestion -> verdict  p50 {lat['p50']:.2f} ms  p99 {lat['p99']:.2f} ms",
    ]
    if s["dead_letters"]:
        lines.append(f"dead letters: {s['dead_letters']}")
    return "\n".join(lines)


@main.command()
@click.argument("service", type=click.Choice(["ingestion", "engine", "twin", "detector"]))
@click.option(
    "--bus", "bus_url", help="Bus URL (env COREPAY_BUS_URL), e.g. kafka://127.0.0.1:9092."
)
@click.option("--store", "store_url", help="Twin store URL (env COREPAY_STORE_URL).")
@click.option("--twin-url", help="Twin service URL for the engine (env COREPAY_TWIN_URL).")
@click.option("--host", help="Address to listen on (env COREPAY_HOST) [default: 127.0.0.1].")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    help="Port to listen on (env COREPAY_PORT) [ingestion 8080, twin 8081].",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Log level (env COREPAY_LOG_LEVEL) [default: INFO].",
)
def serve(service: str, **options: Any) -> None:
    """Run one service until SIGTERM: ingestion, engine, twin or detector."""
    from corepay.services.serve import serve as run

    settings = Settings.from_env(**options)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    run(service, settings)
