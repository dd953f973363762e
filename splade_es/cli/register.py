"""``splade-es register``: point the cluster's own inference at ``splade-es serve``."""

from __future__ import annotations

import json
from typing import Any

import click

from .. import defaults
from ..documents import parse_fields
from ..engines import FIELD_TYPES
from .app import (
    FIELDS,
    connection_config,
    connection_options,
    err_console,
    fail_cleanly,
    main,
    out_console,
    warn,
)


@main.command()
@connection_options
@click.option(
    "--serve-url",
    help="Where the cluster's nodes reach splade-es serve, e.g. http://10.0.0.5:9280.",
)
@click.option(
    "--serve-api-key-file",
    type=click.Path(dir_okay=False),
    help="serve's --api-key-file: its first key is what the cluster sends serve.",
)
@click.option(
    "--text-fields",
    default=",".join(defaults.TEXT_FIELDS),
    show_default=True,
    type=FIELDS,
    help="Fields joined (with a space) into the text a document is encoded from.",
)
@click.option("--sparse-field", default=defaults.VECTOR_FIELD, show_default=True)
@click.option(
    "--field-type",
    type=click.Choice(FIELD_TYPES),
    default=defaults.FIELD_TYPE,
    show_default=True,
    help="The sparse field's type (OpenSearch sparse_vector: token ids as keys).",
)
@click.option(
    "--name",
    default=defaults.REGISTER_NAME,
    show_default=True,
    help="Prefix of everything created; register and unregister find them by it.",
)
@click.option(
    "--two-phase",
    is_flag=True,
    help="OpenSearch: also a neural_sparse_two_phase_processor search pipeline.",
)
@click.option(
    "--apply-settings",
    is_flag=True,
    help="OpenSearch: change the cluster settings connectors need (else: name them and stop).",
)
@click.option(
    "--dry-run", is_flag=True, help="Print the requests, secrets redacted; change nothing."
)
@click.option("--unregister", is_flag=True, help="Delete what register created under --name.")
@click.option("--json", "as_json", is_flag=True, help="Print the ids as JSON.")
@fail_cleanly
def register(**opts: Any) -> None:
    """Make the cluster encode with splade-es serve: OpenSearch ml-commons connectors, remote
    models and an ingest pipeline; Elasticsearch inference endpoints.

    Idempotent: a second run reuses what the first created. Needs serve running with
    --api-key-file (Elasticsearch calls it once while creating each endpoint).
    """
    from ..connect import connect
    from ..register import RegisterConfig, first_api_key
    from ..register import register as run_register
    from ..register import unregister as run_unregister

    key_file, as_json, removing = (
        opts.pop("serve_api_key_file"),
        opts.pop("as_json"),
        opts.pop("unregister"),
    )
    config = RegisterConfig(
        serve_url=opts.pop("serve_url"),
        api_key=first_api_key(key_file) if key_file and not removing else None,
        name=opts.pop("name"),
        text_fields=parse_fields(opts.pop("text_fields")),
        sparse_field=opts.pop("sparse_field"),
        field_type=opts.pop("field_type"),
        two_phase=opts.pop("two_phase"),
        apply_settings=opts.pop("apply_settings"),
        dry_run=opts.pop("dry_run"),
    )
    if not removing:
        config.require_serve()  # before connecting: a missing option is a usage error
    cluster = connect(connection_config(opts))
    try:
        result = run_unregister(cluster, config) if removing else run_register(cluster, config)
    finally:
        cluster.close()
    if as_json:
        click.echo(json.dumps(result.to_json()))
        return
    _print_requests(result.requests, result.dry_run)
    if removing:
        _print_removal(result)
    else:
        _print_registration(result)


def _print_requests(requests: tuple[dict[str, Any], ...], dry_run: bool) -> None:
    if not dry_run:
        return
    err_console.print("dry run: nothing was changed; the writes a run would send:")
    for request in requests:
        out_console.print(f"{request['method']} {request['path']}", soft_wrap=True)
        if "body" in request:
            out_console.print(json.dumps(request["body"], indent=2), soft_wrap=True)


def _print_registration(result: Any) -> None:
    err_console.print(
        f"{result.engine} {'.'.join(map(str, result.version))}: serve at {result.serve_url}"
    )
    for action in result.actions:
        err_console.print(action, soft_wrap=True)
    for note in result.notes:
        warn(note)
    for key, value in result.outputs.items():
        out_console.print(f"{key}: {value or '(created by the run)'}", soft_wrap=True)
    out_console.print("use:")
    out_console.print(json.dumps(result.usage, indent=2), soft_wrap=True)


def _print_removal(result: Any) -> None:
    verb = "would delete" if result.dry_run else "deleted"
    for label in result.deleted:
        out_console.print(f"{verb} {label}", soft_wrap=True)
    for label in result.absent:
        err_console.print(f"not found: {label}", soft_wrap=True)
    for label in result.kept:
        warn(f"left alone (not created by splade-es register): {label}")
