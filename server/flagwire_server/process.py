"""Process tuning for many long-lived connections (issue 6's measurements).

* The open-file limit: with the common soft limit of 1,024 a server silently
  drops every connection past ~1,000.  The soft limit is raised to the hard
  limit at start, and a warning says so when that is still small.
* The cyclic garbage collector: with thousands of long-lived connection
  objects a full collection stalls the process for most of a second.  After
  start-up everything alive is frozen out of the collector (``gc.freeze``)
  and the generation thresholds are raised so full collections are rare.
"""

from __future__ import annotations

import gc
import logging

__all__ = ["USEFUL_NOFILE", "freeze_gc", "raise_nofile"]

log = logging.getLogger("flagwire.process")

#: Below this many descriptors a server cannot hold a useful number of streams.
USEFUL_NOFILE = 16_384


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the soft limit now."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit: %s", exc)
    if soft != resource.RLIM_INFINITY and soft < USEFUL_NOFILE:
        log.warning(
            "open-file limit is %d: this process can hold at most about %d streams; "
            "raise it (ulimit -n / LimitNOFILE=) for more",
            soft,
            max(0, soft - 64),
            extra={"nofile": soft},
        )
    return int(soft)


def freeze_gc() -> None:
    """Move everything alive after start-up out of the collector's reach; collect rarely."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
