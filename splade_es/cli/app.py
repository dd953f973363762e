"""The ``splade-es`` command group and what every command shares: connection options,
error handling (``SpladeEsError`` -> one line on stderr, exit status 2; Ctrl-C -> 130),
progress display and table printing.

Every console here has rich markup off: what we print is mostly text from engines and users
(index names, error messages with ``[index]`` or ``[/_search/pipeline/x]``, tokens such as
``[unused0]``), which markup would silently eat or choke on. Styles come from ``Text``."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import click
from rich.console import Console
from rich.measure import Measurement
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
from rich.table import Table
from rich.text import Text

from .. import __version__, defaults
from ..connect import ConnectionConfig
from ..exceptions import SpladeEsError

err_console = Console(stderr=True, markup=False, highlight=False)
out_console = Console(markup=False, highlight=False)

# Exit statuses, shared by every command (and listed in ``splade-es --help`` and the README).
EXIT_OK = 0
EXIT_PARTIAL = 1  # finished, but some records were dead-lettered / a migration check failed
EXIT_ERROR = 2  # stopped: bad options or input, model or cluster problem (click usage errors too)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it


def error(message: str) -> None:
    """One ``error: ...`` line on stderr; ``message`` is printed as is, never wrapped (scripts
    and users grep for the one line, whatever the terminal's width); a message of several
    lines (an engine's) is joined into one."""
    one_line = " ".join(line.strip() for line in message.splitlines() if line.strip())
    err_console.print(Text.assemble(("error: ", "bold red"), one_line), soft_wrap=True)


def warn(message: str) -> None:
    """One ``warning: ...`` line on stderr; ``message`` is printed as is, never wrapped."""
    err_console.print(Text.assemble(("warning: ", "yellow"), message), soft_wrap=True)


class OneLineError(click.ClickException):
    """What every error that stops a command becomes: one ``error: ...`` line, exit status 2
    (click's usage errors too, which it would print as usage, a hint and the error)."""

    exit_code = EXIT_ERROR

    def show(self, file: Any = None) -> None:
        error(self.format_message())


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    """Re-raise click's errors (bad values, missing options, unknown commands) as
    ``OneLineError``, with the command's help named where the error is not about a value."""
    try:
        yield
    except OneLineError:
        raise
    except click.ClickException as exc:
        message = exc.format_message()
        ctx = getattr(exc, "ctx", None)
        if isinstance(exc, click.UsageError) and not isinstance(exc, click.BadParameter) and ctx:
            message += f" (see '{ctx.command_path} --help')"
        raise OneLineError(message) from exc


class SpladeEsGroup(click.Group):
    """The command group; parses and runs each command inside ``_one_line_errors``."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        with _one_line_errors():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _one_line_errors():
            return super().invoke(ctx)


# Library settings the CLI spells differently (``SpladeEsError.option`` -> parameter name);
# every other option has the library keyword's name (device, dtype, max_length, model, ...).
_CLI_NAMES = {"hosts": "url"}


def as_click_error(exc: SpladeEsError) -> click.ClickException:
    """The one way a library error reaches the user: a bad value of an option the current
    command has (``exc.option``) as click's BadParameter naming that option and the value,
    anything else as its message. Both print as one line (``OneLineError``)."""
    ctx = click.get_current_context(silent=True)
    name = _CLI_NAMES.get(exc.option or "", exc.option)
    params = {p.name: p for p in ctx.command.params} if ctx else {}
    param = params.get(name) if name else None
    if param is None or not isinstance(param, click.Option):
        return OneLineError(str(exc))
    rule = getattr(exc, "rule", None)
    detail = f"{rule}, got {exc.value!r}" if rule else str(exc)  # type: ignore[attr-defined]
    return click.BadParameter(detail, ctx=ctx, param=param)


def os_click_error(exc: OSError) -> click.ClickException:
    """A file the command could not read or write, as one line; as the option that named it
    when one did (that path, or a path in a folder that does not exist)."""
    where = exc.filename
    message = f"{where}: {exc.strerror}" if where and exc.strerror else str(exc)
    ctx = click.get_current_context(silent=True)
    if ctx is None or not where:
        return OneLineError(message)
    folder = os.path.dirname(os.path.abspath(where))
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if not isinstance(param, click.Option) or not isinstance(value, str):
            continue
        if value == where:
            return click.BadParameter(f"cannot use {value!r}: {exc.strerror}", ctx, param)
        if not os.path.isdir(folder) and os.path.dirname(os.path.abspath(value)) == folder:
            return click.BadParameter(f"{value!r}: there is no folder {folder}", ctx, param)
    return OneLineError(message)


class NewFile(click.Path):
    """A file the command writes (created or replaced): not a folder, in a folder that
    exists. Checked as the command line is read, not when the first line is written (a
    dead-letter file is opened at the first refused record, maybe hours into a run)."""

    def __init__(self) -> None:
        super().__init__(dir_okay=False)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = super().convert(value, param, ctx)
        folder = os.path.dirname(os.path.abspath(os.fsdecode(path)))
        if not os.path.isdir(folder):
            self.fail(f"{value!r}: there is no folder {folder}", param, ctx)
        return path


NEW_FILE = NewFile()


class LibraryValue(click.ParamType):
    """An option value checked by the library's own parser as the command line is read
    (before any model or cluster is touched); its error becomes the option's, as
    ``as_click_error`` words it. The value is passed on as given."""

    def __init__(self, name: str, parse: Callable[[str], Any], metavar: str = "TEXT") -> None:
        self.name = name
        self._parse = parse
        self._metavar = metavar

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return self._metavar

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            self._parse(value)
        except SpladeEsError as exc:
            rule = getattr(exc, "rule", None)
            self.fail(f"{rule}, got {value!r}" if rule else f"{exc}, got {value!r}", param, ctx)
        return value


def _parse_device(value: str) -> None:
    if value != "auto":  # torch is imported only when a device is named
        from ..encoding.encoder import parse_device

        parse_device(value)


def _parse_fields(value: str) -> None:
    from ..documents import parse_fields

    parse_fields(value)


DEVICE = LibraryValue("device", _parse_device, "DEVICE")


def device_option() -> Callable[..., Any]:
    """``--device``, shared by every command that loads a model; checked as it is read."""
    return click.option(
        "--device",
        default=defaults.DEVICE,
        show_default=True,
        type=DEVICE,
        help="Where the model runs: auto (CUDA when present), cpu, cuda, cuda:N, xpu, mps.",
    )


FIELDS = LibraryValue("fields", _parse_fields, "FIELD,...")


def long_document_options(*, several: bool = False) -> Callable[..., Any]:
    """``--long-documents``, ``--window``, ``--overlap``, ``--max-windows``: how a text longer
    than one window is encoded (encoding/windows.py), shared by every command that encodes
    documents. ``several``: ``--long-documents`` takes a comma list (evaluate compares modes).
    Read them with ``window_policy_of``."""
    from ..encoding.windows import LONG_DOCUMENT_MODES

    modes = "|".join(LONG_DOCUMENT_MODES)
    options = [
        click.option(
            "--long-documents",
            default=defaults.LONG_DOCUMENTS,
            show_default=True,
            type=click.STRING if several else click.Choice(LONG_DOCUMENT_MODES),
            callback=parse_long_document_modes if several else None,
            metavar=f"[{modes}]{',...' if several else ''}",
            help="Text past one window: truncate (dropped, counted), maxpool (every window "
            "encoded, the elementwise max), passages (one vector per window, nested)."
            + (" A comma list compares them side by side." if several else ""),
        ),
        click.option(
            "--window",
            type=click.IntRange(2),
            help="Model tokens per window, special tokens included. [default: --max-length]",
        ),
        click.option(
            "--overlap",
            type=click.IntRange(0),
            help=f"Content tokens shared by consecutive windows. [default: "
            f"{defaults.WINDOW_OVERLAP}, at most a quarter of the window]",
        ),
        click.option(
            "--max-windows",
            type=click.IntRange(1),
            default=defaults.MAX_WINDOWS,
            show_default=True,
            help="Windows per document at most; the rest is dropped and counted as truncated.",
        ),
    ]

    def apply(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            func = option(func)
        return func

    return apply


def parse_long_document_modes(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> list[str]:
    """A click callback: a comma list of long-document modes, checked, duplicates dropped
    (None stays an empty list: an option not given)."""
    from ..encoding.windows import LONG_DOCUMENT_MODES

    if value is None:
        return []
    modes = [m.strip() for m in value.split(",") if m.strip()]
    bad = [m for m in modes if m not in LONG_DOCUMENT_MODES]
    if bad or not modes:
        raise click.BadParameter(
            f"{', '.join(bad) or 'nothing'}: choose from {', '.join(LONG_DOCUMENT_MODES)}",
            ctx,
            param,
        )
    return list(dict.fromkeys(modes))


def window_policy_of(opts: dict[str, Any], mode: str | None = None) -> Any:
    """The ``WindowPolicy`` of a command's ``long_document_options`` (``mode`` overrides
    ``--long-documents``, e.g. one of evaluate's list)."""
    from ..encoding.windows import LongDocuments, WindowPolicy

    return WindowPolicy(
        cast("LongDocuments", mode or opts["long_documents"]),
        window=opts.get("window"),
        overlap=opts.get("overlap"),
        max_windows=opts.get("max_windows"),
    )


def fail_cleanly(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command's body: a ``SpladeEsError`` or a file that cannot be read or written
    becomes one line and exit status 2 (``as_click_error``), Ctrl-C exit status 130."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SpladeEsError as exc:
            raise as_click_error(exc) from exc
        except OSError as exc:  # a path the user gave: a missing folder, no permission
            raise os_click_error(exc) from exc
        except KeyboardInterrupt:
            # Not 1: that means "finished, some records dead-lettered", which scripts act on.
            err_console.print(
                Text(
                    "interrupted; a command run with --checkpoint resumes where it stopped",
                    "yellow",
                )
            )
            sys.exit(EXIT_INTERRUPTED)

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
        warn("TLS certificate verification is disabled")
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


EXIT_STATUS_HELP = """\b
Exit status (every command):
  0    done
  1    done, but some records were not indexed / encoded (they are in the
       dead-letter file), or a migration's verification or gate failed
  2    stopped by an error: bad options or input, model or cluster problem
  130  interrupted (Ctrl-C); a command run with --checkpoint resumes"""


@click.group(
    cls=SpladeEsGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EXIT_STATUS_HELP,
)
@click.version_option(__version__, prog_name="splade-es")
def main() -> None:
    """SPLADE learned-sparse retrieval for Elasticsearch and OpenSearch.

    text -> encoder -> sparse vectors -> engine dialect -> cluster
    """


class RateColumn(ProgressColumn):
    """Items per second since the task started (``unit`` task field, default docs).

    The same average the end-of-run summaries report (count / elapsed). Rich's own ``speed``
    is a moving window over recent updates, which disagrees with the summary when updates come
    in bursts (one per bulk response). ``already``: a count the task started at (a resumed
    job's earlier work), left out of the rate.
    """

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "docs")
        done = task.completed - task.fields.get("already", 0)
        elapsed = task.finished_time if task.finished else task.elapsed
        if not elapsed or done <= 0:
            return Text(f"-- {unit}/s", style="cyan")
        return Text(f"{done / elapsed:,.1f} {unit}/s", style="cyan")


def progress_display(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}", markup=False),
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


class NoModel(click.ClickException):
    """The model option names no usable model: one line, exit status 2 (a ClickException,
    not a UsageError: no usage lines)."""

    exit_code = EXIT_ERROR

    def show(self, file: Any = None) -> None:
        error(self.message)


def _refuse_untrusted_code(value: str, trusted: bool) -> None:
    """A local checkpoint folder that ships its own code needs ``--trust-remote-code``.

    Checked as the command line is read: commands connect to the cluster before they load
    the model, and an unreachable cluster would hide this. A Hub id is checked when the
    model loads (the same rule, as one line too)."""
    from ..encoding.model_files import read_layout, require_trusted_layout
    from ..exceptions import ModelLoadError

    folder = Path(value).expanduser()
    if trusted or not folder.is_dir():
        return
    try:
        layout = read_layout(folder)
    except ModelLoadError:
        return  # not a checkpoint: the load says so, as for any model
    try:
        require_trusted_layout(layout, value, trusted)
    except ModelLoadError as exc:
        raise NoModel(str(exc)) from exc


def _model_resolver(
    required: bool,
) -> Callable[[click.Context, click.Parameter, str | None], str | None]:
    """The ``--model`` callback: the model given (its code checked), else the default one
    (downloaded only when ``required``; None when optional and not on disk)."""
    from ..encoding.model_files import default_model
    from ..exceptions import ModelLoadError

    def resolve(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value:
            _refuse_untrusted_code(value, bool(ctx.params.get("trust_remote_code")))
            return value
        try:
            return default_model(download=required)
        except ModelLoadError as exc:
            if required:
                raise NoModel(str(exc)) from exc
            return None

    return resolve


def model_option(
    *,
    required: bool = True,
    describe: str = "Hugging Face id or local folder of a SPLADE checkpoint.",
) -> Callable[..., Any]:
    """``--model`` / ``-m`` (env ``SPLADE_ES_MODEL``) and ``--trust-remote-code``, shared by
    every command that encodes.

    Not given: the default model (``model_files.default_model``: ``../shared/models/splade-tiny``,
    the user cache folder, then ``rasyosef/splade-tiny`` through the Hugging Face cache).
    ``required``: the command always encodes, so a default that cannot be found stops it with one
    line (exit 2); otherwise (search and migrate, whose BM25 modes need no model) only what is
    already on disk is taken, nothing is downloaded, and the option stays ``None`` if none is.
    """
    model = click.option(
        "--model",
        "-m",
        envvar="SPLADE_ES_MODEL",
        callback=_model_resolver(required),
        help=f"{describe} [env: SPLADE_ES_MODEL; default: ../shared/models/splade-tiny, then "
        "~/.cache/splade-es/models/splade-tiny, then rasyosef/splade-tiny from the Hugging Face "
        "cache or Hub]",
    )
    # Beside --model on every command that loads one, so no command lacks it.
    trust = click.option(
        "--trust-remote-code",
        is_flag=True,
        is_eager=True,  # read before --model, whose callback checks the folder's code
        help="Run the Python code the checkpoint ships (auto_map in its config.json), as "
        "models such as GTE-based ones need. It runs with this command's rights: only for "
        "checkpoints whose source you trust.",
    )

    def both(func: Callable[..., Any]) -> Callable[..., Any]:
        return model(trust(func))

    return both


def print_table(table: Table, console: Console | None = None) -> None:
    """Print ``table`` without cutting any cell: at its natural width when the output is a
    file or a pipe (rich would squeeze it into 80 columns and end headers with an ellipsis),
    folded onto more lines (not cut) on a narrow terminal."""
    console = console or out_console
    for column in table.columns:
        column.overflow = "fold"
    if console.is_terminal:
        console.print(table)
        return
    natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
    width = console.width
    console.width = max(width, natural)  # print() caps its width argument at the console's
    try:
        console.print(table)
    finally:
        console.width = width
