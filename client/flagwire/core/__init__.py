"""The flagwire core: the flag model, the evaluator and the wire protocol, with no I/O.

The core is public because two programs share it: the server validates,
evaluates and encodes with exactly the code the client evaluates and decodes
with, so the two cannot disagree about what a flag means or what a frame
says.  It imports nothing of asyncio, sockets, Redis, Starlette or the rest
of ``flagwire``; the server may import these modules (and only these: never
a ``flagwire.core._private`` one).

Modules:

- :mod:`~flagwire.core.limits`: every constant and limit server and clients
  must agree on (stream path, frame sizes, key and environment patterns,
  rollout weight total, document limits).  One home, so copies cannot drift.
- :mod:`~flagwire.core.errors`: the exception tree below.
- :mod:`~flagwire.core.model`: strict validation and normalisation of flag
  and segment documents, each problem named by its JSON path.
- :mod:`~flagwire.core.operators`: clause operators and the value parsers
  (semantic versions, RFC 3339 timestamps) that validation and evaluation
  share.
- :mod:`~flagwire.core.bucketing`: deterministic percentage bucketing,
  reproducible bit for bit in any language.
- :mod:`~flagwire.core.evaluation`: :class:`~flagwire.core.evaluation.Snapshot`,
  an immutable, precompiled environment whose ``evaluate`` never raises.
- :mod:`~flagwire.core.detail`: what an evaluation returns
  (``EvaluationDetail``, ``Reason``, ``ErrorKind``).
- :mod:`~flagwire.core.protocol`: the frames of the stream as frozen
  dataclasses with one ``encode``/``decode`` pair.
- :mod:`~flagwire.core.reports`: the fleet-insight messages (``identify``,
  ``summary``, ``watch``) and their bounds.
- :mod:`~flagwire.core.sketch`: distinct contexts as HyperLogLog registers in
  Redis's layout, so summaries merge without counting a context twice.
- :mod:`~flagwire.core.subscription`: the reader's side of a stream as a
  sans-I/O state machine (decoded messages in; the snapshot to install, the
  changes to announce, the version to acknowledge out).  The client's
  connection loop and ``flagwire watch`` are both thin layers over it.
- :mod:`~flagwire.core.changes`: :class:`~flagwire.core.changes.FlagChange`,
  what a message or a new snapshot changed.
- :mod:`~flagwire.core.schema`: the JSON Schemas of flag and segment
  documents, built from the model's definitions (published in ``schema/``).

Errors (all from :mod:`~flagwire.core.errors`)::

    FlagwireError
    ├── ProtocolError          a frame that is not a valid flagwire message
    ├── ValidationError        a flag or segment document that breaks the model
    └── ClientError            raised by FlagClient and friends
        ├── RefusedError          the server refused the stream for good (HTTP 400/404)
        │   └── AuthenticationError   the server refused the SDK key (HTTP 401/403, close 4001)
        ├── InitializationError   no data within the start-up timeout
        └── ClientClosedError     the client was used after close()

The core raises only ``ProtocolError`` (``protocol.decode``, and
``subscription.StreamState.receive`` for a message out of place) and
``ValidationError`` (``model``, and ``Snapshot.with_*`` for a document
without a valid key); evaluation never raises.
"""

from flagwire.core import (
    bucketing,
    changes,
    detail,
    errors,
    evaluation,
    limits,
    model,
    operators,
    protocol,
    reports,
    schema,
    sketch,
    subscription,
)

__all__ = [
    "bucketing",
    "changes",
    "detail",
    "errors",
    "evaluation",
    "limits",
    "model",
    "operators",
    "protocol",
    "reports",
    "schema",
    "sketch",
    "subscription",
]
