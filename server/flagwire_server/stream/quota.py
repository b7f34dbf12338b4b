"""How many streams one key and one client address may hold open in this process.

Why: every open stream costs memory for as long as it is open (its socket
buffers, and up to ``max_buffer`` bytes queued when its peer reads slowly),
so a leaked or hostile key, or one address, opening thousands of streams
that never read would grow the server without bound.  Past either cap the
handshake is refused with 429 and a problem body naming the limit.  The
counts are per process: ``--workers N`` allows N times as many in total.
"""

from __future__ import annotations

__all__ = ["StreamQuota"]


class StreamQuota:
    """Open-stream counts by key and by address (entries dropped at zero, so memory is bounded).

    Args:
        per_key: streams one key may hold open.
        per_ip: streams one client address may hold open.
    """

    def __init__(self, per_key: int, per_ip: int) -> None:
        self.per_key, self.per_ip = per_key, per_ip
        self.by_key: dict[str, int] = {}
        self.by_ip: dict[str, int] = {}

    def admit(self, key_id: str, ip: str) -> str | None:
        """Count one more stream; or, over a cap, count nothing and say why."""
        if self.by_key.get(key_id, 0) >= self.per_key:
            return f"this key already holds {self.per_key} streams on this server"
        if self.by_ip.get(ip, 0) >= self.per_ip:
            return f"this address already holds {self.per_ip} streams on this server"
        self.by_key[key_id] = self.by_key.get(key_id, 0) + 1
        self.by_ip[ip] = self.by_ip.get(ip, 0) + 1
        return None

    def release(self, key_id: str, ip: str) -> None:
        """One stream admitted for ``key_id`` from ``ip`` ended."""
        for counts, name in ((self.by_key, key_id), (self.by_ip, ip)):
            n = counts.get(name, 0) - 1
            if n > 0:
                counts[name] = n
            else:
                counts.pop(name, None)
