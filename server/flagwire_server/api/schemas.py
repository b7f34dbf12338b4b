"""The component schemas of the admin API's OpenAPI document, written by hand.

Why apart from ``openapi.py``: paths, parameters and status codes are generated
from the route table there; these are the shapes of the bodies, which only a
person can say.  Precise enough for schemathesis to check every response.

Why one module past 400 lines: the components share one namespace in the
document and refer to each other by name (``ref``), so they are kept in one
dict where a clash or a dangling reference is seen at once (and
``tests/test_openapi.py`` checks every reference resolves).
"""

from __future__ import annotations

from typing import Any, Final

from flagwire.core.limits import ENV_PATTERN, KEY_PATTERN
from flagwire.core.model import SEMANTICS
from flagwire_server.notify.events import EVENT_TYPES
from flagwire_server.notify.hooks import MAX_URL
from flagwire_server.release.schedule import STATUSES

__all__ = ["SCHEMAS", "ref"]

_S = dict[str, Any]
_INT: Final[_S] = {"type": "integer"}
_STR: Final[_S] = {"type": "string"}
_NUM_OR_NULL: Final[_S] = {"type": ["number", "null"]}
_INT_OR_NULL: Final[_S] = {"type": ["integer", "null"]}


def _obj(props: _S, required: tuple[str, ...] = (), extra: bool = True) -> _S:
    return {
        "type": "object",
        "properties": props,
        "required": list(required),
        "additionalProperties": extra,
    }


def ref(name: str) -> _S:
    return {"$ref": f"#/components/schemas/{name}"}


_DOC_FIELDS: Final[_S] = {
    "key": {"type": "string", "pattern": f"^{KEY_PATTERN}$"},
    "name": _STR,
    "description": _STR,
    "tags": {"type": "array", "items": _STR},
    "created_at": {"type": ["string", "number", "null"]},
    "updated_at": {"type": ["string", "number", "null"]},
    "updated_by": {"type": ["string", "number", "null"]},
    "semantics": {
        "enum": list(SEMANTICS),
        "description": "evaluation rules: flagwire's (absent) or LaunchDarkly's (imported)",
    },
}
_FLAG_FIELDS: Final[_S] = {
    **_DOC_FIELDS,
    "on": {"type": "boolean"},
    "variations": {"type": "array", "minItems": 1},
    "off_variation": _INT_OR_NULL,
    "targets": {"type": "array", "items": {"type": "object"}},
    "rules": {"type": "array", "items": {"type": "object"}},
    "fallthrough": {"type": "object"},
    "prerequisites": {"type": "array", "items": {"type": "object"}},
    "salt": _STR,
    "client_side": {"type": "boolean", "description": "evaluable with client-side keys (OFREP)"},
}
_SEGMENT_FIELDS: Final[_S] = {
    **_DOC_FIELDS,
    "included": {"type": "array", "items": _STR},
    "excluded": {"type": "array", "items": _STR},
    "rules": {"type": "array", "items": {"type": "object"}},
    "salt": {**_STR, "description": 'weighted rules\' hash prefix (only "launchdarkly")'},
}
_PROPAGATION: Final[_S] = _obj(
    {
        "version": _INT,
        "connected": _INT_OR_NULL,
        "acknowledged": _INT_OR_NULL,
        "lost": _INT_OR_NULL,
        "complete": {"type": ["boolean", "null"]},
        "p50_ms": _NUM_OR_NULL,
        "p99_ms": _NUM_OR_NULL,
        "max_ms": _NUM_OR_NULL,
    }
)
_KEY: Final[_S] = _obj(
    {
        "id": _STR,
        "name": _STR,
        "kind": {"enum": ["sdk", "client", "admin"]},
        "env": {"type": ["string", "null"]},
        "prefix": _STR,
        "created_at": _STR,
        "revoked_at": {"type": ["string", "null"]},
    },
    ("id", "name", "kind", "env", "prefix", "created_at", "revoked_at"),
    extra=False,
)
_ENV_SUMMARY: Final[_S] = _obj({"key": _STR, "name": _STR, "created_at": _STR}, ("key", "name"))
_DETAIL: Final[_S] = _obj(
    {
        "value": {},
        "variation_index": _INT_OR_NULL,
        "reason": _STR,
        "rule_index": _INT_OR_NULL,
        "rule_id": {"type": ["string", "null"]},
        "prerequisite_key": {"type": ["string", "null"]},
        "error_kind": {"type": ["string", "null"]},
    },
    ("value", "variation_index", "reason"),
)


def _write(kind: str) -> _S:
    return _obj(
        {
            kind: {"oneOf": [ref(kind.capitalize()), {"type": "null"}]},
            "version": _INT,
            "env_version": _INT,
            "changed": {
                "type": "boolean",
                "description": "false when a merge patch changed nothing (nothing was sent)",
            },
            "propagation": ref("Propagation"),
        },
        (kind, "version", "env_version", "changed"),
    )


_SUBSCRIPTION: Final[_S] = {
    "enum": [*EVENT_TYPES, "plan.*", "*"],
    "description": "an event type, plan.* (every plan event) or * (every event)",
}
_WEBHOOK_FIELDS: Final[_S] = {
    "url": {"type": "string", "maxLength": MAX_URL, "description": "http or https"},
    "events": {"type": "array", "items": _SUBSCRIPTION, "minItems": 1},
    "description": {"type": "string", "maxLength": 500},
    "enabled": {"type": "boolean", "default": True},
}
_WEBHOOKS: Final[dict[str, _S]] = {
    "WebhookInput": _obj(_WEBHOOK_FIELDS, ("url", "events"), extra=False),
    "WebhookEdit": _obj(_WEBHOOK_FIELDS, extra=False),
    "Webhook": _obj(
        {
            **_WEBHOOK_FIELDS,
            "id": _STR,
            "env": _STR,
            "created_at": _STR,
            "created_by": _STR,
            "updated_at": _STR,
            "updated_by": _STR,
        },
        ("id", "env", "url", "events", "enabled"),
    ),
    "NewWebhook": _obj(
        {
            "webhook": ref("Webhook"),
            "secret": {
                "type": "string",
                "description": "the signing secret (whsec_...), shown only in this answer",
            },
        },
        ("webhook", "secret"),
    ),
    "DeletedWebhook": _obj({"webhook": ref("Webhook")}, ("webhook",)),
    "WebhookList": _obj({"webhooks": {"type": "array", "items": ref("Webhook")}}, ("webhooks",)),
    "WebhookDelivery": _obj(
        {
            "delivery": _STR,
            "event_id": _STR,
            "event": _STR,
            "attempt": _INT,
            "at": _STR,
            "status": _INT_OR_NULL,
            "duration_ms": {"type": "number"},
            "response": {"type": "string", "description": "the first 1 KiB of the answer"},
            "error": _STR,
            "outcome": {"enum": ["delivered", "retrying", "failed", "refused"]},
            "by": {"type": "string", "description": "the server that sent it"},
        },
        ("delivery", "event_id", "event", "attempt", "at", "outcome"),
    ),
    "WebhookDeliveries": _obj(
        {"deliveries": {"type": "array", "items": ref("WebhookDelivery")}}, ("deliveries",)
    ),
}

SCHEMAS: Final[dict[str, _S]] = {
    "Problem": _obj(
        {
            "type": _STR,
            "title": _STR,
            "status": _INT,
            "detail": _STR,
            "errors": {
                "type": "array",
                "items": _obj({"path": _STR, "message": _STR}, ("path", "message"), extra=False),
            },
            "current_version": _INT,
        },
        ("type", "title", "status", "detail", "errors"),
    ),
    "Flag": _obj({**_FLAG_FIELDS, "version": _INT}, ("key", "version", "variations")),
    "FlagInput": _obj(
        {
            **_FLAG_FIELDS,
            "version": {
                **_INT,
                "minimum": 0,
                "description": "the expected current version (optional)",
            },
        },
        ("variations", "fallthrough"),
    ),
    "Segment": _obj({**_SEGMENT_FIELDS, "version": _INT}, ("key", "version")),
    "SegmentInput": _obj({**_SEGMENT_FIELDS, "version": {**_INT, "minimum": 0}}),
    "MergePatch": {"type": "object", "description": "RFC 7386 JSON merge patch"},
    "FlagWrite": _write("flag"),
    "SegmentWrite": _write("segment"),
    "FlagList": _obj(
        {"flags": {"type": "array", "items": ref("Flag")}, "env_version": _INT},
        ("flags", "env_version"),
    ),
    "SegmentList": _obj(
        {"segments": {"type": "array", "items": ref("Segment")}, "env_version": _INT},
        ("segments", "env_version"),
    ),
    "History": _obj(
        {
            "key": _STR,
            "current_version": _INT_OR_NULL,
            "versions": {"type": "array", "items": {"type": "object"}},
        },
        ("key", "current_version", "versions"),
    ),
    "ApplyRequest": _obj(
        {
            "name": {
                "type": "string",
                "minLength": 1,
                "maxLength": 200,
                "description": "names the apply in the audit log (e.g. a commit)",
            },
            "documents": {
                "type": "array",
                "items": _obj(
                    {
                        "kind": {"enum": ["flag", "segment"]},
                        "key": _STR,
                        "document": {
                            "type": ["object", "null"],
                            "description": "the whole document; null deletes it",
                        },
                        "version": {
                            **_INT,
                            "minimum": 0,
                            "description": "the version read (0: absent); another is a 409",
                        },
                    },
                    ("kind", "key", "document"),
                    extra=False,
                ),
            },
        },
        ("documents",),
        extra=False,
    ),
    "ApplyResult": _obj(
        {
            "name": _STR,
            "env_version": _INT,
            "changes": {
                "type": "array",
                "items": _obj(
                    {
                        "kind": {"enum": ["flag", "segment"]},
                        "key": _STR,
                        "action": {"enum": ["create", "update", "delete"]},
                        "version": _INT,
                        "env_version": _INT,
                    },
                    ("kind", "key", "action", "version", "env_version"),
                ),
            },
            "unchanged": {
                "type": "array",
                "items": _obj({"kind": _STR, "key": _STR}, ("kind", "key")),
            },
            "propagation": ref("Propagation"),
        },
        ("name", "env_version", "changes", "unchanged"),
    ),
    "CopyRequest": _obj({"to": _STR, "version": {**_INT, "minimum": 0}}, ("to",)),
    "RestoreRequest": _obj({"version": {**_INT, "minimum": 1}}, ("version",)),
    "Propagation": _PROPAGATION,
    "EnvironmentInput": _obj(
        {"key": {"type": "string", "pattern": f"^{ENV_PATTERN}$"}, "name": _STR},
        ("key",),
        extra=False,
    ),
    "Environment": _obj(
        {
            "key": _STR,
            "name": _STR,
            "created_at": _STR,
            "version": _INT,
            "epoch": _STR,
            "connected": _INT_OR_NULL,
        },
        ("key", "name", "version", "epoch", "connected"),
    ),
    "EnvironmentList": _obj(
        {"environments": {"type": "array", "items": _ENV_SUMMARY}}, ("environments",)
    ),
    "AuditEntry": _obj(
        {
            "id": _STR,
            "at": _STR,
            "actor": _STR,
            "action": _STR,
            "kind": _STR,
            "key": _STR,
            "version": _INT,
            "flag_version": _INT,
            "before": {"type": ["object", "null"]},
            "after": {"type": ["object", "null"]},
        },
        ("id", "at", "actor", "action", "kind", "key", "version", "flag_version"),
    ),
    "FlagInsight": _obj(
        {
            "env": _STR,
            "flag": _STR,
            "start": _INT,
            "end": _INT,
            "step": _INT,
            "variations": {
                "type": "array",
                "items": _obj(
                    {
                        "variation": {"type": "integer", "description": "-1: the default served"},
                        "value": {},
                        "evaluations": _INT,
                        "series": {"type": "array", "items": _INT},
                        "reasons": {"type": "object", "additionalProperties": _INT},
                        "contexts": {"type": "integer", "description": "HyperLogLog estimate"},
                        "events": {
                            "type": "object",
                            "additionalProperties": _obj(
                                {"count": _INT, "sum": {"type": "number"}}, ("count", "sum")
                            ),
                        },
                    },
                    ("variation", "evaluations", "series", "reasons", "contexts", "events"),
                ),
            },
            "last_evaluated": _INT_OR_NULL,
            "applications": {
                "type": "array",
                "items": _obj({"app": _STR, "last_evaluated": _INT}, ("app", "last_evaluated")),
                "description": "at most 100 (the most recent first)",
            },
            "applications_over_cap": {
                "type": "integer",
                "description": "distinct applications past the cap of 100, not listed (estimate)",
            },
        },
        ("env", "flag", "start", "end", "step", "variations", "last_evaluated", "applications"),
    ),
    "ClientInventory": _obj(
        {
            "env": _STR,
            "env_version": _INT,
            "clients": {
                "type": "array",
                "items": _obj(
                    {
                        "id": _STR,
                        "app": _STR,
                        "instance": _STR,
                        "sdk": _STR,
                        "sdk_version": _STR,
                        "host": _STR,
                        "pid": _INT,
                        "connected_since": _INT,
                        "applied_version": _INT,
                        "env_version": _INT,
                        "lag": _INT,
                        "server": _STR,
                    },
                    ("id", "app", "instance", "sdk", "connected_since", "applied_version", "lag"),
                ),
            },
        },
        ("env", "env_version", "clients"),
    ),
    "CleanupReport": _obj(
        {
            "env": _STR,
            "days": _INT,
            "flags": {
                "type": "array",
                "items": _obj(
                    {
                        "key": _STR,
                        "on": {"type": "boolean"},
                        "last_evaluated": _INT_OR_NULL,
                        "updated": _INT_OR_NULL,
                        "served": {"type": "array", "items": _INT},
                        "blocked_by": {"type": "array", "items": _STR},
                        "reasons": {
                            "type": "array",
                            "items": {
                                "enum": ["not_evaluated", "one_variation", "unchanged", "blocked"]
                            },
                        },
                    },
                    ("key", "on", "last_evaluated", "served", "blocked_by", "reasons"),
                ),
            },
        },
        ("env", "days", "flags"),
    ),
    "ArchiveResult": _obj(
        {"key": _STR, "archived": {"type": "boolean"}, "env_version": _INT},
        ("key", "archived", "env_version"),
    ),
    "ArchivedFlags": _obj(
        {
            "env": _STR,
            "flags": {
                "type": "array",
                "items": _obj({"key": _STR, "flag": {"type": "object"}}, ("key", "flag")),
            },
        },
        ("env", "flags"),
    ),
    "WatchedFlags": _obj(
        {
            "env": _STR,
            "flags": {
                "type": "array",
                "items": {"type": "string", "pattern": f"^{KEY_PATTERN}$"},
                "maxItems": 1000,
            },
        },
        ("flags",),
    ),
    "AuditPage": _obj(
        {
            "entries": {"type": "array", "items": ref("AuditEntry")},
            "next": {"type": ["string", "null"]},
        },
        ("entries", "next"),
    ),
    "InstanceAuditEntry": _obj(
        {
            "id": _STR,
            "at": _STR,
            "actor": _STR,
            "action": {"type": "string", "examples": ["create", "delete", "revoke", "signin"]},
            "kind": {"type": "string", "enum": ["environment", "key", "session", "admin_key"]},
            "key": _STR,
            "address": _STR,
            "detail": {"type": "object"},
        },
        ("id", "at", "actor", "action", "kind", "key", "address", "detail"),
    ),
    "InstanceAuditPage": _obj(
        {
            "entries": {"type": "array", "items": ref("InstanceAuditEntry")},
            "next": {"type": ["string", "null"]},
        },
        ("entries", "next"),
    ),
    "Change": _obj(
        {**_PROPAGATION["properties"], "key": _STR, "actor": _STR, "committed_ms": _INT},
        ("version", "key", "committed_ms"),
    ),
    "EvaluateRequest": _obj(
        {"context": {"type": "object"}, "flag": _STR, "default": {}}, ("context",)
    ),
    "Evaluation": {
        "oneOf": [
            {
                **_DETAIL,
                "properties": {**_DETAIL["properties"], "key": _STR, "env_version": _INT},
                "required": ["key", "value", "reason", "env_version"],
            },
            _obj(
                {"flags": {"type": "object", "additionalProperties": _DETAIL}, "env_version": _INT},
                ("flags", "env_version"),
            ),
        ]
    },
    "KeyInput": _obj(
        {
            "name": {"type": "string", "minLength": 1, "maxLength": 100},
            "kind": {"enum": ["sdk", "client", "admin"]},
            "env": {"type": ["string", "null"]},
        },
        ("name", "kind"),
        extra=False,
    ),
    "Key": _KEY,
    "KeyList": _obj({"keys": {"type": "array", "items": ref("Key")}}, ("keys",)),
    "NewKey": _obj({"key": ref("Key"), "secret": _STR}, ("key", "secret")),
    "RevokedKey": _obj({"key": ref("Key")}, ("key",)),
    "OpenAPI": {"type": "object"},
    "ScheduledChangeInput": _obj(
        {
            "flag": {"type": "string", "pattern": f"^{KEY_PATTERN}$"},
            "action": {"enum": ["patch", "rollout", "replace", "restore"], "default": "patch"},
            "change": {
                "type": "object",
                "description": "patch: a merge patch; rollout: the new fallthrough; "
                "replace: the whole flag",
            },
            "version": {**_INT, "minimum": 1, "description": "restore: the version to restore"},
            "due_at": {
                "type": ["string", "number"],
                "description": "RFC 3339 time with an offset, or epoch seconds",
            },
            "if_changed": {
                "enum": ["apply", "skip", "fail"],
                "default": "fail",
                "description": "what to do when the flag was edited since it was scheduled",
            },
            "wait": {"type": "number", "minimum": 0, "maximum": 30, "default": 5},
        },
        ("flag", "due_at"),
        extra=False,
    ),
    "ScheduledChangeEdit": _obj(
        {
            "change": {"type": "object"},
            "version": {**_INT, "minimum": 1},
            "due_at": {"type": ["string", "number"]},
            "if_changed": {"enum": ["apply", "skip", "fail"]},
            "wait": {"type": "number", "minimum": 0, "maximum": 30},
        },
        extra=False,
    ),
    "ScheduledChange": _obj(
        {
            "id": _STR,
            "env": _STR,
            "flag": _STR,
            "action": {"enum": ["patch", "rollout", "replace", "restore"]},
            "due_at": _STR,
            "due_ms": _INT,
            "if_changed": {"enum": ["apply", "skip", "fail"]},
            "wait": {"type": "number"},
            "base_version": _INT_OR_NULL,
            "status": {"enum": list(STATUSES)},
            "created_by": _STR,
            "reason": _STR,
            "lateness_ms": _INT,
            "flag_version": _INT_OR_NULL,
            "env_version": _INT_OR_NULL,
            "propagation": _PROPAGATION,
            "summary": {
                "type": "string",
                "description": 'propagation in words: "applied by N of M in X ms"',
            },
            "executed_by": _STR,
        },
        ("id", "env", "flag", "action", "due_at", "status"),
    ),
    "ReleaseStage": _obj(
        {
            "name": _STR,
            "segments": {"type": "array", "items": _STR},
            "percent": {"type": "number", "minimum": 0, "maximum": 100},
            "hold": {"type": "number", "minimum": 0, "description": "seconds"},
            "approval": {"type": "boolean"},
            "guards": {
                "type": "array",
                "maxItems": 10,
                "items": ref("ReleaseGuard"),
                "description": "checked while this stage is the current one",
            },
        }
    ),
    "ReleaseGuard": _obj(
        {
            "name": {"type": "string", "minLength": 1, "maxLength": 100},
            "query": {
                "type": "string",
                "description": "Prometheus guard: PromQL giving one number, with max or min",
            },
            "max": {"type": "number"},
            "min": {"type": "number"},
            "event": {
                "type": "string",
                "description": "client-event guard: the tracked event whose rate per "
                "evaluation (or mean value) is compared, new variation vs old",
            },
            "stat": {
                "enum": ["rate", "mean"],
                "default": "rate",
                "description": "rate: events per evaluation (z-test); mean: the events' mean "
                "value (Welch's t-test)",
            },
            "margin": {
                "type": "number",
                "minimum": 0,
                "default": 0,
                "description": "the increase accepted: a proportion (at most 1) for rates, "
                "the value's unit for means",
            },
            "min_samples": {"type": "integer", "minimum": 1, "default": 1000},
            "confidence": {"type": "number", "minimum": 0.5, "maximum": 0.999999, "default": 0.99},
            "worse": {"enum": ["higher", "lower"], "default": "higher"},
            "action": {"enum": ["rollback", "pause"], "default": "rollback"},
        }
    ),
    "ReleaseGuardReadings": _obj(
        {"readings": {"type": "array", "items": {"type": "object"}}}, ("readings",)
    ),
    "ReleaseTemplate": _obj(
        {"name": _STR, "stages": {"type": "array", "items": ref("ReleaseStage")}}, ("stages",)
    ),
    "ReleaseTemplates": _obj(
        {
            "templates": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": ref("ReleaseStage")},
            }
        },
        ("templates",),
    ),
    "ReleasePlanInput": _obj(
        {
            "flag": {"type": "string", "pattern": f"^{KEY_PATTERN}$"},
            "variation": {
                **_INT,
                "minimum": 0,
                "description": "the new variation's index (of two, the one not served by default)",
            },
            "template": _STR,
            "stages": {"type": "array", "items": ref("ReleaseStage")},
            "guards": {
                "type": "array",
                "maxItems": 10,
                "items": ref("ReleaseGuard"),
                "description": "checked for as long as the plan runs",
            },
            "wait": {"type": "number", "minimum": 0, "maximum": 30},
        },
        ("flag",),
    ),
    "ReleasePlan": _obj(
        {
            "id": _STR,
            "env": _STR,
            "flag": _STR,
            "variation": _INT,
            "old_variation": _INT,
            "stages": {"type": "array", "items": ref("ReleaseStage")},
            "status": {"enum": ["running", "paused", "completed", "rolled_back", "abandoned"]},
            "stage": _INT,
            "stage_started_ms": _INT,
            "approved": {"type": "boolean"},
            "flag_version": _INT,
            "before_version": _INT_OR_NULL,
            "events": {"type": "array", "items": {"type": "object"}},
        },
        ("id", "flag", "status", "stage", "stages"),
    ),
    "ReleasePlanList": _obj({"plans": {"type": "array", "items": ref("ReleasePlan")}}, ("plans",)),
    "ScheduledChangeList": _obj(
        {"changes": {"type": "array", "items": ref("ScheduledChange")}}, ("changes",)
    ),
    **_WEBHOOKS,
}
