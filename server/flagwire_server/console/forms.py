"""The console's two HTML forms (sign-in, sign-out), read within fixed bounds.

Why not ``request.form()``: it parses whatever arrives, before any check; 400
fields of 1 MB each took the server from 64 to 464 MiB.  These forms carry a
few short fields, so the body is capped by ``Content-Length`` and again while
streaming (413), only ``application/x-www-form-urlencoded`` is accepted (415),
and at most ``MAX_FIELDS`` fields are parsed.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qsl

from starlette.requests import Request

__all__ = ["MAX_FIELDS", "MAX_FORM_BYTES", "FormRefused", "read_form"]

#: Largest sign-in or sign-out body: an admin key, a CSRF token and a ``next`` path.
MAX_FORM_BYTES: Final = 8 * 1024
#: Most fields parsed from one form (it has three).
MAX_FIELDS: Final = 8


class FormRefused(Exception):
    """The form body was refused before parsing; ``status`` is 413, 415 or 400."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_form(request: Request) -> dict[str, str]:
    """The urlencoded form of ``request``, first value per field.

    Raises:
        FormRefused: too large (413), another content type (415), too many fields (400).
    """
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise FormRefused(415, "expected a form (application/x-www-form-urlencoded)")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_FORM_BYTES):
        raise FormRefused(413, f"form over the limit of {MAX_FORM_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormRefused(413, f"form over the limit of {MAX_FORM_BYTES} bytes")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise FormRefused(400, f"a malformed form or more than {MAX_FIELDS} fields") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        form.setdefault(name, value)
    return form
