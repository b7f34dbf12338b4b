"""Outgoing webhooks: what an event is, how it is signed, and the loop that delivers it.

Pure parts (no I/O): ``signature.py`` (the ``Flagwire-Signature`` header),
``events.py`` (event types and bodies), ``hooks.py`` (webhook input and URL
checks), ``retry.py`` (backoff and the retry decision).  ``notifier.py`` is
the thin I/O layer: it reads events from Redis (``store/webhooks.py``) and
POSTs them with httpx.  docs/webhooks.md is the user's side of it.
"""
