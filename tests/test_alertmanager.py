"""The generated Alertmanager config: valid for amtool, every alert of the rule file reaches
its team's receiver, inhibition matches labels both sides carry, and the generated files
are what alertmanager/generate.py makes of alertmanager/routing.yml."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .rule_labels import RuleLabels

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "alertmanager" / "generate.py"
CONFIG = ROOT / "alertmanager" / "alertmanager.yml"
ALERTMANAGER_CONFIG = ROOT / "deploy/kubernetes/components/alertmanager-config/alertmanagerconfig.yaml"
SPEC = yaml.safe_load((ROOT / "alertmanager" / "routing.yml").read_text())
DEMO = yaml.safe_load((ROOT / "exporter" / "confusion_exporter" / "demo.yaml").read_text())
DEMO_TEAMS = sorted({m["team"] for m in DEMO["monitors"]})
LABELS = RuleLabels()
SEVERITY_KIND = {name: body["kind"] for name, body in SPEC["severities"].items()}


def generate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(GENERATOR), *args], capture_output=True, text=True, timeout=60)


def test_committed_files_are_what_the_generator_makes():
    result = generate("--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_fails_on_drift_and_writes_nothing(tmp_path):
    # A spec with one team more: every generated file would differ; --check says so, exit 1.
    spec = tmp_path / "routing.yml"
    spec.write_text(
        (ROOT / "alertmanager" / "routing.yml").read_text().replace("  vision: {}", "  vision: {}\n  ocr: {}")
    )
    before = CONFIG.read_text(), ALERTMANAGER_CONFIG.read_text()
    result = generate("--check", "--spec", str(spec))
    assert result.returncode == 1
    assert "alertmanager/alertmanager.yml: differs" in result.stdout and "+- name: ocr-page" in result.stdout
    # The Kubernetes AlertmanagerConfig is one more rendering of the spec: it drifts too.
    assert f"{ALERTMANAGER_CONFIG.relative_to(ROOT)}: differs" in result.stdout
    assert "+  - name: ocr-page\n" in result.stdout and "+        key: ocr-page-url\n" in result.stdout
    assert (CONFIG.read_text(), ALERTMANAGER_CONFIG.read_text()) == before


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (
            ("api_url_file: /etc", "api_url: https://hooks.example/x #"),
            "teams.payments-ml.receivers.ticket.slack_configs[0].api_url",
        ),
        (
            ("routing_key_file: /etc", "routing_key: abc #"),
            "teams.payments-ml.receivers.page.pagerduty_configs[0].routing_key",
        ),
        (("smtp_auth_password_file: /etc", "smtp_auth_password: hunter2 #"), "global.smtp_auth_password"),
    ],
)
def test_an_inline_secret_the_alertmanager_config_cannot_read_exits_2(tmp_path, edit, key):
    """Alertmanager takes these inline; the CRD from a Secret only: the spec must give the file."""
    text = uncommented_spec()
    assert edit[0] in text
    spec = tmp_path / "routing.yml"
    spec.write_text(text.replace(edit[0], edit[1], 1))
    result = generate("--check", "--spec", str(spec))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(
        f"routing.yml: {key}: the AlertmanagerConfig reads this secret from a Secret only"
    ), result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "hunter2" not in result.stderr and "abc" not in result.stderr


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (("fallback_team: ml-platform", "fallback_team: nobody"), "fallback_team"),
        (("    kind: page", "    kind: pager"), "severities.critical.kind"),
        (("    group_wait: 30s", "    group_wait: soon"), "severities.critical.group_wait"),
        (
            ("mute_time_intervals: [quiet-hours]", "mute_time_intervals: [siesta]"),
            "severities.warning.mute_time_intervals",
        ),
        (("sources: [ConfusionSnapshotStale]", "sources: [ConfusionSnapshotOld]"), "inhibit[2].sources"),
        (("  vision: {}", "  vision: {pager: x}"), "teams.vision.pager"),
    ],
)
def test_a_spec_mistake_exits_2_naming_the_key(tmp_path, edit, key):
    text = (ROOT / "alertmanager" / "routing.yml").read_text()
    assert edit[0] in text
    spec = tmp_path / "routing.yml"
    spec.write_text(text.replace(edit[0], edit[1], 1))
    result = generate("--check", "--spec", str(spec))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"routing.yml: {key}"), result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_time_interval_the_alertmanager_config_cannot_express_exits_2(tmp_path):
    text = (ROOT / "alertmanager" / "routing.yml").read_text()
    spec = tmp_path / "routing.yml"
    spec.write_text(text.rstrip() + "\n  in-paris:\n    - weekdays: [monday]\n      location: Europe/Paris\n")
    result = generate("--check", "--spec", str(spec))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("routing.yml: mute_time_intervals.in-paris[0].location: "), result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_amtool_accepts_the_generated_config(amtool):
    result = subprocess.run([amtool, "check-config", str(CONFIG)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    found = result.stdout
    assert f"- {len(SPEC['inhibit'])} inhibit rules" in found
    assert f"- {2 * len(SPEC['teams'])} receivers" in found  # a page and a ticket receiver per team
    assert "- 1 templates" in found


def routes_test(amtool: str, labels: dict[str, str]) -> str:
    result = subprocess.run(
        [
            amtool,
            "config",
            "routes",
            "test",
            f"--config.file={CONFIG}",
            *(f"{k}={v}" for k, v in labels.items()),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def route_cases() -> list[tuple[str, dict[str, str], str]]:
    """Every alert of the rule file with the labels it would carry, and the receiver it must reach."""
    cases = []
    for name, rule in LABELS.alerts.items():
        labels = rule["labels"]
        kind = SEVERITY_KIND[labels["severity"]]
        if "team" in labels:  # the platform's own alerts carry their team
            cases.append(
                (name, {"alertname": name, **labels, "instance": "exporter:9745"}, f"{labels['team']}-{kind}")
            )
            continue
        for team in DEMO_TEAMS:
            alert = {"alertname": name, **labels, "team": team, "monitor": "m", "model": "x", "segment": "eu"}
            cases.append((f"{name}/{team}", alert, f"{team}-{kind}"))
    return cases


def test_every_alert_of_every_demo_team_reaches_the_intended_receiver(amtool):
    cases = route_cases()
    assert len(cases) >= len(LABELS.alerts)  # every alert of the rule file is enumerated
    wrong = []
    for case, labels, expected in cases:
        got = routes_test(amtool, labels)
        if got != expected:
            wrong.append(f"{case}: {got} (expected {expected})")
    assert not wrong, wrong
    # A page and a ticket are different receivers, and both kinds occur in the rule file.
    assert {expected.rsplit("-", 1)[1] for _, _, expected in cases} == {"page", "ticket"}


@pytest.mark.parametrize("severity", sorted(SEVERITY_KIND))
def test_an_alert_of_a_team_no_route_knows_reaches_the_fallback_team(amtool, severity):
    got = routes_test(
        amtool, {"alertname": "ConfusionErrorPatternShift", "team": "unheard-of", "severity": severity}
    )
    assert got == f"{SPEC['fallback_team']}-{SEVERITY_KIND[severity]}"


def inhibit_alerts(matcher: str) -> list[str]:
    match = re.fullmatch(r'alertname=~"([\w|]+)"', matcher)
    assert match, matcher
    return match.group(1).split("|")


def test_inhibit_rules_match_on_labels_both_sides_carry():
    config = yaml.safe_load(CONFIG.read_text())
    assert config["inhibit_rules"]
    for rule in config["inhibit_rules"]:
        (source,) = rule["source_matchers"]
        (target,) = rule["target_matchers"]
        for alert in inhibit_alerts(source) + inhibit_alerts(target):
            missing = set(rule["equal"]) - LABELS.of_alert(alert)
            # Alertmanager treats a label missing on both sides as equal: an inhibition on a
            # label an alert lacks would hold back every exporter's alerts, not its own.
            assert not missing, f"{alert} lacks {sorted(missing)} of the inhibit rule's equal {rule['equal']}"


def test_the_exporter_down_alert_carries_instance_on_both_branches():
    # absent() keeps only `job`; without the label_replace the rule's absent branch would fail
    # the inhibition's `equal: [instance, job]` (an `or` carries what both branches carry).
    expr = LABELS.alerts["ConfusionExporterDown"]["expr"]
    assert {"instance", "job"} <= LABELS.of_expr(expr)
    bare = expr.replace(
        'label_replace(absent(up{job="confusion-exporter"}), "instance", "none", "", "")',
        'absent(up{job="confusion-exporter"})',
    )
    assert bare != expr and "instance" not in LABELS.of_expr(bare)


def test_outages_inhibit_every_model_alert_and_pages_inhibit_only_warnings():
    config = yaml.safe_load(CONFIG.read_text())
    model_alerts = {name for name, rule in LABELS.alerts.items() if "team" not in rule["labels"]}
    platform = set(LABELS.alerts) - model_alerts
    by_source = {tuple(inhibit_alerts(r["source_matchers"][0])): r for r in config["inhibit_rules"]}
    outage = by_source[("ConfusionExporterDown", "ConfusionDatabaseDown")]
    assert set(inhibit_alerts(outage["target_matchers"][0])) == model_alerts
    stale = by_source[("ConfusionSnapshotStale",)]
    assert set(inhibit_alerts(stale["target_matchers"][0])) == model_alerts and "monitor" in stale["equal"]
    for page in ("ConfusionErrorPatternShift", "ConfusionErrorRateShift"):
        targets = set(inhibit_alerts(by_source[(page,)]["target_matchers"][0]))
        assert targets and not targets & platform
        assert {LABELS.alerts[t]["labels"]["severity"] for t in targets} == {"warning"}
    # No platform page is ever a target; the one platform target is the refresh failure,
    # held back by the database outage that explains it.
    for rule in config["inhibit_rules"]:
        targets = set(inhibit_alerts(rule["target_matchers"][0]))
        assert not {t for t in targets if LABELS.alerts[t]["labels"]["severity"] == "critical"} & platform
        if targets & platform:
            assert targets == {"ConfusionRefreshFailing"}
            assert inhibit_alerts(rule["source_matchers"][0]) == ["ConfusionDatabaseDown"]


def walk(route: dict, depth: int = 0):  # type: ignore[type-arg]
    yield route, depth
    for child in route.get("routes", []):
        yield from walk(child, depth + 1)


def test_tickets_of_model_teams_wait_for_working_hours_and_pages_never_do():
    config = yaml.safe_load(CONFIG.read_text())
    for route, _ in walk(config["route"]):
        receiver = route["receiver"]
        if route.get("matchers") == ['severity="critical"']:
            assert "mute_time_intervals" not in route, receiver
        elif route.get("matchers") == ['severity="warning"']:
            muted = route.get("mute_time_intervals") == ["quiet-hours"]
            assert muted == (not receiver.startswith(SPEC["platform_team"] + "-")), receiver


def test_grafana_policies_are_the_same_tree():
    config = yaml.safe_load(CONFIG.read_text())
    policies = yaml.safe_load((ROOT / "grafana" / "provisioning" / "alerting" / "policies.yaml").read_text())
    (root,) = policies["policies"]

    def shape(node: dict, matcher_key: str) -> tuple:  # type: ignore[type-arg]
        matchers = node.get(matcher_key) or []
        if matcher_key == "object_matchers":
            matchers = [f'{n}{op}"{v}"' for n, op, v in matchers]
        return (
            node["receiver"],
            tuple(matchers),
            tuple(node.get("group_by", [])),
            node.get("group_wait"),
            tuple(node.get("mute_time_intervals", [])),
            tuple(shape(c, matcher_key) for c in node.get("routes", [])),
        )

    assert shape(root, "object_matchers") == shape(config["route"], "matchers")
    points = yaml.safe_load(
        (ROOT / "grafana" / "provisioning" / "alerting" / "contact-points.yaml").read_text()
    )
    assert {p["name"] for p in points["contactPoints"]} == {r["name"] for r in config["receivers"]}


def documented_team_example() -> str:
    """The `teams:` example of docs/alerting.md ("Adding a team or a receiver"), as written."""
    doc = (ROOT / "docs" / "alerting.md").read_text()
    block = re.search(r"```yaml\n(   teams:\n.*?)   ```", doc, re.S)
    assert block, "docs/alerting.md lost its teams example"
    return "\n".join(line[3:] for line in block.group(1).splitlines())


def uncommented_spec() -> str:
    """routing.yml with its commented examples (teams with PagerDuty, Slack and email
    receivers, the global SMTP settings) uncommented."""
    lines = []
    for line in (ROOT / "alertmanager" / "routing.yml").read_text().splitlines():
        example = re.fullmatch(r"(\s*)# (\s*(?:[\w-]+:|- ).*)", line)
        # An example line is commented YAML: a key or a list item after "# "; prose is not.
        if (
            example
            and re.match(r"\s*(?:[a-z_-]+:(?: |$)|- )", example.group(2))
            and not example.group(2).endswith(".")
        ):
            lines.append(example.group(1) + example.group(2))
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def spec_examples() -> dict[str, dict]:  # type: ignore[type-arg]
    uncommented = yaml.safe_load(uncommented_spec())
    return {name: body for name, body in uncommented["teams"].items() if name not in SPEC["teams"]}


@pytest.mark.parametrize("source", ["docs/alerting.md", "alertmanager/routing.yml"])
def test_the_documented_receivers_with_secrets_from_files_pass_amtool(amtool, tmp_path, source):
    if source == "docs/alerting.md":
        example = yaml.safe_load(documented_team_example())["teams"]
        spec = {**SPEC, "teams": {**SPEC["teams"], **example}}
    else:
        example = spec_examples()
        assert set(example) == {"payments-ml", "research-ml"}, example
        spec = yaml.safe_load(uncommented_spec())
        assert spec["global"]["smtp_auth_password_file"].startswith("/etc/alertmanager/secrets/")
    (tmp_path / "routing.yml").write_text(yaml.safe_dump(spec))
    sys.path.insert(0, str(ROOT / "alertmanager"))
    try:
        import render_alertmanager
        import spec as routing_spec
    finally:
        sys.path.remove(str(ROOT / "alertmanager"))
    rendered = render_alertmanager.render(routing_spec.load(tmp_path / "routing.yml"))
    assert "routing_key_file: /etc/alertmanager/secrets/" in rendered and "api_url_file:" in rendered
    assert "http://alert-sink" not in rendered.split("name: payments-ml-page")[1].split("- name:")[0]
    (tmp_path / "templates").symlink_to(ROOT / "alertmanager" / "templates")
    (tmp_path / "alertmanager.yml").write_text(rendered)
    result = subprocess.run(
        [amtool, "check-config", str(tmp_path / "alertmanager.yml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for team, severity in ((team, severity) for team in example for severity in SEVERITY_KIND):
        kind = SEVERITY_KIND[severity]
        labels = {"alertname": "ConfusionErrorPatternShift", "team": team, "severity": severity}
        routed = subprocess.run(
            [amtool, "config", "routes", "test", f"--config.file={tmp_path / 'alertmanager.yml'}"]
            + [f"{k}={v}" for k, v in labels.items()],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert routed.stdout.strip() == f"{team}-{kind}"
