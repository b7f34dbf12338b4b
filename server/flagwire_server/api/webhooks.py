"""Admin handlers for outgoing webhooks: create, list, get, edit, delete, deliveries.

The signing secret is made by the server and answered once, by ``create``;
no other answer carries it (``notify/hooks.py`` ``public``).  Creating,
editing and deleting a webhook are audited instance-wide; a delivery is not
(the webhook's delivery log is its record).  Deliveries are the notifier's
(``notify/notifier.py``); this module only stores what a person asked for.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from flagwire.core.errors import ValidationError
from flagwire_server.api.auth import Principal
from flagwire_server.api.helpers import (
    audit_event,
    env_param,
    int_param,
    json_response,
    read_json,
    store,
)
from flagwire_server.api.problems import Problem
from flagwire_server.notify.events import iso_ms
from flagwire_server.notify.hooks import MAX_WEBHOOKS, parse_create, parse_update, public
from flagwire_server.notify.signature import new_secret
from flagwire_server.services import services_of
from flagwire_server.store.webhooks import LOG_KEEP


def _id(request: Request) -> str:
    webhook_id = str(request.path_params["id"])
    if not webhook_id.startswith("wh_") or len(webhook_id) > 40:
        raise Problem(404, f"webhook {webhook_id[:40]!r} does not exist")
    return webhook_id


def _invalid(exc: ValidationError) -> Problem:
    return Problem(422, f"invalid webhook: {len(exc.errors)} problem(s)", errors=exc.errors)


def _now() -> str:
    return iso_ms(int(time.time() * 1000))


def _who(who: Principal | None) -> str:
    return who.name if who else "anonymous"


async def list_webhooks(request: Request, who: Principal | None) -> Response:
    env = env_param(request)
    await store(request).get_env(env)
    hooks = await services_of(request).webhooks.list_webhooks(env)
    return json_response({"webhooks": [public(h) for h in hooks]})


async def create(request: Request, who: Principal | None) -> Response:
    env = env_param(request)
    services = services_of(request)
    try:
        fields = parse_create(
            await read_json(request), allow_private=services.settings.webhook_allow_private
        )
    except ValidationError as exc:
        raise _invalid(exc) from None
    await store(request).get_env(env)
    if len(await services.webhooks.list_webhooks(env)) >= MAX_WEBHOOKS:
        raise Problem(409, f"environment {env!r} already has {MAX_WEBHOOKS} webhooks, the most")
    secret = new_secret()
    record = {
        "id": services.webhooks.new_id(),
        "env": env,
        **fields,
        "created_at": _now(),
        "created_by": _who(who),
        "secret": secret,
    }
    await services.webhooks.create(env, record)
    await audit_event(
        request,
        who,
        action="create",
        kind="webhook",
        key=record["id"],
        detail={"env": env, "url": record["url"], "events": record["events"]},
    )
    # The one answer that carries the secret.
    return json_response({"webhook": public(record), "secret": secret}, 201)


async def get(request: Request, who: Principal | None) -> Response:
    env, webhook_id = env_param(request), _id(request)
    return json_response(public(await services_of(request).webhooks.get(env, webhook_id)))


async def edit(request: Request, who: Principal | None) -> Response:
    env, webhook_id = env_param(request), _id(request)
    services = services_of(request)
    body = await read_json(request)
    current = await services.webhooks.get(env, webhook_id)
    try:
        record = parse_update(current, body, allow_private=services.settings.webhook_allow_private)
    except ValidationError as exc:
        raise _invalid(exc) from None
    record.update(updated_at=_now(), updated_by=_who(who))
    await services.webhooks.update(env, record)
    await audit_event(
        request,
        who,
        action="edit",
        kind="webhook",
        key=webhook_id,
        detail={"env": env, "changed": sorted(k for k in body if k in record)},
    )
    return json_response(public(record))


async def rotate_secret(request: Request, who: Principal | None) -> Response:
    """A new signing secret, answered this once; the old one signs nothing from now on."""
    env, webhook_id = env_param(request), _id(request)
    hooks = services_of(request).webhooks
    secret = new_secret()
    record = {**await hooks.get(env, webhook_id), "secret": secret}
    record.update(updated_at=_now(), updated_by=_who(who))
    await hooks.update(env, record)
    await audit_event(
        request,
        who,
        action="rotate_secret",
        kind="webhook",
        key=webhook_id,
        detail={"env": env},
    )
    return json_response({"webhook": public(record), "secret": secret})


async def delete(request: Request, who: Principal | None) -> Response:
    env, webhook_id = env_param(request), _id(request)
    record = await services_of(request).webhooks.delete(env, webhook_id)
    await audit_event(
        request,
        who,
        action="delete",
        kind="webhook",
        key=webhook_id,
        detail={"env": env, "url": record.get("url")},
    )
    return json_response({"webhook": public(record)})


async def deliveries(request: Request, who: Principal | None) -> Response:
    env, webhook_id = env_param(request), _id(request)
    limit = int_param(request, "limit", LOG_KEEP, 1, LOG_KEEP)
    hooks = services_of(request).webhooks
    await hooks.get(env, webhook_id)  # 404 for a webhook that does not exist
    items: list[dict[str, Any]] = await hooks.deliveries(env, webhook_id, limit)
    return json_response({"deliveries": items})
