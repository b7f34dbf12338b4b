"""flagwire.openfeature: the provider through ``openfeature.api``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason
from openfeature.provider import ProviderStatus

from flagwire import BackoffSettings
from flagwire.openfeature import FlagwireProvider
from flagwire.sync import SyncFlagClient
from flagwire.testing import TestFlags
from tests.support.builders import flag, rollout
from tests.support.server import ServerProcess

pytestmark = pytest.mark.timeout(60)
USER = EvaluationContext("user-1", {"email": "a@example.com", "plan": "pro"})


@pytest.fixture(autouse=True)
def clean_api() -> Iterator[None]:
    yield
    api.clear_providers()
    api.clear_hooks()
    for event in ProviderEvent:
        for handler in list(api._event_support._global_handlers[event]):  # type: ignore[attr-defined]
            api.remove_handler(event, handler)


def test_all_value_types_reasons_and_variants() -> None:
    flags = TestFlags()
    flags.set("bool", True).set("text", "hi").set("count", 3).set("ratio", 0.5)
    flags.set("obj", {"a": [1, 2]}).set("half", 2.5)
    flags.set_rule("beta", True, "email", "ends_with", "@example.com")
    flags.set_targets("vip", True, "user-1")
    flags.set_rollout("split", {"x": 50, "y": 50})
    flags.set("gone", True).turn_off("gone")
    api.set_provider_and_wait(FlagwireProvider(flags.client()))
    client = api.get_client()
    assert api.get_provider_metadata().name == "flagwire"

    assert client.get_boolean_value("bool", False, USER) is True
    assert client.get_string_value("text", "", USER) == "hi"
    assert client.get_integer_value("count", 0, USER) == 3
    assert client.get_float_value("ratio", 0.0, USER) == 0.5
    assert client.get_float_value("count", 0.0, USER) == 3.0
    assert client.get_object_value("obj", {}, USER) == {"a": [1, 2]}

    d = client.get_boolean_details("bool", False, USER)
    assert (d.reason, d.variant, d.error_code) == (Reason.DEFAULT, "0", None)
    assert d.flag_metadata["flag_version"] == 1
    assert client.get_boolean_details("beta", False, USER).reason == Reason.TARGETING_MATCH
    assert client.get_boolean_details("vip", False, USER).reason == Reason.TARGETING_MATCH
    assert client.get_string_details("split", "", USER).reason == Reason.SPLIT
    off = client.get_boolean_details("gone", True, USER)
    assert (off.reason, off.value) == (Reason.DISABLED, False)

    missing = client.get_boolean_details("nope", True, USER)
    assert (missing.value, missing.reason, missing.error_code) == (
        True,
        Reason.ERROR,
        ErrorCode.FLAG_NOT_FOUND,
    )
    wrong = client.get_string_details("bool", "d", USER)
    assert (wrong.value, wrong.error_code) == ("d", ErrorCode.TYPE_MISMATCH)
    assert client.get_integer_details("half", 7, USER).error_code == ErrorCode.TYPE_MISMATCH
    anonymous = client.get_boolean_details("bool", False, EvaluationContext())
    assert anonymous.error_code == ErrorCode.TARGETING_KEY_MISSING


async def test_async_resolution_and_configuration_changed_events() -> None:
    flags = TestFlags().set("a", True)
    events: list[EventDetails] = []
    api.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, events.append)
    api.set_provider_and_wait(FlagwireProvider(flags.client()))
    client = api.get_client()
    assert await client.get_boolean_value_async("a", False, USER) is True
    flags.set("a", False)
    assert await client.get_boolean_value_async("a", True, USER) is False
    assert [e.flags_changed for e in events] == [["a"]]


def _environment(server: ServerProcess) -> tuple[str, str]:
    env = f"e{uuid.uuid4().hex[:8]}"
    server.api("POST", "/environments", {"key": env})
    sdk = server.api("POST", "/keys", {"name": "of", "kind": "sdk", "env": env})["secret"]
    server.api("POST", f"/environments/{env}/flags", flag("a", fallthrough=rollout(100, 0)))
    return env, sdk


def _until(predicate: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _ready_after_stale(kinds: list[ProviderEvent]) -> bool:
    if ProviderEvent.PROVIDER_STALE not in kinds:
        return False
    return ProviderEvent.PROVIDER_READY in kinds[kinds.index(ProviderEvent.PROVIDER_STALE) :]


def test_provider_events_from_a_live_server(server: ServerProcess) -> None:
    env, sdk = _environment(server)
    seen: list[tuple[ProviderEvent, EventDetails]] = []
    for event in ProviderEvent:
        api.add_handler(event, lambda d, e=event: seen.append((e, d)))
    flags = SyncFlagClient(
        server.url, sdk, heartbeat_timeout=3, backoff=BackoffSettings(initial=0.05, cap=0.3)
    )
    api.set_provider_and_wait(FlagwireProvider(flags, close_client=True))
    client = api.get_client()
    assert client.get_provider_status() == ProviderStatus.READY
    assert client.get_boolean_details("a", False, USER).reason == Reason.SPLIT

    server.api("PATCH", f"/environments/{env}/flags/a?wait=5", {"on": False})
    _until(lambda: any(e is ProviderEvent.PROVIDER_CONFIGURATION_CHANGED for e, _ in seen))
    changed = [d for e, d in seen if e is ProviderEvent.PROVIDER_CONFIGURATION_CHANGED]
    assert changed[0].flags_changed == ["a"]
    assert client.get_boolean_value("a", True, USER) is False

    server.kill()
    _until(lambda: client.get_provider_status() == ProviderStatus.STALE)
    stale = client.get_boolean_details("a", True, USER)
    assert stale.value is False
    assert stale.flag_metadata["stale"] is True
    server.start()
    _until(lambda: client.get_provider_status() == ProviderStatus.READY)
    # The SDK sets the status before it runs the handlers, on the client's thread.
    _until(lambda: _ready_after_stale([e for e, _ in seen]))
    kinds = [e for e, _ in seen]
    assert ProviderEvent.PROVIDER_STALE in kinds
    assert kinds.index(ProviderEvent.PROVIDER_STALE) < len(kinds) - 1 - kinds[::-1].index(
        ProviderEvent.PROVIDER_READY
    )


def test_refused_key_is_a_fatal_provider_error(server: ServerProcess) -> None:
    flags = SyncFlagClient(server.url, "fw_sdk_wrong", start_timeout=3)
    errors: list[EventDetails] = []
    api.add_handler(ProviderEvent.PROVIDER_ERROR, errors.append)
    api.set_provider(FlagwireProvider(flags, close_client=True))
    client = api.get_client()
    _until(lambda: errors)
    assert client.get_provider_status() == ProviderStatus.FATAL
    assert "401" in (errors[-1].message or "")
    details = client.get_boolean_details("a", True, USER)
    assert details.value is True
    assert details.error_code == ErrorCode.PROVIDER_FATAL
