"""``flagwire segments ...``: list, get, create, include/exclude, delete, history, restore.

The same shape as ``flags``: a segment is written through the admin API, is
versioned and audited, and reaches clients like a flag.  ``include`` and
``exclude`` read the segment, change its lists and write it back with
``If-Match``, so a concurrent edit is a 409 rather than lost (running the
command again is safe).  The document format is in docs/cli.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from flagwire_server.cli.files import load_file
from flagwire_server.cli.http import Api, cli_errors, wait_params
from flagwire_server.cli.options import DEFAULT_URL, Env, Json, Key, Url, Wait
from flagwire_server.cli.output import emit, write_summary

__all__ = ["segments"]

segments = typer.Typer(
    help="Segments (reusable sets of contexts) of one environment.", no_args_is_help=True
)


def _sizes(doc: dict[str, Any]) -> tuple[int, int, int]:
    return (
        len(doc.get("included") or []),
        len(doc.get("excluded") or []),
        len(doc.get("rules") or []),
    )


@segments.command("list")
def segments_list(
    env: Env = "production",
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """List the segments of an environment."""
    with cli_errors():
        data = Api(url, admin_key).call("GET", f"/environments/{env}/segments")
        emit(
            data,
            as_json,
            [
                (s["key"], s.get("version"), *_sizes(s), s.get("updated_by"))
                for s in data["segments"]
            ],
            ("key", "version", "included", "excluded", "rules", "updated by"),
        )


@segments.command("get")
def segments_get(
    key: str,
    env: Env = "production",
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
) -> None:
    """Print one segment's document (JSON)."""
    with cli_errors():
        emit(Api(url, admin_key).call("GET", f"/environments/{env}/segments/{key}"), True)


@segments.command("create")
def segments_create(
    file: Path,
    env: Env = "production",
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """Create a segment from a JSON or YAML file (fails if it exists)."""
    with cli_errors():
        doc = load_file(file)
        data = Api(url, admin_key).call("POST", f"/environments/{env}/segments", body=doc)
        write_summary(data, "segment", as_json)


def _move(
    key: str,
    values: list[str],
    into: str,
    env: str,
    url: str,
    admin_key: str,
    wait: float | None,
    as_json: bool,
) -> None:
    other = "excluded" if into == "included" else "included"
    with cli_errors():
        api = Api(url, admin_key)
        doc = api.call("GET", f"/environments/{env}/segments/{key}")
        moved = set(values)
        patch = {
            into: list(dict.fromkeys([*(doc.get(into) or []), *values])),
            other: [v for v in doc.get(other) or [] if v not in moved],
        }
        data = api.call(
            "PATCH",
            f"/environments/{env}/segments/{key}",
            body=patch,
            params=wait_params(wait),
            headers={"If-Match": f'"{doc["version"]}"'},
        )
        write_summary(data, "segment", as_json)


@segments.command("include")
def segments_include(
    key: str,
    values: list[str],
    env: Env = "production",
    wait: Wait = None,
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """Add context keys to a segment (taking them off its excluded list)."""
    _move(key, values, "included", env, url, admin_key, wait, as_json)


@segments.command("exclude")
def segments_exclude(
    key: str,
    values: list[str],
    env: Env = "production",
    wait: Wait = None,
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """Keep context keys out of a segment whatever its rules say (off its included list)."""
    _move(key, values, "excluded", env, url, admin_key, wait, as_json)


@segments.command("delete")
def segments_delete(
    key: str,
    env: Env = "production",
    wait: Wait = None,
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """Delete a segment (its history stays restorable)."""
    with cli_errors():
        data = Api(url, admin_key).call(
            "DELETE", f"/environments/{env}/segments/{key}", params=wait_params(wait)
        )
        if as_json:
            emit(data, True)
        else:
            typer.echo(f"segment {key} deleted: environment version {data['env_version']}")


@segments.command("history")
def segments_history(
    key: str,
    env: Env = "production",
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """A segment's versions, newest first."""
    with cli_errors():
        data = Api(url, admin_key).call("GET", f"/environments/{env}/segments/{key}/history")
        cur = data.get("current_version")
        emit(
            data,
            as_json,
            [
                (
                    d.get("version"),
                    "current" if d.get("version") == cur else "",
                    *_sizes(d),
                    d.get("updated_at"),
                    d.get("updated_by"),
                )
                for d in data["versions"]
            ],
            ("version", "", "included", "excluded", "rules", "updated", "by"),
        )


@segments.command("restore")
def segments_restore(
    key: str,
    version: int,
    env: Env = "production",
    wait: Wait = None,
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """Restore an earlier version of a segment as a new change."""
    with cli_errors():
        data = Api(url, admin_key).call(
            "POST",
            f"/environments/{env}/segments/{key}/restore",
            body={"version": version},
            params=wait_params(wait),
        )
        write_summary(data, "segment", as_json)
