"""Bad rows are counted by reason, never crash a refresh, never change the other counts."""

from __future__ import annotations

from datetime import timedelta

import numpy as np

from .helpers import NOW, Row, create_scored_events, insert_rows, make_config, snapshot_at

IN_CURRENT = NOW - timedelta(minutes=20)
IN_REFERENCE = NOW - timedelta(hours=2)


def good_rows() -> list[Row]:
    rng = np.random.default_rng(3)
    classes = ["cat", "dog", "bird"]
    rows = []
    for ts in (IN_CURRENT, IN_REFERENCE):
        for _ in range(300):
            rows.append(
                Row(
                    "m",
                    "v1",
                    ts,
                    str(rng.choice(classes)),
                    None if rng.random() < 0.1 else str(rng.choice(classes)),
                )
            )
    return rows


BAD_ROWS = [
    (Row("m", "v1", IN_CURRENT, None, "cat"), "label_without_prediction"),
    (Row("m", "v1", IN_CURRENT, "   ", "cat"), "label_without_prediction"),
    (Row("m", "v1", IN_CURRENT, None, None), "missing_predicted_class"),
    (Row("m", "v1", IN_CURRENT, "", None), "missing_predicted_class"),
    (Row("m", "v1", IN_CURRENT, "cat", ""), "empty_true_class"),
    (Row("m", "v1", IN_CURRENT, "cat", "  "), "empty_true_class"),
    (Row("m", "v1", NOW + timedelta(seconds=3), "cat", "cat"), "future_timestamp"),
    (Row("m", "v1", NOW + timedelta(days=3650), "cat", None), "future_timestamp"),
]


def current_slice(snapshot):  # type: ignore[no-untyped-def]
    (monitor,) = snapshot.monitors.values()
    return {(s.key.model, s.key.version): s for s in monitor.slices}


def test_each_bad_row_is_counted_and_the_matrix_is_untouched(admin_engine, exporter_url):
    clean = create_scored_events(admin_engine)
    dirty = create_scored_events(admin_engine)
    insert_rows(admin_engine, clean, good_rows())
    insert_rows(admin_engine, dirty, good_rows() + [row for row, _ in BAD_ROWS])

    before = current_slice(snapshot_at(make_config(clean), exporter_url))[("m", "v1")]
    after = current_slice(snapshot_at(make_config(dirty), exporter_url))[("m", "v1")]

    expected: dict[str, int] = {}
    for _, reason in BAD_ROWS:
        expected[reason] = expected.get(reason, 0) + 1
    current = after.windows["current"].counts
    assert {k: v for k, v in current.rejected.items() if v} == expected
    assert not any(after.windows["reference"].counts.rejected.values())
    for name in ("current", "reference"):
        np.testing.assert_array_equal(after.windows[name].counts.matrix, before.windows[name].counts.matrix)
        np.testing.assert_array_equal(
            after.windows[name].counts.unlabeled, before.windows[name].counts.unlabeled
        )
        assert after.windows[name].counts.classes == before.windows[name].counts.classes


def test_null_model_is_rejected_for_a_wildcard_monitor(admin_engine, exporter_url):
    table = create_scored_events(admin_engine)
    insert_rows(
        admin_engine,
        table,
        [Row(None, "v1", IN_CURRENT, "cat", "cat"), Row("m", "v1", IN_CURRENT, "cat", "cat")],
    )
    slices = current_slice(snapshot_at(make_config(table), exporter_url))
    assert slices[("__null__", "v1")].windows["current"].counts.rejected["missing_model"] == 1
    assert slices[("__null__", "v1")].windows["current"].counts.labeled_total == 0
    assert slices[("m", "v1")].windows["current"].counts.labeled_total == 1


def test_classes_outside_the_configured_set_are_rejected(admin_engine, exporter_url):
    table = create_scored_events(admin_engine)
    rows = [
        Row("m", "v1", IN_CURRENT, "cat", "cat"),
        Row("m", "v1", IN_CURRENT, "cat", "dog"),
        Row("m", "v1", IN_CURRENT, "lion", "cat"),  # predicted outside the set
        Row("m", "v1", IN_CURRENT, "cat", "lion"),  # truth outside the set
        Row("m", "v1", IN_CURRENT, "lion", None),  # unlabeled, predicted outside the set
    ]
    insert_rows(admin_engine, table, rows)
    config = make_config(table, extra_monitor={"classes": ["cat", "dog", "bird"]})
    counts = current_slice(snapshot_at(config, exporter_url))[("m", "v1")].windows["current"].counts
    assert counts.classes == ("cat", "dog", "bird")  # configured order, absent "bird" included
    assert counts.rejected["unknown_class"] == 3
    assert counts.matrix.tolist() == [[1, 0, 0], [1, 0, 0], [0, 0, 0]]
    assert counts.unlabeled_total == 0


def test_class_cap_folds_the_rarest_into_other_and_counts_them(admin_engine, exporter_url):
    table = create_scored_events(admin_engine)
    rows = []
    for i in range(30):  # class c{i} appears 30 - i times
        rows += [Row("m", "v1", IN_CURRENT, f"c{i}", f"c{i}") for _ in range(30 - i)]
    insert_rows(admin_engine, table, rows)
    config = make_config(table, extra_monitor={"max_classes": 5})
    counts = current_slice(snapshot_at(config, exporter_url))[("m", "v1")].windows["current"].counts
    assert counts.classes == ("c0", "c1", "c2", "c3", "__other__")
    folded = sum(30 - i for i in range(4, 30))
    assert counts.folded == folded
    assert counts.matrix[4, 4] == folded
    assert counts.labeled_total == len(rows)  # folding keeps every prediction


def test_awkward_class_names_survive_to_a_valid_exposition(admin_engine, exporter_url, promtool, tmp_path):
    import subprocess

    from confusion_exporter.exposition import SnapshotCollector, render

    names = ['quote"d', "back\\slash", "new\nline", "ünï©ødé", "x" * 300, "{brace}", "7"]
    table = create_scored_events(admin_engine)
    insert_rows(admin_engine, table, [Row("m", "v1", IN_CURRENT, a, b) for a in names for b in names])
    snapshot = snapshot_at(make_config(table), exporter_url)
    counts = current_slice(snapshot)[("m", "v1")].windows["current"].counts
    assert set(counts.classes) == set(names)
    assert counts.matrix.sum() == len(names) ** 2 and (counts.matrix == 1).all()
    body = render(SnapshotCollector(snapshot))
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
    assert check.returncode == 0, check.stderr.decode()


def test_class_names_are_escaped_on_the_landing_page(admin_engine, exporter_url):
    from confusion_exporter.web import landing_page

    table = create_scored_events(admin_engine)
    evil = "<script>alert(1)</script>"
    insert_rows(
        admin_engine,
        table,
        [Row("m", "v1", IN_CURRENT, evil, "cat"), Row("m", "v1", IN_REFERENCE, "cat", evil)],
    )
    page = landing_page(snapshot_at(make_config(table), exporter_url)).decode()
    assert evil not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
