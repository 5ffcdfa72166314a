"""The routing spec (alertmanager/routing.yml) read strictly, with the rule file's alerts.

A mistake raises ``SpecError`` naming the key and the fix; generate.py prints it and exits 2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "alertmanager" / "routing.yml"
RULES = sorted((ROOT / "prometheus" / "rules").glob("*.yml"))

_TOP_KEYS = {
    "sink",
    "platform_team",
    "fallback_team",
    "severities",
    "group_by",
    "teams",
    "global",
    "inhibit",
    "mute_time_intervals",
}
_SEVERITY_KEYS = {"kind", "group_wait", "group_interval", "repeat_interval", "mute_time_intervals"}
_TEAM_KEYS = {"receivers", "mute_time_intervals"}
_RECEIVER_KEYS = {"webhook_configs", "pagerduty_configs", "slack_configs", "email_configs", "grafana"}
_INHIBIT_KEYS = {"name", "sources", "targets", "equal"}
# Targets an inhibit entry may name instead of a list: derived from the rule file.
TARGET_SETS = ("model_alerts", "model_warnings")
_DURATION = re.compile(r"(\d+[smhd])+")


class SpecError(Exception):
    """A mistake in the spec: the message names the key and says how to fix it."""


@dataclass(frozen=True)
class Alert:
    name: str
    severity: str
    team: str | None  # a static team (the platform's own alerts); None: the monitor's team


@dataclass(frozen=True)
class Severity:
    name: str
    kind: str
    group_wait: str
    group_interval: str
    repeat_interval: str
    mute_time_intervals: tuple[str, ...]


@dataclass(frozen=True)
class Receiver:
    name: str
    configs: dict[str, Any]  # an Alertmanager receiver's body, without its name
    grafana: dict[str, Any] | None  # the Grafana contact point's receiver, when not a webhook


@dataclass(frozen=True)
class Team:
    name: str
    receivers: dict[str, Receiver]  # by kind (page, ticket)
    mute_time_intervals: dict[str, tuple[str, ...]]  # by severity


@dataclass(frozen=True)
class Inhibit:
    name: str
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    equal: tuple[str, ...]


@dataclass(frozen=True)
class Spec:
    sink: str
    platform_team: str
    fallback_team: str
    severities: dict[str, Severity]
    group_by_model: tuple[str, ...]
    group_by_platform: tuple[str, ...]
    teams: dict[str, Team]
    global_: dict[str, Any]
    inhibit: tuple[Inhibit, ...]
    mute_time_intervals: dict[str, list[dict[str, Any]]]
    alerts: dict[str, Alert] = field(default_factory=dict)

    def model_alerts(self) -> list[str]:
        return [a.name for a in self.alerts.values() if a.team is None]

    def platform_alerts(self) -> list[str]:
        return [a.name for a in self.alerts.values() if a.team == self.platform_team]


def _mapping(value: Any, key: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(f"{key}: must be a mapping")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise SpecError(f"{key}.{unknown[0]}: unknown key; allowed: {', '.join(sorted(allowed))}")
    return value


def _names(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SpecError(f"{key}: must be a list of names")
    return tuple(value)


def _duration(value: Any, key: str) -> str:
    if not isinstance(value, str) or not _DURATION.fullmatch(value):
        raise SpecError(f"{key}: {value!r} is not a duration; write it like 30s, 5m or 4h")
    return value


def rule_alerts(paths: list[Path] = RULES) -> dict[str, Alert]:
    """The alerting rules of the rule files: name, severity, static team."""
    alerts = {}
    for path in paths:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" not in rule:
                    continue
                labels = rule.get("labels", {})
                alerts[rule["alert"]] = Alert(
                    name=rule["alert"],
                    severity=labels.get("severity", ""),
                    team=labels.get("team"),
                )
    return alerts


def load(path: Path = SPEC, rules: list[Path] = RULES) -> Spec:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SpecError(f"{path.name}: not valid YAML ({error})") from None
    raw = _mapping(raw, path.name, _TOP_KEYS)
    for key in ("sink", "platform_team", "fallback_team", "severities", "group_by", "teams"):
        if key not in raw:
            raise SpecError(f"{key}: missing; see the comments of alertmanager/routing.yml")
    mutes = _mapping(
        raw.get("mute_time_intervals", {}), "mute_time_intervals", set(raw.get("mute_time_intervals") or {})
    )
    for name, intervals in mutes.items():
        if not isinstance(intervals, list) or not intervals:
            raise SpecError(
                f"mute_time_intervals.{name}: must be a list of time intervals (times, weekdays, ...)"
            )

    def known_mutes(names: tuple[str, ...], key: str) -> tuple[str, ...]:
        for name in names:
            if name not in mutes:
                raise SpecError(f"{key}: {name!r} is not defined; add it under mute_time_intervals")
        return names

    severities = {}
    for name, body in _mapping(raw["severities"], "severities", set(raw["severities"] or {})).items():
        key = f"severities.{name}"
        body = _mapping(body, key, _SEVERITY_KEYS)
        if body.get("kind") not in ("page", "ticket"):
            raise SpecError(f"{key}.kind: must be page or ticket")
        severities[name] = Severity(
            name=name,
            kind=body["kind"],
            group_wait=_duration(body.get("group_wait"), f"{key}.group_wait"),
            group_interval=_duration(body.get("group_interval"), f"{key}.group_interval"),
            repeat_interval=_duration(body.get("repeat_interval"), f"{key}.repeat_interval"),
            mute_time_intervals=known_mutes(
                _names(body.get("mute_time_intervals", []), f"{key}.mute_time_intervals"),
                f"{key}.mute_time_intervals",
            ),
        )
    kinds = sorted({s.kind for s in severities.values()})

    group_by = _mapping(raw["group_by"], "group_by", {"model", "platform"})
    for part in ("model", "platform"):
        if part not in group_by:
            raise SpecError(f"group_by.{part}: missing; give the labels that make one notification")

    teams = {}
    for name, body in _mapping(raw["teams"], "teams", set(raw["teams"] or {})).items():
        key = f"teams.{name}"
        body = _mapping(body or {}, key, _TEAM_KEYS)
        given = _mapping(body.get("receivers", {}), f"{key}.receivers", set(kinds))
        receivers = {}
        for kind in kinds:
            receiver_name = f"{name}-{kind}"
            configs = _mapping(given.get(kind) or {}, f"{key}.receivers.{kind}", _RECEIVER_KEYS)
            grafana = configs.pop("grafana", None)
            if not configs:
                # The default: a webhook to the sink, resolved notifications included.
                configs = {
                    "webhook_configs": [{"url": f"{raw['sink']}/{receiver_name}", "send_resolved": True}]
                }
            elif set(configs) != {"webhook_configs"} and grafana is None:
                raise SpecError(
                    f"{key}.receivers.{kind}.grafana: missing; a receiver other than a webhook needs "
                    "its Grafana contact point (type and settings, secrets as ${ENV} variables)"
                )
            receivers[kind] = Receiver(receiver_name, configs, grafana)
        overrides = _mapping(
            body.get("mute_time_intervals", {}), f"{key}.mute_time_intervals", set(severities)
        )
        team_mutes = {
            sev: known_mutes(
                _names(overrides.get(sev, list(s.mute_time_intervals)), f"{key}.mute_time_intervals.{sev}"),
                f"{key}.mute_time_intervals.{sev}",
            )
            for sev, s in severities.items()
        }
        teams[name] = Team(name, receivers, team_mutes)
    for key in ("platform_team", "fallback_team"):
        if raw[key] not in teams:
            raise SpecError(f"{key}: {raw[key]!r} is not under teams; add it there")

    alerts = rule_alerts(rules)
    for alert in alerts.values():
        if alert.severity not in severities:
            raise SpecError(
                f"severities: the rule {alert.name} has severity {alert.severity!r}; add it under severities"
            )
        if alert.team is not None and alert.team != raw["platform_team"]:
            raise SpecError(
                f"platform_team: the rule {alert.name} has the static team {alert.team!r}; make them agree"
            )

    spec_without_inhibit = Spec(
        sink=raw["sink"],
        platform_team=raw["platform_team"],
        fallback_team=raw["fallback_team"],
        severities=severities,
        group_by_model=_names(group_by["model"], "group_by.model"),
        group_by_platform=_names(group_by["platform"], "group_by.platform"),
        teams=teams,
        global_=_mapping(raw.get("global", {}), "global", set(raw.get("global") or {})),
        inhibit=(),
        mute_time_intervals=mutes,
        alerts=alerts,
    )
    inhibits = []
    for n, body in enumerate(raw.get("inhibit") or []):
        key = f"inhibit[{n}]"
        body = _mapping(body, key, _INHIBIT_KEYS)
        sources = _names(body.get("sources"), f"{key}.sources")
        for alert in sources:
            if alert not in alerts:
                raise SpecError(f"{key}.sources: {alert!r} is not an alert of prometheus/rules/")
        targets = body.get("targets")
        if targets == "model_alerts":
            target_names = tuple(spec_without_inhibit.model_alerts())
        elif targets == "model_warnings":
            target_names = tuple(
                a
                for a in spec_without_inhibit.model_alerts()
                if severities[alerts[a].severity].kind == "ticket"
            )
        else:
            target_names = _names(targets, f"{key}.targets")
            for alert in target_names:
                if alert not in alerts:
                    raise SpecError(
                        f"{key}.targets: {alert!r} is not an alert of prometheus/rules/; "
                        f"give alert names or one of {', '.join(TARGET_SETS)}"
                    )
        inhibits.append(
            Inhibit(
                str(body.get("name", key)), sources, target_names, _names(body.get("equal"), f"{key}.equal")
            )
        )
    return Spec(**{**spec_without_inhibit.__dict__, "inhibit": tuple(inhibits)})
