"""The ``splade-es`` command group and what every command shares: connection options,
error handling (``SpladeEsError`` -> one line on stderr, exit status 2), progress display."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from .. import __version__
from ..connect import ConnectionConfig
from ..exceptions import SpladeEsError

err_console = Console(stderr=True)


def fail_cleanly(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SpladeEsError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
            sys.exit(2)

    return wrapper


def connection_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by every command that talks to a cluster. Secrets come from the
    environment or the command line and are never echoed."""
    options = [
        click.option(
            "--url",
            envvar="SPLADE_ES_URL",
            help="Cluster URL(s), comma-separated. [env: SPLADE_ES_URL]",
        ),
        click.option(
            "--cloud-id",
            envvar="SPLADE_ES_CLOUD_ID",
            help="Elastic Cloud id. [env: SPLADE_ES_CLOUD_ID]",
        ),
        click.option(
            "--api-key",
            envvar="SPLADE_ES_API_KEY",
            help="API key (encoded). [env: SPLADE_ES_API_KEY]",
        ),
        click.option(
            "--user", envvar="SPLADE_ES_USER", help="Basic-auth user. [env: SPLADE_ES_USER]"
        ),
        click.option(
            "--password",
            envvar="SPLADE_ES_PASSWORD",
            help="Basic-auth password; prefer the env var. [env: SPLADE_ES_PASSWORD]",
        ),
        click.option(
            "--ca-certs",
            envvar="SPLADE_ES_CA_CERTS",
            type=click.Path(exists=True, dir_okay=False),
            help="CA bundle to verify the cluster's certificate. [env: SPLADE_ES_CA_CERTS]",
        ),
        click.option(
            "--no-verify-certs",
            is_flag=True,
            default=False,
            help="Do not verify TLS certificates (local testing only; prints a warning).",
        ),
        click.option(
            "--engine",
            type=click.Choice(["auto", "elasticsearch", "opensearch"]),
            default="auto",
            show_default=True,
            help="Engine dialect; auto detects it from the cluster.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def connection_config(opts: dict[str, Any]) -> ConnectionConfig:
    """ConnectionConfig from the shared options (removes them from ``opts``)."""
    url, cloud_id = opts.pop("url"), opts.pop("cloud_id")
    no_verify = opts.pop("no_verify_certs")
    if no_verify:
        err_console.print("[yellow]warning:[/] TLS certificate verification is disabled")
    common = dict(
        cloud_id=cloud_id,
        api_key=opts.pop("api_key"),
        username=opts.pop("user"),
        password=opts.pop("password"),
        ca_certs=opts.pop("ca_certs"),
        verify_certs=not no_verify,
        engine=opts.pop("engine"),
    )
    return ConnectionConfig.from_urls(url or "", **common)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="splade-es")
def main() -> None:
    """SPLADE learned-sparse retrieval for Elasticsearch and OpenSearch.

    text -> encoder -> sparse vectors -> engine dialect -> cluster
    """


class RateColumn(ProgressColumn):
    """Documents per second, averaged by rich over the last few updates."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} docs/s" if speed else "-- docs/s", style="cyan")


def progress_display(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err_console,
        disable=quiet,
    )


def model_option(
    *,
    required: bool = True,
    describe: str = "Hugging Face id or local folder of a SPLADE checkpoint.",
) -> Callable[..., Any]:
    """``--model`` / ``-m`` (env ``SPLADE_ES_MODEL``), shared by every command that encodes."""
    return click.option(
        "--model",
        "-m",
        required=required,
        envvar="SPLADE_ES_MODEL",
        help=f"{describe} [env: SPLADE_ES_MODEL]",
    )
