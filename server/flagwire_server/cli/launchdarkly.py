"""``flagwire import launchdarkly FILE --env NAME``: move a LaunchDarkly environment over.

FILE is the data LaunchDarkly's server-side SDKs and the Relay Proxy consume
(``{"flags": {...}, "segments": {...}}``).  The conversion is the pure
``flagwire_server.migrate.launchdarkly``; this command only reads the file,
prints the report (what could not be carried over, per flag) and writes
everything in one atomic apply, so an environment never holds half an
import.  ``docs/migration.md`` is the guide.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import typer

from flagwire_server.cli.files import load_file
from flagwire_server.cli.http import Api, fail, wait_params
from flagwire_server.migrate.launchdarkly import Conversion, convert

__all__ = ["import_launchdarkly"]


def import_launchdarkly(
    file: Path,
    env: str,
    *,
    url: str,
    admin_key: str,
    report: Path | None = None,
    dry_run: bool = False,
    wait: float | None = None,
) -> None:
    """Convert FILE, print the report, and write every flag and segment to ``env`` at once.

    Raises:
        CliError: unreadable file, not LaunchDarkly data, or the server refused the apply.
    """
    data = load_file(file)
    try:
        conv = convert(data)
    except ValueError as exc:
        fail(f"{file} is not LaunchDarkly flag data: {exc}")
    _print_report(conv)
    if report is not None:
        try:
            report.write_bytes(orjson.dumps(_report_json(conv), option=orjson.OPT_INDENT_2))
        except OSError as exc:
            fail(f"cannot write {report}: {exc.strerror}")
    summary = f"{len(conv.flags)} flags and {len(conv.segments)} segments"
    if dry_run:
        typer.echo(f"dry run: would import {summary} into {env}")
        return
    documents: list[dict[str, Any]] = [
        {"kind": "segment", "key": s["key"], "document": s} for s in conv.segments
    ] + [{"kind": "flag", "key": f["key"], "document": f} for f in conv.flags]
    body = {"name": f"import launchdarkly {file.name}"[:200], "documents": documents}
    Api(url, admin_key).call(
        "POST", f"/environments/{env}/apply", body=body, params=wait_params(wait)
    )
    typer.echo(f"imported {summary} into {env}")
    if conv.skipped:
        typer.echo(f"not imported: {', '.join(conv.skipped)} (see the report above)")


def _print_report(conv: Conversion) -> None:
    for what, notes in conv.report.items():
        typer.echo(f"{what}:")
        for note in notes:
            typer.echo(f"  - {note}")


def _report_json(conv: Conversion) -> dict[str, Any]:
    return {"keys": conv.keys, "skipped": conv.skipped, "report": conv.report}
