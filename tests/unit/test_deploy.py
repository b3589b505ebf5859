"""Deployment files, checked offline: Kubernetes manifests against the API schemas, the compose file against
the compose-spec schema, and the facts that tie them to the code (variables, commands, probes, ports, user).

What this cannot check: that the image builds and the containers start (no Docker engine here), and that
a cluster accepts the KEDA objects (their CRDs are not in kubernetes-validate; the fields KEDA needs are
checked explicitly below).

Vendored: ``data/compose_spec.json`` is ``compose/config/compose_spec.json`` from the PyPI wheel
``docker_compose-1.29.2-py2.py3-none-any.whl`` (the compose-spec JSON schema, draft 2019-09, as of
May 2021); its sha256 is pinned below so that it is not edited by accident.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from stream_app.cli import build_parser
from stream_app.settings import Settings, env_table
from stream_app.worker.http import PROBES

ROOT = Path(__file__).parents[2]
K8S = ROOT / "k8s"
K8S_VERSION = "1.30.0"  # oldest Kubernetes minor still commonly run; kubernetes-validate ships its schemas
COMPOSE_SCHEMA = Path(__file__).parent / "data" / "compose_spec.json"
COMPOSE_SCHEMA_SHA256 = "0dc04bd346dcfee1b1419628fff79937bbf076925f298f272a2b490e2b112bac"
ENV_NAMES = {name for name, _default, _doc in env_table()}
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object, for every manifest under k8s/ (alternatives/ included)."""
    out = {}
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in _docs(path):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def _parses(args: list[str]) -> None:
    build_parser().parse_args(args)  # SystemExit on an unknown command or flag


# ----------------------------------------------------------------------------------------- Kubernetes


@pytest.mark.parametrize("path", sorted(K8S.rglob("*.yaml")), ids=lambda p: str(p.relative_to(K8S)))
def test_manifests_match_the_kubernetes_schemas(path: Path) -> None:
    import kubernetes_validate

    for doc in _docs(path):
        if doc["kind"] == "Kustomization" or doc["kind"] in KEDA_KINDS:
            continue  # not Kubernetes API kinds: checked by the tests below
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError


def test_the_validator_rejects_a_broken_manifest() -> None:
    import kubernetes_validate

    bad = json.loads(json.dumps(_manifests()[("Deployment", "stream-app")]))
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pathh"] = "/health"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files - {"secret.example.yaml"}
    assert all((K8S / name).is_file() for name in listed)


def _configmap() -> dict[str, str]:
    return _manifests()[("ConfigMap", "stream-app")]["data"]


def _pod(kind: str, name: str) -> dict[str, Any]:
    return _manifests()[(kind, name)]["spec"]["template"]["spec"]


def test_configmap_names_real_settings_with_valid_values() -> None:
    data = _configmap()
    assert set(data) <= ENV_NAMES, set(data) - ENV_NAMES
    settings = Settings.from_env(data)  # the values parse and the security combination is allowed
    assert settings.web_host == "0.0.0.0"  # probes come from the kubelet, not loopback
    assert settings.kafka_security_protocol in {"SSL", "SASL_SSL"}  # the example talks TLS to the cluster
    assert settings.replication_factor >= 3


@pytest.mark.parametrize("name", ["stream-app", "stream-app-door"])
def test_worker_and_door_pods_probe_real_public_pages_on_the_served_port(name: str) -> None:
    pod = _pod("Deployment", name)
    (container,) = pod["containers"]
    _parses(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    if name == "stream-app":
        assert ports["http"] == Settings.from_env(_configmap()).web_port
    else:
        assert ports["http"] == build_parser().parse_args(container["args"]).port
    http_source = (ROOT / "stream_app" / "worker" / "http.py").read_text()
    door_source = (ROOT / "stream_app" / "door" / "server.py").read_text()
    for probe, path in (("livenessProbe", "/health"), ("startupProbe", "/health"), ("readinessProbe", "/ready")):
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"]) == (path, "http")
        assert get["path"] in PROBES and f'@app.page("{get["path"]}")' in http_source
        assert f'"{get["path"]}"' in door_source


def test_pods_run_as_the_image_user_and_not_as_root() -> None:
    uid = _dockerfile_uid()
    for kind, name in (("Deployment", "stream-app"), ("Deployment", "stream-app-door"), ("Job", "stream-app-topics")):
        pod = _pod(kind, name)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == uid != 0
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_env_and_secret_files_line_up() -> None:
    """Variables set on the pods exist; every *_FILE setting points into a mounted Secret item; the
    Secret keys used exist in the example Secret."""
    secret_keys = set(_manifests()[("Secret", "stream-app")]["stringData"])
    data = _configmap()
    for kind, name in (("Deployment", "stream-app"), ("Deployment", "stream-app-door"), ("Job", "stream-app-topics")):
        pod = _pod(kind, name)
        (container,) = pod["containers"]
        assert {e["name"] for e in container.get("env", [])} <= ENV_NAMES
        assert [s["configMapRef"]["name"] for s in container["envFrom"]] == ["stream-app"]
        for e in container.get("env", []):
            assert e["valueFrom"]["secretKeyRef"]["key"] in secret_keys
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounted: set[str] = set()
        for mount in container["volumeMounts"]:
            secret = volumes[mount["name"]].get("secret")
            if secret:
                assert secret["secretName"] == "stream-app"
                items = {i["key"]: i["path"] for i in secret["items"]}
                assert set(items) <= secret_keys
                mounted |= {f"{mount['mountPath']}/{p}" for p in items.values()}
        needed = {data["KAFKA_SASL_PASSWORD_FILE"]}
        if kind == "Deployment":  # workers and doors serve HTTP
            needed.add(data["STREAM_APP_HTTP_TOKEN_FILE"])
        assert needed <= mounted, needed - mounted


def test_keda_objects_have_what_keda_needs() -> None:
    """KEDA's CRDs are not among kubernetes-validate's schemas: the fields it needs, and their types
    (trigger metadata is a map of strings in KEDA), are checked here, and so are the references."""
    objects = _manifests()
    scaled = objects[("ScaledObject", "stream-app")]
    schema = {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "spec": {"type": "object", "required": ["scaleTargetRef", "triggers"], "properties": {
                "scaleTargetRef": {"type": "object", "required": ["name"]},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "triggers": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["type", "metadata"], "properties": {
                        "type": {"const": "kafka"},
                        "metadata": {"type": "object", "additionalProperties": {"type": "string"},
                                     "required": ["bootstrapServers", "consumerGroup", "topic", "lagThreshold"]},
                        "authenticationRef": {"type": "object", "required": ["name"]}}}}}}},
    }
    jsonschema.validate(scaled, schema)
    target = scaled["spec"]["scaleTargetRef"]
    assert (target.get("kind", "Deployment"), target["name"]) in objects
    settings = Settings.from_env(_configmap())
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"] <= settings.partitions
    secret_keys = set(objects[("Secret", "stream-app")]["stringData"])
    for trigger in scaled["spec"]["triggers"]:
        meta = trigger["metadata"]
        assert meta["consumerGroup"] == settings.app_id  # Faust's consumer group is the app id
        assert meta["topic"] == settings.transactions_topic
        assert meta["bootstrapServers"] == settings.bootstrap_servers
        assert int(meta["lagThreshold"]) > 0
        auth = objects[("TriggerAuthentication", trigger["authenticationRef"]["name"])]
        refs = auth["spec"]["secretTargetRef"]
        assert {r["parameter"] for r in refs} >= {"sasl", "username", "password", "tls"}
        assert all(r["name"] == "stream-app" and r["key"] in secret_keys for r in refs)
    secret = objects[("Secret", "stream-app")]["stringData"]
    keda_names = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
    assert secret["keda-sasl"] == keda_names[settings.kafka_sasl_mechanism]
    assert secret["kafka-username"] == settings.kafka_sasl_username
    hpa = objects[("HorizontalPodAutoscaler", "stream-app")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == target["name"]


def test_topics_job_runs_the_topics_command() -> None:
    (container,) = _pod("Job", "stream-app-topics")["containers"]
    assert container["args"] == ["topics"]
    _parses(container["args"])


# --------------------------------------------------------------------------------------------- Docker


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def _final_stage() -> list[str]:
    lines = [ln.strip() for ln in re.sub(r"\\\n", " ", _dockerfile()).splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    last_from = max(i for i, ln in enumerate(lines) if ln.upper().startswith("FROM "))
    return lines[last_from:]


def _dockerfile_uid() -> int:
    users = [ln.split(None, 1)[1] for ln in _final_stage() if ln.upper().startswith("USER ")]
    assert users, "the final stage must set USER"
    user = users[-1].split(":")[0]
    assert user.isdigit(), "USER by number, so that Kubernetes' runAsNonRoot can verify it"
    return int(user)


def test_dockerfile_is_slim_non_root_and_runs_the_cli() -> None:
    stage = _final_stage()
    assert stage[0].split()[1] == "python:3.11-slim"
    assert _dockerfile_uid() != 0
    entrypoint = json.loads(next(ln for ln in stage if ln.startswith("ENTRYPOINT")).split(None, 1)[1])
    cmd = json.loads(next(ln for ln in stage if ln.startswith("CMD")).split(None, 1)[1])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["stream-app"] and "stream-app" in scripts and cmd == ["worker"]
    _parses(cmd)
    env = dict(re.findall(r"(STREAM_APP_[A-Z_]+)=(\S+)", " ".join(ln for ln in stage if ln.startswith("ENV"))))
    assert set(env) <= ENV_NAMES and env["STREAM_APP_WEB_HOST"] == "0.0.0.0"
    assert "pip install ." in _dockerfile()
    assert not re.search(r"\b(curl|wget)\b", _dockerfile()), "nothing downloaded besides pip packages"


def test_the_compiled_loops_cache_is_writable_in_the_read_only_pods() -> None:
    """numba caches machine code only where it can write: the image points it into /tmp, an emptyDir in every pod
    whose root file system is read-only (elsewhere the loops compile at each start, about 1.5 s)."""
    env = dict(re.findall(r"(NUMBA_CACHE_DIR)=(\S+)", " ".join(ln for ln in _final_stage() if ln.startswith("ENV"))))
    cache = Path(env["NUMBA_CACHE_DIR"])
    for kind, name in (("Deployment", "stream-app"), ("Deployment", "stream-app-door")):
        pod = _pod(kind, name)
        (container,) = pod["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"]
        empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        assert any(cache.is_relative_to(m["mountPath"]) for m in container["volumeMounts"] if m["name"] in empty), name


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    copied = {src for ln in _dockerfile().splitlines() if ln.startswith("COPY ") and "--from" not in ln
              for src in ln.split()[1:-1]}
    assert copied == {"pyproject.toml", "README.md", "stream_app"}
    assert "*" in ignore and all(f"!{c}" in ignore or f"!{c}/" in ignore for c in copied)


# -------------------------------------------------------------------------------------------- Compose


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_matches_the_compose_spec_schema() -> None:
    raw = COMPOSE_SCHEMA.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == COMPOSE_SCHEMA_SHA256
    validator = jsonschema.Draft201909Validator(json.loads(raw))
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(_compose())]
    assert not errors
    broken = _compose()
    broken["services"]["worker-1"]["depends_on"] = {"topics": {"condition": "finished"}}
    assert list(validator.iter_errors(broken)), "the schema must catch a wrong depends_on condition"


def test_compose_has_kraft_kafka_topics_two_workers_door_generator_and_monitoring() -> None:
    services = _compose()["services"]
    assert set(services) == {"kafka", "topics", "worker-1", "worker-2", "door", "generator", "prometheus",
                             "grafana"}
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"] and "zookeeper" not in str(services)
    assert services["topics"]["command"] == ["topics"]
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in ("worker-1", "worker-2", "door", "generator"):
        assert services[name]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    door = services["door"]
    port = build_parser().parse_args(door["command"]).port
    assert door["ports"] == [f"{port}:{port}"] and f"127.0.0.1:{port}/health" in door["healthcheck"]["test"][-1]


def test_compose_commands_and_variables_are_real() -> None:
    services = _compose()["services"]
    app_services = [s for s in services.values() if s.get("image", "").startswith("stream-app:")]
    assert len(app_services) == 5
    for service in app_services:
        command = service["command"]
        _parses(command if isinstance(command, list) else shlex.split(command))
        env = service["environment"]
        assert set(env) <= ENV_NAMES, set(env) - ENV_NAMES
        settings = Settings.from_env({k: str(v) for k, v in env.items()})
        assert settings.bootstrap_servers == "kafka:9092" and settings.web_host == "0.0.0.0"


def test_prometheus_scrapes_the_compose_workers_and_the_door() -> None:
    services = _compose()["services"]
    sources = {target: source for source, target in (v.split(":")[:2] for v in services["prometheus"]["volumes"])}
    config = yaml.safe_load((ROOT / sources["/etc/prometheus/prometheus.yml"]).read_text())
    job, door = config["scrape_configs"]
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    port = Settings.from_env({k: str(v) for k, v in services["worker-1"]["environment"].items()}).web_port
    assert targets == {f"{name}:{port}" for name in ("worker-1", "worker-2")}
    door_port = services["door"]["command"][services["door"]["command"].index("--port") + 1]
    assert [t for sc in door["static_configs"] for t in sc["targets"]] == [f"door:{door_port}"]
    assert job["metrics_path"] == door["metrics_path"] == "/metrics" and job["job_name"] != door["job_name"]


def test_grafana_gets_the_provisioning_and_the_dashboard() -> None:
    grafana = _compose()["services"]["grafana"]
    sources = {target: source for source, target, *_ in (v.split(":") for v in grafana["volumes"])}
    for source in sources.values():
        assert (ROOT / source).exists(), source
    providers = yaml.safe_load((ROOT / sources["/etc/grafana/provisioning/dashboards/dashboards.yml"]).read_text())
    dashboards_dir = providers["providers"][0]["options"]["path"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_dir + "/")
    assert (ROOT / sources[dashboards_dir] / Path(home).name).is_file()
    datasources = yaml.safe_load((ROOT / sources["/etc/grafana/provisioning/datasources/datasources.yml"]).read_text())
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"
