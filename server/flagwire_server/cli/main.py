"""The ``flagwire`` command and its command table.

Every subcommand is defined at module level in the module named for what it
manages (``admin``: environments, keys, import; ``audit``; ``ascode``: flags as
code — validate, plan, apply, export; ``flags``; ``segments``; ``schedule``; ``release``;
``webhooks``; ``watch``) and is added here, in one place, so that no command module imports
another.
Every command is documented in docs/cli.md.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from flagwire_server.cli import admin, ascode
from flagwire_server.cli.audit import audit
from flagwire_server.cli.flags import flags
from flagwire_server.cli.http import cli_errors, fail
from flagwire_server.cli.insight import clients, flags_insight, flags_stale
from flagwire_server.cli.launchdarkly import import_launchdarkly
from flagwire_server.cli.options import DEFAULT_URL, Key, Url, Wait
from flagwire_server.cli.release import release
from flagwire_server.cli.schedule import schedule
from flagwire_server.cli.segments import segments
from flagwire_server.cli.watch import watch
from flagwire_server.cli.webhooks import webhooks
from flagwire_server.config import Settings

__all__ = ["app", "main"]

app = typer.Typer(
    name="flagwire",
    help="flagwire: real-time feature flags.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """flagwire: real-time feature flags."""


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to bind [FLAGWIRE_HOST, 127.0.0.1].")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port [FLAGWIRE_PORT, 8080].")] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis-url",
            help="redis://, rediss:// or unix:// URL [FLAGWIRE_REDIS_URL]; "
            "none: an embedded Valkey in DATA_DIR/valkey.",
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Data directory [FLAGWIRE_DATA_DIR, ./.flagwire]."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Worker processes, each serving clients [FLAGWIRE_WORKERS, 1]."),
    ] = None,
) -> None:
    """Run the flagwire server.

    Every setting is also a FLAGWIRE_* environment variable; the full list, with
    defaults, is in docs/operations.md (Configuration reference).
    """
    try:
        settings = Settings.from_env(
            host=host, port=port, redis_url=redis_url, data_dir=data_dir, workers=workers
        )
    except ValueError as exc:
        typer.echo(f"flagwire serve: {exc}", err=True)
        raise typer.Exit(2) from None
    from flagwire_server.cli.serve import serve as run

    try:
        run(settings)
    except KeyboardInterrupt:  # pragma: no cover
        pass
    except Exception as exc:
        typer.echo(f"flagwire serve: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command("import")
def import_(
    source: Annotated[
        str,
        typer.Argument(
            metavar="ENV|launchdarkly",
            help="the environment to import a flagwire export into, or 'launchdarkly'",
        ),
    ],
    file: Path,
    env: Annotated[
        str | None,
        typer.Option("--env", "-e", envvar="FLAGWIRE_ENV", help="environment (launchdarkly)"),
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="also write the import report as JSON (launchdarkly)")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="convert and report, write nothing (launchdarkly)")
    ] = False,
    wait: Wait = None,
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
) -> None:
    """Import a flagwire export into ENV, or LaunchDarkly's flag data into --env.

    `flagwire import ENV FILE` creates or replaces every flag and segment of an
    export file.  `flagwire import launchdarkly FILE --env NAME` converts the
    data LaunchDarkly's SDKs and Relay Proxy read, prints what could not be
    carried over, and writes it all in one atomic apply (docs/migration.md).
    """
    if source != "launchdarkly":
        admin.import_(source, file, url=url, admin_key=admin_key)
        return
    with cli_errors():
        if not env:
            fail("import launchdarkly needs --env NAME (or FLAGWIRE_ENV)")
        import_launchdarkly(
            file, env, url=url, admin_key=admin_key, report=report, dry_run=dry_run, wait=wait
        )


def main() -> None:
    """Entry point of the ``flagwire`` script."""
    app(prog_name="flagwire")


app.add_typer(admin.envs, name="envs")
app.add_typer(admin.keys, name="keys")
flags.command("insight")(flags_insight)
flags.command("stale")(flags_stale)
app.add_typer(flags, name="flags")
app.command("clients")(clients)
app.add_typer(segments, name="segments")
app.add_typer(schedule, name="schedule")
app.add_typer(release, name="release")
app.add_typer(webhooks, name="webhooks")
app.command("audit")(audit)
app.command("export")(ascode.export)
app.command("validate")(ascode.validate)
app.command("plan")(ascode.plan)
app.command("apply")(ascode.apply)
app.command("watch")(watch)

if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)
