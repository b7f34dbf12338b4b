"""``flagwire validate``, ``plan``, ``apply`` and ``export``: flags as code.

A folder (``DIR/flags/<key>.yaml``, ``DIR/segments/<key>.yaml``; see
``folder.py``) is the source of truth of one environment.  ``validate``
checks it offline with the model's own messages, ``plan`` shows what would
change and exits 2 when the server differs (drift), ``apply`` makes the
server match in one atomic write (``POST /environments/{env}/apply``) checked
against the versions its plan saw, and ``export`` writes an environment as
such a folder.  Exit status: 0 in sync / done, 1 an error, 2 drift (``plan``).
The guide is docs/flags-as-code.md; the command table is in ``main.py``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from flagwire_server.cli.folder import FOLDERS, SUFFIXES, Folder, Kind, dump_document, minimal
from flagwire_server.cli.folder import read_folder as read
from flagwire_server.cli.http import Api, cli_errors, fail, wait_params
from flagwire_server.cli.options import DEFAULT_URL, Env, Json, Key, Url, Wait
from flagwire_server.cli.output import emit
from flagwire_server.cli.plan import Plan, make_plan, render

__all__ = ["apply", "export", "plan", "validate"]

#: ``plan``'s exit status when the environment differs from the folder.
DRIFT = 2

Dir = Annotated[Path, typer.Argument(help="the folder: DIR/flags/*.yaml, DIR/segments/*.yaml")]
Prune = Annotated[
    bool, typer.Option("--prune", help="delete what the folder does not have (off by default)")
]


def _valid(root: Path) -> Folder:
    """The folder, or every problem on stderr (``file:line: path: message``) and exit 1."""
    folder = read(root)
    if folder.problems:
        for problem in folder.problems:
            typer.echo(str(problem), err=True)
        typer.echo(f"error: {len(folder.problems)} problem(s) in {root}", err=True)
        raise typer.Exit(1)
    return folder


def _plan(api: Api, env: str, folder: Folder, prune: bool) -> Plan:
    flags = api.call("GET", f"/environments/{env}/flags")
    segments = api.call("GET", f"/environments/{env}/segments")
    stored: dict[Kind, list[dict[str, Any]]] = {
        "flag": flags["flags"],
        "segment": segments["segments"],
    }
    version = max(int(flags["env_version"]), int(segments["env_version"]))
    return make_plan(env, version, folder, stored, prune=prune)


def validate(folder: Dir, as_json: Json = False) -> None:
    """Check a folder offline, with the server's own validation messages (file:line)."""
    found = read(folder)
    if as_json:
        emit(
            {
                "valid": not found.problems,
                "flags": len(found.of("flag")),
                "segments": len(found.of("segment")),
                "problems": [
                    {"file": p.file, "line": p.line, "path": p.path, "message": p.message}
                    for p in found.problems
                ],
            },
            True,
        )
        raise typer.Exit(1 if found.problems else 0)
    _valid(folder)
    typer.echo(
        f"{folder}: {len(found.of('flag'))} flags and {len(found.of('segment'))} segments valid"
    )


def plan(
    folder: Dir,
    env: Env = "production",
    prune: Prune = False,
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """Show what apply would change, field by field; exit 2 when the server differs."""
    with cli_errors():
        found = _valid(folder)
        result = _plan(Api(url, admin_key), env, found, prune)
        if as_json:
            emit(result.to_json(), True)
        else:
            for line in render(result):
                typer.echo(line)
    if result.drift:
        raise typer.Exit(DRIFT)


def apply(
    folder: Dir,
    env: Env = "production",
    prune: Prune = False,
    wait: Wait = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            envvar="FLAGWIRE_APPLY_NAME",
            help="names the apply in the audit log (e.g. the commit) [apply of DIR]",
        ),
    ] = None,
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """Make the environment match the folder: every document or none, in one write."""
    with cli_errors():
        found = _valid(folder)
        api = Api(url, admin_key)
        result = _plan(api, env, found, prune)
        if not as_json:
            for line in render(result):
                typer.echo(line)
        if not result.changes:
            if as_json:
                emit({"plan": result.to_json(), "applied": None}, True)
            return
        body = {
            "name": (name or f"apply of {folder}")[:200],
            "documents": [
                {"kind": c.kind, "key": c.key, "document": c.document, "version": c.version}
                for c in result.changes
            ],
        }
        out = api.call("POST", f"/environments/{env}/apply", body=body, params=wait_params(wait))
        if as_json:
            emit({"plan": result.to_json(), "applied": out}, True)
            return
        done = {
            a: sum(c["action"] == a for c in out["changes"]) for a in ("create", "update", "delete")
        }
        line = (
            f"Applied to {env}: {done['create']} created, {done['update']} updated, "
            f"{done['delete']} deleted; environment version {out['env_version']}"
        )
        prop = out.get("propagation")
        if prop and not prop.get("connected"):
            line += "; no clients connected"
        elif prop:
            line += (
                f"; {prop.get('acknowledged')}/{prop.get('connected')} clients acknowledged"
                f"{'' if prop.get('complete') else ' (incomplete)'}"
            )
        typer.echo(line + ".")


def export(
    target: Annotated[
        str, typer.Argument(help="DIR with --env; or ENV FILE: one JSON file (older form)")
    ],
    file: Annotated[Path | None, typer.Argument(help="(older form) the JSON file")] = None,
    env: Annotated[
        str | None, typer.Option("--env", "-e", help="environment to write to DIR as a folder")
    ] = None,
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
) -> None:
    """Write an environment as a folder (--env NAME DIR), or as one JSON file (ENV FILE)."""
    with cli_errors():
        api = Api(url, admin_key)
        if env is None:
            if file is None:
                fail("say which environment: flagwire export --env NAME DIR")
            _export_file(api, target, file)
            return
        if file is not None:
            fail("with --env, give only the folder: flagwire export --env NAME DIR")
        _export_folder(api, env, Path(target))


def _export_folder(api: Api, env: str, root: Path) -> None:
    """One file per document; files of documents the environment no longer has are removed."""
    docs: dict[Kind, list[dict[str, Any]]] = {
        "flag": api.call("GET", f"/environments/{env}/flags")["flags"],
        "segment": api.call("GET", f"/environments/{env}/segments")["segments"],
    }
    written = 0
    for kind, sub in FOLDERS.items():
        where = root / sub
        try:
            where.mkdir(parents=True, exist_ok=True)
            keep = set()
            for doc in docs[kind]:
                path = where / f"{doc['key']}.yaml"
                path.write_text(dump_document(minimal(kind, doc)), encoding="utf-8")
                keep.add(path.name)
                written += 1
            for stale in where.iterdir():
                if stale.suffix.lower() in SUFFIXES and stale.name not in keep:
                    with contextlib.suppress(FileNotFoundError):
                        stale.unlink()
        except OSError as exc:
            fail(f"cannot write {where}: {exc.strerror}")
    typer.echo(
        f"exported {len(docs['flag'])} flags and {len(docs['segment'])} segments of {env} to {root}"
    )


def _export_file(api: Api, env: str, file: Path) -> None:
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
        f"exported {len(out['flags'])} flags and {len(out['segments'])} segments of {env} to {file}"
    )
