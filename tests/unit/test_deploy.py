"""The deployment files (``deploy/``) and the runbook agree with the code.

No container engine runs here, so this checks what can be checked by reading: every file
parses; the images, compose services and Kubernetes Deployments start the right
``python -m services.<name>`` on the port its settings use, with probes on ``/healthz`` and
``/readyz``; every ``DIHYA_*`` variable they set (or the runbook names) is one a settings model
reads; every metric the alerts and the dashboard query is one the services register; the
alert rules pass ``promtool check rules`` and their unit tests (``promtool test rules``) where
promtool is installed, and a structural check otherwise; ``docs/operations.md`` is current.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from docgen import envdoc, opsdoc
from shared import topology
from shared.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s" / "base"
PRODUCTION = DEPLOY / "k8s" / "production"
PROMETHEUS = DEPLOY / "prometheus"
SERVICES = envdoc.SERVICES
STATEFUL = ("ingest", "signer", "audit")
SCRAPE_LABELS = {"job", "instance", "pod"}
"""Labels Prometheus adds to every scraped series."""

RABBITMQ_METRICS = {
    "rabbitmq_queue_messages", "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked", "rabbitmq_queue_consumers",
    "rabbitmq_process_resident_memory_bytes", "rabbitmq_resident_memory_limit_bytes",
    "rabbitmq_disk_space_available_bytes", "rabbitmq_disk_space_available_limit_bytes",
}
"""RabbitMQ metrics the rules and the dashboard may use: names and labels (vhost, queue) as
the rabbitmq_prometheus plugin serves them on /metrics/per-object (read from a 3.10 node;
3.13 keeps them)."""
RABBITMQ_LABELS = {"vhost", "queue"}
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - what a container must bind to be reachable


# --------------------------------------------------------------------------- helpers


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _default_port(service: str) -> int:
    return int(envdoc._settings(service).model_fields["port"].default)


@cache
def _all_variables() -> frozenset[str]:
    return frozenset(v for s in SERVICES for v in envdoc.variables(s))


def _check_service_env(service: str, names: Any, where: str) -> None:
    """Every variable ``where`` sets for ``service`` is one that service reads."""
    own = set(envdoc.variables(service))
    unknown = sorted(n for n in names if n.startswith("DIHYA_") and n not in own)
    assert not unknown, f"{where}: {service} does not read {unknown}"


def _env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value
    return pairs


# --------------------------------------------------------------------------- every file parses


def test_every_deployment_file_parses() -> None:
    files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))
    assert len(files) >= 10
    for path in files:
        assert _yaml_all(path), f"{path} is empty"
    for path in sorted(DEPLOY.rglob("*.json")):
        json.loads(path.read_text())


# --------------------------------------------------------------------------- the images


@cache
def _dockerfile() -> dict[str, list[tuple[str, str]]]:
    """Instructions per stage (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest, re.IGNORECASE)
            assert match, f"every stage is named: FROM {rest}"
            current = [("FROM", match.group(1))]
            stages[match.group(2)] = current
        elif stages:
            current.append((word.upper(), rest.strip()))
    return stages


def _instruction(stage: str, word: str) -> list[str]:
    return [rest for w, rest in _dockerfile()[stage] if w == word]


def _exec_form(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def _env_instruction(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in shlex.split(text))


def test_dockerfile_has_one_target_per_service_running_its_module() -> None:
    stages = _dockerfile()
    for service in SERVICES:
        assert service in stages, f"no `--target {service}`"
        assert stages[service][0] == ("FROM", "runtime")
        entry = _exec_form(_instruction(service, "ENTRYPOINT")[-1])
        assert entry == ["python", "-m", f"services.{service}"]
        assert importlib.util.find_spec(f"services.{service}.__main__") is not None
        port = _default_port(service)
        assert _instruction(service, "EXPOSE") == [str(port)]
        env = {k: v for text in _instruction(service, "ENV")
               for k, v in _env_instruction(text).items()}
        _check_service_env(service, env, "Dockerfile")
        assert env.get(f"DIHYA_{service.upper()}_HOST") == ALL_INTERFACES


def test_dockerfile_health_checks_probe_healthz_on_the_service_port() -> None:
    for service in SERVICES:
        (check,) = _instruction(service, "HEALTHCHECK")
        options, _, command = check.partition("CMD ")
        assert "--interval=" in options
        argv = _exec_form(command)
        assert argv[:2] == ["python", "-c"]
        code = argv[2]
        compile(code, f"HEALTHCHECK of {service}", "exec")
        assert "/healthz" in code
        assert f"'DIHYA_{service.upper()}_PORT', '{_default_port(service)}'" in code


def test_dockerfile_base_is_pinned() -> None:
    """A rebuild does not move Python or Debian under the image: a patch release and a Debian
    release in the tag (a digest may follow), never a floating ``python:3.11-slim``."""
    (arg,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", (DEPLOY / "Dockerfile").read_text(),
                        re.MULTILINE)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-(bookworm|trixie)(@sha256:[0-9a-f]{64})?", arg)
    for stage in ("build", "runtime"):
        assert _dockerfile()[stage][0] == ("FROM", "${PYTHON_IMAGE}")


def test_images_run_as_an_unprivileged_user_with_the_project_installed() -> None:
    (user,) = _instruction("runtime", "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, "a numeric non-root uid (runAsNonRoot checks it)"
    for service in SERVICES:
        assert not _instruction(service, "USER"), f"{service} must keep the runtime user"
    runs = _instruction("build", "RUN")
    # the dependencies from the lock, every hash checked; then the project alone, built by the
    # lock's setuptools: nothing resolved at build time
    assert "pip install --require-hashes --no-deps -r locks/runtime.txt" in runs[1]
    assert "pip install --no-deps --no-build-isolation ." in runs[2]
    assert "cli.main" in runs[2] and "dihya --help" in runs[2], "the CLI is in the image"
    copied = {text.split()[0] for text in _instruction("build", "COPY")}
    assert {"locks/runtime.txt", "cli"} <= copied
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for pattern in packages["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in copied, f"the package includes {pattern}: COPY it"
    assert ("COPY", "--from=build /opt/dihya /opt/dihya") in _dockerfile()["runtime"]


def test_dockerignore_lets_in_what_the_image_copies() -> None:
    kept = {line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines()
            if line.startswith("!")}
    for text in _instruction("build", "COPY"):
        for source in text.split()[:-1]:
            assert source.rstrip("/") in kept, f"COPY {source}: excluded by .dockerignore"
            assert (ROOT / source).exists()


# --------------------------------------------------------------------------- compose


@cache
def _compose() -> dict[str, Any]:
    compose = _yaml(DEPLOY / "compose.yaml")
    assert isinstance(compose, dict)
    return compose


def _interpolated(text: str) -> set[str]:
    return set(re.findall(r"\$\{([A-Z0-9_]+)", text))


def test_compose_runs_the_whole_platform() -> None:
    services = _compose()["services"]
    assert {*SERVICES, "rabbitmq", "postgres", "prometheus", "grafana"} <= set(services)
    assert services["rabbitmq"]["image"].startswith("rabbitmq:3.13-management")
    assert services["postgres"]["image"].startswith("postgres:")


def test_compose_builds_each_service_from_its_dockerfile_target() -> None:
    services = _compose()["services"]
    for service in SERVICES:
        spec = services[service]
        build = spec["build"]
        assert (DEPLOY / build["context"]).resolve() == ROOT
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        assert build["target"] == service and service in _dockerfile()
        assert "entrypoint" not in spec and "command" not in spec, "the image's ENTRYPOINT runs"
        grace = int(str(spec["stop_grace_period"]).rstrip("s"))
        assert grace > ServiceSettings.model_fields["shutdown_grace"].default


def test_compose_sets_only_variables_the_services_read() -> None:
    services = _compose()["services"]
    for service in SERVICES:
        env = services[service]["environment"]
        _check_service_env(service, env, "compose.yaml")
        assert env[f"DIHYA_{service.upper()}_HOST"] == ALL_INTERFACES
        assert int(env[f"DIHYA_{service.upper()}_PORT"]) == _default_port(service)
        amqp = env["DIHYA_AMQP_URL"]
        assert amqp.startswith("amqp://") and "@rabbitmq:5672/" in amqp
        for env_file in services[service].get("env_file", []):
            assert env_file.startswith("secrets/"), "secrets stay in the git-ignored secrets/"
    assert "DIHYA_ADMIN_TOKEN" in services["ingest"]["environment"]
    assert "DIHYA_ADMIN_TOKEN" in services["audit"]["environment"]


def test_compose_gives_a_shared_variable_one_value_everywhere() -> None:
    """A variable several services read (the broker URL, the egress policy…) is set alike in
    every service that reads it, or in none: ingest and the deliverer must not judge the same
    endpoint URL by two policies."""
    services = _compose()["services"]
    base = {envdoc.env_name(ServiceSettings, n, f) for n, f in ServiceSettings.model_fields.items()}
    for name in _all_variables():
        readers = [s for s in SERVICES if name in envdoc.variables(s)]
        values = {s: services[s]["environment"].get(name) for s in readers}
        if name in base:  # read by all, meaningful to some (the admin token: HTTP services)
            values = {s: v for s, v in values.items() if v is not None}
        if len(readers) > 1 and any(v is not None for v in values.values()):
            assert len(set(values.values())) == 1, f"{name}: {values}"


def test_compose_gives_each_stateful_service_its_own_postgres_database() -> None:
    services = _compose()["services"]
    created = set(re.findall(r"CREATE DATABASE (\w+);", (DEPLOY / "postgres/init.sql").read_text()))
    assert created == set(STATEFUL)
    for service in STATEFUL:
        url = services[service]["environment"][f"DIHYA_{service.upper()}_DATABASE_URL"]
        dsn = rf"postgresql://dihya:\$\{{POSTGRES_PASSWORD\}}@postgres:5432/{service}"
        assert re.fullmatch(dsn, url)
        assert services[service]["depends_on"]["postgres"]["condition"] == "service_healthy"
    mounts = services["postgres"]["volumes"]
    assert "./postgres/init.sql:/docker-entrypoint-initdb.d/10-dihya.sql:ro" in mounts


def test_compose_loads_the_generated_rabbitmq_definitions_before_the_services() -> None:
    services = _compose()["services"]
    loader = services["rabbitmq-topology"]
    (mount,) = loader["volumes"]
    source, target, _ = mount.split(":")
    assert (DEPLOY / source).resolve() == DEPLOY / "rabbitmq" / "definitions.json"
    assert loader["entrypoint"][0] == "rabbitmqadmin"
    assert loader["entrypoint"][-2:] == ["import", target]
    for service in SERVICES:
        condition = services[service]["depends_on"]["rabbitmq-topology"]["condition"]
        assert condition == "service_completed_successfully"


def test_compose_signer_master_key_and_headers_key_come_from_secret_files() -> None:
    signer = _compose()["services"]["signer"]
    assert "DIHYA_SIGNER_MASTER_KEY" not in signer["environment"]
    assert signer["env_file"] == ["secrets/signer.env", "secrets/headers.env"]
    services = _compose()["services"]
    assert services["deliverer"]["env_file"] == ["secrets/headers.env"]
    for name in ("ingest", "audit"):  # the headers key goes to the signer and deliverer only
        assert "secrets/headers.env" not in services[name].get("env_file", [])
    ignored = (DEPLOY / ".gitignore").read_text().split()
    assert "/secrets/" in ignored and "/.env" in ignored


def test_compose_mounts_exist_and_interpolations_are_documented() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    for spec in _compose()["services"].values():
        for mount in spec.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{source} is missing"
    example = _env_file(DEPLOY / ".env.example")
    undocumented = _interpolated(text) - set(example)
    assert not undocumented, f"add {sorted(undocumented)} to deploy/.env.example"
    unknown = sorted(k for k in example if k.startswith("DIHYA_") and k not in _all_variables())
    assert not unknown


def test_compose_prometheus_and_grafana_get_their_files() -> None:
    services = _compose()["services"]
    prometheus = services["prometheus"]["volumes"]
    config = _yaml(PROMETHEUS / "prometheus.yml")
    (rules,) = config["rule_files"]
    assert f"./prometheus/alerts.yml:{rules}:ro" in prometheus
    assert any(m.startswith("./prometheus/prometheus.yml:") for m in prometheus)
    grafana = services["grafana"]["volumes"]
    provider = _yaml(DEPLOY / "grafana/provisioning/dashboards/dihya.yml")
    path = provider["providers"][0]["options"]["path"]
    assert f"./grafana/dihya.json:{path}/dihya.json:ro" in grafana
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana
    datasource = _yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_prometheus_scrapes_every_service_and_rabbitmq_per_object() -> None:
    for name in ("prometheus.yml", "prometheus-kubernetes.yml"):
        jobs = {job["job_name"]: job for job in _yaml(PROMETHEUS / name)["scrape_configs"]}
        assert jobs["rabbitmq"]["metrics_path"] == "/metrics/per-object"
    jobs = {job["job_name"]: job for job in _yaml(PROMETHEUS / "prometheus.yml")["scrape_configs"]}
    for service in SERVICES:
        (sd,) = jobs[f"dihya-{service}"]["dns_sd_configs"]
        assert sd["names"] == [service] and sd["port"] == _default_port(service)
    assert jobs["rabbitmq"]["static_configs"][0]["targets"] == ["rabbitmq:15692"]
    # On Kubernetes the job is named from the pod's component label: dihya-<service>.
    k8s = _yaml(PROMETHEUS / "prometheus-kubernetes.yml")["scrape_configs"][0]
    relabel = next(r for r in k8s["relabel_configs"] if r.get("target_label") == "job")
    assert relabel["source_labels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_component"]
    assert relabel["replacement"] == "dihya-$1"


# --------------------------------------------------------------------------- kubernetes


@cache
def _kustomization() -> dict[str, Any]:
    kustomization = _yaml(K8S / "kustomization.yaml")
    assert isinstance(kustomization, dict)
    return kustomization


@cache
def _k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    objects = {}
    for resource in _kustomization()["resources"]:
        for doc in _yaml_all(K8S / resource):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"{key} twice"
            objects[key] = doc
    return objects


def _generated(kind: str) -> dict[str, dict[str, Any]]:
    """The base's ConfigMaps; the production overlay's Secrets (tests/unit/test_k8s.py renders
    every overlay and checks dev's Secrets too)."""
    if kind == "secretGenerator":
        production = _yaml(PRODUCTION / "kustomization.yaml")
        return {g["name"]: g for g in production[kind]}
    return {g["name"]: g for g in _kustomization()[kind]}


def _production_env(service: str) -> set[str]:
    """The variables the production overlay's patch adds (from the operators' Secrets)."""
    patch = _yaml(PRODUCTION / "patches" / f"{service}.yaml")
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    return {e["name"] for e in container["env"]}


def _container(service: str) -> dict[str, Any]:
    deployment = _k8s_objects()[("Deployment", f"dihya-{service}")]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def test_kustomization_files_exist() -> None:
    for resource in _kustomization()["resources"]:
        assert (K8S / resource).is_file()
    for generator in _generated("secretGenerator").values():
        for entry in [*generator.get("envs", []), *generator.get("files", [])]:
            path = PRODUCTION / entry.split("=")[-1]
            assert path.parent.name == "secrets", "secret files live in the git-ignored secrets/"
            assert path.with_name(path.name + ".example").is_file(), f"{path}.example"
    literals = [lit.split("=", 1)[0] for g in _generated("configMapGenerator").values()
                for lit in g.get("literals", [])]
    assert literals and set(literals) <= _all_variables()


def test_k8s_has_a_deployment_and_a_service_per_service() -> None:
    objects = _k8s_objects()
    for service in SERVICES:
        deployment = objects[("Deployment", f"dihya-{service}")]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert pod_labels["app.kubernetes.io/component"] == service
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        svc = objects[("Service", f"dihya-{service}")]
        assert svc["spec"]["selector"].items() <= pod_labels.items()
        (port,) = svc["spec"]["ports"]
        assert port["port"] == _default_port(service) and port["targetPort"] == "http"
        container = _container(service)
        assert container["image"].split(":")[0] == f"dihya/{service}"
        assert "command" not in container and "args" not in container, "the image's ENTRYPOINT"
        assert container["ports"] == [{"name": "http", "containerPort": _default_port(service)}]
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(_default_port(service))
    assert objects[("Deployment", "dihya-audit")]["spec"]["replicas"] == 1, "one audit writer"


def test_k8s_probes_resources_and_security() -> None:
    for service in SERVICES:
        container = _container(service)
        for probe, path in (("livenessProbe", "/healthz"), ("startupProbe", "/healthz"),
                            ("readinessProbe", "/readyz")):
            assert container[probe]["httpGet"] == {"path": path, "port": "http"}, (service, probe)
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert "memory" in container["resources"]["limits"]
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
        pod = _k8s_objects()[("Deployment", f"dihya-{service}")]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] >= 1000
        grace = ServiceSettings.model_fields["shutdown_grace"].default
        assert pod["terminationGracePeriodSeconds"] > grace


def test_k8s_environment_is_read_by_the_service() -> None:
    configmaps, secrets = _generated("configMapGenerator"), _generated("secretGenerator")
    for service in SERVICES:
        container = _container(service)
        env = {e["name"]: e.get("value") for e in container["env"]}
        _check_service_env(service, env, f"k8s/{service}.yaml")
        assert env[f"DIHYA_{service.upper()}_HOST"] == ALL_INTERFACES
        assert env[f"DIHYA_{service.upper()}_PORT"] == str(_default_port(service))
        names: set[str] = set(env)
        for source in container["envFrom"]:
            if "configMapRef" in source:
                generator = configmaps[source["configMapRef"]["name"]]
                names |= {lit.split("=", 1)[0] for lit in generator["literals"]}
            else:
                generator = secrets[source["secretRef"]["name"]]
                for path in generator["envs"]:
                    example = _env_file(PRODUCTION / f"{path}.example")
                    _check_service_env(service, example, f"k8s/production/{path}.example")
                    names |= set(example)
        names |= _production_env(service)
        _check_service_env(service, names, f"k8s/{service}.yaml")
        assert "DIHYA_AMQP_URL" in names
        for generator in configmaps.values():
            for literal in generator["literals"]:
                name = literal.split("=", 1)[0]
                assert name not in envdoc.variables(service) or name in names, (
                    f"{service} reads {name} but does not get ConfigMap {generator['name']}")
        if service in STATEFUL:
            assert f"DIHYA_{service.upper()}_DATABASE_URL" in names


def test_k8s_signer_master_key_is_a_mounted_secret() -> None:
    container = _container("signer")
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "DIHYA_SIGNER_MASTER_KEY" not in env
    key_file = Path(env["DIHYA_SIGNER_MASTER_KEY_FILE"])
    mount = next(m for m in container["volumeMounts"] if m["name"] == "master-key")
    assert key_file.parent == Path(mount["mountPath"]) and mount["readOnly"] is True
    pod = _k8s_objects()[("Deployment", "dihya-signer")]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "master-key")
    generator = _generated("secretGenerator")[volume["secret"]["secretName"]]
    assert generator["files"] == [f"{key_file.name}=secrets/signer-master-key"]
    assert volume["secret"]["defaultMode"] & 0o040, "readable by the pod's fsGroup"


# --------------------------------------------------------------------------- metrics


@cache
def _registered() -> dict[str, frozenset[str]]:
    """Every sample name the services expose on /metrics, with its label names."""
    from prometheus_client import REGISTRY

    for service in SERVICES:
        importlib.import_module(f"services.{service}.app")
    suffixes = {"counter": ("_total", "_created"), "gauge": ("",), "info": ("_info",),
                "histogram": ("_bucket", "_count", "_sum", "_created"),
                "summary": ("", "_count", "_sum", "_created")}
    names: dict[str, frozenset[str]] = {}
    # The registry knows each collector's label names only through its private attributes.
    for collector in list(REGISTRY._collector_to_names):
        describe = getattr(collector, "describe", None)
        if describe is None:
            continue
        labels = set(getattr(collector, "_labelnames", ()))
        for family in describe():
            if not family.name.startswith("dihya_"):
                continue
            extra = {"histogram": {"le"}, "summary": {"quantile"}}.get(family.type, set())
            for suffix in suffixes[family.type]:
                names[family.name + suffix] = frozenset(labels | extra)
    assert names, "no dihya_* metric registered"
    return names


def _expressions() -> Iterator[tuple[str, str]]:
    for group in _yaml(PROMETHEUS / "alerts.yml")["groups"]:
        for rule in group["rules"]:
            yield f"alert {rule['alert']}", rule["expr"]
    for panel in json.loads((DEPLOY / "grafana/dihya.json").read_text())["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]


def _matchers(selector: str) -> set[str]:
    return set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", selector))


def test_alerts_and_dashboard_query_metrics_the_services_register() -> None:
    registered = _registered()
    seen: set[str] = set()
    for where, expr in _expressions():
        families = re.findall(r"\b((?:dihya|rabbitmq)_\w+)", expr)
        assert families or "up{" in expr or "ALERTS{" in expr, f"{where}: no metric"
        labels_available = set(SCRAPE_LABELS)
        for name in families:
            if name.startswith("dihya_"):
                assert name in registered, f"{where}: {name} is not a metric the services export"
                labels_available |= registered[name]
            else:
                assert name in RABBITMQ_METRICS, f"{where}: unknown RabbitMQ metric {name}"
                labels_available |= RABBITMQ_LABELS
            seen.add(name)
        for name, selector in re.findall(r"\b((?:dihya|rabbitmq)_\w+)\s*\{([^}]*)\}", expr):
            allowed = registered.get(name, frozenset(RABBITMQ_LABELS)) | SCRAPE_LABELS
            assert _matchers(selector) <= allowed, f"{where}: {name} has no such label"
        for clause in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
            grouped = {label.strip() for label in clause.split(",") if label.strip()}
            assert grouped <= labels_available | {"alertname"}, f"{where}: by ({clause})"
    # The dashboard covers every service's metrics, not only some.
    for service in SERVICES:
        assert any(name.startswith(f"dihya_{service}_") for name in seen), service


def _dashboard() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = json.loads((DEPLOY / "grafana/dihya.json").read_text())[
        "panels"]
    return panels


def test_the_dashboard_shows_every_ordered_endpoint_metric() -> None:
    """Ordered (FIFO) endpoints have their row: every metric the services register about them
    is queried by some panel, so a new one cannot be left off the dashboard unnoticed."""
    exprs = " ".join(t["expr"] for panel in _dashboard() for t in panel.get("targets", []))
    queried = set(re.findall(r"\bdihya_\w+", exprs))
    ordered = {name for name in _registered() if "_ordered" in name
               and not name.endswith(("_created", "_bucket", "_sum", "_count"))}
    assert ordered, "no ordered-endpoint metric registered"
    assert ordered <= queried, f"not on the dashboard: {sorted(ordered - queried)}"
    row = next(p for p in _dashboard() if p["type"] == "row" and "Ordered" in p["title"])
    assert row["gridPos"]["w"] == 24


def test_dashboard_queue_selectors_name_queues_of_the_topology() -> None:
    """A queue name or pattern in a panel matches queues the services declare (the FIFO lanes,
    the sign-now queue...), as Prometheus matches them (anchored): a renamed queue would
    otherwise leave a panel silently empty."""
    declared = {q.name for q in (*topology.queues(), *topology.retry_queues((1000,)),
                                 *topology.defer_queues((1000,)))}
    for panel in _dashboard():
        for target in panel.get("targets", []):
            for op, value in re.findall(r'\bqueue\s*(=~|=)\s*"([^"]*)"', target["expr"]):
                matched = {q for q in declared
                           if (re.fullmatch(value, q) if op == "=~" else q == value)}
                assert matched, f"panel {panel['title']!r}: queue{op}{value!r} matches none"
    lanes = {q.name for q in topology.FIFO_QUEUES}
    assert lanes == {q for q in declared if re.fullmatch(r"dihya[.]fifo[.][0-9]+", q)}


def test_dashboard_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = _dashboard()
    assert len({p["id"] for p in panels}) == len(panels)
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


# --------------------------------------------------------------------------- alert rules


@cache
def _rules() -> list[dict[str, Any]]:
    return [rule for group in _yaml(PROMETHEUS / "alerts.yml")["groups"]
            for rule in group["rules"]]


def _operations() -> str:
    return opsdoc.OPERATIONS.read_text()


def test_alert_rules_are_well_formed_and_cover_the_runbook() -> None:
    """What promtool checks, for machines without it, plus the links to the runbook."""
    groups = _yaml(PROMETHEUS / "alerts.yml")["groups"]
    assert len({g["name"] for g in groups}) == len(groups)
    names = [rule["alert"] for rule in _rules()]
    assert len(set(names)) == len(names), "alert names are unique"
    required = {"DihyaServiceDown", "DihyaEndpointDisabled", "DihyaParkedMessagesGrowing",
                "DihyaQueueBacklog", "DihyaAuditLag", "DihyaDeliveryFailureRateHigh"}
    assert required <= set(names)
    headings = set(re.findall(r"^### (\w+)$", _operations(), re.MULTILINE))
    for rule in _rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        expr = rule["expr"]
        assert isinstance(expr, str) and expr.strip()
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}")
        assert re.fullmatch(r"\d+[smhd]", rule.get("for", "0s")), rule["alert"]
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook_url"} <= set(annotations)
        for text in annotations.values():
            assert text.count("{{") == text.count("}}")
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page == "docs/operations.md" and anchor == rule["alert"].lower()
        assert rule["alert"] in headings, f"docs/operations.md has no ### {rule['alert']}"
    alerts_section = _operations().split("\n## Alerts\n")[1].split("\n## ")[0]
    documented = set(re.findall(r"^### (\w+)$", alerts_section, re.MULTILINE))
    assert documented == set(names), "every alert documented, every documented alert exists"


def test_every_alert_has_unit_tests_that_fire_it() -> None:
    tests = _yaml(PROMETHEUS / "alerts.test.yml")
    assert tests["rule_files"] == ["alerts.yml"]
    fired = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"]
             if case["exp_alerts"]}
    assert fired == {rule["alert"] for rule in _rules()}
    for test in tests["tests"]:
        for series in test["input_series"]:
            names = re.findall(r"^((?:dihya|rabbitmq)_\w+)", series["series"])
            for name in names:
                assert name in _registered() or name in RABBITMQ_METRICS, name


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus); "
                    "test_alert_rules_are_well_formed_and_cover_the_runbook checks the structure")
    return promtool


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = _promtool()
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]):
        done = subprocess.run([promtool, *args], cwd=PROMETHEUS, capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_checks_the_compose_prometheus_config(tmp_path: Path) -> None:
    promtool = _promtool()
    config = _yaml(PROMETHEUS / "prometheus.yml")
    shutil.copy(PROMETHEUS / "alerts.yml", tmp_path / "alerts.yml")
    config["rule_files"] = [str(tmp_path / "alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    done = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------- the runbook


def test_operations_doc_is_current() -> None:
    text = _operations()
    for name in opsdoc.BLOCKS:
        start, end = opsdoc.markers(name)
        assert start in text and end in text, f"docs/operations.md lacks the {name} block"
    assert opsdoc.updated(text) == text, "run `python -m docgen.opsdoc` to refresh it"


def test_operations_doc_links_the_page_listing_every_variable() -> None:
    assert "](configuration.md)" in _operations()
    text = envdoc.CONFIGURATION.read_text()
    for name in _all_variables():
        assert f"| `{name}` |" in text, name


def test_every_variable_named_in_deploy_files_and_runbook_exists() -> None:
    files = [opsdoc.OPERATIONS, DEPLOY / "Dockerfile", DEPLOY / ".env.example",
             *DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.example")]
    for path in files:
        named = set(re.findall(r"\bDIHYA_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
        unknown = sorted(named - _all_variables())
        assert not unknown, f"{path.relative_to(ROOT)} names variables no service reads: {unknown}"


def test_runbook_topology_names_a_consumer_for_every_work_queue() -> None:
    for queue in topology.WORK_QUEUES:
        assert queue.name in opsdoc.CONSUMERS, queue.name
    for queue in opsdoc.CONSUMERS:
        assert queue in {q.name for q in topology.queues()}, f"{queue} is not in the topology"


def test_opsdoc_blocks_replace_only_their_own_text() -> None:
    start, end = opsdoc.markers("retry")
    text = f"before\n{start}\nstale\n{end}\nafter\n"
    result = opsdoc.updated(text)
    assert result.startswith("before\n") and result.endswith(f"{end}\nafter\n")
    assert "stale" not in result and "DIHYA_DELIVERER_RETRY_SCHEDULE" in result
