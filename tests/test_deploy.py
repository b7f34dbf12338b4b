"""deploy/: what can be checked without a container engine.

The compose file and the Kubernetes manifests validate against their schemas
(bundled with check-jsonschema and kubernetes-validate: no network), every
``FLAGWIRE_*`` variable they set is one the server reads, the image runs the
same ``flagwire serve`` the tests run, and the nginx config really passes
WebSocket upgrades (see ``test_deploy_nginx.py``).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from flagwire.core.limits import STREAM_PATH

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
VAR_RE = re.compile(r"\bFLAGWIRE_[A-Z0-9_]+\b")


def _env_vars() -> set[str]:
    from flagwire_server.config import ENV_VARS

    return set(ENV_VARS)


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


# --- variables -----------------------------------------------------------------


def test_every_flagwire_variable_in_deploy_is_read_by_the_server() -> None:
    known = _env_vars()
    files = [p for p in DEPLOY.rglob("*") if p.is_file()]
    ops = ROOT / "docs" / "operations.md"
    if ops.exists():
        files.append(ops)
    seen: dict[str, set[str]] = {}
    for path in files:
        for name in VAR_RE.findall(path.read_text(errors="replace")):
            seen.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    unknown = {name: sorted(where) for name, where in seen.items() if name not in known}
    assert not unknown, f"variables the server does not read: {unknown}"
    assert {"FLAGWIRE_REDIS_URL", "FLAGWIRE_ADMIN_KEY", "FLAGWIRE_SESSION_SECRET"} <= set(seen)


def test_operations_doc_lists_every_variable() -> None:
    ops = ROOT / "docs" / "operations.md"
    if not ops.exists():
        pytest.skip("docs/operations.md not written yet")
    text = ops.read_text()
    missing = sorted(v for v in _env_vars() if v not in text)
    assert not missing, f"docs/operations.md does not document {missing}"


# --- Dockerfile ----------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _exec_form(args: str) -> list[str]:
    import json

    value = json.loads(args)
    assert isinstance(value, list), f"use the exec (JSON) form: {args}"
    return [str(v) for v in value]


def image_command() -> list[str]:
    """The argv the image runs: ENTRYPOINT + CMD."""
    ins = _dockerfile()
    last_from = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    final = ins[last_from:]
    entry = [_exec_form(a) for w, a in final if w == "ENTRYPOINT"]
    cmd = [_exec_form(a) for w, a in final if w == "CMD"]
    return (entry[-1] if entry else []) + (cmd[-1] if cmd else [])


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    ins = _dockerfile()
    froms = [a for w, a in ins if w == "FROM"]
    assert len(froms) >= 2, "build the wheel in one stage, install it in another"
    assert froms[-1].split()[0].startswith("python:3.12-slim")
    runs = " ".join(a for w, a in ins if w == "RUN")
    assert "[server]" in runs
    assert ".whl" in runs
    users = [a for w, a in ins if w == "USER"]
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")
    assert users[-1].split(":")[0].isdigit(), "numeric USER so runAsNonRoot can verify it"


def test_dockerfile_healthcheck_needs_no_curl() -> None:
    checks = [a for w, a in _dockerfile() if w == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "/healthz" in checks[0]
    assert "urllib" in checks[0]
    assert "curl" not in checks[0]
    argv = _exec_form(checks[0].split("CMD", 1)[1].strip())
    assert argv[:2] == ["python", "-c"]
    compile(argv[2], "<healthcheck>", "exec")  # the probe is valid Python


def test_image_runs_flagwire_serve_configured_by_environment() -> None:
    argv = image_command()
    assert argv[:2] == ["flagwire", "serve"], argv
    # only --host is given: everything else comes from FLAGWIRE_* variables
    assert argv[2:] == ["--host", "0.0.0.0"], argv
    envs = " ".join(a for w, a in _dockerfile() if w == "ENV")
    assert set(VAR_RE.findall(envs)) <= _env_vars()


def test_image_command_is_the_one_the_tests_run() -> None:
    """The CLI accepts exactly the image's arguments, and the suite's server helper runs `serve`."""
    exe = Path(sys.executable).with_name("flagwire")
    if not exe.exists():
        pytest.skip("flagwire console script not installed")
    out = subprocess.run([str(exe), "serve", "--help"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0 and "No such command" in out.stderr + out.stdout:
        pytest.skip("flagwire serve not written yet")
    assert out.returncode == 0, out.stderr
    for opt in [a for a in image_command()[2:] if a.startswith("--")]:
        assert opt in out.stdout
    helper = ROOT / "tests" / "support" / "server.py"
    if helper.exists():
        assert '"serve"' in helper.read_text(), "ServerProcess no longer runs `flagwire serve`"


# --- docker compose ------------------------------------------------------------


def test_compose_validates_against_the_compose_spec() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(DEPLOY / "docker-compose.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_runs_three_instances_on_persistent_redis_behind_one_port() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    instances = {k: v for k, v in services.items() if k.startswith("flagwire")}
    assert len(instances) == 3
    secrets = set()
    for svc in instances.values():
        env = svc["environment"]
        assert env["FLAGWIRE_REDIS_URL"].startswith("redis://redis:")
        secrets.add((env["FLAGWIRE_ADMIN_KEY"], env["FLAGWIRE_SESSION_SECRET"]))
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        assert "ports" not in svc, "instances are reached through the balancer only"
    assert len(secrets) == 1, "every instance shares the admin key and session secret"
    admin, session = secrets.pop()
    assert "${FLAGWIRE_ADMIN_KEY" in admin
    assert "${FLAGWIRE_SESSION_SECRET" in session
    example = (DEPLOY / ".env.example").read_text()
    assert "FLAGWIRE_ADMIN_KEY=" in example
    assert "FLAGWIRE_SESSION_SECRET=" in example
    # behind nginx, uvicorn must trust its X-Forwarded-For (per-IP auth limits) and
    # nobody else's: the one trusted address is nginx's fixed one on the compose network
    nginx_ip = services["nginx"]["networks"]["default"]["ipv4_address"]
    subnet = compose["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(nginx_ip) in ipaddress.ip_network(subnet)
    assert all(
        svc["environment"].get("FORWARDED_ALLOW_IPS") == nginx_ip for svc in instances.values()
    )
    ids = {svc["environment"]["FLAGWIRE_INSTANCE_ID"] for svc in instances.values()}
    assert len(ids) == 3
    redis = services["redis"]
    assert "--appendonly" in redis["command"]
    assert "yes" in redis["command"]
    assert any(str(v).endswith(":/data") for v in redis["volumes"])
    assert "redis-data" in compose["volumes"]
    balancer = services["nginx"]
    assert len(balancer["ports"]) == 1
    assert any("nginx/nginx.conf" in str(v) for v in balancer["volumes"])
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    for name in instances:
        assert f"server {name}:8080" in conf


def test_nginx_config_passes_upgrades_with_long_timeouts() -> None:
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    stream = conf.split(f"location = {STREAM_PATH}", 1)[1].split("}", 1)[0]
    assert "proxy_http_version 1.1;" in stream
    assert "proxy_set_header Upgrade $http_upgrade;" in stream
    assert "proxy_set_header Connection $connection_upgrade;" in stream
    timeout = re.search(r"proxy_read_timeout (\d+)s;", stream)
    assert timeout
    assert int(timeout.group(1)) >= 3600
    assert "least_conn;" in conf


def test_nginx_sets_forwarded_for_instead_of_appending() -> None:
    """An appended header keeps the client's own left-most entry (issue 10, item 7)."""
    conf = re.sub(r"#[^\n]*", "", (DEPLOY / "nginx" / "nginx.conf").read_text())
    assert "$proxy_add_x_forwarded_for" not in conf
    locations = re.split(r"(?m)^\s*location\b", conf)[1:]
    assert locations
    for loc in locations:
        assert "proxy_set_header X-Forwarded-For $remote_addr;" in loc, loc[:40]


# --- Kubernetes ----------------------------------------------------------------


@pytest.mark.parametrize("path", _manifests(), ids=lambda p: p.name)
def test_kubernetes_manifest_validates(path: Path) -> None:
    from kubernetes_validate import utils

    docs = _docs(path)
    assert docs
    for doc in docs:
        utils.validate(doc, utils.latest_version(), strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(p.name for p in _manifests())


def _all_k8s() -> dict[str, dict[str, Any]]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for p in _manifests() for d in _docs(p)}


def test_deployment_probes_grace_and_resources() -> None:
    from flagwire_server.config import Settings

    objs = _all_k8s()
    dep = objs["Deployment/flagwire"]["spec"]["template"]["spec"]
    (ctr,) = dep["containers"]
    assert ctr["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert ctr["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert ctr["args"] == image_command()[1:]
    pre_stop = ctr.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    config = objs["ConfigMap/flagwire-config"]["data"]
    drain = float(config.get("FLAGWIRE_SHUTDOWN_TIMEOUT", Settings().shutdown_timeout))
    assert dep["terminationGracePeriodSeconds"] > pre_stop + drain
    assert {"cpu", "memory"} <= set(ctr["resources"]["requests"])
    assert "memory" in ctr["resources"]["limits"]
    assert dep["securityContext"]["runAsNonRoot"] is True
    refs = {e.get("configMapRef", e.get("secretRef", {})).get("name") for e in ctr["envFrom"]}
    assert refs == {"flagwire-config", "flagwire-secrets"}
    secret = objs["Secret/flagwire-secrets"]["stringData"]
    assert {"FLAGWIRE_ADMIN_KEY", "FLAGWIRE_SESSION_SECRET"} <= set(secret)
    set_vars = set(config) | set(secret) | {e["name"] for e in ctr.get("env", [])}
    assert {v for v in set_vars if v.startswith("FLAGWIRE_")} <= _env_vars()
    assert set_vars - _env_vars() == {"FORWARDED_ALLOW_IPS"}, "only uvicorn's own variable"
    # forwarded headers are trusted from the ingress controller's network only, and a
    # NetworkPolicy lets nothing else reach the pods
    trusted = config["FORWARDED_ALLOW_IPS"]
    assert "*" not in trusted
    for net in trusted.split(","):
        ipaddress.ip_network(net.strip())
    policy = objs["NetworkPolicy/flagwire"]["spec"]
    assert policy["podSelector"]["matchLabels"] == dep_labels(objs)
    (rule,) = policy["ingress"]
    (peer,) = rule["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ingress-nginx"
    }


def dep_labels(objs: dict[str, dict[str, Any]]) -> dict[str, str]:
    return dict(objs["Deployment/flagwire"]["spec"]["selector"]["matchLabels"])


def test_ingress_pdb_hpa_and_redis() -> None:
    objs = _all_k8s()
    ann = objs["Ingress/flagwire"]["metadata"]["annotations"]
    assert int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(ann["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    pdb = objs["PodDisruptionBudget/flagwire"]["spec"]
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable")
    hpa = objs["HorizontalPodAutoscaler/flagwire"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "flagwire"
    assert hpa["minReplicas"] >= 3
    redis = objs["StatefulSet/redis"]["spec"]["template"]["spec"]["containers"][0]
    assert "--appendonly" in redis["args"]
    assert objs["StatefulSet/redis"]["spec"]["volumeClaimTemplates"]
    url = objs["ConfigMap/flagwire-config"]["data"]["FLAGWIRE_REDIS_URL"]
    assert url.startswith("redis://redis-0.redis:")


def test_commands_in_comments_are_well_formed() -> None:
    """The how-to lines at the top of the compose file name files that exist."""
    head = (DEPLOY / "docker-compose.yml").read_text().split("name:", 1)[0]
    for line in head.splitlines():
        if "docker compose" in line:
            argv = shlex.split(line.lstrip("# "))
            for arg in argv:
                if arg.startswith("deploy/"):
                    assert (ROOT / arg).exists(), arg
