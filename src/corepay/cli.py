"""The ``corepay`` command line."""

from __future__ import annotations

import contextlib
import json
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


def _model_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for name, path, env in (
        ("--twin-model", "simulation", "COREPAY_TWIN_MODEL"),
        ("--live-model", "live", "COREPAY_LIVE_MODEL"),
    ):
        command = click.option(
            name,
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            envvar=env,
            help=f"Model file for the {path} path (from corepay train; env {env}) "
            "[default: trained on first use].",
        )(command)
    return command


_MODEL_OPTIONS = _model_options


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
@_MODEL_OPTIONS
def demo(
    transactions: int,
    customers: int,
    seed: int,
    batch_size: int,
    as_json: bool,
    out: Path | None,
    live_model: Path | None,
    twin_model: Path | None,
) -> None:
    """Run the whole pipeline in one process on generated traffic, and summarize it.

    Without model files, both paths use the default models, trained on first use.
    """
    from corepay.demo import run_demo
    from corepay.training import model_for

    live = model_for("live", None if live_model is None else str(live_model))
    twin = model_for("simulation", None if twin_model is None else str(twin_model))
    with _progress(transactions) as progress:
        summary = run_demo(
            transactions=transactions,
            customers=customers,
            seed=seed,
            batch_size=batch_size,
            out=out,
            progress=progress,
            live_model=live,
            twin_model=twin,
        )
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
    else:
        click.echo(_render(summary))
    if out is not None and not as_json:
        click.echo(f"\nwrote every topic and twins.jsonl to {out}/")


@contextlib.contextmanager
def _progress(total: int, label: str = "transactions") -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal; elsewhere (logs, CI) a line at every tenth of the way."""
    if sys.stderr.isatty():
        with click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True) as bar:
            yield bar.update
        return
    done = 0
    step = max(total // 10, 1)

    def update(n: int) -> None:
        nonlocal done
        before, done = done, done + n
        if done // step > before // step or done == total:
            click.echo(f"{label} {done:,}/{total:,}", err=True)

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
        f"  models                live {s['models']['live']}, "
        f"simulation {s['models']['simulation']}",
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
@click.argument(
    "service", type=click.Choice(["ingestion", "engine", "twin", "detector", "gateway"])
)
@click.option(
    "--bus", "bus_url", help="Bus URL (env COREPAY_BUS_URL), e.g. kafka://127.0.0.1:9092."
)
@click.option("--store", "store_url", help="Twin store URL (env COREPAY_STORE_URL).")
@click.option("--twin-url", help="Twin service URL for the engine (env COREPAY_TWIN_URL).")
@click.option("--host", help="Address to listen on (env COREPAY_HOST) [default: 127.0.0.1].")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    help="Port to listen on (env COREPAY_PORT) [ingestion 8080, twin 8081, gateway 8082].",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Log level (env COREPAY_LOG_LEVEL) [default: INFO].",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Engine, detector: port of /healthz, /readyz and /metrics (env COREPAY_METRICS_PORT) "
    "[engine 9101, detector 9102]; the other services serve them on their own port.",
)
@click.option(
    "--log-format",
    type=click.Choice(["json", "text"]),
    help="Log lines as JSON objects or text (env COREPAY_LOG_FORMAT) [default: json].",
)
@click.option(
    "--insecure",
    is_flag=True,
    default=None,
    help="Run without COREPAY_API_KEYS (ingestion) or COREPAY_TWIN_TOKEN (engine, twin): "
    "only on a trusted machine (env COREPAY_INSECURE).",
)
@click.option(
    "--workers",
    "web_workers",
    type=click.IntRange(min=1),
    help="Ingestion: gunicorn worker processes (env COREPAY_WEB_WORKERS) [default: 1].",
)
@click.option(
    "--threads",
    "web_threads",
    type=click.IntRange(min=1),
    help="Ingestion: threads per worker (env COREPAY_WEB_THREADS) [default: 8].",
)
@click.option(
    "--gateway",
    "gateway_url",
    help="Engine: the payment gateway (env COREPAY_GATEWAY_URL): simulated://?seed=N "
    "or the http(s):// URL of a gateway [default: simulated]. Gateway service: the "
    "simulated gateway to serve [default: simulated://?seed=0&realtime=true].",
)
@click.option(
    "--live-model",
    type=click.Path(exists=True, dir_okay=False),
    help="Engine: model file for the live path (env COREPAY_LIVE_MODEL).",
)
@click.option(
    "--twin-model",
    type=click.Path(exists=True, dir_okay=False),
    help="Engine: model file for the simulation path (env COREPAY_TWIN_MODEL).",
)
def serve(service: str, **options: Any) -> None:
    """Run one service until SIGTERM: ingestion, engine, twin, detector or gateway.

    gateway serves a simulated payment gateway over HTTP, for an engine started with
    --gateway http://host:port.
    """
    from corepay.observability import configure_logging
    from corepay.services.serve import serve as run

    settings = Settings.from_env(**options)
    configure_logging(settings.log_level, settings.log_format, service=service)
    run(service, settings)


@main.command()
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to save the model (joblib).",
)
@click.option(
    "--path",
    "path",
    type=click.Choice(["live", "simulation"]),
    default="live",
    show_default=True,
    help="live: transaction features only; simulation: also the customer's twin.",
)
@click.option(
    "--seed",
    "-s",
    default=0,
    show_default=True,
    type=int,
    help="Seed of the generated world to learn from.",
)
@click.option(
    "--transactions",
    "-n",
    default=20_000,
    show_default=True,
    type=click.IntRange(min=1000),
    help="Payments to generate.",
)
@click.option(
    "--customers",
    "-c",
    default=1000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Customers to generate.",
)
@click.option(
    "--review-threshold",
    type=click.FloatRange(0, 1, min_open=True),
    help="Fix the review threshold [default: chosen on the training data].",
)
@click.option(
    "--decline-threshold",
    type=click.FloatRange(0, 1, min_open=True),
    help="Fix the decline threshold [default: chosen on the training data].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def train(
    out: Path,
    path: str,
    seed: int,
    transactions: int,
    customers: int,
    review_threshold: float | None,
    decline_threshold: float | None,
    as_json: bool,
) -> None:
    """Train a risk model on a generated world; save it and print its held-out metrics.

    The latest quarter of the generated payments is held out; thresholds are chosen on the
    rest (review: the lowest score flagging with 50% precision, decline: 90%).
    """
    from corepay.training import TrainingConfig, feature_table
    from corepay.training import train as fit

    try:
        config = TrainingConfig(
            path=path,
            seed=seed,
            transactions=transactions,
            customers=customers,
            review=review_threshold,
            decline=decline_threshold,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    try:
        model = fit(config)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    try:
        written = model.save(out)
    except OSError as exc:
        message = f"could not write the model to {out}: {exc.strerror or exc}"
        raise click.ClickException(message) from None
    meta = model.metadata
    if as_json:
        click.echo(json.dumps({**meta.to_json(), **meta.metrics, "out": str(written)}))
        return
    m = meta.metrics
    lines = [
        f"model {meta.version} ({meta.path} path) saved to {written}",
        f"trained on {meta.training['train_transactions']:,} of {transactions:,} generated "
        f"payments (seed {seed}, {customers:,} customers)",
        f"held out: the latest {m['transactions']:,} payments, {m['fraud_rate']:.1%} fraud",
        f"  ROC AUC                 {m['roc_auc']:.4f}",
        f"  review  at {meta.thresholds.review:<8.4g}  precision {m['precision']:.3f}  "
        f"recall {m['recall']:.3f}",
        f"  decline at {meta.thresholds.decline:<8.4g}  precision "
        f"{m['precision_at_decline']:.3f}  recall {m['recall_at_decline']:.3f}",
        "weights (standardised features):",
        *(f"  {name:<18}{weight:+.3f}" for name, weight in feature_table(model)),
    ]
    click.echo("\n".join(lines))


@main.command()
@click.option(
    "--count",
    "-n",
    default=1000,
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
    "--seed", "-s", default=0, show_default=True, type=int, help="Same seed, same payments."
)
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Write the payments as JSON Lines here ('-': standard output).",
)
@click.option(
    "--labels",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write each payment's label (transaction_id, is_fraud, pattern) here.",
)
@click.option(
    "--to",
    "target",
    help="Also send them: http(s)://host:port (the ingestion API) or a bus URL "
    "such as kafka://127.0.0.1:9092.",
)
@click.option(
    "--api-key",
    envvar="COREPAY_API_KEY",
    help="API key for --to http(s)://... (env COREPAY_API_KEY).",
)
def generate(
    count: int,
    customers: int,
    seed: int,
    out: Path | None,
    labels: Path | None,
    target: str | None,
    api_key: str | None,
) -> None:
    """Generate a synthetic payments world with labelled fraud.

    Each line of --out is a wire-format transaction the ingestion API accepts as is.
    """
    from corepay.generate import generate as run

    if out is None and labels is None and target is None:
        raise click.UsageError("say where the payments go: --out, --labels and/or --to")
    with _progress(count, "sent" if target else "generated") as progress:
        report = run(
            count=count,
            customers=customers,
            seed=seed,
            out=None if out is None else str(out),
            labels=labels,
            target=target,
            progress=progress,
            api_key=api_key,
        )
    click.echo(report, err=True)


@main.command("hash-key")
@click.argument("key", required=False)
def hash_key_command(key: str | None) -> None:
    """Print the hashed form of an API key or token (sha256:<hex>) for configuration.

    Reads the key from standard input when not given, so it stays out of shell history.
    Without any key, makes a new random one and prints it, then its hashed form.
    """
    import secrets

    from corepay.auth import MIN_KEY_LENGTH, hash_key

    if key is None and not sys.stdin.isatty():
        key = sys.stdin.readline().strip() or None
    if key is None:
        key = secrets.token_urlsafe(32)
        click.echo(key)
    elif len(key) < MIN_KEY_LENGTH:
        raise click.BadParameter(f"a key has at least {MIN_KEY_LENGTH} characters")
    click.echo(hash_key(key))
