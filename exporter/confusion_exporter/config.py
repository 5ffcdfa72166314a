"""Strict configuration models, loading and the errors they report.

Only this module reads the config file. Every mistake becomes one line that names
the key (``monitors[0].window: ...``) and says how to fix it; the CLI exits 2.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .blank import is_blank
from .database_url import DatabaseUrl, UrlProblem, check_database_url

ENV_PREFIX = "CONFUSION_EXPORTER_"
DATABASE_URL_ENV = "DATABASE_URL"
DATABASE_URL_FILE_ENV = "DATABASE_URL_FILE"

_DURATION_RE = re.compile(r"^(\d+)(ms|s|m|h|d|w)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
DURATION_HINT = "use a whole number followed by ms, s, m, h, d or w (e.g. 30s, 5m, 1h, 7d)"


class ConfigError(Exception):
    """A configuration that cannot be used; ``problems`` holds one line per mistake."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class MissingDatabaseUrl(ConfigError):
    """No database URL anywhere: an error for commands that connect, not for check-config."""


def parse_duration(value: Any) -> timedelta:
    """Turn ``"90s"``/``"1h"``/``"7d"`` into a timedelta; reject anything else."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"expected a duration string, got {value!r}; {DURATION_HINT}")
    match = _DURATION_RE.match(value.strip())
    if not match:
        raise ValueError(f"bad duration {value!r}; {DURATION_HINT}")
    amount, unit = int(match.group(1)), match.group(2)
    return timedelta(seconds=amount * _UNIT_SECONDS[unit])


def format_duration(value: timedelta) -> str:
    """Render a timedelta in the largest unit that divides it exactly."""
    seconds = value.total_seconds()
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds * 1000)}ms"


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class ExporterSettings(_Strict):
    """Process-wide settings; each has an environment twin ``CONFUSION_EXPORTER_<KEY>``."""

    listen_address: str = "0.0.0.0"
    port: int = Field(default=9745, ge=1, le=65535)
    refresh_interval: Duration = timedelta(seconds=30)
    initial_backoff: Duration = timedelta(seconds=1)
    max_backoff: Duration = timedelta(minutes=2)
    statement_timeout: Duration = timedelta(seconds=20)
    connect_timeout: Duration = timedelta(seconds=5)
    bucket: Duration = timedelta(minutes=1)
    max_classes: int = Field(default=50, ge=2, le=1000)
    future_tolerance: Duration = timedelta(seconds=0)
    score_refresh_interval: Duration = timedelta(minutes=5)
    web_config: Path | None = None  # TLS and basic auth, in the Prometheus exporters' format
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("refresh_interval", "bucket", "statement_timeout", "connect_timeout")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be greater than zero")
        return value


class DatabaseSettings(_Strict):
    """Where the database URL comes from; the URL itself never sits in the config file."""

    url_file: Path | None = None


class ColumnMap(_Strict):
    """Column names of a source table; only model, predicted_at, predicted and actual are required."""

    model: str
    predicted_at: str
    predicted: str
    actual: str
    version: str | None = None
    labeled_at: str | None = None
    score: str | None = None
    segment: str | None = None

    @field_validator("*")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        if value is not None and is_blank(value):
            raise ValueError("column name must not be empty or only whitespace")
        return value


_QUALIFIED = r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$"


class RollupConfig(_Strict):
    """The append-only tables an incremental rollup folds (the reference schema's shape)."""

    predictions: str = Field(default="inference.predictions", pattern=_QUALIFIED)
    labels: str = Field(default="inference.labels", pattern=_QUALIFIED)


class SourceConfig(_Strict):
    """A table or view holding one row per prediction, with its label when it has arrived."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    table: str
    columns: ColumnMap
    rollup: RollupConfig | None = None

    @field_validator("rollup", mode="before")
    @classmethod
    def _rollup_switch(cls, value: Any) -> Any:
        if value is True:
            return {}
        if value is False:
            return None
        return value

    @field_validator("table")
    @classmethod
    def _qualified_name(cls, value: str) -> str:
        parts = value.split(".")
        if len(parts) > 2 or any(is_blank(p) for p in parts):
            raise ValueError(f"expected 'table' or 'schema.table', got {value!r}")
        return value

    @property
    def schema_name(self) -> str | None:
        return self.table.split(".")[0] if "." in self.table else None

    @property
    def table_name(self) -> str:
        return self.table.split(".")[-1]


class TrailingReference(_Strict):
    """The span of ``length`` just before the current window."""

    kind: Literal["trailing"]
    length: Duration


class OffsetReference(_Strict):
    """The current window shifted back by ``offset`` (e.g. 7d for weekly seasonality)."""

    kind: Literal["offset"]
    offset: Duration


class SeasonalReference(_Strict):
    """The current window at the same time of the ``count`` previous periods (by default the
    same hour on each of the last 7 days), pooled. Error rates that follow a daily cycle are
    compared with the same hours of earlier days, and one past incident is 1/count of it."""

    kind: Literal["seasonal"]
    period: Duration = timedelta(days=1)
    count: int = Field(default=7, ge=1, le=60)


class VersionReference(_Strict):
    """Another model version over the same current window (canary vs stable)."""

    kind: Literal["version"]
    version: str = Field(min_length=1)

    @field_validator("version")
    @classmethod
    def _version_not_blank(cls, value: str) -> str:
        if is_blank(value):
            raise ValueError("must not be only whitespace; name the stable version, e.g. v1")
        return value


class BaselineReference(_Strict):
    """A named matrix captured once (``confusion-exporter baseline capture``) and stored."""

    kind: Literal["baseline"]
    name: str = Field(min_length=1)


Reference = Annotated[
    TrailingReference | OffsetReference | SeasonalReference | VersionReference | BaselineReference,
    Field(discriminator="kind"),
]
REFERENCE_KINDS = "trailing, offset, seasonal, version, baseline"


class SequentialConfig(_Strict):
    """The sequential layer of a monitor: small, persistent changes per error rate
    (stats/sequential.py; defaults justified in docs/statistics.md, "Sequential detection")."""

    enabled: bool = True
    # The smallest change worth a page: a relative rise of an error rate, with an absolute floor.
    min_relative_change: float = Field(default=0.10, gt=0, le=10)
    min_absolute_change: float = Field(default=0.001, ge=0, lt=1)
    false_alarms_per_30_days: float = Field(default=1.0, gt=0, le=1000)
    # A latched shift becomes the new reference after this long; null: only `baseline accept`.
    accept_after: Duration | None = timedelta(hours=24)
    # Label arrivals are counted per period once ``settle`` has passed since its end (a row
    # committed later than that is seen by a replay but was not by the live exporter).
    settle: Duration = timedelta(minutes=2)
    # The first instant the detector reads. Replays start here, so every evaluation of an
    # instant agrees. Without one, the replay starts at most ``max_history`` before the
    # evaluated instant, at a boundary of 7-day blocks since the epoch (every instant of a
    # block shares one origin), and never before the day of the monitor's first prediction.
    origin: datetime | None = None
    max_history: Duration = timedelta(days=35)

    @field_validator("max_history")
    @classmethod
    def _history_holds_the_reference(cls, value: timedelta) -> timedelta:
        if value < timedelta(days=15):
            raise ValueError("must be at least 15d: the reference alone holds 14 days")
        return value

    # The detector watches at most this many classes of a slice (cells grow as K^2), in the
    # order the configured ``classes`` list them, else in the order they first appear.
    max_classes: int = Field(default=10, ge=2, le=50)
    false_discovery_rates: bool = False

    @field_validator("origin")
    @classmethod
    def _origin_has_zone(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2026-11-01T00:00:00Z")
        return value


class MonitorConfig(_Strict):
    """One model (or ``*`` for each model found) of one source, compared window against reference."""

    source: str
    model: str = Field(min_length=1)

    @field_validator("model")
    @classmethod
    def _model_not_blank(cls, value: str) -> str:
        if is_blank(value):
            raise ValueError("must not be only whitespace; name a model or use '*' for each model")
        return value

    name: str | None = Field(None, min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    window: Duration
    label_delay: Duration = timedelta(0)
    reference: Reference
    # A page's false-alarm budget, not one test's: re-evaluated every minute on sliding
    # windows, alpha 0.01 paged 1-4 times a month with no change (docs/statistics.md).
    alpha: float = Field(default=0.001, gt=0, lt=1)
    min_effect: float = Field(default=0.03, ge=0, le=1)
    min_samples: int = Field(default=200, ge=1)
    min_row_samples: int = Field(default=20, ge=1)
    monte_carlo_samples: int = Field(default=999, ge=99, le=99_999)
    top_cells: int = Field(default=10, ge=1, le=100)
    team: str = Field(default="ml", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    recall_objective: float = Field(default=0.0, ge=0, le=1)
    recall_objectives: dict[str, float] = Field(default_factory=dict)

    @field_validator("recall_objectives")
    @classmethod
    def _objectives_are_ratios(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [name for name, v in value.items() if not 0 <= v <= 1]
        if bad:
            raise ValueError(f"objectives must be between 0 and 1 (classes {', '.join(map(repr, bad))})")
        return value

    def recall_objective_for(self, cls: str) -> float:
        return self.recall_objectives.get(cls, self.recall_objective)

    classes: list[str] | None = Field(None, min_length=1)
    max_classes: int | None = Field(None, ge=2, le=1000)
    cost_matrix: dict[str, dict[str, float]] = Field(default_factory=dict)
    max_cost_increase: float = Field(default=0.15, gt=0)
    calibration_bins: int = Field(default=10, ge=2, le=100)
    high_confidence: float = Field(default=0.9, gt=0, le=1)
    positive_class: str | None = Field(None, min_length=1)
    decision_thresholds: list[float] = Field(default_factory=list, max_length=20)
    sequential: SequentialConfig = Field(default_factory=SequentialConfig)

    @field_validator("cost_matrix", mode="before")
    @classmethod
    def _cost_cells(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value  # pydantic names the type
        for true_class, row in value.items():
            if not isinstance(row, dict):
                raise ValueError(
                    f"row {true_class!r} must map predicted classes to costs, "
                    f"e.g. {{{true_class}: {{other_class: 5}}}}; got {row!r}"
                )
            for predicted_class, cost in row.items():
                number = _number(cost)
                if number is None or number < 0:
                    raise ValueError(
                        f"cell [{true_class!r}][{predicted_class!r}] (true {true_class}, predicted "
                        f"{predicted_class}) is {cost!r}; a cost must be a finite number >= 0"
                    )
        return value

    @field_validator("decision_thresholds")
    @classmethod
    def _thresholds_are_probabilities(cls, value: list[float]) -> list[float]:
        bad = [t for t in value if not 0 < t < 1]
        if bad:
            raise ValueError(f"thresholds must lie strictly between 0 and 1, got {bad}")
        if len(set(value)) != len(value):
            raise ValueError("thresholds must be distinct")
        return sorted(value)

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if any(is_blank(c) for c in value):
            raise ValueError(
                "class names must not be empty or only whitespace (rows with such classes are rejected)"
            )
        if len(set(value)) != len(value):
            raise ValueError("class names must be distinct")
        return value

    @property
    def monitor_name(self) -> str:
        return self.name or f"{self.source}:{self.model}"


class Config(_Strict):
    """The whole configuration file."""

    exporter: ExporterSettings = Field(default_factory=ExporterSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    sources: list[SourceConfig] = Field(min_length=1)
    monitors: list[MonitorConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        problems: list[str] = []
        names = [s.name for s in self.sources]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            problems.append(f"sources: duplicate source name {dup!r}; give each source its own name")
        bucket = self.exporter.bucket
        monitor_names: dict[str, int] = {}
        for i, mon in enumerate(self.monitors):
            where = f"monitors[{i}]"
            if mon.source not in names:
                known = ", ".join(names)
                problems.append(f"{where}.source: unknown source {mon.source!r}; defined sources: {known}")
            for key in ("window", "label_delay"):
                value = getattr(mon, key)
                if value % bucket:
                    problems.append(
                        f"{where}.{key}: {format_duration(value)} is not a multiple of "
                        f"exporter.bucket ({format_duration(bucket)}); windows are sums of buckets"
                    )
            if mon.window <= timedelta(0):
                problems.append(f"{where}.window: must be greater than zero")
            ref = mon.reference
            if isinstance(ref, TrailingReference | OffsetReference | SeasonalReference):
                if isinstance(ref, TrailingReference):
                    span, key = ref.length, "length"
                elif isinstance(ref, OffsetReference):
                    span, key = ref.offset, "offset"
                else:
                    span, key = ref.period, "period"
                if span % bucket or span <= timedelta(0):
                    problems.append(
                        f"{where}.reference.{key}: must be a positive multiple of exporter.bucket "
                        f"({format_duration(bucket)})"
                    )
            if isinstance(ref, OffsetReference) and ref.offset < mon.window:
                problems.append(
                    f"{where}.reference.offset: {format_duration(ref.offset)} is shorter than the "
                    f"window ({format_duration(mon.window)}); the reference would overlap the "
                    "current window"
                )
            if isinstance(ref, SeasonalReference) and ref.period < mon.window:
                problems.append(
                    f"{where}.reference.period: {format_duration(ref.period)} is shorter than the "
                    f"window ({format_duration(mon.window)}); the pooled windows would overlap each "
                    "other and the current window"
                )
            cap = mon.max_classes or self.exporter.max_classes
            if mon.classes is not None and len(mon.classes) > cap:
                problems.append(
                    f"{where}.classes: {len(mon.classes)} classes exceed max_classes ({cap}); "
                    "raise max_classes or list fewer classes"
                )
            problems.extend(_score_checks(where, mon, self))
            previous = monitor_names.setdefault(mon.monitor_name, i)
            if previous != i:
                problems.append(
                    f"{where}.name: monitor name {mon.monitor_name!r} is also used by "
                    f"monitors[{previous}]; set a distinct 'name'"
                )
        if problems:
            raise _CrossCheckError(problems)
        return self

    def source(self, name: str) -> SourceConfig:
        return next(s for s in self.sources if s.name == name)

    def monitor(self, name: str, flag: str = "--monitor") -> MonitorConfig:
        """The monitor called ``name`` (as in /metrics), or a ConfigError listing the names."""
        found = next((m for m in self.monitors if m.monitor_name == name), None)
        if found is None:
            known = ", ".join(m.monitor_name for m in self.monitors)
            raise ConfigError([f"{flag}: no monitor named {name!r}; configured monitors: {known}"])
        return found


def parse_reference(
    flag: str, value: str
) -> TrailingReference | OffsetReference | SeasonalReference | VersionReference | BaselineReference:
    """A reference given on the command line: trailing:24h, offset:7d, seasonal:1d (or
    seasonal:1d:14, with the count), version:v1 or baseline:NAME."""
    kind, _, argument = value.partition(":")
    hint = "use trailing:DURATION, offset:DURATION, seasonal:PERIOD[:COUNT], version:NAME or baseline:NAME"
    if not argument:
        raise ConfigError([f"{flag}: expected KIND:VALUE, got {value!r}; {hint}"])
    try:
        if kind == "trailing":
            return TrailingReference(kind="trailing", length=parse_duration(argument))
        if kind == "offset":
            return OffsetReference(kind="offset", offset=parse_duration(argument))
        if kind == "seasonal":
            period, _, count = argument.partition(":")
            if count and not count.isdecimal():
                raise ValueError(f"count {count!r} is not a whole number (seasonal:1d:7)")
            return SeasonalReference(
                kind="seasonal", period=parse_duration(period), **({"count": int(count)} if count else {})
            )
        if kind == "version":
            return VersionReference(kind="version", version=argument)
        if kind == "baseline":
            return BaselineReference(kind="baseline", name=argument)
    except (ValueError, ValidationError) as exc:
        raise ConfigError([f"{flag}: {exc}"]) from None
    raise ConfigError([f"{flag}: unknown reference kind {kind!r}; {hint}"])


def _number(value: Any) -> float | None:
    """A finite number, also from a string (``${VAR}`` interpolation yields strings); else None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _score_checks(where: str, mon: MonitorConfig, config: Config) -> list[str]:
    """Cost cells and decision thresholds against the monitor's classes and its source's columns."""
    problems = []
    if mon.classes is not None:
        known = set(mon.classes)
        for true_class, row in mon.cost_matrix.items():
            for predicted_class in row:
                for role, name in (("true", true_class), ("predicted", predicted_class)):
                    if name not in known:
                        problems.append(
                            f"{where}.cost_matrix: cell [{true_class!r}][{predicted_class!r}] names "
                            f"{role} class {name!r}, which is not in {where}.classes; fix the name or "
                            "add the class"
                        )
    if mon.decision_thresholds or mon.positive_class is not None:
        source = next((s for s in config.sources if s.name == mon.source), None)
        if source is not None and source.columns.score is None:
            problems.append(
                f"{where}.decision_thresholds: source {mon.source!r} maps no score column; "
                "set sources[].columns.score"
            )
        if mon.classes is None or len(mon.classes) != 2:
            problems.append(
                f"{where}.classes: decision thresholds need a two-class monitor; list its two classes, "
                "e.g. classes: [legit, fraud]"
            )
        elif mon.positive_class not in mon.classes:
            problems.append(
                f"{where}.positive_class: must be one of {where}.classes ({', '.join(mon.classes)}); "
                "it is the class whose probability the thresholds apply to"
            )
        if not mon.decision_thresholds:
            problems.append(f"{where}.decision_thresholds: list at least one, e.g. [0.3, 0.5, 0.7]")
    return problems


class _CrossCheckError(ValueError):
    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(node: Any, env: Mapping[str, str], path: str, problems: list[str]) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in strings, so any value can come from the environment."""
    if isinstance(node, dict):
        return {k: _interpolate(v, env, f"{path}.{k}" if path else str(k), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, env, f"{path}[{i}]", problems) for i, v in enumerate(node)]
    if isinstance(node, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(
                f"{path}: environment variable {name} is not set; set it or write ${{{name}:-default}}"
            )
            return ""

        return _ENV_REF.sub(substitute, node)
    return node


def _env_overrides(env: Mapping[str, str]) -> dict[str, str]:
    overrides = {}
    for key in ExporterSettings.model_fields:
        value = env.get(ENV_PREFIX + key.upper())
        if value is not None:
            overrides[key] = value
    return overrides


def _location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in REFERENCE_KINDS.split(", ") and out.endswith("reference"):
            continue  # the discriminator's branch name is noise to a reader
        elif str(part).startswith("function-"):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def _describe(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key; remove it or check its spelling against the README's configuration table"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        return f"unknown reference kind; use one of: {REFERENCE_KINDS}"
    if kind == "union_tag_not_found":
        return f"reference needs a 'kind' (one of: {REFERENCE_KINDS})"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _unknown_sources(raw: Mapping[str, Any]) -> list[str]:
    """Report monitors naming undefined sources even when other keys fail validation first."""
    sources, monitors = raw.get("sources"), raw.get("monitors")
    if not isinstance(sources, list) or not isinstance(monitors, list):
        return []
    names = [s.get("name") for s in sources if isinstance(s, dict)]
    out = []
    for i, mon in enumerate(monitors):
        if isinstance(mon, dict) and "source" in mon and mon["source"] not in names:
            known = ", ".join(str(n) for n in names)
            out.append(f"monitors[{i}].source: unknown source {mon['source']!r}; defined sources: {known}")
    return out


def config_from_mapping(raw: Any, env: Mapping[str, str] | None = None) -> Config:
    """Validate an already-parsed YAML document, applying environment twins and interpolation."""
    env = os.environ if env is None else env
    if not isinstance(raw, dict):
        raise ConfigError(["(top level): expected a mapping with 'sources' and 'monitors'"])
    problems: list[str] = []
    if "database" in raw and isinstance(raw["database"], dict) and "url" in raw["database"]:
        problems.append(
            "database.url: the database URL must not be written in the config file; "
            f"set {DATABASE_URL_ENV} or database.url_file"
        )
        raw = {**raw, "database": {k: v for k, v in raw["database"].items() if k != "url"}}
    raw = _interpolate(raw, env, "", problems)
    if problems:  # validating half-interpolated values would only add noise lines
        raise ConfigError(problems)
    overrides = _env_overrides(env)
    if overrides:
        exporter = raw.get("exporter") or {}
        if isinstance(exporter, dict):
            raw = {**raw, "exporter": {**exporter, **overrides}}
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors():
            ctx = error.get("ctx") or {}
            inner = ctx.get("error")
            if isinstance(inner, _CrossCheckError):
                problems.extend(inner.problems)
                continue
            problems.append(f"{_location(error['loc']) or '(top level)'}: {_describe(error)}")
        problems.extend(_unknown_sources(raw))
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return config


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML config file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"--config: cannot read {path}: {exc.strerror}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"--config: {path} is not valid YAML{where}"]) from None
    return config_from_mapping(raw, env)


def resolve_database_url(
    config: Config | None, env: Mapping[str, str] | None = None, explicit: str | None = None
) -> DatabaseUrl:
    """Find the database URL: explicit flag, DATABASE_URL, DATABASE_URL_FILE, then database.url_file.

    A URL that reads more than one way is a config error naming where it came from: the
    exporter must not connect with a password it mis-read (nor log the part it mis-read).
    """
    env = os.environ if env is None else env
    if explicit:
        return _database_url("--database-url", explicit)
    if env.get(DATABASE_URL_ENV):
        return _database_url(DATABASE_URL_ENV, env[DATABASE_URL_ENV])
    file_key, file_path = DATABASE_URL_FILE_ENV, env.get(DATABASE_URL_FILE_ENV)
    if not file_path and config is not None and config.database.url_file is not None:
        file_key, file_path = "database.url_file", str(config.database.url_file)
    if file_path:
        try:
            text = Path(file_path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError([f"{file_key}: cannot read {file_path}: {exc.strerror}"]) from None
        return _database_url(f"{file_key} ({file_path})", text)
    raise MissingDatabaseUrl(
        [
            f"{DATABASE_URL_ENV}: not set; export {DATABASE_URL_ENV}=postgresql://user:pass@host/db "
            f"or point {DATABASE_URL_FILE_ENV} / database.url_file at a file holding it"
        ]
    )


def _database_url(key: str, text: str) -> DatabaseUrl:
    try:
        check_database_url(text)  # before normalising, so a message shows the scheme as written
        return DatabaseUrl(_normalise_url(text))
    except UrlProblem as problem:
        raise ConfigError([f"{key}: {problem}"]) from None


def _normalise_url(url: str) -> str:
    """Accept the libpq form ``postgresql://`` and select the psycopg2 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url
