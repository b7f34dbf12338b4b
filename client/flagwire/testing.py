"""Flags set in code, for your application's tests — no server needed.

::

    from flagwire.testing import TestFlags

    flags = TestFlags()
    flags.set("new-checkout", True)
    client = flags.client()            # a real FlagClient, READY, no network
    app = create_app(flag_client=client)

    # test both sides of the flag
    assert client.bool_variation("new-checkout", {"key": "u1"}, False) is True
    flags.set("new-checkout", False)   # every client of this TestFlags sees it at once

Beyond constant values: individual targets (:meth:`TestFlags.set_targets`),
rules on context attributes (:meth:`TestFlags.set_rule`), percentage rollouts
(:meth:`TestFlags.set_rollout`), turning a flag off, segments, and full flag
documents (:meth:`TestFlags.set_flag`).  Changes reach the clients' change
callbacks, ``changes()`` iterators and ``watch()`` like real ones — call them
from the thread (event loop) the clients are used on.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Mapping
from typing import Any

from flagwire._client import ClientStatus, FlagClient
from flagwire.core.changes import diff
from flagwire.core.evaluation import Snapshot
from flagwire.core.limits import WEIGHT_TOTAL

__all__ = ["TestFlags", "make_client"]

_UNSET: Any = object()


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


class TestFlags:
    """A set of flags and segments that your tests edit, served to the clients it makes.

    Every method returns ``self``, so calls can be chained.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self) -> None:
        self._flags: dict[str, dict[str, Any]] = {}
        self._segments: dict[str, dict[str, Any]] = {}
        self._version = 0
        self._snapshot = Snapshot({}, {}, 0, "test")
        self._clients: weakref.WeakSet[FlagClient] = weakref.WeakSet()

    # --- clients ----------------------------------------------------------------

    def client(self) -> FlagClient:
        """A :class:`~flagwire.FlagClient` serving these flags: READY at once, no I/O.

        ``start()``/``async with``/``close()`` work as usual but are optional.
        """
        client = FlagClient(offline_values={})
        client._offline_source = lambda: self._snapshot
        client._install(self._snapshot, [])
        client._set_status(ClientStatus.READY, "serving TestFlags")
        self._clients.add(client)
        return client

    def snapshot(self) -> Snapshot:
        """The current flags as an immutable snapshot."""
        return self._snapshot

    # --- flags ------------------------------------------------------------------

    def set(self, key: str, value: Any) -> TestFlags:
        """Flag ``key`` serves ``value`` to everyone (replacing targets, rules and rollouts)."""
        variations = [value, not value] if isinstance(value, bool) else [value]
        return self._put(
            {
                "key": key,
                "on": True,
                "variations": variations,
                "off_variation": variations.index(False) if isinstance(value, bool) else None,
                "fallthrough": {"variation": 0},
                "targets": [],
                "rules": [],
            }
        )

    def set_targets(
        self, key: str, value: Any, *context_keys: str, otherwise: Any = _UNSET
    ) -> TestFlags:
        """Contexts with these keys get ``value``.

        Args:
            key: the flag.
            value: what the listed contexts get.
            context_keys: the context ``key`` values targeted.
            otherwise: everyone else's value if the flag does not exist yet
                (default: ``not value`` for booleans).

        Raises:
            ValueError: the flag does not exist and ``otherwise`` cannot be guessed.
        """
        doc = self._editable(key, value, otherwise)
        index = self._variation(doc, value)
        doc["targets"] = [t for t in doc["targets"] if t["variation"] != index]
        doc["targets"].append({"variation": index, "values": list(context_keys)})
        return self._put(doc)

    def set_rule(
        self,
        key: str,
        value: Any,
        attribute: str,
        op: str,
        *values: Any,
        negate: bool = False,
        otherwise: Any = _UNSET,
    ) -> TestFlags:
        """Contexts whose ``attribute`` matches ``op`` ``values`` get ``value``.

        Rules are tried in the order they were added, after targets::

            flags.set_rule("beta", True, "email", "ends_with", "@example.com")

        Args:
            key: the flag.
            value: what matching contexts get.
            attribute: the context attribute (``"key"``, ``"email"``, ``"plan"``...).
            op: an operator of ``docs/evaluation.md`` (``in``, ``ends_with``,
                ``matches``, ``gt``, ``semver_gte``, ``segment_match``...).
            values: the clause's values.
            negate: match when the clause does *not* hold.
            otherwise: everyone else's value if the flag does not exist yet.

        Raises:
            ValueError: the flag does not exist and ``otherwise`` cannot be guessed.
        """
        doc = self._editable(key, value, otherwise)
        clause: dict[str, Any] = {
            "attribute": attribute,
            "op": op,
            "values": list(values),
            "negate": negate,
        }
        if op == "segment_match":
            del clause["attribute"]
        doc["rules"].append(
            {
                "id": f"rule-{len(doc['rules'])}",
                "clauses": [clause],
                "variation": self._variation(doc, value),
            }
        )
        return self._put(doc)

    def set_rollout(
        self,
        key: str,
        weights: Mapping[Any, float] | list[tuple[Any, float]],
        *,
        bucket_by: str = "key",
    ) -> TestFlags:
        """Split everyone not targeted or matched by a rule between values by percentage.

        ``flags.set_rollout("theme", {"dark": 25, "light": 75})``; percentages
        must add up to 100.  Bucketing is the server's: a context lands in
        the same bucket here and in production.

        Raises:
            ValueError: the percentages do not add up to 100.
        """
        pairs = list(weights.items()) if isinstance(weights, Mapping) else list(weights)
        thousandths = [round(p * 1000) for _, p in pairs]
        if sum(thousandths) != WEIGHT_TOTAL:
            raise ValueError(
                f"rollout percentages must add up to 100, not {sum(thousandths) / 1000}"
            )
        first = pairs[0][0]
        doc = self._editable(key, first, first)
        slots = [
            {"variation": self._variation(doc, v), "weight": w}
            for (v, _), w in zip(pairs, thousandths, strict=True)
        ]
        doc["fallthrough"] = {"rollout": {"variations": slots, "bucket_by": bucket_by}}
        return self._put(doc)

    def turn_off(self, key: str, value: Any = _UNSET) -> TestFlags:
        """Turn flag ``key`` off, like the kill switch in production.

        An off flag serves ``value`` if given, else its off variation: ``False``
        for boolean flags, the caller's default for others.

        Raises:
            KeyError: there is no such flag.
        """
        doc = copy.deepcopy(self._flags[key])
        doc["on"] = False
        if value is not _UNSET:
            doc["off_variation"] = self._variation(doc, value)
        return self._put(doc)

    def turn_on(self, key: str) -> TestFlags:
        """Turn flag ``key`` back on.

        Raises:
            KeyError: there is no such flag.
        """
        doc = copy.deepcopy(self._flags[key])
        doc["on"] = True
        return self._put(doc)

    def set_flag(self, doc: Mapping[str, Any]) -> TestFlags:
        """Put a full flag document (the server's format, see ``docs/evaluation.md``)."""
        return self._put(copy.deepcopy(dict(doc)))

    def delete(self, key: str) -> TestFlags:
        """Remove flag ``key``: evaluations get the caller's default (FLAG_NOT_FOUND)."""
        if self._flags.pop(key, None) is not None:
            self._publish()
        return self

    def set_segment(
        self,
        key: str,
        *,
        included: list[str] | None = None,
        excluded: list[str] | None = None,
        rules: list[dict[str, Any]] | None = None,
    ) -> TestFlags:
        """A segment for ``segment_match`` rules: listed context keys and/or rules."""
        self._segments[key] = {
            "key": key,
            "included": list(included or []),
            "excluded": list(excluded or []),
            "rules": list(rules or []),
        }
        self._publish()
        return self

    # --- internals --------------------------------------------------------------

    def _editable(self, key: str, value: Any, otherwise: Any) -> dict[str, Any]:
        if key in self._flags:
            return copy.deepcopy(self._flags[key])
        if otherwise is _UNSET:
            if not isinstance(value, bool):
                raise ValueError(f"flag {key!r} does not exist: pass otherwise= for everyone else")
            otherwise = not value
        variations = [otherwise] if _same(otherwise, value) else [otherwise, value]
        off = variations.index(False) if False in variations and isinstance(value, bool) else None
        return {
            "key": key,
            "on": True,
            "variations": variations,
            "off_variation": off,
            "fallthrough": {"variation": 0},
            "targets": [],
            "rules": [],
        }

    @staticmethod
    def _variation(doc: dict[str, Any], value: Any) -> int:
        for i, existing in enumerate(doc["variations"]):
            if _same(existing, value):
                return i
        doc["variations"].append(value)
        return len(doc["variations"]) - 1

    def _put(self, doc: dict[str, Any]) -> TestFlags:
        key = doc["key"]
        old = self._flags.get(key)
        doc["version"] = (old.get("version", 0) if old else 0) + 1
        self._flags[key] = doc
        self._publish()
        return self

    def _publish(self) -> None:
        self._version += 1
        old = self._snapshot
        new = Snapshot(self._flags, self._segments, self._version, "test")
        self._snapshot = new
        changes = diff(old, new)
        for client in list(self._clients):
            if client.status is not ClientStatus.CLOSED:
                client._install(new, changes)


def make_client(values: Mapping[str, Any] | None = None) -> tuple[TestFlags, FlagClient]:
    """Shorthand: ``flags, client = make_client({"new-checkout": True})``."""
    flags = TestFlags()
    for key, value in (values or {}).items():
        flags.set(key, value)
    return flags, flags.client()
