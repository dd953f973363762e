"""``splade-es doctor``: check every capability splade-es claims for a cluster, on it."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from .. import defaults
from ..connect import connect
from ..engines import FIELD_TYPES
from ..exceptions import ConfigurationError
from .app import (
    connection_config,
    connection_options,
    err_console,
    fail_cleanly,
    main,
    print_table,
    warn,
)

_STYLES = {"ok": "green", "unsupported": "yellow", "skipped": "dim", "FAILED": "bold red"}


@main.command()
@connection_options
@click.option(
    "--serve-url",
    help="Also check that the cluster can call splade-es serve at this URL (as the cluster's "
    "nodes reach it) and that what it gets equals serve's vectors.",
)
@click.option(
    "--serve-api-key-file",
    type=click.Path(dir_okay=False),
    help="serve's --api-key-file: its first key is what the cluster sends serve.",
)
@click.option(
    "--name",
    default=defaults.REGISTER_NAME,
    show_default=True,
    help="The --name given to splade-es register (finds what it created).",
)
@click.option(
    "--field-type",
    type=click.Choice(FIELD_TYPES),
    default=defaults.FIELD_TYPE,
    show_default=True,
    help="The --field-type given to splade-es register.",
)
@click.option(
    "--index",
    help="Also check this index (read-only): its sparse field's layout (one vector per "
    "document, or nested passages), a query's top hit against the exact dot product (the "
    "best passage's, for passages), and its nested-objects limit.",
)
@click.option(
    "--sparse-field",
    default=defaults.VECTOR_FIELD,
    show_default=True,
    help="With --index: the sparse field.",
)
@click.option(
    "--max-windows",
    type=click.IntRange(1),
    default=defaults.MAX_WINDOWS,
    show_default=True,
    help="The --max-windows passages are indexed with: warn when a document of that many "
    "passages exceeds index.mapping.nested_objects.limit.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@fail_cleanly
def doctor(**opts: Any) -> None:
    """Prove on this cluster that SPLADE scores are exact: the first thing to run against a
    new cluster.

    Detects engine, version, license, plugins and the clause limit; in temporary indices
    (deleted afterwards) checks that every field type, query style and hybrid method
    splade-es offers for this version scores the exact dot product and returns exactly the
    matching documents. With --serve-url, also whether the cluster may call splade-es serve,
    whether serve answers, and whether the vectors the cluster gets through what splade-es
    register created equal serve's (skipped until register has run).

    Passages (ingest --long-documents passages): each field type is also checked as nested
    passages, scored by the best passage; the nested-objects limit a new index gets is
    compared with --max-windows. With --index, that index's layout is named and its top hit
    checked against the exact dot product (read-only).

    Exit status: 0 when everything offered works (capabilities the cluster lacks are
    reported as unsupported), 1 when something offered fails, 2 on errors.
    """
    from ..doctor import doctor as run_doctor

    as_json = opts.pop("as_json")
    serve = _serve_target(opts)
    index, sparse_field, max_windows = (
        opts.pop(k) for k in ("index", "sparse_field", "max_windows")
    )
    cluster = connect(connection_config(opts))
    try:
        report = run_doctor(
            cluster,
            serve=serve,
            index=index,
            sparse_field=sparse_field,
            max_windows=max_windows,
        )
    finally:
        cluster.close()
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        facts = report.facts
        plugins = "unreadable" if facts.plugins is None else ", ".join(facts.plugins) or "none"
        lines = [
            f"{facts.engine} {facts.version} ({facts.distribution})",
            *([f"license: {facts.license}"] if facts.license else []),
            f"plugins: {plugins}",
            f"clause limit: splade-es uses {facts.clause_limit}"
            + (
                f", the engine enforces {facts.clause_limit_probed}"
                if facts.clause_limit_probed
                else ""
            ),
        ]
        # The CLI's consoles print text as is (markup off): engine words need no escaping.
        for line in lines:
            err_console.print(line)
        print_table(doctor_table(report))
        for leftover in report.left_behind:
            warn(f"not deleted: {leftover}")
        for warning in report.warnings:
            warn(warning)
        verdict = "every capability offered works" if report.ok else "some checks FAILED"
        err_console.print(Text(verdict, style="green" if report.ok else "bold red"))
    if not report.ok:
        sys.exit(1)


def _serve_target(opts: dict[str, Any]) -> Any:
    """The ``ServeTarget`` of the serve options (taken out of ``opts``); None without
    --serve-url."""
    from ..doctor import ServeTarget
    from ..register import first_api_key

    url, key_file = opts.pop("serve_url"), opts.pop("serve_api_key_file")
    name, field_type = opts.pop("name"), opts.pop("field_type")
    if not url:
        if key_file:
            raise ConfigurationError(
                "--serve-api-key-file is for the serve checks: give --serve-url too",
                option="serve_url",
            )
        return None
    key = first_api_key(key_file) if key_file else None
    return ServeTarget(url=url, api_key=key, name=name, field_type=field_type)


def doctor_table(report: Any) -> Table:
    table = Table(title="splade-es doctor", title_justify="left")
    for column in ("capability", "status", "detail", "engine error"):
        table.add_column(column, overflow="fold")
    for check in report.checks:
        table.add_row(
            Text(check.capability),
            Text(check.status, style=_STYLES[check.status]),
            Text(check.detail),
            Text(check.engine_error or ""),
        )
    return table
