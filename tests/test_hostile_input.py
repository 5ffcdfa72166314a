"""Hostile input, generated: every config the loader can be handed, every value a database
column can hold, and a model that suddenly emits 10,000 classes. Each case is a clear error
or a counted rejection; never a crash, an invalid exposition or a wrong count elsewhere."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import unicodedata
from datetime import UTC, datetime, timedelta

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from confusion_exporter.config import ConfigError, config_from_mapping, load_config
from confusion_exporter.exposition import SnapshotCollector, render
from confusion_exporter.printable import printable
from confusion_exporter.web import landing_page

from .conftest import run_cli
from .helpers import (
    COLUMNS,
    NOW,
    Row,
    create_scored_events,
    exporter_config,
    insert_rows,
    make_config,
    snapshot_at,
)
from .processes import ExporterProcess, wait_until

KEYS = [
    "exporter", "sources", "monitors", "database", "name", "table", "columns", "model", "predicted_at",
    "predicted", "actual", "window", "reference", "kind", "length", "offset", "version", "alpha",
    "min_effect", "classes", "cost_matrix", "decision_thresholds", "positive_class", "rollup", "port",
    "refresh_interval", "bucket", "source", "url", "url_file", "team", "max_classes", "web_config",
]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["1h", "0s", "-5m", "7d", "${HOME}", "${NOPE}", "inference.predictions", "trailing"]),
)
trees = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children, max_size=6),
    ),
    max_leaves=40,
)
VALID = yaml.safe_load(
    """
sources: [{name: s, table: t, columns: {model: m, predicted_at: a, predicted: p, actual: y}}]
monitors: [{source: s, model: m, window: 1h, reference: {kind: trailing, length: 1d}}]
"""
)


def mutate(base: object, path: list[object], replacement: object) -> object:
    """``base`` with the node at ``path`` (as far as it exists) replaced."""
    if not path:
        return replacement
    head, rest = path[0], path[1:]
    if isinstance(base, dict) and isinstance(head, str):
        return {**base, head: mutate(base.get(head), rest, replacement)}
    if isinstance(base, list) and isinstance(head, int) and base:
        i = head % len(base)
        return [*base[:i], mutate(base[i], rest, replacement), *base[i + 1 :]]
    return replacement


@settings(max_examples=300, deadline=None)
@given(tree=trees)
def test_any_document_is_a_config_or_a_config_error(tree):
    try:
        config_from_mapping(tree, env={"HOME": "/root"})
    except ConfigError as error:
        assert error.problems and all(isinstance(p, str) and p for p in error.problems)


@settings(max_examples=300, deadline=None)
@given(
    path=st.lists(st.one_of(st.sampled_from(KEYS), st.integers(0, 3)), max_size=4),
    replacement=trees,
)
def test_any_mutation_of_a_valid_config_is_a_config_or_names_a_key(path, replacement):
    try:
        config_from_mapping(mutate(VALID, path, replacement), env={})
    except ConfigError as error:
        # every line names where the problem is ("monitors[0].window: ...", "(top level): ...")
        assert all(": " in p for p in error.problems), error.problems


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_any_file_content_is_a_config_or_a_config_error(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path, env={})
    except ConfigError as error:
        assert error.problems


# Values a text or timestamp column can hold (PostgreSQL text cannot hold NUL).
class_names = st.one_of(
    st.none(),
    st.sampled_from(
        ["", "  ", 'q"uote', "back\\slash", "new\nline", "tab\t", "<b>&</b>", "__other__", "__null__"]
    ),
    st.sampled_from([" \t", "\n", "\r\n", "\u00a0", "\u2003\u3000", "\u200b", "\ufeff "]),  # blank
    st.text(
        st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), min_size=1, max_size=40
    ),
    st.text(alphabet="ab", min_size=300, max_size=600),
)
NO_INSTANT = ["infinity", "-infinity", None]  # timestamps no window holds
times = st.one_of(
    st.integers(-4 * 3600, 120).map(lambda s: NOW + timedelta(seconds=s)),
    st.integers(1, 3).map(lambda s: NOW + timedelta(seconds=s)),  # after now, inside the current bucket
    st.sampled_from(
        [datetime(1901, 1, 1, tzinfo=UTC), datetime(2250, 1, 1, tzinfo=UTC), NOW + timedelta(days=400)]
    ),
    st.sampled_from(NO_INSTANT),
)
# Seconds from the prediction to its label (negative: a label dated before its prediction).
label_offsets = st.one_of(st.none(), st.integers(-5 * 3600, 5 * 3600), st.sampled_from(NO_INSTANT))


def labeled_at(ts, offset):  # type: ignore[no-untyped-def]
    if offset is None or isinstance(offset, str) or not isinstance(ts, datetime):
        return offset if isinstance(offset, str) else None
    return ts + timedelta(seconds=offset)


hostile_rows = st.lists(
    st.builds(
        lambda model, ts, predicted, actual, score, offset: Row(
            model, "v1", ts, predicted, actual, score=score, labeled_at=labeled_at(ts, offset)
        ),
        model=st.sampled_from(["m", None, "", "evil\nmodel"]),
        ts=times,
        offset=label_offsets,
        predicted=class_names,
        actual=class_names,
        score=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=False, width=64)),
    ),
    max_size=40,
)
CLEAN = [
    Row("clean", "v1", NOW - timedelta(minutes=m % 50), str(m % 3), str((m * 7) % 3), score=0.9)
    for m in range(90)
]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=hostile_rows)
def test_hostile_values_give_a_valid_exposition_and_leave_other_counts_exact(
    rows, admin_engine, exporter_url, promtool
):
    table = create_scored_events(admin_engine)
    insert_rows(admin_engine, table, [*CLEAN, *rows])
    snapshot = snapshot_at(make_config(table, extra_monitor={"max_classes": 20}), exporter_url)
    body = render(SnapshotCollector(snapshot))
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
    assert check.returncode == 0, check.stderr.decode()[:2000]
    # The clean model's matrix is exactly its own rows, whatever the other rows held.
    monitor = snapshot.monitors["shop:*"]
    clean = next(s for s in monitor.slices if s.key.model == "clean").windows["current"].counts
    expected = [[0] * 3 for _ in range(3)]
    for r in CLEAN:
        expected[int(r.actual)][int(r.predicted)] += 1  # type: ignore[arg-type]
    assert clean.classes == ("0", "1", "2") and clean.matrix.tolist() == expected
    # Every hostile row of model "m" in the current window is counted once: in the matrix,
    # as unlabeled, folded, or as a rejection with its reason.
    current = next((s for s in monitor.slices if s.key.model == "m"), None)
    window = monitor.windows[0]
    dated = [r for r in rows if r.model == "m" and isinstance(r.ts, datetime)]
    in_current = [r for r in dated if window.start <= r.ts < window.end and r.ts <= NOW]
    future = [r for r in dated if r.ts > NOW]
    undated = [r for r in rows if r.model == "m" and r.ts in NO_INSTANT]  # counted in the current window
    if current is not None:
        counts = current.windows["current"].counts
        total = counts.labeled_total + counts.unlabeled_total + sum(counts.rejected.values())
        assert total == len(in_current) + len(future) + len(undated)
        assert counts.rejected["future_timestamp"] == len(future)
        assert counts.rejected["non_finite_timestamp"] >= sum(1 for r in undated if r.ts is not None)
        assert counts.rejected["missing_timestamp"] == sum(1 for r in undated if r.ts is None)
        assert not counts.mean_label_delay_seconds < 0
    else:
        assert not in_current and not future and not undated


def test_ten_thousand_classes_stay_within_the_cap_and_the_overflow_is_counted(
    admin_engine, exporter_url, promtool
):
    table = create_scored_events(admin_engine)
    rows = [
        Row("m", "v1", NOW - timedelta(seconds=i % 3000), f"class-{i}", f"class-{i}") for i in range(10_000)
    ]
    rows += [Row("m", "v1", NOW - timedelta(seconds=i), "common", "common") for i in range(500)]
    insert_rows(admin_engine, table, rows)
    snapshot = snapshot_at(make_config(table), exporter_url)  # the default cap: 50 classes
    counts = snapshot.monitors["shop:*"].slices[0].windows["current"].counts
    assert len(counts.classes) == 50 and counts.classes[-1] == "__other__" and "common" in counts.classes
    assert counts.folded == 10_000 - 48  # all but the 48 kept singletons (+ common + __other__)
    assert counts.labeled_total == len(rows)  # folding loses no prediction
    body = render(SnapshotCollector(snapshot))
    series = sum(1 for line in body.splitlines() if line.startswith(b"confusion_matrix_predictions{"))
    assert series == 2 * 50 * 50  # two windows of 50 x 50, not 10,000 x 10,000
    assert (
        b'confusion_folded_predictions{model="m",monitor="shop:*",segment="__null__",version="v1",window="current"} 9952.0'
        in body
    )
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
    assert check.returncode == 0


# Names a row or a config can hold that a terminal or a log reader acts on: a forged line, a
# screen clear, an OSC title change, a C1 CSI, bidi overrides and isolates, a zero-width
# joiner, backspaces, a carriage return, a line separator; and HTML that a page must escape.
HOSTILE_NAMES = [
    "fraud\nFORGED gate PASS: all good",
    "\x1b[2J\x1b[Hcleared",
    "title\x1b]0;owned\x07",
    "c1\x9b2Jcsi",
    "\u202eevil\u202c",
    "iso\u2066late\u2069",
    "zero\u200bwidth",
    "back\x08\x08\x08spaced",
    "car\rriage",
    "line\u2028sep",
    "<script>alert(1)</script>",
]
UNSAFE_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs"}


def unsafe_characters(text: str) -> list[str]:
    """Characters of ``text`` a terminal acts on, other than the output's own line breaks."""
    return [c for c in text if c != "\n" and unicodedata.category(c) in UNSAFE_CATEGORIES]


@given(text=st.text())
def test_printable_leaves_nothing_a_terminal_acts_on_and_keeps_the_rest(text):
    out = printable(text)
    assert not unsafe_characters(out) and "\n" not in out

    # Each character is kept as it is, or written as one visible ASCII escape of its own.
    def unsafe(c: str) -> bool:
        return unicodedata.category(c) in UNSAFE_CATEGORIES

    assert out == "".join(printable(c) if unsafe(c) else c for c in text)
    for c in set(text):
        if unsafe(c):
            escape = printable(c)
            assert escape.startswith("\\") and escape.isascii() and escape.isprintable()
        else:
            assert printable(c) == c


_LOGFMT_PAIR = re.compile(r'([A-Za-z0-9_.]+)=("(?:[^"\\]|\\.)*"|[^ "=]*)(?: |$)')
_GO_ESCAPE = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|.)")
_SHORT_ESCAPES = {"n": "\n", "r": "\r", "t": "\t"}


def _unescape(match: re.Match[str]) -> str:
    code = match[1]
    return chr(int(code[1:], 16)) if len(code) > 1 else _SHORT_ESCAPES.get(code, code)


def parse_logfmt(line: str) -> dict[str, str]:
    """A strict logfmt reader: the whole line must be key=value pairs; quoted values unescaped."""
    pairs, position = {}, 0
    while position < len(line):
        match = _LOGFMT_PAIR.match(line, position)
        assert match, f"not logfmt at {position}: {line!r}"
        key, value = match.groups()
        if value.startswith('"'):
            value = _GO_ESCAPE.sub(_unescape, value[1:-1])
        assert key not in pairs, f"key {key} twice: {line!r}"
        pairs[key] = value
        position = match.end()
    return pairs


def test_hostile_names_cannot_forge_a_log_line_or_a_key(cli, admin_engine, exporter_url, tmp_path):
    """A monitor over a hostile model name and a hostile column name (the query fails and the
    error quotes it): each event is one logfmt line whose values read back exactly."""
    table = create_scored_events(admin_engine)
    model = 'm\nts=forged level=error msg="forged" \x1b[2J' + HOSTILE_NAMES[4]
    column = 'yhat"\n level=error forged=1 \x1b]0;owned\x07' + HOSTILE_NAMES[5]
    insert_rows(admin_engine, table, [Row(model, "v1", NOW, "a", "a")])
    config = exporter_config(table, model=model)
    config["sources"][0]["columns"] = {**COLUMNS, "predicted": column}
    exporter = ExporterProcess(cli, config, exporter_url, tmp_path)
    try:
        wait_until(lambda: "monitor refresh failed" in exporter.log())
    finally:
        exporter.stop()
    log = exporter.log()
    assert not unsafe_characters(log)
    events = [parse_logfmt(line) for line in log.splitlines()]
    assert all(list(e)[:4] == ["ts", "level", "logger", "msg"] for e in events), events
    assert not any("forged" in e or e["ts"] == "forged" for e in events)
    failures = [e for e in events if e["msg"] == "monitor refresh failed"]
    assert failures and all(e["monitor"] == f"shop:{model}" for e in failures)
    # Read back faithfully (database errors are put on one line, so its whitespace runs are one space).
    assert " ".join(column.split()) in failures[0]["error"]


def hostile_rows_table(admin_engine) -> str:  # type: ignore[no-untyped-def]
    table = create_scored_events(admin_engine)
    rows = [
        Row(HOSTILE_NAMES[i % 3], HOSTILE_NAMES[-1], NOW - timedelta(minutes=i % 50), name, name,
            segment=HOSTILE_NAMES[-1 - i % 2])
        for i, name in enumerate(HOSTILE_NAMES * 5)
    ]  # fmt: skip
    insert_rows(admin_engine, table, rows)
    return table


def test_snapshot_on_a_terminal_is_escaped_and_piped_is_exact(cli, admin_engine, exporter_url, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(exporter_config(hostile_rows_table(admin_engine), model="*")))
    args = [*cli, "snapshot", "--config", str(path), "--at", NOW.isoformat()]
    env = {**os.environ, "DATABASE_URL": exporter_url}
    piped = subprocess.run(args, env=env, capture_output=True, timeout=60)
    assert piped.returncode == 0, piped.stderr
    assert b"\x1b[2J\x1b[Hcleared" in piped.stdout  # byte-exact for promtool and Prometheus
    main, child = pty.openpty()
    with subprocess.Popen(args, env=env, stdout=child, stderr=subprocess.PIPE) as process:
        os.close(child)
        output = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(60) == 0
    os.close(main)
    text = output.decode().replace("\r\n", "\n")  # the terminal's own line discipline
    assert "confusion_matrix_predictions{" in text
    assert not unsafe_characters(text)
    assert printable("\x1b[2J\x1b[Hcleared") in text


def test_hostile_names_are_escaped_on_the_landing_page(admin_engine, exporter_url):
    table = hostile_rows_table(admin_engine)
    page = landing_page(snapshot_at(make_config(table), exporter_url)).decode()
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_hostile_config_names_and_errors_print_escaped(cli, tmp_path):
    """check-config's summary and a config error that lists class names."""
    config = yaml.safe_load(yaml.safe_dump(VALID))
    config["monitors"][0]["model"] = HOSTILE_NAMES[0] + HOSTILE_NAMES[1]
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(config))
    ok = run_cli(cli, "check-config", "--config", str(path), env={"DATABASE_URL": ""})
    assert ok.returncode == 0, ok.stderr
    assert not unsafe_characters(ok.stdout) and len(ok.stdout.splitlines()) == 2
    assert printable(f"shop:{HOSTILE_NAMES[0]}{HOSTILE_NAMES[1]}".replace("shop", "s")) in ok.stdout
    config["monitors"][0].update(classes=HOSTILE_NAMES[2:4], positive_class="x", decision_thresholds=[0.5])
    path.write_text(yaml.safe_dump(config))
    bad = run_cli(cli, "check-config", "--config", str(path), env={"DATABASE_URL": ""})
    assert bad.returncode == 2
    assert not unsafe_characters(bad.stderr)
    assert all(line.startswith("config error: ") for line in bad.stderr.splitlines()), bad.stderr
    assert f"({printable(HOSTILE_NAMES[2])}, {printable(HOSTILE_NAMES[3])})" in bad.stderr
