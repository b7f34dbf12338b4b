"""``flagwire`` admin subcommands: a thin client of the REST API (and of the stream for ``watch``).

Why over HTTP and not straight to Redis: the CLI then goes through the same
validation, versioning, audit and rate limits as every other caller, and
works against any remote server.  ``register(app)`` adds the commands to the
``flagwire`` Typer app of ``cli.py``.  Output is a human table by default and
JSON with ``--json``; an error is one line on stderr and exit status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import orjson
import typer

__all__ = ["register"]

Url = Annotated[str, typer.Option("--url", envvar="FLAGWIRE_URL", help="server URL")]
Key = Annotated[
    str,
    typer.Option(
        "--admin-key",
        envvar="FLAGWIRE_ADMIN_KEY",
        show_default=False,
        help="admin key (FLAGWIRE_ADMIN_KEY)",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]
Env = Annotated[str, typer.Option("--env", "-e", envvar="FLAGWIRE_ENV", help="environment")]
Wait = Annotated[float | None, typer.Option("--wait", help="wait up to N s for clients to ack")]
DEFAULT_URL = "http://127.0.0.1:8080"


class CliError(Exception):
    pass


def fail(message: str) -> NoReturn:
    raise CliError(message)


class Api:
    """One admin-API session; every failure becomes a :class:`CliError` with one line."""

    def __init__(self, url: str, key: str) -> None:
        if not key:
            fail("no admin key: pass --admin-key or set FLAGWIRE_ADMIN_KEY")
        self.url = url.rstrip("/")
        self.client = httpx.Client(
            base_url=self.url + "/api/v1", timeout=40.0, headers={"Authorization": f"Bearer {key}"}
        )

    def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        try:
            content = orjson.dumps(body) if body is not None else None
        except TypeError as exc:  # e.g. a YAML mapping with a non-string key
            fail(f"the document cannot be sent as JSON: {exc}")
        hdrs = {"Content-Type": "application/json", **(headers or {})} if content else headers
        try:
            resp = self.client.request(
                method,
                path,
                content=content,
                headers=hdrs,
                params={k: v for k, v in (params or {}).items() if v is not None},
            )
        except httpx.HTTPError as exc:
            fail(f"cannot reach {self.url}: {exc}")
        if resp.status_code == 204:
            return None
        try:
            data = resp.json()
        except ValueError:
            data = None
        if resp.is_error:
            fail(_problem_line(resp.status_code, data, resp.text))
        return data


def _problem_line(status: int, data: Any, text: str) -> str:
    if not isinstance(data, dict):
        return f"{status}: {text.strip()[:200]}"
    line = f"{status} {data.get('title', '')}: {data.get('detail', '')}"
    errors = data.get("errors") or []
    if errors:
        line += " — " + "; ".join(
            f"{e.get('path') or '(document)'}: {e.get('message')}" for e in errors[:5]
        )
    if "current_version" in data:
        line += f" (current version {data['current_version']})"
    return line


# --- output -------------------------------------------------------------------


def emit(
    data: Any,
    as_json: bool,
    rows: Sequence[Sequence[Any]] | None = None,
    header: Sequence[str] = (),
) -> None:
    if as_json or rows is None:
        typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    table = [[str(h).upper() for h in header], *[[_cell(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list | dict):
        return json.dumps(value)[:40]
    return str(value)


def _write_summary(data: dict[str, Any], kind: str, as_json: bool) -> None:
    if as_json:
        emit(data, True)
        return
    doc = data.get(kind)
    state = (
        "deleted"
        if doc is None
        else ("on" if doc.get("on") else "off")
        if kind == "flag"
        else "saved"
    )
    line = (
        f"{kind} {doc.get('key') if doc else ''} {state}: version {data['version']}, "
        f"environment version {data['env_version']}"
    )
    prop = data.get("propagation")
    if prop and not prop.get("connected"):
        line += "; no clients connected"
    elif prop:
        line += (
            f"; {prop.get('acknowledged')}/{prop.get('connected')} clients acknowledged"
            f" (p99 {prop.get('p99_ms')} ms{'' if prop.get('complete') else ', incomplete'})"
        )
    typer.echo(line.replace(f"{kind}  ", f"{kind} "))


def _yaml12_loader(yaml: Any) -> Any:
    """PyYAML's SafeLoader with YAML 1.2 booleans: only true/false.

    YAML 1.1 reads ``on``, ``off``, ``yes`` and ``no`` as booleans, so the flag
    field ``on: true`` would load as ``{True: True}``.
    """
    bool_tag = "tag:yaml.org,2002:bool"

    class Loader(yaml.SafeLoader):  # type: ignore[misc]
        pass

    Loader.yaml_implicit_resolvers = {
        first: [r for r in resolvers if r[0] != bool_tag]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(
        bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
    )
    return Loader


def load_file(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.load(text, Loader=_yaml12_loader(yaml))  # a SafeLoader
        except yaml.YAMLError as exc:
            fail(f"{path} is not valid YAML: {str(exc).splitlines()[0]}")
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        fail(f"{path} is not valid JSON: {exc}")


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except CliError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _wait(wait: float | None) -> dict[str, Any]:
    return {"wait": wait} if wait is not None else {}


# --- commands -----------------------------------------------------------------


def register(app: typer.Typer) -> None:
    """Add ``envs``, ``keys``, ``flags``, ``audit``, ``export``, ``import``, ``watch``."""
    envs = typer.Typer(help="Environments.", no_args_is_help=True)
    keys = typer.Typer(help="API keys.", no_args_is_help=True)
    flags = typer.Typer(help="Feature flags of one environment.", no_args_is_help=True)
    app.add_typer(envs, name="envs")
    app.add_typer(keys, name="keys")
    app.add_typer(flags, name="flags")

    @envs.command("list")
    def envs_list(url: Url = DEFAULT_URL, admin_key: Key = "", as_json: Json = False) -> None:
        """List environments."""
        with _errors():
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
        with _errors():
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
        with _errors():
            Api(url, admin_key).call("DELETE", f"/environments/{key}")
            typer.echo(f"environment {key} deleted")

    @keys.command("create")
    def keys_create(
        name: str,
        kind: Annotated[str, typer.Option(help="sdk or admin")] = "sdk",
        env: Annotated[str | None, typer.Option(help="environment (SDK keys)")] = None,
        url: Url = DEFAULT_URL,
        admin_key: Key = "",
        as_json: Json = False,
    ) -> None:
        """Create a key; its secret is printed this once."""
        with _errors():
            if kind == "sdk" and env is None:
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
        with _errors():
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
        with _errors():
            data = Api(url, admin_key).call("DELETE", f"/keys/{key_id}")
            emit(data, True) if as_json else typer.echo(f"key {key_id} revoked")

    from flagwire_server.cli.flags import register_flags

    register_flags(flags)

    @app.command("audit")
    def audit(
        env: Env = "production",
        limit: Annotated[int, typer.Option()] = 20,
        before: Annotated[str | None, typer.Option(help="cursor from the last page")] = None,
        url: Url = DEFAULT_URL,
        admin_key: Key = "",
        as_json: Json = False,
    ) -> None:
        """Show an environment's audit log, newest first."""
        with _errors():
            data = Api(url, admin_key).call(
                "GET", f"/environments/{env}/audit", params={"limit": limit, "before": before}
            )
            emit(
                data,
                as_json,
                [
                    (
                        e["at"],
                        e["actor"],
                        e["action"],
                        e["kind"],
                        e["key"],
                        e["flag_version"],
                        e["version"],
                    )
                    for e in data["entries"]
                ],
                ("at", "actor", "action", "kind", "key", "ver", "env ver"),
            )
            if data.get("next") and not as_json:
                typer.echo(f"more: --before {data['next']}")

    @app.command("export")
    def export(env: str, file: Path, url: Url = DEFAULT_URL, admin_key: Key = "") -> None:
        """Write an environment's flags and segments to a JSON file."""
        with _errors():
            api = Api(url, admin_key)
            flags_ = api.call("GET", f"/environments/{env}/flags")
            segs = api.call("GET", f"/environments/{env}/segments")
            out = {
                "env": env,
                "env_version": flags_["env_version"],
                "segments": segs["segments"],
                "flags": flags_["flags"],
            }
            try:
                file.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
            except OSError as exc:
                fail(f"cannot write {file}: {exc.strerror}")
            typer.echo(
                f"exported {len(out['flags'])} flags and {len(out['segments'])} "
                f"segments of {env} to {file}"
            )

    @app.command("import")
    def import_(env: str, file: Path, url: Url = DEFAULT_URL, admin_key: Key = "") -> None:
        """Create or replace every flag and segment of an export file in an environment."""
        with _errors():
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

    @app.command("watch")
    def watch(
        env: str,
        url: Url = DEFAULT_URL,
        admin_key: Key = "",
        sdk_key: Annotated[
            str, typer.Option("--sdk-key", envvar="FLAGWIRE_SDK_KEY", show_default=False)
        ] = "",
        count: Annotated[int, typer.Option(help="stop after N changes (0: never)")] = 0,
        as_json: Json = False,
    ) -> None:
        """Follow an environment's changes live over the stream."""
        with _errors():
            key = sdk_key or admin_key
            if not key:
                fail("no key: pass --sdk-key or --admin-key")
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(_watch(url, env, key, count, as_json))


async def _watch(url: str, env: str, key: str, count: int, as_json: bool) -> None:
    import websockets
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    from flagwire.core.errors import ProtocolError
    from flagwire.core.protocol import MAX_SERVER_FRAME, Ack, Delete, Hello, Patch, Snapshot
    from flagwire.core.protocol import decode as decode_msg
    from flagwire.core.protocol import encode as encode_msg

    ws_url = url.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    seen = 0
    try:
        async with websockets.connect(
            f"{ws_url}/api/v1/stream?env={env}",
            additional_headers={"Authorization": f"Bearer {key}"},
            max_size=MAX_SERVER_FRAME,
        ) as ws:
            async for frame in ws:
                raw = frame.encode() if isinstance(frame, str) else frame
                try:
                    msg = decode_msg(raw, max_size=MAX_SERVER_FRAME)
                except ProtocolError as exc:
                    fail(f"bad frame from server: {exc}")
                if as_json:
                    typer.echo(raw.decode())
                elif isinstance(msg, Hello):
                    typer.echo(f"connected to {msg.env} at version {msg.version}")
                elif isinstance(msg, Snapshot):
                    typer.echo(
                        f"v{msg.version} snapshot: {len(msg.flags)} flags, "
                        f"{len(msg.segments)} segments"
                    )
                elif isinstance(msg, Patch):
                    state = (
                        (" " + ("on" if msg.data.get("on") else "off"))
                        if msg.kind == "flag"
                        else ""
                    )
                    typer.echo(
                        f"v{msg.version} {msg.kind} {msg.key}{state} "
                        f"(version {msg.data.get('version')}, by "
                        f"{msg.data.get('updated_by', '?')})"
                    )
                elif isinstance(msg, Delete):
                    typer.echo(f"v{msg.version} {msg.kind} {msg.key} deleted")
                else:
                    typer.echo(str(msg))
                sys.stdout.flush()
                version = getattr(msg, "version", None)
                if isinstance(msg, Patch | Delete | Snapshot) and isinstance(version, int):
                    await ws.send(encode_msg(Ack(version)).decode())
                if isinstance(msg, Patch | Delete):
                    seen += 1
                    if count and seen >= count:
                        return
    except InvalidStatus as exc:
        fail(f"the stream refused the connection: HTTP {exc.response.status_code}")
    except ConnectionClosed as exc:
        fail(
            f"the stream closed: {exc.rcvd.code if exc.rcvd else ''} "
            f"{exc.rcvd.reason if exc.rcvd else ''}".rstrip()
        )
    except OSError as exc:
        fail(f"cannot reach {url}: {exc}")
