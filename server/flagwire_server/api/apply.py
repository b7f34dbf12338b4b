"""``POST /environments/{env}/apply``: many flags and segments written as one atomic change.

Why an endpoint of its own rather than many PUTs: ``flagwire apply`` (flags as
code) promises all or nothing, which only the store's one script can keep
(``store/apply.py``).  The body lists documents with the version the caller
read (``flagwire plan`` saw it); any of them at another version is a 409 and
nothing is written.  ``?wait=`` waits for clients to acknowledge the last of
the apply's versions.
"""

from __future__ import annotations

from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response

from flagwire.core.limits import MAX_SERVER_FRAME
from flagwire_server.api.auth import Principal
from flagwire_server.api.helpers import (
    env_param,
    json_response,
    propagation,
    read_json,
    store,
    wait_param,
)
from flagwire_server.api.problems import Problem
from flagwire_server.store.apply import ApplyItem

__all__ = ["MAX_APPLY_BODY", "MAX_APPLY_NAME", "apply"]

#: Largest apply body: a whole environment's snapshot, plus room for the envelope.
MAX_APPLY_BODY: Final = MAX_SERVER_FRAME + 256 * 1024
#: Longest apply name (it is the audit entry's key, e.g. a commit and its title).
MAX_APPLY_NAME: Final = 200


def _items(body: Any) -> tuple[str, list[ApplyItem]]:
    """The apply's name and documents, every shape problem collected into one 422."""
    if not isinstance(body, dict):
        raise Problem(422, "expected an object", errors=[("", "expected {name, documents}")])
    errors: list[tuple[str, str]] = []
    for extra in sorted(set(body) - {"name", "documents"}):
        errors.append((extra, f'unknown field "{extra}"'))
    name = body.get("name", "apply")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_APPLY_NAME:
        errors.append(("name", f"expected a string of 1 to {MAX_APPLY_NAME} characters"))
    docs = body.get("documents")
    items: list[ApplyItem] = []
    if not isinstance(docs, list):
        errors.append(("documents", "required: an array"))
        docs = []
    for i, entry in enumerate(docs):
        path = f"documents[{i}]"
        if not isinstance(entry, dict):
            errors.append((path, "expected an object {kind, key, document, version}"))
            continue
        for extra in sorted(set(entry) - {"kind", "key", "document", "version"}):
            errors.append((f"{path}.{extra}", f'unknown field "{extra}"'))
        kind, key, doc = entry.get("kind"), entry.get("key"), entry.get("document", ...)
        version = entry.get("version")
        if kind not in ("flag", "segment"):
            errors.append((f"{path}.kind", "expected flag or segment"))
        if not isinstance(key, str):
            errors.append((f"{path}.key", "required: a string"))
        if doc is ... or not (doc is None or isinstance(doc, dict)):
            errors.append((f"{path}.document", "required: the document, or null to delete it"))
        if version is not None and (type(version) is not int or version < 0):
            errors.append((f"{path}.version", "expected the version read, a non-negative integer"))
        if not errors:
            items.append(ApplyItem("flag" if kind == "flag" else "segment", str(key), doc, version))
    if errors:
        raise Problem(422, f"invalid apply: {len(errors)} problem(s)", errors=errors)
    return str(name), items


async def apply(request: Request, who: Principal | None) -> Response:
    env = env_param(request)
    wait = wait_param(request)
    name, items = _items(await read_json(request, limit=MAX_APPLY_BODY))
    actor = who.name if who else "anonymous"
    res = await store(request).apply(env, items, actor=actor, name=name)
    body: dict[str, Any] = {
        "name": name,
        "env_version": res.env_version,
        "changes": [
            {
                "kind": c.kind,
                "key": c.key,
                "action": c.action,
                "version": c.version,
                "env_version": c.env_version,
            }
            for c in res.changes
        ],
        "unchanged": [{"kind": kind, "key": key} for kind, key in res.unchanged],
    }
    prop = await propagation(request, env, res.env_version, wait) if res.changes else None
    if prop is not None:
        body["propagation"] = prop
    return json_response(body)
