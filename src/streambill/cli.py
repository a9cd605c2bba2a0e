"""The ``streambill`` command line: one entry point per role (CONTRACT section 3)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from streambill.settings import load_settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="streambill")
def main() -> None:
    """streambill: streaming real-time prepaid billing."""
    from streambill.shutdown import exit_when_orphaned

    exit_when_orphaned()  # only in a process that `streambill up` started


@main.command()
@click.option("--workers", default=1, show_default=True, help="Worker processes to start.")
def up(workers: int) -> None:
    """Start the embedded stack: broker, worker(s), api, demo data and traffic."""
    from streambill.stack import run_up

    raise SystemExit(run_up(load_settings(), workers=workers))


@main.command()
@click.option("--web-port", type=int, default=None, help="Port of /healthz, /readyz, /metrics.")
def worker(web_port: int | None) -> None:
    """Run the Faust worker (all agents and their tables)."""
    from streambill.agents.worker import run_worker

    settings = load_settings()
    if web_port is not None:
        settings = settings.model_copy(update={"worker_port": web_port})
    raise SystemExit(run_worker(settings))


@main.command()
@click.option("--web-port", type=int, default=None, help="Port of /healthz, /readyz, /metrics.")
def ml(web_port: int | None) -> None:
    """Run the online-ML agents: fraud scores and usage forecasts (one per stack)."""
    from streambill.agents.mlworker import run_ml

    settings = load_settings()
    if web_port is not None:
        settings = settings.model_copy(update={"ml_port": web_port})
    raise SystemExit(run_ml(settings))


@main.command()
def api() -> None:
    """Run the api: REST, the ClickHouse sink and the live fan-out."""
    from streambill.api.server import run_api

    raise SystemExit(run_api(load_settings()))


@main.command()
@click.option("--customers", default=50, show_default=True, help="Demo customers to create.")
@click.option("--rate", default=20.0, show_default=True, help="Usage events per second.")
@click.option("--events", default=0, show_default=True, help="Stop after N events (0: run on).")
@click.option("--seed", default=7, show_default=True, help="Random seed (same seed, same data).")
def demo(customers: int, rate: float, events: int, seed: int) -> None:
    """Create demo customers and send synthetic usage with a progress bar."""
    from streambill.demo import run_demo

    raise SystemExit(
        run_demo(load_settings(), customers=customers, rate=rate, events=events, seed=seed)
    )


@main.command()
@click.option(
    "--events", default=200_000, show_default=True, help="Events in the throughput phase."
)
@click.option(
    "--rate", default=2000.0, show_default=True, help="Offered rate of the latency phase."
)
@click.option("--customers", default=100_000, show_default=True, help="Distinct customers.")
@click.option(
    "--topups",
    default=0,
    show_default=True,
    help="Also measure N auto top-ups (needs Stripe or localstripe configured).",
)
def bench(events: int, rate: float, customers: int, topups: int) -> None:
    """Measure the running stack; the last line printed is one JSON object."""
    from streambill.bench import run_bench

    raise SystemExit(
        run_bench(load_settings(), events=events, rate=rate, customers=customers, topups=topups)
    )


@main.command("ml-eval")
@click.option(
    "--only",
    type=click.Choice(["forecast", "fraud", "shuttle", "airline"]),
    multiple=True,
    help="Run only these evaluations (default: all).",
)
def ml_eval(only: tuple[str, ...]) -> None:
    """Prequential evaluation of the online models: one JSON line per model and dataset."""
    import orjson

    from streambill.online_ml import evaluate

    runs: dict[str, Callable[[], dict[str, Any]]] = {
        "forecast": evaluate.forecast_generated,
        "fraud": evaluate.fraud_generated,
        "shuttle": evaluate.shuttle,
        "airline": evaluate.airline_passengers,
    }
    for name, run in runs.items():
        if not only or name in only:
            click.echo(orjson.dumps(run()).decode())


@main.command("close-month")
@click.option("--month", required=True, help="YYYY-MM (in each reseller's time zone).")
@click.option("--reseller", "reseller_id", default=None, help="Only this reseller.")
@click.option("--api-url", default=None, help="The running api (default: API_HOST:API_PORT).")
def close_month(month: str, reseller_id: str | None, api_url: str | None) -> None:
    """Close a commission month: one statement per reseller (through the running api)."""
    import orjson

    from streambill.commissions.remote import AdminApi, RemoteError

    try:
        with AdminApi(load_settings(), api_url) as remote:
            result = remote.close_month(month, reseller_id)
    except RemoteError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


@main.command()
@click.option(
    "--sepa-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the run's pain.001 file here (when it made SEPA payouts).",
)
@click.option("--api-url", default=None, help="The running api (default: API_HOST:API_PORT).")
def payouts(sepa_out: Path | None, api_url: str | None) -> None:
    """Run payouts: pay resellers whose closed statements reach the minimum (through the
    running api); prints the run and optionally saves its SEPA file."""
    import orjson

    from streambill.commissions.remote import AdminApi, RemoteError

    try:
        with AdminApi(load_settings(), api_url) as remote:
            run = remote.run_payouts()
            if sepa_out is not None and run.get("file_url"):
                size = remote.download(run["file_url"], sepa_out)
                click.echo(f"pain.001 file ({size} bytes) written to {sepa_out}", err=True)
    except RemoteError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(orjson.dumps(run, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
