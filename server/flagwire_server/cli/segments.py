"""``flagwire segments ...``: list, get, create, include/exclude, delete, history, restore.

The same shape as ``flags``: a segment is written through the admin API, is
versioned and audited, and reaches clients like a flag.  ``include`` and
``exclude`` read the segment, change its lists and write it back with
``If-Match``, so a concurrent edit is a 409 rather than lost (running the
command again is safe).  The document format is in docs/cli.md.
"""

from __future__ import annotations

from typing import Any

import typer

from flagwire_server.cli.documents import add_create, add_delete_history_restore, write_document
from flagwire_server.cli.http import Api, cli_errors
from flagwire_server.cli.options import DEFAULT_URL, Env, Json, Key, Url, Wait
from flagwire_server.cli.output import emit

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


add_create(segments, "segment")


def _add_move(name: str, into: str, doc: str) -> None:
    """``include`` and ``exclude``: put context keys on one list and off the other."""
    other = "excluded" if into == "included" else "included"

    def move(
        key: str,
        values: list[str],
        env: Env = "production",
        wait: Wait = None,
        url: Url = DEFAULT_URL,
        admin_key: Key = "",
        as_json: Json = False,
    ) -> None:
        with cli_errors():
            api = Api(url, admin_key)
            cur = api.call("GET", f"/environments/{env}/segments/{key}")
            moved = set(values)
            patch = {
                into: list(dict.fromkeys([*(cur.get(into) or []), *values])),
                other: [v for v in cur.get(other) or [] if v not in moved],
            }
            write_document(api, "segment", env, key, patch, wait, as_json, version=cur["version"])

    move.__doc__ = doc
    segments.command(name)(move)


_add_move(
    "include", "included", "Add context keys to a segment (taking them off its excluded list)."
)
_add_move(
    "exclude",
    "excluded",
    "Keep context keys out of a segment whatever its rules say (off its included list).",
)
add_delete_history_restore(segments, "segment", _sizes, ("included", "excluded", "rules"))
