"""``flagwire envs``, ``keys`` and ``import``: the admin API's environments
and API keys, over HTTP (see ``http.py`` for why).  ``audit`` is in
``audit.py``; ``export`` (a folder, or the older single JSON file) lives with
flags as code in ``ascode.py``.

Output is a human table by default and JSON with ``--json``; an error is one
line on stderr and exit status 1.  The command table is in ``main.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flagwire_server.cli.files import load_file
from flagwire_server.cli.http import Api, cli_errors, fail
from flagwire_server.cli.options import DEFAULT_URL, Json, Key, Url
from flagwire_server.cli.output import emit

__all__ = ["envs", "import_", "keys"]

envs = typer.Typer(help="Environments.", no_args_is_help=True)
keys = typer.Typer(help="API keys.", no_args_is_help=True)


@envs.command("list")
def envs_list(url: Url = DEFAULT_URL, admin_key: Key = "", as_json: Json = False) -> None:
    """List environments."""
    with cli_errors():
        data = Api(url, admin_key).call("GET", "/environments")
        emit(
            data,
            as_json,
            [(e["key"], e.get("name"), e.get("created_at")) for e in data["environments"]],
            ("key", "name", "created"),
        )


@envs.command("create")
def envs_create(
    key: str,
    name: Annotated[str, typer.Option()] = "",
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """Create an environment."""
    with cli_errors():
        data = Api(url, admin_key).call(
            "POST", "/environments", body={"key": key, "name": name or key}
        )
        emit(
            data,
            as_json,
            [(data["key"], data["name"], data["epoch"])],
            ("key", "name", "epoch"),
        )


@envs.command("delete")
def envs_delete(key: str, url: Url = DEFAULT_URL, admin_key: Key = "") -> None:
    """Delete an environment with all its flags, segments, history and audit."""
    with cli_errors():
        Api(url, admin_key).call("DELETE", f"/environments/{key}")
        typer.echo(f"environment {key} deleted")


@keys.command("create")
def keys_create(
    name: str,
    kind: Annotated[
        str, typer.Option(help="sdk, client (client-side: OFREP, opted-in flags only) or admin")
    ] = "sdk",
    env: Annotated[str | None, typer.Option(help="environment (SDK and client keys)")] = None,
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """Create a key; its secret is printed this once."""
    with cli_errors():
        if kind in ("sdk", "client") and env is None:
            env = "production"
        data = Api(url, admin_key).call(
            "POST", "/keys", body={"name": name, "kind": kind, "env": env}
        )
        if as_json:
            emit(data, True)
        else:
            k = data["key"]
            typer.echo(
                f"created {k['kind']} key {k['id']} ({k['name']}"
                f"{', ' + k['env'] if k['env'] else ''}); secret, shown only now:"
            )
            typer.echo(data["secret"])


@keys.command("list")
def keys_list(url: Url = DEFAULT_URL, admin_key: Key = "", as_json: Json = False) -> None:
    """List keys (never their secrets)."""
    with cli_errors():
        data = Api(url, admin_key).call("GET", "/keys")
        emit(
            data,
            as_json,
            [
                (
                    k["id"],
                    k["name"],
                    k["kind"],
                    k["env"],
                    k["prefix"] + "…",
                    "revoked" if k["revoked_at"] else "active",
                )
                for k in data["keys"]
            ],
            ("id", "name", "kind", "env", "prefix", "state"),
        )


@keys.command("revoke")
def keys_revoke(
    key_id: str, url: Url = DEFAULT_URL, admin_key: Key = "", as_json: Json = False
) -> None:
    """Revoke a key; its streams close within a second."""
    with cli_errors():
        data = Api(url, admin_key).call("DELETE", f"/keys/{key_id}")
        emit(data, True) if as_json else typer.echo(f"key {key_id} revoked")


def import_(env: str, file: Path, url: Url = DEFAULT_URL, admin_key: Key = "") -> None:
    """Create or replace every flag and segment of an export file in an environment."""
    with cli_errors():
        data = load_file(file)
        if not isinstance(data, dict) or not isinstance(data.get("flags"), list):
            fail(f"{file} is not a flagwire export (no flags list)")
        api = Api(url, admin_key)
        for kind, plural in (("segment", "segments"), ("flag", "flags")):
            for doc in data.get(plural) or []:
                if not isinstance(doc, dict) or not isinstance(doc.get("key"), str):
                    fail(f"{file}: a {kind} without a key")
                body = {k: v for k, v in doc.items() if k != "version"}
                api.call("PUT", f"/environments/{env}/{plural}/{doc['key']}", body=body)
        typer.echo(
            f"imported {len(data['flags'])} flags and "
            f"{len(data.get('segments') or [])} segments into {env}"
        )
