"""The OpenAPI document: complete, well-formed, and true to the server (schemathesis)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from flagwire_server.api.openapi import document as build_document
from flagwire_server.api.routes import OPERATIONS
from flagwire_server.api.routing import API_PREFIX, ApiRoute
from flagwire_server.api.schemas import SCHEMAS
from tests.support.builders import flag
from tests.test_admin_support import VENV_BIN, start_server, stop_server

pytestmark = pytest.mark.timeout(150)


def table() -> list[ApiRoute]:
    return list(OPERATIONS)


def document() -> dict[str, Any]:
    return build_document(OPERATIONS)


def test_every_route_is_documented() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1")
    ops = {(API_PREFIX + op.path, op.method.lower()) for op in table()}
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert ops == documented
    assert len({op.operation_id for op in table()}) == len(ops)
    for path, method in documented:
        op = doc["paths"][path][method]
        assert op["responses"], (path, method)
        if op.get("security") != []:
            assert {"401", "403", "429"} <= set(op["responses"])


def test_schemas_are_valid_json_schema() -> None:
    for name, schema in SCHEMAS.items():
        jsonschema.Draft202012Validator.check_schema(schema), name
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                refs.append(node["$ref"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(document())
    missing = {r for r in refs if r.rpartition("/")[2] not in SCHEMAS}
    assert not missing


@pytest.fixture
def server(redis_url: str) -> Iterator[tuple[str, str]]:
    prefix = f"fwt{uuid.uuid4().hex[:10]}"
    server = start_server(redis_url, prefix, FLAGWIRE_RATE_LIMIT="1000000")
    try:
        yield server.url, server.admin_key
    finally:
        stop_server(server)
        import redis

        r = redis.Redis.from_url(redis_url)
        for k in r.scan_iter(match=f"{prefix}:*", count=1000):
            r.delete(k)
        r.close()


def test_served_document_and_schemathesis(server: tuple[str, str], tmp_path: Path) -> None:
    url, key = server
    served = httpx.get(f"{url}/api/v1/openapi.json")  # no key needed
    assert served.status_code == 200
    assert served.json() == document()
    # Some data for the fuzzer to find, under the documented example names.
    api = httpx.Client(base_url=url + "/api/v1", headers={"Authorization": f"Bearer {key}"})
    api.post("/environments/production/flags", json=flag("checkout"))
    api.post("/environments/production/segments", json={"key": "checkout"})
    api.close()
    proc = subprocess.run(
        [
            str(VENV_BIN / "schemathesis"),
            "run",
            f"{url}/api/v1/openapi.json",
            "-H",
            f"Authorization: Bearer {key}",
            "--max-time",
            "40",
            "-n",
            "25",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance,response_headers_conformance",
            "--no-color",
            "--seed",
            "20261129",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # its example cache
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
