"""The commands flags and segments share: create, delete, history, restore.

Why a factory and not two copies: a flag and a segment are the same kind of
document to the admin API (versioned, audited, restorable, written with
``?wait``), so these commands differ only in the word they print and the
columns of their history.  ``flags.py`` and ``segments.py`` call the ``add_*``
functions on their own typer group (in the place the command should stand in
``--help``) and keep their kind-specific commands themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import typer

from flagwire_server.cli.files import load_file
from flagwire_server.cli.http import Api, cli_errors, wait_params
from flagwire_server.cli.options import DEFAULT_URL, Env, Json, Key, Url, Wait
from flagwire_server.cli.output import emit, say, write_summary

__all__ = ["add_create", "add_delete_history_restore", "write_document"]

HistoryRow = Callable[[dict[str, Any]], Sequence[Any]]


def write_document(
    api: Api,
    kind: str,
    env: str,
    key: str,
    body: dict[str, Any],
    wait: float | None,
    as_json: bool,
    *,
    version: int | None = None,
) -> dict[str, Any]:
    """PATCH one document and print the write's summary.

    ``version`` is the one the caller read: sent as ``If-Match`` so a read-
    modify-write loses to a concurrent edit with a 409 instead of undoing it.
    """
    data: dict[str, Any] = api.call(
        "PATCH",
        f"/environments/{env}/{kind}s/{key}",
        body=body,
        params=wait_params(wait),
        headers={"If-Match": f'"{version}"'} if version is not None else None,
    )
    write_summary(data, kind, as_json, toggle=body.keys() == {"on"})
    return data


def add_create(group: typer.Typer, kind: str) -> None:
    """``create FILE``: a new document from a JSON or YAML file."""

    def create(
        file: Path,
        env: Env = "production",
        url: Url = DEFAULT_URL,
        admin_key: Key = "",
        as_json: Json = False,
    ) -> None:
        with cli_errors():
            doc = load_file(file)
            data = Api(url, admin_key).call("POST", f"/environments/{env}/{kind}s", body=doc)
            write_summary(data, kind, as_json)

    create.__doc__ = f"Create a {kind} from a JSON or YAML file (fails if it exists)."
    group.command("create")(create)


def add_delete_history_restore(
    group: typer.Typer, kind: str, history_row: HistoryRow, history_header: Sequence[str]
) -> None:
    """``delete``, ``history`` and ``restore``; a history row is the version, whether
    it is the current one, ``history_row(document)``, when and by whom."""

    def delete(
        key: str,
        env: Env = "production",
        wait: Wait = None,
        url: Url = DEFAULT_URL,
        admin_key: Key = "",
        as_json: Json = False,
    ) -> None:
        with cli_errors():
            data = Api(url, admin_key).call(
                "DELETE", f"/environments/{env}/{kind}s/{key}", params=wait_params(wait)
            )
            say(data, as_json, f"{kind} {key} deleted: environment version {data['env_version']}")

    def history(
        key: str,
        env: Env = "production",
        url: Url = DEFAULT_URL,
        admin_key: Key = "",
        as_json: Json = False,
    ) -> None:
        with cli_errors():
            data = Api(url, admin_key).call("GET", f"/environments/{env}/{kind}s/{key}/history")
            cur = data.get("current_version")
            emit(
                data,
                as_json,
                [
                    (
                        d.get("version"),
                        "current" if d.get("version") == cur else "",
                        *history_row(d),
                        d.get("updated_at"),
                        d.get("updated_by"),
                    )
                    for d in data["versions"]
                ],
                ("version", "", *history_header, "updated", "by"),
            )

    def restore(
        key: str,
        version: int,
        env: Env = "production",
        wait: Wait = None,
        url: Url = DEFAULT_URL,
        admin_key: Key = "",
        as_json: Json = False,
    ) -> None:
        with cli_errors():
            data = Api(url, admin_key).call(
                "POST",
                f"/environments/{env}/{kind}s/{key}/restore",
                body={"version": version},
                params=wait_params(wait),
            )
            write_summary(data, kind, as_json)

    delete.__doc__ = f"Delete a {kind} (its history stays restorable)."
    history.__doc__ = f"A {kind}'s versions, newest first."
    restore.__doc__ = f"Restore an earlier version of a {kind} as a new change."
    group.command("delete")(delete)
    group.command("history")(history)
    group.command("restore")(restore)
