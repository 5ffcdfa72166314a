"""deploy/kubernetes/: every overlay rendered by the real `kubectl kustomize`, validated offline.

No cluster runs here. What a cluster would refuse is checked against the Kubernetes 1.32
JSON schemas (kubernetes-validate, strict: an unknown field fails) and the Prometheus
Operator's CRD models (cloudcoil-models-prometheus-operator, made strict here: a field the
model does not know fails). What the objects promise is checked against their sources: the
rules promtool tests, the dashboards the generator writes, docker-compose.yml and the
Dockerfile, and the exporter itself, run as the Deployment's container would run it.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import hmac
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import sqlalchemy as sa
import yaml
from pydantic import BaseModel
from sqlalchemy.engine import make_url

from .processes import free_port, http_get, samples, wait_until

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(p.parent.name for p in (KUBE / "overlays").glob("*/kustomization.yaml"))
RULE_FILES = sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
KUBERNETES_VERSION = "1.32.0"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
DATABASE_SECRET = "confusion-exporter-database"
MIGRATE_SECRET = "confusion-exporter-migrate"


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(
            "kubectl not found: these tests render the overlays with `kubectl kustomize` (kubectl >= 1.32)"
        )
    return path


class KustomizeLoader(yaml.SafeLoader):
    """kustomize prints the string ``=`` unquoted (``matchType: =``), which YAML 1.1, and so
    PyYAML, reads as the "value" tag; Go's YAML reads it as the string it is."""


def _plain_string(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    assert isinstance(node, yaml.ScalarNode)
    return loader.construct_scalar(node)


KustomizeLoader.add_constructor("tag:yaml.org,2002:value", _plain_string)


def render(kubectl: str, directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [obj for obj in yaml.load_all(result.stdout, Loader=KustomizeLoader) if obj]  # noqa: S506 - SafeLoader subclass


@pytest.fixture(scope="module")
def rendered(kubectl: str) -> dict[str, list[dict[str, Any]]]:
    assert {"kube-prometheus-stack", "kube-prometheus-stack-alerting", "plain"} <= set(OVERLAYS)
    return {name: render(kubectl, KUBE / "overlays" / name) for name in OVERLAYS}


def kind_of(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in kind_of(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        f"{o['kind']}/{o['metadata']['name']}": o["spec"]["template"]
        for o in objects
        if o["kind"] in ("Deployment", "Job")
    }


def exporter_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(objects, "Deployment", "confusion-exporter")["spec"]["template"]["spec"]["containers"]
    return container


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


# --- the generator ----------------------------------------------------------------------


def test_generated_files_match_their_sources():
    result = subprocess.run(
        [sys.executable, str(KUBE / "generate.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_generator_check_reports_a_changed_rule_and_a_stale_dashboard(tmp_path):
    """On a copy of the sources: --check fails naming the file, a write repairs it."""
    for part in ("prometheus/rules", "grafana/dashboards", "deploy/kubernetes"):
        shutil.copytree(ROOT / part, tmp_path / part)
    generator = [sys.executable, str(tmp_path / "deploy/kubernetes/generate.py")]
    rules = tmp_path / "prometheus/rules" / RULE_FILES[0].name
    text, changed = re.subn(
        r"\bfor: (\d+)m\b", lambda m: f"for: {int(m[1]) + 1}m", rules.read_text(), count=1
    )
    assert changed == 1
    rules.write_text(text)
    new_for = re.search(r"\bfor: \d+m\b", text)[0]
    stale = tmp_path / "deploy/kubernetes/base/dashboards/confusion-dashboard-removed.yaml"
    stale.write_text("{}\n")

    check = subprocess.run([*generator, "--check"], capture_output=True, text=True)
    assert check.returncode == 1
    assert "deploy/kubernetes/base/prometheusrule.yaml: differs" in check.stdout
    assert "deploy/kubernetes/overlays/plain/prometheus-rules.yaml: differs" in check.stdout
    assert "confusion-dashboard-removed.yaml: not generated any more" in check.stdout
    assert f"+      {new_for}\n" in check.stdout

    assert subprocess.run(generator, capture_output=True).returncode == 0
    assert not stale.exists()
    assert subprocess.run([*generator, "--check"], capture_output=True).returncode == 0


# --- schemas ------------------------------------------------------------------------------


def unknown_fields(data: Any, dumped: Any, path: str = "") -> list[str]:
    """Keys of the input that the model's dump does not have: fields the model ignored."""
    if isinstance(data, dict) and isinstance(dumped, dict):
        out = [f"{path}.{k}" for k in data if k not in dumped]
        for key in data.keys() & dumped.keys():
            out += unknown_fields(data[key], dumped[key], f"{path}.{key}")
        return out
    if isinstance(data, list) and isinstance(dumped, list):
        return [
            f
            for i, (a, b) in enumerate(zip(data, dumped, strict=True))
            for f in unknown_fields(a, b, f"{path}[{i}]")
        ]
    return []


@functools.cache
def operator_models() -> dict[str, type[BaseModel]]:
    # Imported here: the models take seconds to import, which every collection would pay.
    from cloudcoil.models.prometheus_operator import v1, v1alpha1

    return {
        "monitoring.coreos.com/v1/ServiceMonitor": v1.ServiceMonitor,
        "monitoring.coreos.com/v1/PrometheusRule": v1.PrometheusRule,
        "monitoring.coreos.com/v1alpha1/AlertmanagerConfig": v1alpha1.AlertmanagerConfig,
    }


def _strictly(model: type[BaseModel], data: dict[str, Any], where: str) -> None:
    parsed = model.model_validate(data)
    ignored = unknown_fields(data, parsed.model_dump(by_alias=True, exclude_none=True, mode="json"))
    if ignored:
        raise ValueError(f"{where}: fields the CRD does not have: {ignored}")


def validate_operator_object(obj: dict[str, Any]) -> None:
    """Validate against the CRD's model, and refuse what the model would silently drop."""
    where = f"{obj['kind']} {obj['metadata']['name']}"
    _strictly(operator_models()[f"{obj['apiVersion']}/{obj['kind']}"], obj, where)
    if obj["kind"] == "AlertmanagerConfig":
        # The CRD leaves a route's `routes` untyped (it is recursive): each child is checked
        # as a Route here, or a typo below the root would pass.
        from cloudcoil.models.prometheus_operator.v1alpha1 import Route

        def children(route: dict[str, Any], path: str) -> None:
            for n, child in enumerate(route.get("routes", [])):
                _strictly(Route, child, f"{where}: {path}.routes[{n}]")
                children(child, f"{path}.routes[{n}]")

        children(obj["spec"]["route"], "spec.route")


def validate(obj: dict[str, Any]) -> None:
    if obj["apiVersion"].startswith("monitoring.coreos.com/"):
        validate_operator_object(obj)
    else:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_every_rendered_object_passes_its_schema(rendered):
    kinds = set()
    for objects in rendered.values():
        for obj in objects:
            validate(obj)
            kinds.add(obj["kind"])
    assert kinds == {
        "AlertmanagerConfig",
        "ConfigMap",
        "Deployment",
        "Job",
        "NetworkPolicy",
        "PrometheusRule",
        "Service",
        "ServiceMonitor",
    }


def test_the_validators_refuse_a_misspelt_field(rendered):
    """The checks above can fail: a typo in a core object and in each operator object."""
    objects = rendered["kube-prometheus-stack-alerting"]
    deployment = copy.deepcopy(one(objects, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    typos = {
        "ServiceMonitor": lambda spec: spec["endpoints"][0].update(intervall="15s"),
        "PrometheusRule": lambda spec: spec["groups"][0].update(evaluation_interval="30s"),
        "AlertmanagerConfig": lambda spec: spec["receivers"][0].update(webhookConfig=[]),
        "AlertmanagerConfig/nested route": lambda spec: spec["route"]["routes"][0]["routes"][0].update(
            groupby=["team"]
        ),
    }
    for case, typo in typos.items():
        broken = copy.deepcopy(one(objects, case.split("/")[0]))
        typo(broken["spec"])
        with pytest.raises(ValueError, match="fields the CRD does not have"):
            validate(broken)
    monitor = copy.deepcopy(one(objects, "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(ValueError):
        validate(monitor)


def test_every_namespaced_object_gets_the_overlays_namespace(rendered):
    for name, objects in rendered.items():
        namespaces = {o["metadata"].get("namespace") for o in objects if o["kind"] not in CLUSTER_SCOPED}
        assert namespaces == {"monitoring"}, name


# --- the pods -----------------------------------------------------------------------------


def test_pods_run_unprivileged_with_requests_and_limits(rendered):
    dockerfile_user = int(re.search(r"^USER (\d+)$", (ROOT / "exporter/Dockerfile").read_text(), re.M)[1])
    for name, objects in rendered.items():
        pods = pod_specs(objects)
        assert set(pods) == {"Deployment/confusion-exporter", "Job/confusion-exporter-migrate"}, name
        for pod_name, template in pods.items():
            spec = template["spec"]
            assert spec["automountServiceAccountToken"] is False, pod_name
            pod_security = spec["securityContext"]
            assert pod_security["runAsNonRoot"] is True
            assert pod_security["runAsUser"] == dockerfile_user
            assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
            assert "hostNetwork" not in spec and "hostPID" not in spec
            # The volume types and ports the `restricted` Pod Security Standard allows.
            volume_types = {key for volume in spec["volumes"] for key in volume if key != "name"}
            assert volume_types <= {"configMap", "secret", "emptyDir"}, pod_name
            assert not [p for c in spec["containers"] for p in c.get("ports", []) if "hostPort" in p]
            for container in spec["containers"] + spec.get("initContainers", []):
                security = container["securityContext"]
                assert security["allowPrivilegeEscalation"] is False, pod_name
                assert security["readOnlyRootFilesystem"] is True, pod_name
                assert security.get("privileged", False) is False
                assert security["capabilities"] == {"drop": ["ALL"]}, pod_name
                resources = container["resources"]
                for bound in ("requests", "limits"):
                    assert set(resources[bound]) == {"cpu", "memory"}, (pod_name, bound)
                assert container["image"].split(":")[0] == "confusion-exporter"


def test_image_command_and_port_are_compose_and_the_dockerfiles(rendered):
    services = compose()["services"]
    dockerfile = (ROOT / "exporter/Dockerfile").read_text()
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]
    assert '"confusion-exporter"' in re.search(r"^ENTRYPOINT (.*)$", dockerfile, re.M)[1]
    for objects in rendered.values():
        container = exporter_container(objects)
        assert container["image"] == f"confusion-exporter:{version}"
        assert "command" not in container  # the image's entrypoint, as compose uses it
        assert container["args"] == services["exporter"]["command"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert (
            env["CONFUSION_EXPORTER_CONFIG"]
            == services["exporter"]["environment"]["CONFUSION_EXPORTER_CONFIG"]
        )
        (port,) = container["ports"]
        assert port["name"] == "metrics"
        assert f"{port['containerPort']}:{port['containerPort']}" in services["exporter"]["ports"]
        assert f"EXPOSE {port['containerPort']}" in dockerfile
        (job,) = one(objects, "Job", "confusion-exporter-migrate")["spec"]["template"]["spec"]["containers"]
        assert job["args"] == services["migrate"]["command"]
        assert job["image"] == container["image"]
        assert {e["name"] for e in job["env"]} >= set(services["migrate"]["environment"]) - {"DATABASE_URL"}


def test_probes_ask_healthz_on_the_metrics_port(rendered):
    container = exporter_container(rendered["kube-prometheus-stack"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, probe
        assert container[probe]["timeoutSeconds"] < container[probe]["periodSeconds"]


def test_database_urls_come_from_mounted_secret_files_never_from_the_repository(rendered):
    for name, objects in rendered.items():
        assert not kind_of(objects, "Secret"), f"{name}: a Secret would be committed with its value"
        for pod_name, template in pod_specs(objects).items():
            spec = template["spec"]
            (container,) = spec["containers"]
            env = {e["name"]: e for e in container["env"]}
            assert "DATABASE_URL" not in env, pod_name
            url_file = Path(env["DATABASE_URL_FILE"]["value"])
            (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == url_file.parent]
            assert mount["readOnly"] is True
            (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
            expected = DATABASE_SECRET if pod_name.startswith("Deployment") else MIGRATE_SECRET
            assert volume["secret"]["secretName"] == expected, pod_name
            assert volume["secret"]["items"] == [{"key": "url", "path": url_file.name}]
            for variable in env.values():  # any other secret only by reference
                assert "value" in variable or set(variable["valueFrom"]) == {"secretKeyRef"}
    for path in KUBE.rglob("*"):
        if path.is_file():
            assert not re.search(r"postgres(ql)?://", path.read_text()), path


def test_the_shipped_config_passes_check_config(rendered, cli, tmp_path):
    config = one(rendered["plain"], "ConfigMap", _config_map_name(rendered["plain"]))
    path = tmp_path / "config.yaml"
    path.write_text(config["data"]["config.yaml"])
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DATABASE_URL_FILE")}
    result = subprocess.run(
        [*cli, "check-config", "--config", str(path)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "config ok: 1 source(s), 1 monitor(s)" in result.stdout


def _config_map_name(objects: list[dict[str, Any]]) -> str:
    """The configMapGenerator's name, with its content hash, as the Deployment mounts it."""
    template = one(objects, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in template["volumes"] if v["name"] == "config"]
    name = volume["configMap"]["name"]
    assert re.fullmatch(r"confusion-exporter-config-[a-z0-9]{10}", name), name
    return name


# --- the containers, run as processes -------------------------------------------------------


def scram_matches(stored: str, password: str) -> bool:
    """Whether PostgreSQL's stored SCRAM-SHA-256 verifier is for this password (RFC 5802)."""
    match = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)", stored)
    assert match, "the role's password is not stored as SCRAM-SHA-256"
    iterations, salt, server_key = int(match[1]), base64.b64decode(match[2]), base64.b64decode(match[4])
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return hmac.compare_digest(hmac.new(salted, b"Server Key", "sha256").digest(), server_key)


def container_env(container: dict[str, Any], mounts: dict[str, Path]) -> dict[str, str]:
    """The container's environment, its mount paths moved under the test's directory."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DATABASE_URL_FILE")}
    for variable in container["env"]:
        value = variable.get("value")
        if value is None:
            continue
        for mount_path in sorted(mounts, key=len, reverse=True):
            if value.startswith(mount_path + "/"):
                value = str(mounts[mount_path] / value.removeprefix(mount_path + "/"))
                break
        env[variable["name"]] = value
    return env


def write_mounts(
    spec: dict[str, Any], container: dict[str, Any], files: dict[str, dict[str, str]], tmp: Path
) -> dict[str, Path]:
    """Each volume mount as a directory: the ConfigMap's data, or the Secret's items as given."""
    mounts = {}
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        local = tmp / mount["name"]
        local.mkdir()
        source = volume.get("configMap", {}).get("name") or volume.get("secret", {}).get("secretName")
        if source is not None:
            for key, text in files[source].items():
                (local / key).write_text(text)
        mounts[mount["mountPath"]] = local
    return mounts


def test_the_job_migrates_and_the_deployment_serves_its_probes_from_the_secret_files(
    rendered, cli, database_url, exporter_url, admin_engine, tmp_path
):
    """The migration Job's container, then the exporter's, run as processes with their mounts.

    The Job sets the exporter role's password from the migrate Secret (the same password the
    test's exporter URL has, so other tests keep logging in); the exporter reads its URL from
    the database Secret's file and answers its probes on the ServiceMonitor's path.
    """
    objects = rendered["kube-prometheus-stack"]
    password = make_url(exporter_url).password or ""
    config_name = _config_map_name(objects)
    files = {
        config_name: one(objects, "ConfigMap", config_name)["data"],
        DATABASE_SECRET: {"url": exporter_url},
        MIGRATE_SECRET: {"url": database_url, "exporter-role-password": password},
    }

    job_spec = one(objects, "Job")["spec"]["template"]["spec"]
    (job,) = job_spec["containers"]
    (tmp_path / "job").mkdir()
    env = container_env(job, write_mounts(job_spec, job, files, tmp_path / "job"))
    for variable in job["env"]:
        if "valueFrom" in variable:
            ref = variable["valueFrom"]["secretKeyRef"]
            env[variable["name"]] = files[ref["name"]][ref["key"]]
    # A wrong password first, so the Job's setting the right one is observable (the test
    # server may trust local connections, so a login would not show it).
    with admin_engine.begin() as conn:
        conn.execute(sa.text("ALTER ROLE confusion_exporter PASSWORD 'not-the-secret'"))
    try:
        migrated = subprocess.run([*cli, *job["args"]], capture_output=True, text=True, env=env, timeout=120)
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        with admin_engine.connect() as conn:
            stored = conn.execute(
                sa.text("SELECT rolpassword FROM pg_authid WHERE rolname = 'confusion_exporter'")
            )
            assert scram_matches(stored.scalar_one(), password)
    finally:  # the role as the other tests expect it, whatever happened
        with admin_engine.begin() as conn:
            conn.execute(sa.text(f"ALTER ROLE confusion_exporter PASSWORD '{password}'"))
    assert password not in migrated.stdout + migrated.stderr

    spec = one(objects, "Deployment")["spec"]["template"]["spec"]
    container = exporter_container(objects)
    (tmp_path / "exporter").mkdir()
    env = container_env(container, write_mounts(spec, container, files, tmp_path / "exporter"))
    port = free_port()
    env |= {"CONFUSION_EXPORTER_PORT": str(port), "CONFUSION_EXPORTER_LISTEN_ADDRESS": "127.0.0.1"}
    log = (tmp_path / "exporter.log").open("wb")
    process = subprocess.Popen([*cli, *container["args"]], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        probe = container["livenessProbe"]["httpGet"]["path"]
        wait_until(lambda: http_get(f"http://127.0.0.1:{port}{probe}")[0] == 200, timeout=30)
        for kind in ("startupProbe", "readinessProbe"):
            assert http_get(f"http://127.0.0.1:{port}{container[kind]['httpGet']['path']}")[0] == 200
        path = one(objects, "ServiceMonitor")["spec"]["endpoints"][0]["path"]

        def database_up() -> bool:
            status, body, _ = http_get(f"http://127.0.0.1:{port}{path}")
            return status == 200 and samples(body).get(("confusion_exporter_database_up", frozenset())) == 1

        wait_until(database_up, timeout=30)
    finally:
        process.terminate()
        process.wait(10)
        log.close()
    assert password not in (tmp_path / "exporter.log").read_text()


# --- what Prometheus and Grafana load ---------------------------------------------------------


def rule_groups() -> list[dict[str, Any]]:
    return [group for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]]


def test_the_prometheus_rule_is_the_promtool_tested_rules_file(rendered):
    for name in ("kube-prometheus-stack", "kube-prometheus-stack-alerting"):
        rule = one(rendered[name], "PrometheusRule")
        assert rule["spec"]["groups"] == rule_groups()
    # The rule a missing target pages with selects the job the ServiceMonitor produces.
    down = [r for g in rule_groups() for r in g["rules"] if r.get("alert") == "ConfusionExporterDown"]
    assert 'up{job="confusion-exporter"}' in down[0]["expr"]


def test_the_service_monitor_scrapes_the_exporters_port_as_job_confusion_exporter(rendered):
    for name in ("kube-prometheus-stack", "kube-prometheus-stack-alerting"):
        objects = rendered[name]
        monitor, service = one(objects, "ServiceMonitor"), one(objects, "Service")
        labels = service["metadata"]["labels"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert labels[monitor["spec"]["jobLabel"]] == "confusion-exporter"  # up{job="confusion-exporter"}
        (endpoint,) = monitor["spec"]["endpoints"]
        (port,) = service["spec"]["ports"]
        assert endpoint["port"] == port["name"]
        container = exporter_container(objects)
        assert port["targetPort"] in {p["name"] for p in container["ports"]}
        pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        # kube-prometheus-stack's Prometheus selects by its release's label.
        for kind in ("ServiceMonitor", "PrometheusRule"):
            assert one(objects, kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboard_config_maps_hold_exactly_the_dashboards_json(rendered):
    expected = {path.name: path.read_text() for path in DASHBOARDS}
    for name, objects in rendered.items():
        found: dict[str, str] = {}
        for config_map in kind_of(objects, "ConfigMap"):
            if config_map["metadata"].get("labels", {}).get("grafana_dashboard") == "1":
                assert not found.keys() & config_map["data"].keys()
                found |= config_map["data"]
        assert found == expected, name


def test_the_plain_overlay_needs_no_operator_and_its_prometheus_config_passes_promtool(
    rendered, promtool, tmp_path
):
    objects = rendered["plain"]
    assert not [o for o in objects if o["apiVersion"].startswith("monitoring.coreos.com/")]
    rules = one(objects, "ConfigMap", "confusion-exporter-rules")["data"]
    assert rules == {path.name: path.read_text() for path in RULE_FILES}
    # Mount the ConfigMap where prometheus-scrape-config.yaml expects it, and check the whole.
    fragment = yaml.safe_load((KUBE / "overlays/plain/prometheus-scrape-config.yaml").read_text())
    (rule_glob,) = fragment["rule_files"]
    mount = tmp_path / Path(rule_glob).parent.relative_to("/")
    mount.mkdir(parents=True)
    for key, text in rules.items():
        (mount / key).write_text(text)
    fragment["rule_files"] = [str(mount / Path(rule_glob).name)]
    (job,) = fragment["scrape_configs"]
    assert job["job_name"] == "confusion-exporter"  # up{job="confusion-exporter"} in the rules
    assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == [
        one(objects, "Service")["metadata"]["namespace"]
    ]
    keep = job["relabel_configs"][0]
    service = one(objects, "Service")
    assert keep["regex"].split(";") == [
        service["metadata"]["labels"]["app.kubernetes.io/name"],
        service["metadata"]["labels"]["app.kubernetes.io/component"],
        service["spec"]["ports"][0]["name"],
    ]
    # Debian's Prometheus is built without Kubernetes service discovery, so promtool cannot
    # read kubernetes_sd_configs: the job is checked with a static target in its place (the
    # relabelling, paths and intervals are still promtool's to refuse).
    job["static_configs"] = [{"targets": ["confusion-exporter.monitoring.svc:9745"]}]
    del job["kubernetes_sd_configs"]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(fragment))
    result = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout + result.stderr


ROUTING = yaml.safe_load((ROOT / "alertmanager" / "routing.yml").read_text())
ALERTMANAGER = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text())
ALERTING_SECRET = "confusion-exporter-alerting"


def alertmanager_config(rendered: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return one(rendered["kube-prometheus-stack-alerting"], "AlertmanagerConfig")["spec"]


def crd_matches(matchers: list[dict[str, str]], labels: dict[str, str]) -> bool:
    ops = {
        "=": lambda v, p: v == p,
        "!=": lambda v, p: v != p,
        "=~": lambda v, p: re.fullmatch(p, v) is not None,
        "!~": lambda v, p: re.fullmatch(p, v) is None,
    }
    return all(ops[m["matchType"]](labels.get(m["name"], ""), m["value"]) for m in matchers)


def crd_receivers(route: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """The receivers an alert reaches below a route it matched, as Alertmanager walks the
    tree: the first matching child (and the next ones while `continue`), else the route."""
    reached = []
    for child in route.get("routes", []):
        if crd_matches(child.get("matchers", []), labels):
            reached += crd_receivers(child, labels)
            if not child.get("continue", False):
                break
    return reached or [route["receiver"]]


def test_alertmanager_config_routes_every_alert_to_its_teams_receiver(rendered):
    config = one(rendered["kube-prometheus-stack-alerting"], "AlertmanagerConfig")
    assert not kind_of(rendered["kube-prometheus-stack"], "AlertmanagerConfig")  # optional
    spec = config["spec"]
    receivers = {r["name"] for r in spec["receivers"]}
    intervals = {m["name"] for m in spec["muteTimeIntervals"]}

    def walk(route: dict[str, Any]) -> list[dict[str, Any]]:
        return [route, *(r for child in route.get("routes", []) for r in walk(child))]

    for route in walk(spec["route"]):
        assert route["receiver"] in receivers
        assert set(route.get("muteTimeIntervals", [])) <= intervals
    for receiver in spec["receivers"]:
        for webhook in receiver["webhookConfigs"]:
            assert "url" not in webhook and webhook["urlSecret"]["name"] == ALERTING_SECRET

    kinds = {name: body["kind"] for name, body in ROUTING["severities"].items()}
    demo = yaml.safe_load((ROOT / "exporter" / "confusion_exporter" / "demo.yaml").read_text())
    teams = sorted({m["team"] for m in demo["monitors"]})
    assert set(teams) < set(ROUTING["teams"])
    cases = 0
    for rule in (r for g in rule_groups() for r in g["rules"] if "alert" in r):
        labels = {"alertname": rule["alert"], **rule["labels"]}
        kind = kinds[labels["severity"]]
        # The platform's alerts carry their team; a model alert its monitor's, or one no
        # route knows (it reaches the fallback team).
        for team in [labels["team"]] if "team" in labels else [*teams, "unheard-of"]:
            alert = {**labels, "team": team}
            assert crd_matches(spec["route"]["matchers"], alert), rule["alert"]
            owner = ROUTING["fallback_team"] if team == "unheard-of" else team
            assert crd_receivers(spec["route"], alert) == [f"{owner}-{kind}"], (rule["alert"], team)
            cases += 1
    assert cases > len(teams)
    # Another exporter's alert is not this object's to route (nor to send to the fallback).
    assert not crd_matches(spec["route"]["matchers"], {"alertname": "KubePodCrashLooping"})
    assert config["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def am_matcher(text: str) -> dict[str, str]:
    """alertmanager.yml's `name="value"` (the form the generator writes) in the CRD's form."""
    found = re.fullmatch(r'(\w+)(=~|!~|!=|=)"(.*)"', text)
    assert found, text
    return {"name": found[1], "value": found[3], "matchType": found[2]}


def camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(word.title() for word in rest)


def am_route_as_crd(route: dict[str, Any]) -> dict[str, Any]:
    """An alertmanager.yml route, its keys camelCased and its matchers as objects."""
    out = {}
    for key, value in route.items():
        if key == "matchers":
            out[key] = [am_matcher(m) for m in value]
        elif key == "routes":
            out[key] = [am_route_as_crd(child) for child in value]
        else:
            out[camel(key)] = value
    return out


def test_alertmanager_config_route_tree_is_alertmanager_ymls(rendered):
    route = copy.deepcopy(alertmanager_config(rendered)["route"])
    # The one difference: the root takes the rule files' alerts only (in a shared
    # Alertmanager, its fallback receiver would otherwise take everyone's).
    (root_matcher,) = route.pop("matchers")
    alerts = [r["alert"] for g in rule_groups() for r in g["rules"] if "alert" in r]
    assert root_matcher["name"] == "alertname" and root_matcher["matchType"] == "=~"
    assert sorted(root_matcher["value"].split("|")) == sorted(alerts)
    assert "matchers" not in ALERTMANAGER["route"]
    assert route == am_route_as_crd(ALERTMANAGER["route"])
    assert route["routes"], "a tree, not just a root"


def test_alertmanager_config_inhibits_and_mutes_as_alertmanager_yml(rendered):
    spec = alertmanager_config(rendered)
    expected = [
        {
            "sourceMatch": [am_matcher(m) for m in rule["source_matchers"]],
            "targetMatch": [am_matcher(m) for m in rule["target_matchers"]],
            "equal": rule["equal"],
        }
        for rule in ALERTMANAGER["inhibit_rules"]
    ]
    assert spec["inhibitRules"] == expected and len(expected) == len(ROUTING["inhibit"])

    def interval_as_crd(interval: dict[str, Any]) -> dict[str, Any]:
        out = {camel(k): v for k, v in interval.items()}
        if "times" in out:
            out["times"] = [{camel(k): v for k, v in t.items()} for t in out["times"]]
        return out

    assert spec["muteTimeIntervals"] == [
        {"name": i["name"], "timeIntervals": [interval_as_crd(t) for t in i["time_intervals"]]}
        for i in ALERTMANAGER["time_intervals"]
    ]
    # Receivers: alertmanager.yml's, each webhook's sink URL replaced by a Secret key.
    assert [r["name"] for r in spec["receivers"]] == [r["name"] for r in ALERTMANAGER["receivers"]]
    for ours, theirs in zip(spec["receivers"], ALERTMANAGER["receivers"], strict=True):
        assert [w["sendResolved"] for w in ours["webhookConfigs"]] == [
            w["send_resolved"] for w in theirs["webhook_configs"]
        ]
        assert [w["urlSecret"]["key"] for w in ours["webhookConfigs"]] == [f"{ours['name']}-url"]


def render_alertmanager_config(spec_text: str, tmp_path: Path) -> str:
    """The generator's AlertmanagerConfig for a routing spec of the test's."""
    (tmp_path / "routing.yml").write_text(spec_text)
    sys.path.insert(0, str(ROOT / "alertmanager"))
    try:
        import render_alertmanagerconfig
        import spec as routing_spec
    finally:
        sys.path.remove(str(ROOT / "alertmanager"))
    return render_alertmanagerconfig.render(routing_spec.load(tmp_path / "routing.yml"))


MONTH_END = """
  month-end:
    - days_of_month: ["1:7", "-1"]
      months: ["january:march", december]
      years: ["2026:2027"]
      weekdays: ["monday:friday"]
"""


def test_every_kind_of_time_interval_maps_to_the_crds_fields(tmp_path):
    """Days of the month are ranges of numbers in the CRD, strings in Alertmanager."""
    text = (ROOT / "alertmanager" / "routing.yml").read_text()
    assert text.rstrip().endswith("- weekdays: [saturday, sunday]")  # the last section
    obj = yaml.safe_load(render_alertmanager_config(text.rstrip() + MONTH_END, tmp_path))
    validate_operator_object(obj)
    (month_end,) = [m for m in obj["spec"]["muteTimeIntervals"] if m["name"] == "month-end"]
    assert month_end["timeIntervals"] == [
        {
            "daysOfMonth": [{"start": 1, "end": 7}, {"start": -1, "end": -1}],
            "months": ["january:march", "december"],
            "years": ["2026:2027"],
            "weekdays": ["monday:friday"],
        }
    ]


def test_the_routing_specs_receiver_examples_map_to_the_crds_fields(tmp_path):
    """routing.yml's commented PagerDuty, Slack and email receivers, uncommented, make an
    AlertmanagerConfig the CRD accepts strictly, their secret files as Secret keys."""
    from .test_alertmanager import uncommented_spec

    text = render_alertmanager_config(uncommented_spec(), tmp_path)
    obj = yaml.safe_load(text)
    validate_operator_object(obj)
    receivers = {r["name"]: r for r in obj["spec"]["receivers"]}
    secret = {"name": ALERTING_SECRET}
    (pagerduty,) = receivers["payments-ml-page"]["pagerdutyConfigs"]
    assert pagerduty == {"routingKey": {**secret, "key": "payments-pagerduty-key"}, "sendResolved": True}
    (slack,) = receivers["payments-ml-ticket"]["slackConfigs"]
    assert slack["apiURL"] == {**secret, "key": "payments-slack-url"}
    assert slack["channel"] == "#payments-ml-alerts" and slack["title"].startswith("{{ template")
    (email,) = receivers["research-ml-ticket"]["emailConfigs"]
    # The global SMTP settings alertmanager.yml's email receivers inherit, in the receiver.
    assert email == {
        "smarthost": "smtp.example.com:587",
        "from": "alerts@example.com",
        "authUsername": "alerts@example.com",
        "authPassword": {**secret, "key": "smtp-password"},
        "to": "research-ml@example.com",
        "sendResolved": True,
    }
    # The header lists every key the object reads.
    header = " ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#   "))
    listed = set(header.replace(",", " ").split())
    assert listed == secret_references([obj])[ALERTING_SECRET]
    assert {"payments-pagerduty-key", "payments-slack-url", "smtp-password"} <= listed


def test_network_policies_admit_prometheus_only_and_let_out_dns_and_postgres(rendered):
    for objects in rendered.values():
        policies = kind_of(objects, "NetworkPolicy")
        for pod_name, template in pod_specs(objects).items():
            labels = template["metadata"]["labels"]
            (policy,) = [
                p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
            ]
            spec = policy["spec"]
            assert spec["policyTypes"] == ["Ingress", "Egress"], pod_name
            egress_ports = sorted(
                (p["port"], p["protocol"]) for rule in spec["egress"] for p in rule["ports"]
            )
            assert egress_ports == [(53, "TCP"), (53, "UDP"), (5432, "TCP")], pod_name
            (dns,) = [r for r in spec["egress"] if r.get("to")]
            assert {p["port"] for p in dns["ports"]} == {53}
            if pod_name.startswith("Job"):
                assert spec.get("ingress", []) == [], pod_name
                continue
            (ingress,) = spec["ingress"]
            assert [p["port"] for p in ingress["ports"]] == ["metrics"]
            (source,) = ingress["from"]
            assert source["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
            assert "metrics" in {p["name"] for p in template["spec"]["containers"][0]["ports"]}


# --- docs/kubernetes.md -----------------------------------------------------------------------

DOCS = ROOT / "docs" / "kubernetes.md"


def doc_blocks(language: str) -> list[str]:
    return re.findall(rf"^ *```{language}\n(.*?)^ *```", DOCS.read_text(), re.M | re.S)


def secret_references(objects: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Secret name -> keys, wherever an object refers to one."""
    found: dict[str, set[str]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "secretName" in node and "items" in node:
                found.setdefault(node["secretName"], set()).update(i["key"] for i in node["items"])
            # A pod's secretKeyRef, and the AlertmanagerConfig's SecretKeySelectors.
            for ref in ("secretKeyRef", "urlSecret", "routingKey", "serviceKey", "apiURL", "authPassword"):
                if ref in node:
                    found.setdefault(node[ref]["name"], set()).add(node[ref]["key"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(objects)
    return found


def test_the_documented_secrets_are_the_ones_the_objects_read(rendered):
    text = DOCS.read_text().replace("\\\n", " ")
    documented: dict[str, set[str]] = {}
    for command in re.findall(r"create secret generic ([\w-]+)((?:\s+--from-file=[\w-]+=\S+)+)", text):
        name, flags = command
        documented.setdefault(name, set()).update(re.findall(r"--from-file=([\w-]+)=", flags))
    assert documented == secret_references(rendered["kube-prometheus-stack-alerting"])


def test_the_documented_argo_cd_and_flux_objects_point_at_overlays(rendered):
    repository = re.search(r"https://github\.com/[\w-]+/[\w-]+", RULE_FILES[0].read_text())[0]
    paths = []
    for block in doc_blocks("yaml"):
        for obj in yaml.safe_load_all(block):
            if obj.get("kind") == "Application":
                assert obj["spec"]["source"]["repoURL"] == repository
                paths.append(obj["spec"]["source"]["path"])
                assert obj["spec"]["destination"]["namespace"] == "monitoring"
            elif obj.get("kind") == "GitRepository":
                assert obj["spec"]["url"] == repository
            elif obj.get("kind") == "Kustomization" and "sourceRef" in obj.get("spec", {}):
                paths.append(obj["spec"]["path"].removeprefix("./"))
    assert len(paths) == 2
    for path in paths:
        assert Path(path).parent == Path("deploy/kubernetes/overlays") and Path(path).name in rendered


def test_the_documented_own_overlay_replaces_the_config_and_the_image(kubectl, tmp_path):
    (example,) = [b for b in doc_blocks("yaml") if "behavior: replace" in b]
    overlay = yaml.safe_load(example)
    (remote,) = overlay["resources"]
    local = KUBE / re.search(r"//deploy/kubernetes/([\w/-]+)\?", remote)[1]
    overlay["resources"] = [os.path.relpath(local, tmp_path)]  # kustomize refuses absolute paths
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    config = (KUBE / "base/config.yaml").read_text().replace("window: 1h", "window: 2h")
    (tmp_path / "config.yaml").write_text(config)
    objects = render(kubectl, tmp_path)
    mounted = one(objects, "ConfigMap", _config_map_name(objects))
    assert mounted["data"] == {"config.yaml": config}
    (image,) = overlay["images"]
    for template in pod_specs(objects).values():
        assert template["spec"]["containers"][0]["image"] == f"{image['newName']}:{image['newTag']}"
