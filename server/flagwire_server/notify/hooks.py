"""A webhook as a person sends it: checked here before anything is stored (pure).

Why the URL rules: a webhook makes the server send requests where a user
says, so it is a server-side request forgery tool in the wrong hands (the
admin API is for administrators, but the server may reach networks they
cannot).  Only ``http`` and ``https``, a host, no user name or password in the
URL (they would be shown by every listing), at most :data:`MAX_URL` characters.
With ``FLAGWIRE_WEBHOOK_ALLOW_PRIVATE=0`` a URL whose host is a loopback,
private, link-local or otherwise non-global address is refused here (for
literal addresses) and again at each delivery (for names, after resolving
them); the default allows them, since a self-hosted flagwire usually calls
receivers on its own network.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from typing import Any, Final

from flagwire.core.errors import ValidationError
from flagwire_server.notify.events import EVENT_TYPES

__all__ = [
    "MAX_URL",
    "MAX_WEBHOOKS",
    "PUBLIC_FIELDS",
    "check_url",
    "is_private",
    "parse_create",
    "parse_update",
    "public",
]

MAX_URL: Final = 2048
MAX_DESCRIPTION: Final = 500
#: Webhooks one environment may have.
MAX_WEBHOOKS: Final = 20
#: What the API shows of a webhook: everything but its secret.
PUBLIC_FIELDS: Final = (
    "id",
    "env",
    "url",
    "events",
    "description",
    "enabled",
    "created_at",
    "created_by",
    "updated_at",
    "updated_by",
)
_FIELDS: Final = frozenset({"url", "events", "description", "enabled"})
_SUBSCRIPTIONS: Final = frozenset(
    {"*", *EVENT_TYPES, *{t.partition(".")[0] + ".*" for t in EVENT_TYPES}}
)


def public(record: dict[str, Any]) -> dict[str, Any]:
    """A stored webhook as the API shows it (never its secret)."""
    return {k: record[k] for k in PUBLIC_FIELDS if k in record}


def is_private(host: str) -> bool:
    """Whether ``host`` is an IP address that is not globally reachable.

    Names are not resolved here (False): the notifier resolves them at delivery.
    """
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host.lower() == "localhost" or host.lower().endswith(".localhost")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


def check_url(url: Any, *, allow_private: bool) -> list[tuple[str, str]]:
    """The problems with a webhook URL (empty: none)."""
    if not isinstance(url, str) or not url:
        return [("url", "required: an http or https URL")]
    if len(url) > MAX_URL:
        return [("url", f"longer than {MAX_URL} characters")]
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        return [("url", "must not contain spaces or control characters")]
    try:
        parts = urllib.parse.urlsplit(url)
        host, _port = parts.hostname, parts.port
    except ValueError as exc:
        return [("url", f"not a valid URL: {exc}")]
    if parts.scheme not in ("http", "https"):
        return [("url", f"the scheme must be http or https, not {parts.scheme or 'none'!r}")]
    if not host:
        return [("url", "has no host")]
    if parts.username is not None or parts.password is not None:
        return [("url", "must not contain a user name or password (it would be shown)")]
    if parts.fragment:
        return [("url", "must not have a #fragment (it is never sent)")]
    if not allow_private and is_private(host):
        return [
            (
                "url",
                f"{host} is a private or loopback address, refused by "
                "FLAGWIRE_WEBHOOK_ALLOW_PRIVATE=0",
            )
        ]
    return []


def _check_events(events: Any) -> list[tuple[str, str]]:
    if not isinstance(events, list) or not events:
        return [("events", "required: a non-empty list of event types")]
    problems = []
    for i, e in enumerate(events):
        if not isinstance(e, str) or e not in _SUBSCRIPTIONS:
            problems.append(
                (
                    f"events/{i}",
                    f"unknown event {str(e)[:60]!r}; expected one of "
                    f"{', '.join(EVENT_TYPES)}, plan.* or *",
                )
            )
    return problems


def _check(body: dict[str, Any], *, allow_private: bool, partial: bool) -> None:
    problems: list[tuple[str, str]] = [
        (name, "unknown field") for name in sorted(set(body) - _FIELDS)
    ]
    if not partial or "url" in body:
        problems += check_url(body.get("url"), allow_private=allow_private)
    if not partial or "events" in body:
        problems += _check_events(body.get("events"))
    description = body.get("description", "")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        problems.append(("description", f"a string of at most {MAX_DESCRIPTION} characters"))
    if "enabled" in body and not isinstance(body["enabled"], bool):
        problems.append(("enabled", "true or false"))
    if problems:
        raise ValidationError(problems)


def parse_create(body: Any, *, allow_private: bool) -> dict[str, Any]:
    """The fields of a new webhook.

    Raises:
        ValidationError: naming each field that is wrong.
    """
    if not isinstance(body, dict):
        raise ValidationError([("", "expected a JSON object")])
    _check(body, allow_private=allow_private, partial=False)
    return {
        "url": body["url"],
        "events": list(dict.fromkeys(body["events"])),
        "description": body.get("description", ""),
        "enabled": body.get("enabled", True),
    }


def parse_update(current: dict[str, Any], body: Any, *, allow_private: bool) -> dict[str, Any]:
    """``current`` with the fields of an edit (any of url, events, description, enabled).

    Raises:
        ValidationError: naming each field that is wrong.
    """
    if not isinstance(body, dict):
        raise ValidationError([("", "expected a JSON object")])
    _check(body, allow_private=allow_private, partial=True)
    out = {**current, **{k: v for k, v in body.items() if k in _FIELDS}}
    out["events"] = list(dict.fromkeys(out["events"]))
    return out
