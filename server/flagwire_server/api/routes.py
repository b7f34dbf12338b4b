"""The admin API's route table: every operation under ``/api/v1``, in one place.

Why a table: a reader finds every admin route here, as in Starlette's
``routes = [...]``, instead of in decorators spread over the handler modules
that registered themselves on import.  The handlers are plain module-level
functions; this module is the only one that imports them, and the same
:data:`OPERATIONS` build the Starlette routes (``routing.py``) and the OpenAPI
document (``openapi.py``).  Flags and segments share their handlers, bound to
a kind by :func:`_documents`.

Why this module is long (one entry of about ten lines per operation, over 400
lines in all): it grows with the API by design.  Split by resource, the table
would again be spread over many files, which is what it replaced.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Final

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from flagwire_server.api import (
    apply,
    audit,
    documents,
    environments,
    evaluation,
    insight,
    keys,
    ofrep,
    releases,
    schedule,
    webhooks,
)
from flagwire_server.api.auth import Principal
from flagwire_server.api.helpers import MAX_WAIT, json_response
from flagwire_server.api.openapi import document
from flagwire_server.api.routing import ApiRoute, Param, starlette_routes
from flagwire_server.release.schedule import STATUSES
from flagwire_server.store.documents import Kind

__all__ = ["OFREP_PREFIX", "OPERATIONS", "ofrep_routes", "routes"]

OFREP_PREFIX: Final = "/ofrep/v1"

_WRITE_ERRORS: Final = (400, 404, 409, 413, 415, 422)
#: The query of both audit logs (an environment's and the instance's); see ``page_params``.
_AUDIT_PAGE: Final = (
    Param("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}),
    Param(
        "before",
        {"type": "string", "pattern": r"^\d{1,20}-\d{1,20}$"},
        "the cursor from the previous page's next",
    ),
)


def _documents(kind: Kind) -> list[ApiRoute]:
    """The nine operations on one kind of document (flags or segments)."""
    title, plural = kind.capitalize(), f"{kind}s"
    base = f"/environments/{{env}}/{plural}"
    one = f"{base}/{{key}}"
    write = f"{title}Write"
    return [
        ApiRoute(
            "GET",
            base,
            partial(documents.list_docs, kind=kind),
            operation_id=f"list{title}s",
            summary=f"List {plural}",
            tag=plural,
            responses={200: f"{title}List"},
            errors=(400, 404),
            query=(
                Param("tag", {"type": "string"}, "only documents with this tag"),
                Param("q", {"type": "string"}, "substring of key, name or description"),
            ),
        ),
        ApiRoute(
            "POST",
            base,
            partial(documents.create, kind=kind),
            operation_id=f"create{title}",
            summary=f"Create a {kind} (409 if it exists)",
            tag=plural,
            responses={201: write},
            body=f"{title}Input",
            write=True,
            errors=_WRITE_ERRORS,
        ),
        ApiRoute(
            "GET",
            one,
            partial(documents.get, kind=kind),
            operation_id=f"get{title}",
            summary=f"Get a {kind}",
            tag=plural,
            responses={200: title},
            errors=(400, 404),
        ),
        ApiRoute(
            "PUT",
            one,
            partial(documents.replace, kind=kind),
            operation_id=f"replace{title}",
            summary=f"Replace a {kind} (creates it when absent)",
            tag=plural,
            responses={200: write, 201: write},
            body=f"{title}Input",
            write=True,
            errors=_WRITE_ERRORS,
        ),
        ApiRoute(
            "PATCH",
            one,
            partial(documents.patch, kind=kind),
            operation_id=f"patch{title}",
            summary=f'Merge-patch a {kind} (RFC 7386; {{"on": false}} is the kill switch)',
            tag=plural,
            responses={200: write},
            body="MergePatch",
            write=True,
            errors=_WRITE_ERRORS,
        ),
        ApiRoute(
            "DELETE",
            one,
            partial(documents.delete, kind=kind),
            operation_id=f"delete{title}",
            summary=f"Delete a {kind}",
            tag=plural,
            responses={200: write},
            write=True,
            errors=(400, 404, 409),
        ),
        ApiRoute(
            "POST",
            f"{one}/copy",
            partial(documents.copy, kind=kind),
            operation_id=f"copy{title}",
            summary=f"Copy a {kind} to another environment (create or replace there)",
            tag=plural,
            responses={200: write, 201: write},
            body="CopyRequest",
            write=True,
            errors=_WRITE_ERRORS,
        ),
        ApiRoute(
            "GET",
            f"{one}/history",
            partial(documents.history, kind=kind),
            operation_id=f"history{title}",
            summary=f"A {kind}'s versions, newest first (the current one first when it exists)",
            tag=plural,
            responses={200: "History"},
            errors=(400, 404),
        ),
        ApiRoute(
            "POST",
            f"{one}/restore",
            partial(documents.restore, kind=kind),
            operation_id=f"restore{title}",
            summary=f"Restore an earlier version of a {kind} as a new change",
            tag=plural,
            responses={200: write, 201: write},
            body="RestoreRequest",
            write=True,
            errors=_WRITE_ERRORS,
        ),
    ]


def _schedule() -> list[ApiRoute]:
    """Scheduled changes of one environment's flags (``api/schedule.py``)."""
    base = "/environments/{env}/schedule"
    one = f"{base}/{{id}}"
    return [
        ApiRoute(
            "GET",
            base,
            schedule.list_changes,
            operation_id="listScheduledChanges",
            summary="Scheduled changes, by due time (pending and finished)",
            tag="schedule",
            responses={200: "ScheduledChangeList"},
            errors=(400, 404),
            query=(
                Param("flag", {"type": "string"}, "only changes of this flag"),
                Param("status", {"enum": list(STATUSES)}),
            ),
        ),
        ApiRoute(
            "POST",
            base,
            schedule.create,
            operation_id="scheduleChange",
            summary="Schedule a write to a flag (patch, rollout, replace or restore) for a time",
            tag="schedule",
            responses={201: "ScheduledChange"},
            body="ScheduledChangeInput",
            errors=(400, 404, 413, 415, 422),
        ),
        ApiRoute(
            "GET",
            one,
            schedule.get,
            operation_id="getScheduledChange",
            summary="A scheduled change and, once executed, its outcome and propagation",
            tag="schedule",
            responses={200: "ScheduledChange"},
            errors=(404,),
        ),
        ApiRoute(
            "PATCH",
            one,
            schedule.edit,
            operation_id="editScheduledChange",
            summary="Edit a pending scheduled change (409 once it ran or while it runs)",
            tag="schedule",
            responses={200: "ScheduledChange"},
            body="ScheduledChangeEdit",
            errors=(400, 404, 409, 413, 415, 422),
        ),
        ApiRoute(
            "DELETE",
            one,
            schedule.cancel,
            operation_id="cancelScheduledChange",
            summary="Cancel a pending scheduled change (409 once it ran or while it runs)",
            tag="schedule",
            responses={200: "ScheduledChange"},
            errors=(404, 409),
        ),
    ]


def _releases() -> list[ApiRoute]:
    """Release plans of one environment's flags (``api/releases.py``)."""
    base = "/environments/{env}/releases"
    return [
        ApiRoute(
            "GET",
            base,
            releases.list_plans,
            operation_id="listReleasePlans",
            summary="Release plans, newest first (active and ended)",
            tag="releases",
            responses={200: "ReleasePlanList"},
            errors=(404,),
            query=(Param("flag", {"type": "string"}, "only this flag's plans"),),
        ),
        ApiRoute(
            "POST",
            base,
            releases.start,
            operation_id="startReleasePlan",
            summary="Start a release plan (its first stage is written at once)",
            tag="releases",
            responses={201: "ReleasePlan"},
            body="ReleasePlanInput",
            errors=(400, 404, 409, 413, 415, 422),
        ),
        ApiRoute(
            "GET",
            f"{base}/{{id}}",
            releases.get,
            operation_id="getReleasePlan",
            summary="A release plan with its stages and events",
            tag="releases",
            responses={200: "ReleasePlan"},
            errors=(404,),
        ),
        ApiRoute(
            "GET",
            f"{base}/{{id}}/readings",
            releases.readings,
            operation_id="getReleaseGuardReadings",
            summary="A release plan's guard readings, oldest first (values new vs old, n, z)",
            tag="releases",
            responses={200: "ReleaseGuardReadings"},
            errors=(404,),
        ),
        ApiRoute(
            "POST",
            f"{base}/{{id}}/{{op}}",
            releases.operate,
            operation_id="operateReleasePlan",
            summary="pause, resume, advance (now), approve, rollback (to the flag before the "
            "plan, confirmed) or abandon",
            tag="releases",
            responses={200: "ReleasePlan"},
            errors=(404, 409),
        ),
        ApiRoute(
            "GET",
            "/environments/{env}/release-templates",
            releases.templates,
            operation_id="listReleaseTemplates",
            summary="Release templates: the built-in ones and the environment's own",
            tag="releases",
            responses={200: "ReleaseTemplates"},
            errors=(404,),
        ),
        ApiRoute(
            "PUT",
            "/environments/{env}/release-templates/{name}",
            releases.put_template,
            operation_id="putReleaseTemplate",
            summary="Create or replace one of the environment's release templates",
            tag="releases",
            responses={200: "ReleaseTemplate"},
            body="ReleaseTemplate",
            errors=(400, 404, 413, 415, 422),
        ),
    ]


def _webhooks() -> list[ApiRoute]:
    """Outgoing webhooks of one environment (``api/webhooks.py``)."""
    base = "/environments/{env}/webhooks"
    one = f"{base}/{{id}}"
    return [
        ApiRoute(
            "GET",
            base,
            webhooks.list_webhooks,
            operation_id="listWebhooks",
            summary="The environment's webhooks (never their secrets)",
            tag="webhooks",
            responses={200: "WebhookList"},
            errors=(404,),
        ),
        ApiRoute(
            "POST",
            base,
            webhooks.create,
            operation_id="createWebhook",
            summary="Create a webhook; the answer carries its signing secret, shown only once",
            tag="webhooks",
            responses={201: "NewWebhook"},
            body="WebhookInput",
            errors=(400, 404, 409, 413, 415, 422),
        ),
        ApiRoute(
            "GET",
            one,
            webhooks.get,
            operation_id="getWebhook",
            summary="A webhook (without its secret)",
            tag="webhooks",
            responses={200: "Webhook"},
            errors=(404,),
        ),
        ApiRoute(
            "PATCH",
            one,
            webhooks.edit,
            operation_id="editWebhook",
            summary="Change a webhook's URL, events, description or enabled",
            tag="webhooks",
            responses={200: "Webhook"},
            body="WebhookEdit",
            errors=(400, 404, 413, 415, 422),
        ),
        ApiRoute(
            "POST",
            f"{one}/secret",
            webhooks.rotate_secret,
            operation_id="rotateWebhookSecret",
            summary="Replace the webhook's signing secret; the answer carries the new one, once",
            tag="webhooks",
            responses={200: "NewWebhook"},
            errors=(404,),
        ),
        ApiRoute(
            "DELETE",
            one,
            webhooks.delete,
            operation_id="deleteWebhook",
            summary="Delete a webhook and its delivery log",
            tag="webhooks",
            responses={200: "DeletedWebhook"},
            errors=(404,),
        ),
        ApiRoute(
            "GET",
            f"{one}/deliveries",
            webhooks.deliveries,
            operation_id="listWebhookDeliveries",
            summary="The webhook's last delivery attempts, newest first",
            tag="webhooks",
            responses={200: "WebhookDeliveries"},
            errors=(400, 404),
            query=(
                Param("limit", {"type": "integer", "minimum": 1, "maximum": 50, "default": 50}),
            ),
        ),
    ]


async def _openapi(request: Request, who: Principal | None) -> Response:
    return json_response(document(OPERATIONS))


OPERATIONS: Final[tuple[ApiRoute, ...]] = (
    *_documents("flag"),
    *_documents("segment"),
    *_schedule(),
    *_releases(),
    *_webhooks(),
    ApiRoute(
        "GET",
        "/environments",
        environments.list_envs,
        operation_id="listEnvironments",
        summary="List environments",
        tag="environments",
        responses={200: "EnvironmentList"},
    ),
    ApiRoute(
        "POST",
        "/environments",
        environments.create_env,
        operation_id="createEnvironment",
        summary="Create an environment (409 if it exists)",
        tag="environments",
        responses={201: "Environment"},
        body="EnvironmentInput",
        errors=(400, 409, 413, 415, 422),
    ),
    ApiRoute(
        "GET",
        "/environments/{env}",
        environments.get_env,
        operation_id="getEnvironment",
        summary="Get an environment",
        tag="environments",
        responses={200: "Environment"},
        errors=(404,),
    ),
    ApiRoute(
        "DELETE",
        "/environments/{env}",
        environments.delete_env,
        operation_id="deleteEnvironment",
        summary="Delete an environment and all its flags, segments, history and audit",
        tag="environments",
        responses={204: None},
        errors=(404,),
    ),
    ApiRoute(
        "GET",
        "/environments/{env}/audit",
        environments.audit,
        operation_id="listAudit",
        summary="The audit log of an environment, newest first",
        tag="environments",
        responses={200: "AuditPage"},
        errors=(400, 404),
        query=_AUDIT_PAGE,
    ),
    ApiRoute(
        "POST",
        "/environments/{env}/apply",
        apply.apply,
        operation_id="applyDocuments",
        summary="Write many flags and segments atomically, each at the version read "
        "(flags as code: all or nothing)",
        tag="environments",
        responses={200: "ApplyResult"},
        body="ApplyRequest",
        errors=(400, 404, 409, 413, 415, 422),
        query=(
            Param(
                "wait",
                {"type": "number", "minimum": 0, "maximum": MAX_WAIT},
                "seconds to wait for connected clients to acknowledge the apply",
            ),
        ),
    ),
    ApiRoute(
        "GET",
        "/environments/{env}/changes/{version}",
        environments.change,
        operation_id="getChange",
        summary="Propagation figures of a recent change",
        tag="environments",
        responses={200: "Change"},
        errors=(404,),
    ),
    ApiRoute(
        "POST",
        "/environments/{env}/evaluate",
        evaluation.evaluate,
        operation_id="evaluate",
        summary="Evaluate one flag or all flags for a context (admin key or an SDK key of env)",
        tag="evaluation",
        responses={200: "Evaluation"},
        body="EvaluateRequest",
        auth="sdk",
        errors=(400, 404, 413, 415, 422),
    ),
    ApiRoute(
        "GET",
        "/keys",
        keys.list_keys,
        operation_id="listKeys",
        summary="List API keys (never their secrets)",
        tag="keys",
        responses={200: "KeyList"},
    ),
    ApiRoute(
        "POST",
        "/keys",
        keys.create_key,
        operation_id="createKey",
        summary="Create an SDK or admin key; the secret is in this response only",
        tag="keys",
        responses={201: "NewKey"},
        body="KeyInput",
        errors=(400, 413, 415, 422),
    ),
    ApiRoute(
        "DELETE",
        "/keys/{id}",
        keys.revoke_key,
        operation_id="revokeKey",
        summary="Revoke a key; its streams close within a second",
        tag="keys",
        responses={200: "RevokedKey"},
        errors=(404,),
    ),
    ApiRoute(
        "GET",
        "/audit",
        audit.instance_audit,
        operation_id="listInstanceAudit",
        summary=(
            "The instance-wide audit trail, newest first: environments created and deleted, "
            "API keys created and revoked, console sign-ins (also failed) and sign-outs, "
            "admin-key rotation"
        ),
        tag="audit",
        responses={200: "InstanceAuditPage"},
        errors=(400,),
        query=_AUDIT_PAGE,
    ),
    ApiRoute(
        "GET",
        "/environments/{env}/flags/{key}/insight",
        insight.flag_insight,
        operation_id="getFlagInsight",
        summary=(
            "What clients evaluated: evaluations per variation over a window in steps, "
            "distinct contexts (estimated), reasons, events, last evaluation, applications"
        ),
        tag="insight",
        responses={200: "FlagInsight"},
        errors=(400, 404),
        query=(
            Param(
                "window",
                {"type": "integer", "minimum": 60, "maximum": 7_776_000, "default": 86_400},
                "seconds back from now",
            ),
            Param(
                "step",
                {"type": "integer", "minimum": 60, "maximum": 7_776_000},
                "seconds per bucket (default 300, or 3600 past a day; at most 2,000 buckets)",
            ),
        ),
    ),
    ApiRoute(
        "GET",
        "/environments/{env}/clients",
        insight.clients,
        operation_id="listClients",
        summary="The SDK instances streaming this environment, their versions and lag",
        tag="insight",
        responses={200: "ClientInventory"},
        errors=(404,),
    ),
    ApiRoute(
        "GET",
        "/environments/{env}/cleanup",
        insight.cleanup,
        operation_id="getCleanupReport",
        summary=(
            "Flags that can go: not evaluated, one variation to everyone, unchanged "
            "for N days, or blocked by their prerequisites"
        ),
        tag="insight",
        responses={200: "CleanupReport"},
        errors=(400, 404),
        query=(Param("days", {"type": "integer", "minimum": 1, "maximum": 3650, "default": 7}),),
    ),
    ApiRoute(
        "POST",
        "/environments/{env}/flags/{key}/archive",
        insight.archive_flag,
        operation_id="archiveFlag",
        summary="Archive a flag: SDKs see it deleted; it is kept and can be restored",
        tag="insight",
        responses={200: "ArchiveResult"},
        errors=(404, 409),
    ),
    ApiRoute(
        "GET",
        "/environments/{env}/archived",
        insight.archived,
        operation_id="listArchivedFlags",
        summary="The archived flags of an environment",
        tag="insight",
        responses={200: "ArchivedFlags"},
        errors=(404,),
    ),
    ApiRoute(
        "POST",
        "/environments/{env}/archived/{key}/restore",
        insight.restore_flag,
        operation_id="restoreArchivedFlag",
        summary="Restore an archived flag as a new version (SDKs receive it again)",
        tag="insight",
        responses={200: "ArchiveResult"},
        errors=(404, 409, 422),
    ),
    ApiRoute(
        "GET",
        "/environments/{env}/insight/watched",
        insight.get_watched,
        operation_id="getWatchedFlags",
        summary="The flags whose variations clients attribute tracked events to",
        tag="insight",
        responses={200: "WatchedFlags"},
        errors=(404,),
    ),
    ApiRoute(
        "PUT",
        "/environments/{env}/insight/watched",
        insight.put_watched,
        operation_id="setWatchedFlags",
        summary="Replace the watched flags (pushed to clients within a flush interval)",
        tag="insight",
        responses={200: "WatchedFlags"},
        body="WatchedFlags",
        errors=(400, 404, 413, 415, 422),
    ),
    ApiRoute(
        "GET",
        "/openapi.json",
        _openapi,
        operation_id="openapi",
        summary="This document",
        tag="meta",
        responses={200: "OpenAPI"},
        auth="none",
    ),
)


def routes() -> list[BaseRoute]:
    """Starlette routes for the whole table; add them after every other ``/api/v1`` route."""
    return starlette_routes(OPERATIONS)


def ofrep_routes(allowed_origins: Sequence[str] = ()) -> BaseRoute:
    """OpenFeature's remote evaluation protocol under ``/ofrep/v1`` (see ``api/ofrep.py``).

    Apart from :data:`OPERATIONS` because OFREP fixes its own paths, keys and
    error shapes.  CORS (preflight included) applies to these paths only, for
    ``FLAGWIRE_ALLOWED_ORIGINS``: a page on an allowed origin may evaluate with a
    client-side key; the admin API stays same-origin.
    """
    middleware = []
    if allowed_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(allowed_origins),
                allow_methods=["GET", "POST"],
                allow_headers=[
                    "Authorization",
                    "Content-Type",
                    "If-None-Match",
                    "Last-Event-ID",
                    "X-API-Key",
                ],
                expose_headers=["ETag", "Retry-After"],
                max_age=600,
            )
        )
    return Mount(
        OFREP_PREFIX,
        routes=[
            Route("/evaluate/flags", ofrep.bulk, methods=["POST"]),
            Route("/evaluate/flags/{key:path}", ofrep.single, methods=["POST"]),
            Route("/configuration", ofrep.configuration, methods=["GET"]),
            Route("/events", ofrep.events, methods=["GET"]),
        ],
        middleware=middleware,
    )
