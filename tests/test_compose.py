"""docker-compose.yml and the image, checked without a Docker engine (none runs here).

What only a machine with Docker can check is listed in docs/docker.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT.parent / "shared" / "schemas" / "compose-spec.compose-go.json"
COMPOSE_FILES = [ROOT / "docker-compose.yml", ROOT / "docker-compose.existing-db.yml"]
EXAMPLE_ENV = ROOT / ".env.example"


class ComposeLoader(yaml.SafeLoader):
    """YAML with compose's merge tags (!reset, !override) read as plain values."""


for tag in ("!reset", "!override"):
    ComposeLoader.add_constructor(
        tag,
        lambda loader, node: (
            loader.construct_sequence(node)
            if isinstance(node, yaml.SequenceNode)
            else loader.construct_mapping(node)
            if isinstance(node, yaml.MappingNode)
            else loader.construct_scalar(node)
        ),
    )

_VARIABLE = re.compile(r"\$(?:\$|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: ${V}, ${V:-default}, ${V-default}, ${V:?error}, $V and $$."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, argument = match.group(2), match.group(3) or ""
        value = env.get(name)
        if operator in (":-", "-"):
            return value if value or (operator == "-" and value is not None) else argument
        if operator in (":?", "?"):
            if not value:
                raise ValueError(f"${{{name}}} is required: {argument}")
            return value
        return value or ""

    return _VARIABLE.sub(substitute, text)


def example_env() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in EXAMPLE_ENV.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    return {k.strip(): v.strip() for k, v in pairs}


def load(path: Path, env: dict[str, str]) -> dict[str, Any]:
    return yaml.load(interpolate(path.read_text(), env), Loader=ComposeLoader)  # noqa: S506 - SafeLoader subclass


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    if not SCHEMA.exists():
        pytest.fail(f"{SCHEMA} is missing: the tests expect ../shared/schemas beside the repository")
    return json.loads(SCHEMA.read_text())


@pytest.mark.parametrize("env_source", ["defaults", ".env.example"])
def test_compose_file_validates_after_interpolation(schema, env_source):
    env = {} if env_source == "defaults" else example_env()
    document = load(ROOT / "docker-compose.yml", env)
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = list(validator.iter_errors(document))
    assert not errors, [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in errors[:5]]
    assert "${" not in json.dumps(document)


def test_existing_database_override_validates_and_requires_its_variables(schema):
    env = {"EXISTING_DATABASE_URL": "postgresql://u:p@db/ml", "CONFUSION_EXPORTER_CONFIG_FILE": "./mine.yaml"}
    document = load(ROOT / "docker-compose.existing-db.yml", env)
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert not list(validator.iter_errors(document))
    disabled = {name for name, svc in document["services"].items() if svc.get("profiles")}
    assert disabled == {"postgres", "migrate", "simulator"}
    with pytest.raises(ValueError, match="EXISTING_DATABASE_URL"):
        load(ROOT / "docker-compose.existing-db.yml", {})


def test_every_bind_mount_exists_and_configs_are_read_only():
    document = load(ROOT / "docker-compose.yml", {})
    named = set(document.get("volumes", {}))
    for name, service in document["services"].items():
        for volume in service.get("volumes", []):
            source, target, *mode = volume.split(":")
            if source in named:
                continue
            assert (ROOT / source).exists(), f"{name}: {source} does not exist"
            assert mode == ["ro"], f"{name}: {source} should be mounted read-only"


def test_images_are_pinned_and_secrets_come_from_the_environment():
    text = (ROOT / "docker-compose.yml").read_text()
    document = load(ROOT / "docker-compose.yml", {})
    for name, service in document["services"].items():
        image = service["image"]
        if "build" in service:
            assert image == "confusion-exporter:local"
            continue
        tag = image.rsplit(":", 1)[-1]
        assert ":" in image and tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned"
    for line in text.splitlines():
        secret_like = re.search(r"PASSWORD|_URL|KEY", line) and "http://" not in line
        if secret_like and ("://" in line or re.search(r"PASSWORD:\s*\S", line)):
            assert "${" in line, f"a secret is written in docker-compose.yml: {line.strip()}"


def test_start_order_uses_health_and_completion_conditions():
    document = load(ROOT / "docker-compose.yml", {})
    services = document["services"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["exporter"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits on {dependency}'s health"
        assert service.get("restart"), name
    assert services["migrate"]["restart"] == "no"


def test_dockerfile_is_multi_stage_non_root_with_a_healthcheck():
    dockerfile = (ROOT / "exporter" / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", dockerfile, re.M)) >= 2
    assert re.search(r"^USER \d+", dockerfile, re.M)
    assert re.search(r"^HEALTHCHECK .*\"confusion-exporter\", \"healthcheck\"", dockerfile, re.M | re.S)
    assert "COPY pyproject.toml" in dockerfile and "pip wheel" in dockerfile


def test_the_image_builds_the_package_from_the_same_pyproject(tmp_path):
    """Build the wheel from exactly the files the Dockerfile copies, as its build stage does."""
    dockerfile = (ROOT / "exporter" / "Dockerfile").read_text()
    context = tmp_path / "context"
    for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.M):
        *sources, destination = line.split()
        for source in sources:
            # Docker's rule: a destination ending in "/" is a directory the sources go into.
            into_directory = destination.endswith("/") or destination == "."
            target = context / destination / Path(source).name if into_directory else context / destination
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / source, target)
    assert (context / "pyproject.toml").read_bytes() == (ROOT / "pyproject.toml").read_bytes()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path / "w"),
            str(context),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = (tmp_path / "w").glob("confusion_exporter-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "confusion_exporter/cli.py" in names
    assert "confusion_exporter/demo.yaml" in names  # the compose file mounts it, the demo reads it
    assert any(n.startswith("confusion_exporter/migrations/versions/0001") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert (
        "confusion-exporter = confusion_exporter.cli:main"
        in zipfile.ZipFile(wheel).read(entry_points).decode()
    )


def test_the_exporter_and_its_health_check_read_the_mounted_config():
    """`run` and the image's `healthcheck` both find the config through CONFUSION_EXPORTER_CONFIG,
    which must name a mounted file that the CLI accepts."""
    exporter = load(ROOT / "docker-compose.yml", {})["services"]["exporter"]
    path = exporter["environment"]["CONFUSION_EXPORTER_CONFIG"]
    mounts = {target: source for source, target, *_ in (v.split(":") for v in exporter["volumes"])}
    assert path in mounts, "the config the exporter reads is not mounted"
    from confusion_exporter.config import load_config

    assert load_config(ROOT / mounts[path], env={}).monitors


def _image_healthcheck_probes_the_exporter() -> bool:
    dockerfile = (ROOT / "exporter" / "Dockerfile").read_text()
    return bool(
        re.search(r"^HEALTHCHECK .*\"confusion-exporter\", \"healthcheck\"\]", dockerfile, re.M | re.S)
    )


def test_every_long_running_service_has_a_health_check_that_fits_what_it_runs():
    """A service that keeps running must report its health; a service on our image that does not
    serve the exporter's port (the simulator) must not inherit the image's check, which probes it."""
    services = load(ROOT / "docker-compose.yml", {})["services"]
    assert _image_healthcheck_probes_the_exporter()
    for name, service in services.items():
        if service.get("restart") == "no":
            continue  # one-shot jobs: their completion is the condition others wait on
        own = service.get("healthcheck")
        runs_the_exporter = "build" in service and service.get("command", ["run"])[0] == "run"
        if runs_the_exporter:
            assert own is None or own.get("test", [""])[1:3] == ["confusion-exporter", "healthcheck"], name
            continue
        assert own and not own.get("disable"), f"{name} runs for ever without a health check"
        assert own["test"][0] in ("CMD", "CMD-SHELL"), name
        if "build" in service:
            assert own["test"][1:3] == ["confusion-exporter", "healthcheck"], name
            assert "--heartbeat" in own["test"], f"{name} would probe an exporter port it does not serve"


def test_the_simulators_health_check_follows_its_heartbeat(cli, database_url, tmp_path):
    """The compose file's own simulator command and health check, run for real (other paths)."""
    import time

    from .conftest import run_cli

    simulator = load(ROOT / "docker-compose.yml", {})["services"]["simulator"]
    heartbeat = tmp_path / "sim.heartbeat"
    command = [str(heartbeat) if a.endswith(".heartbeat") else a for a in simulator["command"]]
    command = [a for a in command if a not in ("--history", "3h", "--shift-after", "3m")]
    check = [str(heartbeat) if a.endswith(".heartbeat") else a for a in simulator["healthcheck"]["test"][2:]]
    assert run_cli(cli, *check).returncode == 1, "healthy before the simulator wrote anything"
    wrote = run_cli(cli, *command, "--duration", "3s", "--tick", "1s", env={"DATABASE_URL": database_url})
    assert wrote.returncode == 0, wrote.stderr[-2000:]
    healthy = run_cli(cli, *check)
    assert healthy.returncode == 0, healthy.stderr
    stale = time.time() - 120
    os.utime(heartbeat, (stale, stale))
    unhealthy = run_cli(cli, *check)
    assert unhealthy.returncode == 1 and "last heartbeat" in unhealthy.stderr


GRAFANA_ALERTING = ROOT / "docker-compose.grafana-alerting.yml"


def test_alertmanager_runs_the_version_the_tests_run_with_the_generated_config(amtool):
    services = load(ROOT / "docker-compose.yml", {})["services"]
    alertmanager = services["alertmanager"]
    # The image's version is the one amtool and prometheus-alertmanager have in the tests.
    version = subprocess.run([amtool, "--version"], capture_output=True, text=True, timeout=30)
    tested = re.search(r"version (\d+\.\d+)", version.stdout + version.stderr)
    assert tested, "amtool --version printed no version"
    assert alertmanager["image"].startswith(f"prom/alertmanager:v{tested.group(1)}."), alertmanager["image"]
    mounts = {target: source for source, target, *_ in (v.split(":") for v in alertmanager["volumes"])}
    config = next(a.split("=", 1)[1] for a in alertmanager["command"] if a.startswith("--config.file="))
    directory, name = config.rsplit("/", 1)
    assert mounts[directory] == "./alertmanager" and (ROOT / "alertmanager" / name).exists()
    # Prometheus sends to it, on the port it listens on.
    prometheus = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    (target,) = prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert target == "alertmanager:9093" and "9093:9093" in alertmanager["ports"]
    # Its receivers post to the sink the stack runs, on the port the sink listens on.
    generated = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text())
    sink = services["alert-sink"]["environment"]["HTTP_PORT"]
    urls = [w["url"] for r in generated["receivers"] for w in r.get("webhook_configs", [])]
    assert urls and all(u.startswith(f"http://alert-sink:{sink}/") for u in urls)


def test_grafana_alerting_is_opt_in_and_never_a_second_paging_path(schema):
    default = load(ROOT / "docker-compose.yml", {})["services"]
    targets = [v.split(":")[1] for v in default["grafana"]["volumes"]]
    # By default Grafana provisions no alert rules, policies or contact points: it cannot notify.
    assert not [
        t
        for t in targets
        if t.startswith("/etc/grafana/provisioning/alerting") or t == "/etc/grafana/provisioning"
    ]
    assert "/etc/grafana/provisioning/dashboards" in targets
    override = load(GRAFANA_ALERTING, {})
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert not list(validator.iter_errors(override))
    (mount,) = override["services"]["grafana"]["volumes"]
    assert mount == "./grafana/provisioning/alerting:/etc/grafana/provisioning/alerting:ro"
    # Switched on, Grafana notifies and Alertmanager is off: still one path.
    assert override["services"]["alertmanager"]["profiles"]
