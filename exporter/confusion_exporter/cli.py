"""Command line: parse, call, map outcomes to exit codes (0 ok, 1 runtime failure, 2 config error)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from . import __version__
from .config import (
    DATABASE_URL_ENV,
    Config,
    ConfigError,
    DatabaseUrl,
    MissingDatabaseUrl,
    format_duration,
    load_config,
    parse_duration,
    resolve_database_url,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_WAIT = 0, 1, 2, 3
CONFIG_ENV = "CONFUSION_EXPORTER_CONFIG"
EXPORTER_PASSWORD_ENV = "CONFUSION_EXPORTER_ROLE_PASSWORD"

log = logging.getLogger("confusion_exporter")


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=os.environ.get(CONFIG_ENV),
        help=f"YAML configuration file (env {CONFIG_ENV})",
    )


def _database_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=None,
        help="database URL (default: env DATABASE_URL, then DATABASE_URL_FILE)",
    )


def _duration(value: str) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _timestamp(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad timestamp {value!r}; use ISO 8601") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="confusion-exporter",
        description="Export classifier confusion matrices from Postgres as Prometheus metrics.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve /metrics, /healthz and / from a background refresher")
    _config_arg(run)

    snap = sub.add_parser("snapshot", help="compute one snapshot, print its exposition, exit")
    _config_arg(snap)
    snap.add_argument("--at", type=_timestamp, default=None, help="evaluate as of this instant (ISO 8601)")

    check = sub.add_parser("check-config", help="validate the configuration and exit")
    _config_arg(check)

    migrate = sub.add_parser("migrate", help="create or upgrade the reference schema (Alembic)")
    _database_arg(migrate)
    migrate.add_argument("--revision", default="head", help="target revision (default: head)")
    migrate.add_argument("--downgrade", metavar="REVISION", help="reverse down to REVISION ('base': all)")
    migrate.epilog = (
        "If CONFUSION_EXPORTER_ROLE_PASSWORD is set, the exporter's read-only role "
        "confusion_exporter gets that password after the upgrade."
    )

    sim = sub.add_parser("simulate", help="write realistic traffic into the reference schema")
    _database_arg(sim)
    sim.add_argument(
        "--models", default="fraud-gbm,digits-rf,intent-router", help="comma-separated model profiles"
    )
    sim.add_argument("--rate", type=float, default=2.0, help="predictions per second per model")
    sim.add_argument(
        "--history",
        type=_duration,
        default=timedelta(0),
        help="first backfill this much past traffic (e.g. 6h)",
    )
    sim.add_argument(
        "--duration",
        type=_duration,
        default=None,
        help="then run live for this long (default: until interrupted; 0s: no live phase)",
    )
    sim.add_argument("--tick", type=_duration, default=timedelta(seconds=1), help="live write interval")
    sim.add_argument(
        "--label-delay",
        type=_duration,
        default=timedelta(minutes=2),
        help="mean delay before a label arrives",
    )
    sim.add_argument("--label-coverage", type=float, default=0.9, help="share of predictions ever labeled")
    sim.add_argument(
        "--shift-after",
        type=_duration,
        default=None,
        help="inject an error-pattern shift this long after the live phase starts",
    )
    sim.add_argument(
        "--shift-models",
        default="digits-rf,fraud-gbm",
        help="comma-separated models whose error pattern shifts",
    )
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument(
        "--heartbeat-file",
        default=None,
        help="touch this file after every write (for `healthcheck --heartbeat`)",
    )

    baseline = sub.add_parser("baseline", help="pinned baselines for monitors with reference kind 'baseline'")
    baseline_sub = baseline.add_subparsers(dest="baseline_command", required=True)
    capture = baseline_sub.add_parser(
        "capture", help="count a monitor over a finished span and store it by name"
    )
    _config_arg(capture)
    capture.add_argument("--monitor", required=True, help="monitor name (the 'monitor' label)")
    capture.add_argument("--from", dest="start", type=_timestamp, required=True, help="span start (ISO 8601)")
    capture.add_argument("--to", dest="end", type=_timestamp, required=True, help="span end, exclusive")
    capture.add_argument(
        "--name", required=True, help="baseline name, as in reference: {kind: baseline, name: N}"
    )

    accept = baseline_sub.add_parser(
        "accept",
        help="take a latched sequential shift's new regime as the reference (the page resolves once)",
    )
    _config_arg(accept)
    accept.add_argument("--monitor", required=True, help="monitor name (the 'monitor' label)")
    accept.add_argument("--model", default=None, help="only this model (default: every model of the monitor)")
    accept.add_argument("--segment", default=None, help="only this segment (default: every segment)")
    accept.add_argument("--note", default=None, help="why, for the record (stored with the event)")

    rebuild = sub.add_parser("rebuild", help="recount a rollup source from scratch (repair) or check it")
    _config_arg(rebuild)
    rebuild.add_argument("--source", required=True, help="a source with rollup enabled")
    rebuild.add_argument("--from", dest="start", type=_timestamp, help="recount only this span's buckets ...")
    rebuild.add_argument("--to", dest="end", type=_timestamp, help="... up to here (exclusive)")
    rebuild.add_argument(
        "--check", action="store_true", help="compare with a recount, change nothing; exit 1 if they differ"
    )

    gate = sub.add_parser(
        "gate",
        help="sequential deployment gate: canary vs stable since the rollout's start; exit 0 pass, 1 fail, "
        "3 wait (poll it as often as you like)",
    )
    _config_arg(gate)
    gate.add_argument("--monitor", required=True, help="monitor name (as in /metrics)")
    gate.add_argument("--reference", required=True, help="the stable version, as version:NAME")
    gate.add_argument("--current", required=True, help="the canary version, as version:NAME")
    gate.add_argument("--min-samples", type=int, default=None, help="labeled predictions each version needs")
    gate.add_argument(
        "--since",
        type=_timestamp,
        default=None,
        help="count both versions from here (ISO 8601; default: the canary's first prediction); "
        "keep it the same on every poll of a rollout",
    )
    gate.add_argument("--window", type=_duration, default=None, help=argparse.SUPPRESS)  # replaced by --since
    gate.add_argument("--at", type=_timestamp, default=None, help="judge as of this instant (ISO 8601)")
    gate.add_argument("--format", choices=["text", "json"], default="text")

    report = sub.add_parser("report", help="error-analysis report of one monitor (text, html or json)")
    _config_arg(report)
    report.add_argument("--monitor", required=True, help="monitor name (as in /metrics)")
    report.add_argument("--from", dest="start", type=_timestamp, default=None, help="span start (ISO 8601)")
    report.add_argument("--to", dest="end", type=_timestamp, default=None, help="span end (default: now)")
    report.add_argument(
        "--reference",
        default=None,
        help=(
            "trailing:24h, offset:7d, seasonal:1d[:COUNT], version:NAME or baseline:NAME "
            "(default: the monitor's)"
        ),
    )
    report.add_argument("--format", choices=["text", "html", "json"], default="text")
    report.add_argument("--output", default=None, help="write here instead of standard output")

    backfill = sub.add_parser(
        "backfill",
        help="write the metric history of a past span as OpenMetrics for promtool tsdb create-blocks",
    )
    _config_arg(backfill)
    backfill.add_argument(
        "--from", dest="start", type=_timestamp, required=True, help="first instant (ISO 8601)"
    )
    backfill.add_argument("--to", dest="end", type=_timestamp, required=True, help="last instant (ISO 8601)")
    backfill.add_argument(
        "--step", type=_duration, default=timedelta(minutes=5), help="between instants (5m)"
    )
    backfill.add_argument("--output", required=True, help="directory to write confusion-exporter.om into")

    health = sub.add_parser(
        "healthcheck",
        help="exit 0 if the running exporter (this config's port, http or https) answers /healthz",
    )
    _config_arg(health)
    health.add_argument(
        "--heartbeat",
        metavar="FILE",
        default=None,
        help="instead: exit 0 if FILE was touched within --max-age (the simulator's container)",
    )
    health.add_argument(
        "--max-age", type=_duration, default=timedelta(seconds=60), help="with --heartbeat (60s)"
    )

    sub.add_parser(
        "hash-password", help="read a password on standard input, print its bcrypt hash for basic_auth_users"
    )

    demo = sub.add_parser("demo", help="no Docker: embedded Postgres + simulator + exporter on :9745")
    demo.add_argument("--data-dir", default=".demo/pgdata", help="embedded PostgreSQL data directory")
    demo.add_argument("--history", type=_duration, default=timedelta(hours=3), help="traffic to backfill")
    demo.add_argument(
        "--shift-after",
        type=_duration,
        default=timedelta(minutes=3),
        help="inject the error-pattern shift this long after start",
    )
    demo.add_argument("--rate", type=float, default=3.0, help="predictions per second per model")
    return parser


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    if not args.config:
        raise ConfigError([f"--config: no configuration file given; pass --config FILE or set {CONFIG_ENV}"])
    return load_config(args.config)


def say(text: str, file: TextIO | None = None) -> None:
    """Print one line for a person: no registered secret, no character a terminal acts on
    (names from the config and the data are quoted in these lines)."""
    from . import redaction
    from .printable import printable

    print(printable(redaction.scrub(text)), file=file or sys.stdout)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    if config.exporter.web_config is not None:
        from .webconfig import load_web_config

        load_web_config(config.exporter.web_config)  # its mistakes too, before a start finds them
    # The database URL is checked too when one is set (a URL that reads two ways is a config
    # error); none set is fine here: the config may be checked where the secret is not.
    try:
        url: DatabaseUrl | None = resolve_database_url(config)
    except MissingDatabaseUrl:
        url = None
    say(
        f"config ok: {len(config.sources)} source(s), {len(config.monitors)} monitor(s): "
        + ", ".join(m.monitor_name for m in config.monitors)
    )
    say(f"database: {url.redacted()}" if url else f"database: no URL set ({DATABASE_URL_ENV} not set)")
    return EXIT_OK


def cmd_snapshot(args: argparse.Namespace) -> int:
    from .exposition import HealthCollector, SnapshotCollector, render
    from .refresher import Refresher

    config = _load(args)
    url = resolve_database_url(config)
    at = args.at
    refresher = Refresher(config, url, clock=(lambda: at) if at else _now, historical=at is not None)
    try:
        ok = refresher.refresh()
    finally:
        refresher.engine.dispose()
    published = refresher.published
    snapshot = published.snapshot
    body = render(SnapshotCollector(snapshot)) if snapshot else b""
    exposition = body + render(HealthCollector(refresher.health))
    if sys.stdout.isatty():
        # A person reads it: a label value from the data must not drive the terminal (the
        # exposition format escapes only quotes, backslashes and newlines). Piped into
        # promtool or a file, it stays byte-exact.
        from .printable import printable

        sys.stdout.write("\n".join(printable(line) for line in exposition.decode().split("\n")))
    else:
        sys.stdout.buffer.write(exposition)
    sys.stdout.flush()
    if not ok:
        for name, error in refresher.health.last_error.items():
            say(f"monitor {name}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _reader(config: Config) -> Engine:
    """A read-only engine with the config's timeouts, for one-off commands (gate, report, backfill)."""
    from .source.database import reader_engine

    settings = config.exporter
    return reader_engine(
        resolve_database_url(config),
        statement_timeout=settings.statement_timeout,
        connect_timeout=settings.connect_timeout,
    )


def cmd_gate(args: argparse.Namespace) -> int:
    from .gate import parse_version_selector, run_gate

    config = _load(args)
    stable = parse_version_selector("--reference", args.reference)
    canary = parse_version_selector("--current", args.current)
    if args.min_samples is not None and args.min_samples < 1:
        raise ConfigError(["--min-samples: must be at least 1"])
    if args.window is not None:
        # A window that slides with every poll would make each poll a new test: the gate's
        # confidence sequences need the span to grow from one start.
        raise ConfigError(
            [
                "--window: the gate is sequential and counts from one start; use --since TIMESTAMP "
                "(default: the canary's first prediction) instead"
            ]
        )
    now = args.at or _now()
    if args.since is not None and args.since >= now:
        raise ConfigError(
            [f"--since: {args.since.isoformat()} is not before {now.isoformat()}; give the rollout's start"]
        )
    engine = _reader(config)
    try:
        with engine.connect() as connection:
            report = run_gate(
                connection,
                config,
                args.monitor,
                stable,
                canary,
                now,
                since=args.since,
                min_samples=args.min_samples,
            )
    finally:
        engine.dispose()
    sys.stdout.write(report.to_json() if args.format == "json" else report.to_text())
    return report.exit_code


def cmd_report(args: argparse.Namespace) -> int:
    from .config import parse_reference
    from .evaluate import evaluate_monitor
    from .report import build_report, plan_report, to_json, to_text
    from .report_html import to_html

    config = _load(args)
    reference = parse_reference("--reference", args.reference) if args.reference else None
    monitor, at = plan_report(config, args.monitor, args.start, args.end, reference, _now())
    engine = _reader(config)
    try:
        with engine.connect() as connection:
            result = evaluate_monitor(connection, config, monitor, at, use_rollup=False)
    finally:
        engine.dispose()
    report = build_report(result)
    render = {"text": to_text, "json": to_json, "html": to_html}[args.format]
    body = render(report)
    if args.output:
        try:
            Path(args.output).write_text(body, encoding="utf-8")
        except OSError as error:
            raise ConfigError([_unwritable("--output", args.output, error)]) from None
        say(f"report of {monitor.monitor_name} written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(body)
    return EXIT_OK


def cmd_backfill(args: argparse.Namespace) -> int:
    from .backfill import backfill

    config = _load(args)
    if args.end < args.start:
        raise ConfigError(["--to: must not be before --from"])
    if args.step <= timedelta(0):
        raise ConfigError(["--step: must be greater than zero"])
    steps = int((args.end - args.start) / args.step) + 1
    if steps > 100_000:
        raise ConfigError(
            [f"--step: {steps} instants; use a longer step or a shorter span (at most 100,000)"]
        )
    output = Path(args.output)
    try:  # before any evaluation: a path that cannot be written is the user's to fix, at once
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".confusion-exporter-write-test"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise ConfigError([_unwritable("--output", args.output, error)]) from None
    engine = _reader(config)
    try:
        result = backfill(engine, config, args.start, args.end, args.step, output)
    finally:
        engine.dispose()
    print(
        f"wrote {result.path}: {result.steps} instants, {result.samples} samples in {result.families} "
        f"families ({result.seconds:.1f} s)\n"
        f"next: promtool tsdb create-blocks-from openmetrics {result.path} {output / 'blocks'}\n"
        f"then move {output / 'blocks'}/* into Prometheus's data directory (docs/backfill.md)"
    )
    return EXIT_OK


def cmd_healthcheck(args: argparse.Namespace) -> int:
    """For container health checks: the port and scheme come from the config, so they follow it."""
    import ssl
    import urllib.request

    from .config import ExporterSettings, _env_overrides

    if args.heartbeat is not None:
        return _heartbeat_health(Path(args.heartbeat), args.max_age)
    from .webconfig import load_web_config

    settings = (
        _load(args).exporter if args.config else ExporterSettings.model_validate(_env_overrides(os.environ))
    )
    tls = (
        settings.web_config is not None and load_web_config(settings.web_config).tls_server_config is not None
    )
    host = "127.0.0.1" if settings.listen_address in ("0.0.0.0", "::", "") else settings.listen_address
    url = f"{'https' if tls else 'http'}://{host}:{settings.port}/healthz"
    # Our own endpoint on loopback: the certificate is for the outside, not for this probe.
    context = ssl._create_unverified_context() if tls else None  # noqa: S323
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310
            ok = response.status == 200
    except OSError as error:
        say(f"unhealthy: {url}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK if ok else EXIT_FAILURE


def _heartbeat_health(path: Path, max_age: timedelta) -> int:
    """A process that writes instead of serving is healthy while it keeps touching its file."""
    import time

    try:
        age = time.time() - path.stat().st_mtime
    except OSError as error:
        print(f"unhealthy: no heartbeat at {path}: {error.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    if age > max_age.total_seconds():
        print(f"unhealthy: last heartbeat {age:.0f}s ago (limit {format_duration(max_age)})", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_hash_password(args: argparse.Namespace) -> int:
    import getpass

    import bcrypt

    from .webconfig import password_problem

    if sys.stdin.isatty():
        password = getpass.getpass("password: ").encode("utf-8")
    else:
        # Bytes, not text: a password that is not UTF-8 is a mistake to name, not a traceback.
        password = sys.stdin.buffer.readline().rstrip(b"\n")
    if not password:
        raise ConfigError(["hash-password: empty password"])
    try:
        password.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            ["hash-password: the password is not UTF-8 text (clients send basic-auth passwords as UTF-8)"]
        ) from None
    problem = password_problem(password)
    if problem is not None:
        raise ConfigError([f"hash-password: {problem}"])
    print(bcrypt.hashpw(password, bcrypt.gensalt(rounds=10)).decode("ascii"))
    return EXIT_OK


def _now() -> datetime:
    return datetime.now(UTC)


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args)
    from .serve import serve

    return serve(config, resolve_database_url(config))


def cmd_baseline(args: argparse.Namespace) -> int:
    from .baseline import capture_baseline
    from .source.database import admin_engine

    config = _load(args)
    if args.baseline_command == "accept":
        return _accept(config, args)
    engine = admin_engine(resolve_database_url(config))
    try:
        slices, cells = capture_baseline(
            engine, config, args.monitor, args.name, args.start, args.end, _now()
        )
    finally:
        engine.dispose()
    say(f"baseline {args.name!r} of monitor {args.monitor!r}: {slices} slice(s), {cells} cell(s) stored")
    return EXIT_OK


def _accept(config: Config, args: argparse.Namespace) -> int:
    """Record an accept event; every evaluation from its instant on applies it (a replay too)."""
    from .source.accepts import record_accept, table_exists
    from .source.database import admin_engine

    monitors = {m.monitor_name: m for m in config.monitors}
    monitor = monitors.get(args.monitor)
    if monitor is None:
        raise ConfigError([f"--monitor: unknown monitor {args.monitor!r}; monitors: {', '.join(monitors)}"])
    if not monitor.sequential.enabled:
        raise ConfigError(
            [f"--monitor: {args.monitor!r} has sequential.enabled: false; there is no shift to accept"]
        )
    engine = admin_engine(resolve_database_url(config))
    try:
        with engine.begin() as connection:
            if not table_exists(connection):
                raise ConfigError(
                    [
                        "the database has no confusion_exporter.sequential_accepts table; "
                        "run `confusion-exporter migrate` (revision 0004) first"
                    ]
                )
            at = record_accept(connection, monitor.monitor_name, args.model, args.segment, args.note)
    finally:
        engine.dispose()
    scope = ", ".join(
        f"{name} {value!r}" for name, value in (("model", args.model), ("segment", args.segment)) if value
    )
    say(
        f"accepted the new regime of monitor {args.monitor!r}{' (' + scope + ')' if scope else ''} "
        f"as of {at.isoformat()}: latched cells take it as their reference at the next 5-minute period"
    )
    return EXIT_OK


def cmd_rebuild(args: argparse.Namespace) -> int:
    from .source import rollup
    from .source.database import admin_engine

    config = _load(args)
    source = next((s for s in config.sources if s.name == args.source), None)
    if source is None or source.rollup is None:
        with_rollup = ", ".join(s.name for s in config.sources if s.rollup is not None) or "none"
        raise ConfigError(
            [f"--source: {args.source!r} is not a source with rollup enabled (those: {with_rollup})"]
        )
    bucket = int(config.exporter.bucket.total_seconds())
    tolerance = config.exporter.future_tolerance  # the rollup's reasons depend on it
    engine = admin_engine(resolve_database_url(config))
    try:
        with engine.connect() as connection, connection.begin():
            if args.start is None and args.end is None and not args.check:
                result = rollup.rebuild(connection, source, bucket, tolerance)
                print(
                    f"rebuilt {source.name}: {result.predictions} predictions, {result.labels_changed} labels"
                )
                return EXIT_OK
            start = args.start or datetime(1, 1, 1, tzinfo=UTC)  # rows dated before 1970 too
            end = args.end or _now() + timedelta(days=3650)
            stored, recounted = rollup.recount_range(
                connection, source, bucket, start, end, write=not args.check, label_tolerance=tolerance
            )
    finally:
        engine.dispose()
    differing = {
        k
        for k in stored.keys() | recounted.keys()
        if stored.get(k, (0, 0.0))[0] != recounted.get(k, (0, 0.0))[0]
    }
    verb = "differ" if args.check else "were repaired"
    print(f"{source.name}: {len(recounted)} cells recounted, {len(differing)} {verb}")
    return EXIT_FAILURE if args.check and differing else EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.data_dir).resolve(), args.history, args.shift_after, args.rate)


def cmd_migrate(args: argparse.Namespace) -> int:
    from . import migrate

    url = resolve_database_url(None, explicit=args.database_url)
    if args.downgrade:
        migrate.downgrade(url, args.downgrade)
        log.info("downgraded", extra={"fields": {"revision": args.downgrade, "database": url.redacted()}})
    else:
        migrate.upgrade(url, args.revision)
        log.info("migrated", extra={"fields": {"revision": args.revision, "database": url.redacted()}})
        password = os.environ.get(EXPORTER_PASSWORD_ENV)
        if password:
            from . import redaction

            redaction.register([password])  # a failing ALTER ROLE must not echo it
            migrate.set_exporter_password(url, password)
            log.info("exporter role password set", extra={"fields": {"role": migrate.EXPORTER_ROLE}})
    return EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    from .simulate import SimulationSettings, Simulator
    from .source.database import admin_engine

    url: DatabaseUrl = resolve_database_url(None, explicit=args.database_url)
    start = _now()
    shift_at = start + args.shift_after if args.shift_after is not None else None
    settings = SimulationSettings(
        models=[m for m in args.models.split(",") if m],
        rate_per_second=args.rate,
        mean_label_delay=args.label_delay,
        label_coverage=args.label_coverage,
        shift_at=shift_at,
        shift_models=[m for m in args.shift_models.split(",") if m],
        seed=args.seed,
    )
    engine = admin_engine(url)
    try:
        heartbeat = Path(args.heartbeat_file) if args.heartbeat_file else None
        simulator = Simulator(engine, settings, heartbeat=heartbeat)
    except ValueError as exc:
        say(f"--models: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if args.history > timedelta(0):
        simulator.backfill(start - args.history, start)
        log.info(
            "backfilled",
            extra={
                "fields": {
                    "history": format_duration(args.history),
                    "predictions": simulator.written_predictions,
                    "labels": simulator.written_labels,
                }
            },
        )
    until = None if args.duration is None else _now() + args.duration
    if until is None or until > _now():
        log.info(
            "simulating live traffic",
            extra={
                "fields": {"shift_at": shift_at.isoformat() if shift_at else "never", "models": args.models}
            },
        )
        simulator.run(_now, args.tick, until, stop.is_set)
    log.info(
        "simulation done",
        extra={"fields": {"predictions": simulator.written_predictions, "labels": simulator.written_labels}},
    )
    engine.dispose()
    return EXIT_OK


COMMANDS = {
    "run": cmd_run,
    "snapshot": cmd_snapshot,
    "check-config": cmd_check_config,
    "migrate": cmd_migrate,
    "simulate": cmd_simulate,
    "demo": cmd_demo,
    "baseline": cmd_baseline,
    "rebuild": cmd_rebuild,
    "gate": cmd_gate,
    "report": cmd_report,
    "hash-password": cmd_hash_password,
    "healthcheck": cmd_healthcheck,
    "backfill": cmd_backfill,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import logs

    logs.setup(os.environ.get("CONFUSION_EXPORTER_LOG_LEVEL", "info"))
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        for problem in exc.problems:
            say(f"config error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # last resort: one line, no traceback with secrets in it
        from psycopg2 import Error as DriverError
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(exc, SQLAlchemyError | DriverError):
            from .source.database import timeout_hint

            say(f"error: database: {_one_line(exc)}{timeout_hint(exc)}", file=sys.stderr)
            return EXIT_FAILURE
        # A bug: its traceback helps a report, but a message in it may quote a secret or a
        # name from the data, so it goes through the same scrubbing and escaping.
        import traceback

        for line in traceback.format_exc().splitlines():
            say(line, file=sys.stderr)
        return EXIT_FAILURE


def _unwritable(flag: str, path: str, error: OSError) -> str:
    return f"{flag}: cannot write {path!r}: {error.strerror or error}; choose a path this user can write"


def _one_line(error: BaseException) -> str:
    """The driver's message (not SQLAlchemy's wrapper, which appends the statement), on one
    line, with every registered secret (whatever URL source it came from) scrubbed, then cut."""
    from . import redaction

    message = " ".join(str(getattr(error, "orig", None) or error).split())
    return redaction.scrub(message)[:500]


if __name__ == "__main__":
    sys.exit(main())
