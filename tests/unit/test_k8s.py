"""The Kubernetes overlays (``deploy/k8s/{base,dev,production}``) render and say what they mean.

Each overlay is rendered with ``kubectl kustomize`` from a copy of ``deploy/k8s`` in which the
secret files an operator would create are made from their ``.example`` (so the examples are
checked too). Every object of a core kind is validated against the Kubernetes API schema
(``kubernetes-validate``, strict: an unknown field fails); the operators' resources
(RabbitmqCluster, CloudNativePG Cluster and Database, ServiceMonitor, PodMonitor) against
their CRDs' schemas, pruned to the fields we use (``k8s_crds/``; unknown fields fail there
too). Then what the files mean: each service gets the broker and its own database, every
Secret and ConfigMap a pod reads exists (or is one an operator makes), the deliverer's egress
reaches the internet but no cluster-internal or metadata address, the autoscalers, budgets,
monitors and the Ingress point at what exists.

Without ``kubectl`` (or with one whose kustomize is older than v4, like Debian's 1.20
``kubernetes-client``) the rendering tests skip and say why; the files are then still validated
one by one as they are written (``test_every_resource_file_is_valid``). Under ``CI`` they fail
instead: the CI machine has kubectl >= 1.21, and a render test that skips there proves nothing.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from docgen import envdoc
from shared.egress import refusal

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
CRDS = Path(__file__).parent / "k8s_crds"
OVERLAYS = ("base", "dev", "production")
SERVICES = envdoc.SERVICES
STATEFUL = ("ingest", "signer", "audit")
KUBERNETES = "1.31.0"
"""The oldest Kubernetes minor still supported by its project when this was written: every
core object must be valid there (and so on every later one that keeps the API)."""
OPERATOR_SECRETS = {
    "dihya-rabbitmq-default-user": {"username", "password", "host", "port", "connection_string"},
    "dihya-postgres-app": {"username", "password", "host", "port", "dbname", "uri"},
}
"""Secrets the operators create (key names from their sources: rabbitmq/cluster-operator
internal/resource/default_user_secret.go, cloudnative-pg pkg/specs/secrets.go)."""

Object = dict[str, Any]


# --------------------------------------------------------------------------- rendering


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        reason = ("kubectl not installed: the overlays are not rendered (the resource files "
                  "are still validated one by one)")
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must render them: install kubectl >= 1.21")
        pytest.skip(reason)
    done = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True,
                          text=True, timeout=60, check=False)
    version = json.loads(done.stdout or "{}").get("kustomizeVersion", "")
    match = re.match(r"v(\d+)", version)
    if not match or int(match.group(1)) < 4:
        reason = (f"kubectl's kustomize is {version or 'unknown'}, older than v4 (which reads "
                  "`labels:`): the overlays are not rendered")
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must render them: install kubectl >= 1.21")
        pytest.skip(reason)
    return kubectl


@cache
def _rendered(overlay: str, tmp: Path) -> tuple[Object, ...]:
    # kubectl first: a skip (or failure) leaves nothing copied, so the next test's call does
    # not trip over the tree a skipped call copied (functools.cache keeps no exception)
    kubectl = _kubectl()
    tree = tmp / overlay / "k8s"
    shutil.copytree(K8S, tree)
    for example in tree.rglob("secrets/*.example"):
        example.with_suffix("").write_text(example.read_text())
    done = subprocess.run([kubectl, "kustomize", str(tree / overlay)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


@pytest.fixture(scope="module")
def render(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("k8s")
    return lambda overlay: _rendered(overlay, tmp)


def _by_kind(objects: tuple[Object, ...], kind: str) -> dict[str, Object]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


# --------------------------------------------------------------------------- schemas


@cache
def _crd_schemas() -> dict[tuple[str, str], Object]:
    schemas = {}
    for path in CRDS.glob("*.json"):
        kind, group = path.name.removesuffix(".json").split(".", 1)
        schemas[(group, kind)] = json.loads(path.read_text())
    return schemas


def _validate(obj: Object) -> None:
    """``obj`` against the Kubernetes API schema or its operator's CRD schema."""
    group = obj["apiVersion"].rpartition("/")[0]
    where = f"{obj['kind']} {obj['metadata']['name']}"
    schema = _crd_schemas().get((group, obj["kind"]))
    if schema is not None:
        errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(obj)]
        if errors:
            pytest.fail(f"{where}: {errors}")
        return
    try:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        pytest.fail(f"{where}: no schema for {obj['apiVersion']} (a CRD's? add it to k8s_crds/)")
    except kubernetes_validate.ValidationError as error:
        pytest.fail(f"{where}: {error.message} at {list(error.path)}")


def _resource_files() -> Iterator[Path]:
    for overlay in OVERLAYS:
        kustomization = yaml.safe_load((K8S / overlay / "kustomization.yaml").read_text())
        for resource in kustomization["resources"]:
            if not resource.startswith(".."):
                yield K8S / overlay / resource


def test_every_resource_file_is_valid() -> None:
    """Without kubectl too: each resource file's objects, as written, are valid."""
    files = list(_resource_files())
    assert len(files) >= 12
    for path in files:
        for obj in yaml.safe_load_all(path.read_text()):
            if obj:
                _validate(obj)


def test_crd_schemas_refuse_an_unknown_field() -> None:
    """The pruned CRD schemas keep their teeth: a misspelt field fails."""
    cluster = next(o for o in yaml.safe_load_all((K8S / "production/rabbitmq.yaml").read_text()))
    _validate(cluster)
    cluster["spec"]["replica"] = 3
    with pytest.raises(pytest.fail.Exception, match="replica"):
        _validate(cluster)
    assert {kind for _, kind in _crd_schemas()} == {
        "RabbitmqCluster", "Cluster", "Database", "ServiceMonitor", "PodMonitor"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_every_object_is_valid(render: Any, overlay: str) -> None:
    objects = render(overlay)
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(set(names)) == len(names), "an object twice"
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "dihya", obj["metadata"]["name"]
        _validate(obj)
    assert set(_by_kind(objects, "Deployment")) == {f"dihya-{s}" for s in SERVICES}


# --------------------------------------------------------------------------- what pods read


def _container(objects: tuple[Object, ...], service: str) -> Object:
    deployment = _by_kind(objects, "Deployment")[f"dihya-{service}"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _environment(objects: tuple[Object, ...], service: str) -> dict[str, str | None]:
    """Every variable the service's container gets, with its value where the files know it
    (``None``: from an operator's Secret)."""
    container = _container(objects, service)
    configmaps, secrets = _by_kind(objects, "ConfigMap"), _by_kind(objects, "Secret")
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env |= configmaps[source["configMapRef"]["name"]].get("data", {})
        else:
            data = secrets[source["secretRef"]["name"]].get("data", {})
            env |= {k: base64.b64decode(v).decode() for k, v in data.items()}
    for entry in container["env"]:
        if "value" in entry:
            value = entry["value"]
            for ref in re.findall(r"\$\((\w+)\)", value):
                assert ref in env, f"{service}: {entry['name']} uses $({ref}) before it is set"
            env[entry["name"]] = value
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            if ref["name"] in secrets:
                assert ref["key"] in secrets[ref["name"]]["data"]
            else:
                assert ref["key"] in OPERATOR_SECRETS[ref["name"]], ref
            env[entry["name"]] = None
    return env


@pytest.mark.parametrize("overlay", ["dev", "production"])
def test_every_service_gets_the_broker_and_its_own_database(render: Any, overlay: str) -> None:
    objects = render(overlay)
    databases = {}
    for service in SERVICES:
        env = _environment(objects, service)
        own = set(envdoc.variables(service))
        unknown = sorted(n for n in env if n.startswith("DIHYA_") and n not in own)
        assert not unknown, f"{overlay}: {service} does not read {unknown}"
        assert "DIHYA_AMQP_URL" in env, f"{overlay}: {service} has no broker"
        if service in STATEFUL:
            url = env[f"DIHYA_{service.upper()}_DATABASE_URL"]
            assert url is not None and url.startswith("postgresql://")
            databases[service] = url.rsplit("/", 1)[1]
    assert sorted(databases.values()) == sorted(STATEFUL), "one database each, none shared"
    # every Secret and ConfigMap a pod refers to exists, or an operator makes it
    for deployment in _by_kind(objects, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in _by_kind(objects, "Secret")


def test_production_takes_broker_and_database_credentials_from_the_operators(render: Any) -> None:
    objects = render("production")
    (rabbit,) = _by_kind(objects, "RabbitmqCluster").values()
    (postgres,) = _by_kind(objects, "Cluster").values()
    assert rabbit["spec"]["replicas"] == 3
    assert postgres["spec"]["instances"] >= 3
    for service in SERVICES:
        env = {e["name"]: e for e in _container(objects, service)["env"]}
        amqp = env["DIHYA_AMQP_URL"]["valueFrom"]["secretKeyRef"]
        assert amqp == {"name": f"{rabbit['metadata']['name']}-default-user",
                        "key": "connection_string"}
        if service in STATEFUL:
            user = env["PG_USER"]["valueFrom"]["secretKeyRef"]
            assert user["name"] == f"{postgres['metadata']['name']}-app"
            url = env[f"DIHYA_{service.upper()}_DATABASE_URL"]["value"]
            assert url == (f"postgresql://$(PG_USER):$(PG_PASSWORD)@"
                           f"{postgres['metadata']['name']}-rw:5432/{service}")
    # the databases the DSNs name exist: the bootstrap one and a Database resource each
    owner = postgres["spec"]["bootstrap"]["initdb"]["owner"]
    made = {postgres["spec"]["bootstrap"]["initdb"]["database"]}
    for database in _by_kind(objects, "Database").values():
        assert database["spec"]["cluster"]["name"] == postgres["metadata"]["name"]
        assert database["spec"]["owner"] == owner
        made.add(database["spec"]["name"])
    assert made == set(STATEFUL)
    # the secret files hold only what is not the operators' (no broker URL, no DSN)
    for example in (K8S / "production/secrets").glob("*.env.example"):
        assert "DIHYA_AMQP_URL" not in example.read_text()
        assert "DATABASE_URL" not in example.read_text()


def test_dev_brings_its_own_broker_and_database(render: Any) -> None:
    objects = render("dev")
    statefulsets = _by_kind(objects, "StatefulSet")
    services = _by_kind(objects, "Service")
    assert {"rabbitmq", "postgres"} <= set(statefulsets) & set(services)
    for deployment in _by_kind(objects, "Deployment").values():
        assert deployment["spec"]["replicas"] == 1
    env = _environment(objects, "ingest")
    assert "@rabbitmq:5672/" in str(env["DIHYA_AMQP_URL"])
    assert "@postgres:5432/" in str(env["DIHYA_INGEST_DATABASE_URL"])
    init = (K8S / "dev/postgres-init.sql").read_text()
    compose = (ROOT / "deploy/postgres/init.sql").read_text()
    created = re.findall(r"CREATE DATABASE (\w+);", init)
    assert created == re.findall(r"CREATE DATABASE (\w+);", compose) and set(created) == set(
        STATEFUL)
    for pod in [s["spec"]["template"]["spec"] for s in statefulsets.values()]:
        assert pod["securityContext"]["runAsNonRoot"] is True, "the namespace is restricted"


# --------------------------------------------------------------------------- egress


_INTERNAL = ("10.0.0.1", "10.96.0.1", "172.16.5.4", "192.168.1.10", "127.0.0.1", "100.64.0.1",
             "169.254.169.254", "169.254.170.2", "0.0.0.1", "::1", "fd00:ec2::254", "fe80::1",
             "fd12:3456::1")
"""Pods, services, nodes, loopback, link-local and cloud metadata (AWS, GCP, Azure use
169.254.169.254; ECS 169.254.170.2; AWS IPv6 fd00:ec2::254)."""
_PUBLIC = ("93.184.216.34", "8.8.8.8", "2606:4700:4700::1111")


def _egress_to(policy: Object, address: str, port: int) -> bool:
    """Whether ``policy`` lets its pods open ``address``:``port`` by an ipBlock rule."""
    ip = ipaddress.ip_address(address)
    for rule in policy["spec"]["egress"]:
        if rule.get("ports") and not any(p["port"] == port for p in rule["ports"]):
            continue
        for peer in rule.get("to", []):
            block = peer.get("ipBlock")
            if block is None:
                continue
            net = ipaddress.ip_network(block["cidr"])
            excepted = [ipaddress.ip_network(e) for e in block.get("except", [])]
            if ip.version == net.version and ip in net and not any(ip in e for e in excepted):
                return True
    return False


def test_deliverer_reaches_the_internet_but_nothing_internal(render: Any) -> None:
    objects = render("production")
    (policy,) = _by_kind(objects, "NetworkPolicy").values()
    pods = _by_kind(objects, "Deployment")["dihya-deliverer"]["spec"]["template"]["metadata"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pods["labels"].items()
    assert "Egress" in policy["spec"]["policyTypes"]
    for address in _PUBLIC:
        assert _egress_to(policy, address, 443) and _egress_to(policy, address, 80), address
    for address in _INTERNAL:
        for port in (80, 443, 5432, 6443, 8080):
            assert not _egress_to(policy, address, port), f"{address}:{port} is reachable"
    # the policy leaves out only what the application refuses too (DIHYA_ALLOWED_NETWORKS
    # opens both)
    for rule in policy["spec"]["egress"]:
        for peer in rule.get("to", []):
            for cidr in peer.get("ipBlock", {}).get("except", []):
                assert refusal(ipaddress.ip_network(cidr).network_address) is not None, cidr
    # and the broker stays reachable, by pod label
    (rabbit,) = _by_kind(objects, "RabbitmqCluster")
    broker_rules = [r for r in policy["spec"]["egress"]
                    if any(p.get("podSelector", {}).get("matchLabels") ==
                           {"app.kubernetes.io/name": rabbit} for p in r["to"])]
    assert broker_rules and broker_rules[0]["ports"] == [{"protocol": "TCP", "port": 5672}]


# --------------------------------------------------------------------------- scaling, monitoring


def test_autoscalers_and_disruption_budgets(render: Any) -> None:
    objects = render("production")
    deployments = _by_kind(objects, "Deployment")
    hpas = _by_kind(objects, "HorizontalPodAutoscaler")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == {
        "dihya-signer", "dihya-deliverer"}
    for hpa in hpas.values():
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments
        assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
        container = _container(objects, target["name"].removeprefix("dihya-"))
        assert "cpu" in container["resources"]["requests"], "utilization needs a CPU request"
    covered = set()
    for pdb in _by_kind(objects, "PodDisruptionBudget").values():
        selector = pdb["spec"]["selector"]["matchLabels"]
        matched = [name for name, d in deployments.items()
                   if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matched) == 1, pdb["metadata"]["name"]
        assert pdb["spec"]["minAvailable"] < deployments[matched[0]]["spec"]["replicas"]
        covered.add(matched[0])
    assert covered == {"dihya-ingest", "dihya-signer", "dihya-deliverer"}, "audit: one writer"


def test_monitors_scrape_every_service_and_rabbitmq_per_object(render: Any) -> None:
    objects = render("production")
    (monitor,) = _by_kind(objects, "ServiceMonitor").values()
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = _by_kind(objects, "Service")
    scraped = {name for name, service in services.items()
               if selector.items() <= service["metadata"]["labels"].items()}
    # Prometheus Operator names a ServiceMonitor's job after the Service: the job names the
    # alert rules and the dashboard use (dihya-<service>)
    assert scraped == {f"dihya-{s}" for s in SERVICES}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    for name in scraped:
        assert endpoint["port"] in {p["name"] for p in services[name]["spec"]["ports"]}
    (pods,) = _by_kind(objects, "PodMonitor").values()
    (rabbit,) = _by_kind(objects, "RabbitmqCluster")
    # the operator labels its pods app.kubernetes.io/name=<cluster> and names the
    # rabbitmq_prometheus port "prometheus" (15692): internal/resource/statefulset.go
    assert pods["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": rabbit}
    (endpoint,) = pods["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "prometheus" and endpoint["path"] == "/metrics/per-object"
    job = {r["targetLabel"]: r["replacement"] for r in endpoint["relabelings"]}["job"]
    alerts = (ROOT / "deploy/prometheus/alerts.yml").read_text()
    assert job == "rabbitmq" and "rabbitmq_queue_messages" in alerts


def test_ingress_puts_console_and_audit_api_on_one_origin(render: Any) -> None:
    objects = render("production")
    (ingress,) = _by_kind(objects, "Ingress").values()
    (rule,) = ingress["spec"]["rules"]
    routes = {p["path"]: p["backend"]["service"] for p in rule["http"]["paths"]}
    services = _by_kind(objects, "Service")
    assert routes["/"]["name"] == "dihya-ingest" and routes["/v1/audit"]["name"] == "dihya-audit"
    for backend in routes.values():
        assert backend["port"]["name"] in {p["name"] for p in services[backend["name"]]["spec"][
            "ports"]}
    assert rule["host"] in ingress["spec"]["tls"][0]["hosts"]
    # the console calls the audit API on its own origin
    env = _environment(objects, "ingest")
    assert env["DIHYA_INGEST_CONSOLE_AUDIT_URL"] == f"https://{rule['host']}"
    # every audit API path (its OpenAPI document) is under the prefix the Ingress sends to it;
    # the operations endpoints (health, metrics) stay inside the cluster, and /v1/openapi.json
    # on this origin is ingest's (docs/kubernetes.md says where audit's is)
    from services.audit import openapi
    from services.audit.http import routes

    paths = set(openapi.document(routes(100))["paths"]) - {
        "/healthz", "/readyz", "/metrics", "/v1/openapi.json"}
    assert paths and all(p.startswith("/v1/audit/") for p in paths), paths


@pytest.mark.parametrize("overlay", ["dev", "production"])
def test_every_value_set_is_one_the_settings_accept(
        render: Any, overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The overlays' values pass each service's settings validation (a value a service would
    refuse at start fails here). What comes from an operator's Secret gets a stand-in of the
    same form; a secret file's CHANGE_ME (the example's, for the operator to fill) is left
    unset."""
    objects = render(overlay)
    stand_ins = {"DIHYA_AMQP_URL": "amqp://user:password@dihya-rabbitmq:5672/",
                 "PG_USER": "dihya", "PG_PASSWORD": "password"}
    for service in SERVICES:
        env = _environment(objects, service)
        with monkeypatch.context() as patch:
            for name in list(os.environ):
                if name.startswith("DIHYA_"):
                    patch.delenv(name)
            for name, value in env.items():
                value = stand_ins[name] if value is None else value
                value = re.sub(r"\$\((\w+)\)", lambda m: stand_ins[m.group(1)], value)
                if (name.startswith("DIHYA_") and not name.endswith("_FILE")
                        and value != "CHANGE_ME"):
                    patch.setenv(name, value)
            envdoc._settings(service)()


def test_the_quorum_write_ahead_log_fits_the_nodes_memory(render: Any) -> None:
    """RabbitMQ keeps a quorum queue's recent entries in memory until its write-ahead log
    reaches ``raft.wal_max_size_bytes`` and asks for 3-4 x that limit of memory: the default
    (512 MiB) would sit above a 2 GiB node's alarm, so the manifest sets one that fits."""
    objects = render("production")
    (rabbit,) = _by_kind(objects, "RabbitmqCluster").values()
    config = rabbit["spec"]["rabbitmq"]["additionalConfig"]
    wal = re.search(r"^raft\.wal_max_size_bytes = (\d+)$", config, re.MULTILINE)
    assert wal is not None, "the 512 MiB default is above the node's memory alarm"
    limit = rabbit["spec"]["resources"]["limits"]["memory"]
    assert limit.endswith("Gi")
    memory = int(limit[:-2]) * 2**30
    watermark = re.search(r"^vm_memory_high_watermark\.relative = ([\d.]+)$", config,
                          re.MULTILINE)
    assert watermark is not None
    assert 4 * int(wal[1]) <= float(watermark[1]) * memory


def test_health_checks_ask_the_broker_not_its_kernel(render: Any) -> None:
    """A frozen broker node still accepts TCP: every check here needs an answer from the
    node (RabbitMQ pods) or a service's own broker and consumer state (``/readyz``)."""
    objects = render("production")
    (rabbit,) = _by_kind(objects, "RabbitmqCluster").values()
    (container,) = rabbit["spec"]["override"]["statefulSet"]["spec"]["template"]["spec"][
        "containers"]
    config = rabbit["spec"]["rabbitmq"]["additionalConfig"]
    assert "cluster_partition_handling = pause_minority" in config
    ticktime = re.search(r"^net_ticktime = (\d+)$", config, re.MULTILINE)
    assert ticktime is not None and int(ticktime[1]) <= 15  # a frozen node is let go soon
    # a dead-letter hop caught by a killed node's nacks is resent in seconds, not 3 minutes
    advanced = rabbit["spec"]["rabbitmq"]["advancedConfig"]
    resend = re.search(r"\{dead_letter_worker_publisher_confirm_timeout, (\d+)\}", advanced)
    assert resend is not None and int(resend[1]) <= 5000
    probe = container["readinessProbe"]
    assert "tcpSocket" not in probe
    assert probe["exec"]["command"][:1] == ["rabbitmq-diagnostics"]
    assert probe["timeoutSeconds"] < probe["periodSeconds"]
    for service in SERVICES:
        spec = _container(objects, service)
        assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz", service
        assert spec["livenessProbe"]["httpGet"]["path"] == "/healthz", service
