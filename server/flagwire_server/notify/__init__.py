"""Outgoing webhooks: what an event is, how it is signed, and the loop that delivers it.

Pure parts (no I/O): ``signature.py`` (the ``Flagwire-Signature`` header),
``events.py`` (event types and bodies), ``hooks.py`` (webhook input and URL
checks), ``retry.py`` (backoff and the retry decision).  The thin I/O layers:
``notifier.py`` reads events from Redis (``store/webhooks.py``), hands each to
the webhooks that want it and retries; ``sender.py`` makes one signed POST
with httpx.  docs/webhooks.md is the user's side of it.
"""
