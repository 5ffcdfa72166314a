"""The exporter is not a way into the inference database: its role's privileges are exactly
SELECT plus its own schema, identifiers from config cannot inject SQL, and the database
password never leaves the process."""

from __future__ import annotations

import os
import random
import string
import subprocess
import urllib.parse

import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import make_url

from confusion_exporter.config import ConfigError, DatabaseUrl, config_from_mapping, resolve_database_url
from confusion_exporter.refresher import Refresher

from .conftest import run_cli
from .helpers import COLUMNS, NOW, Row, create_scored_events, exporter_config, insert_rows, make_config
from .processes import ExporterProcess, TcpProxy, http_get, wait_until

INFERENCE = ["inference.predictions", "inference.labels", "inference.labeled_predictions"]
WRITES = ["INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"]


def test_exporter_role_has_select_on_inference_and_writes_only_its_own_schema(admin_engine):
    with admin_engine.connect() as conn:
        role = conn.execute(
            sa.text(
                "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls, rolreplication, rolinherit "
                "FROM pg_roles WHERE rolname = 'confusion_exporter'"
            )
        ).one()
        assert not any(role[:5])  # no superuser, createdb, createrole, bypassrls, replication
        memberships = conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
                "WHERE r.rolname = 'confusion_exporter'"
            )
        ).scalar_one()
        assert memberships == 0  # inherits nothing from other roles
        for table in INFERENCE:
            assert conn.execute(
                sa.text("SELECT has_table_privilege('confusion_exporter', :t, 'SELECT')"), {"t": table}
            ).scalar_one()
            for privilege in WRITES:
                assert not conn.execute(
                    sa.text("SELECT has_table_privilege('confusion_exporter', :t, :p)"),
                    {"t": table, "p": privilege},
                ).scalar_one(), (table, privilege)
        assert not conn.execute(
            sa.text("SELECT has_schema_privilege('confusion_exporter', 'inference', 'CREATE')")
        ).scalar_one()
        assert not conn.execute(
            sa.text("SELECT has_database_privilege('confusion_exporter', current_database(), 'CREATE')")
        ).scalar_one()
        # Where it writes: only the tables of its own schema (baselines, rollups).
        own = (
            conn.execute(
                sa.text(
                    "SELECT DISTINCT table_schema FROM information_schema.role_table_grants "
                    "WHERE grantee = 'confusion_exporter' AND privilege_type IN ('INSERT', 'UPDATE', 'DELETE')"
                )
            )
            .scalars()
            .all()
        )
        assert own == ["confusion_exporter"]


INJECTIONS = [
    {"predicted": 'yhat"; DROP TABLE shop_ml.canary; --'},
    {"actual": "y) OR 1=1; DROP TABLE shop_ml.canary; --"},
    {"model": "clf' OR '1'='1"},
]


@pytest.mark.parametrize("columns", INJECTIONS)
def test_injected_identifiers_are_quoted_and_fail_harmlessly(admin_engine, exporter_url, columns):
    table = create_scored_events(admin_engine)
    insert_rows(admin_engine, table, [Row("m", "v1", NOW, "a", "a")])
    with admin_engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS shop_ml.canary (x int)"))
        conn.execute(sa.text("GRANT SELECT ON shop_ml.canary TO confusion_exporter"))
    config = make_config(table, columns={**COLUMNS, **columns})
    refresher = Refresher(config, DatabaseUrl(exporter_url), clock=lambda: NOW)
    try:
        assert not refresher.refresh()
    finally:
        refresher.engine.dispose()
    error = refresher.health.last_error["shop:*"]
    assert "does not exist" in error  # the whole string was taken as one quoted column name
    with admin_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('shop_ml.canary')")).scalar() is not None


def test_rollup_table_names_must_be_plain_identifiers():
    raw = {
        "sources": [
            {
                "name": "s",
                "table": "inference.labeled_predictions",
                "columns": COLUMNS,
                "rollup": {
                    "predictions": "inference.predictions; DROP TABLE x",
                    "labels": "inference.labels",
                },
            }
        ],
        "monitors": [
            {"source": "s", "model": "m", "window": "1h", "reference": {"kind": "trailing", "length": "1h"}}
        ],
    }
    with pytest.raises(ConfigError) as error:
        config_from_mapping(raw, env={})
    assert any(line.startswith("sources[0].rollup.predictions:") for line in error.value.problems)


def test_the_password_never_appears_in_logs_pages_or_metrics(cli, admin_engine, exporter_url, tmp_path):
    """Provoke every kind of connection error, then look everywhere the exporter writes."""
    table = create_scored_events(admin_engine)
    password = make_url(exporter_url).password
    assert password
    # (the test servers trust local connections, so a wrong password would be accepted;
    # a missing database makes the server reject the login instead)
    wrong = (
        make_url(exporter_url)
        .set(password="Wr0ng-P4ssw0rd-xyzzy", database="no_such_database")
        .render_as_string(hide_password=False)
    )
    proxy = TcpProxy(exporter_url)
    config = exporter_config(table, refresh_interval="300ms", initial_backoff="100ms", max_backoff="500ms")
    runs = [
        (proxy.url_for(exporter_url), password),  # connection refused (proxy not started)
        (wrong, "Wr0ng-P4ssw0rd-xyzzy"),  # the server refuses the login
    ]
    for url, secret in runs:
        exporter = ExporterProcess(cli, config, url, tmp_path)
        try:
            wait_until(
                lambda e=exporter: (
                    e.metrics()[
                        ("confusion_exporter_refresh_failures_total", frozenset({("monitor", "shop:m")}))
                    ]
                    >= 3
                )
            )
            bodies = [
                http_get(exporter.url(path))[1] for path in ("/", "/metrics", "/healthz", "/report?monitor=x")
            ]
        finally:
            exporter.stop()
        log = exporter.log()
        assert "monitor refresh failed" in log
        for text in [log, *(b.decode() for b in bodies)]:
            assert secret not in text
            assert password not in text
        assert "***" in log  # the URL is logged, masked


def leaks(secret: str, text: str, length: int = 4) -> set[str]:
    """Every piece of ``secret`` at least ``length`` long that appears in ``text``."""
    return {secret[i : i + length] for i in range(len(secret) - length + 1) if secret[i : i + length] in text}


def token(rng: random.Random, n: int = 10) -> str:
    # Letters only, mixed case: a piece of it cannot occur by chance in a timestamp or a word.
    return "".join(rng.choice(string.ascii_letters) for _ in range(n))


def ambiguous_urls(seed: int) -> list[tuple[str, str, str]]:
    """(id, URL, its authority) of URLs that SQLAlchemy and libpq would read otherwise than meant."""
    rng = random.Random(seed)
    user, host = token(rng, 8), f"db-{token(rng, 8)}.internal"
    a, b, c = token(rng), token(rng), token(rng)
    cases = {
        "at-in-password": f"{user}:{a}@{b}@{host}",
        "two-ats-in-password": f"{user}:{a}@{b}@{c}@{host}:5432",
        "at-and-slash-in-password": f"{user}:{a}@{b}/{c}@{host}",
        "at-and-question-mark-in-password": f"{user}:{a}@{b}?{c}@{host}",
        "at-in-user-name": f"{a}@{b}:{c}@{host}",
        "slash-in-user-name": f"{a}/{b}:{c}@{host}",
        "colon-in-password-no-host": f"{user}:{a}:{b}",
        "letters-in-port": f"{user}:{a}@{host}:{b}",
        "several-hosts": f"{user}:{a}@{host}:5432,{b}.internal:5433",
    }
    return [(name, f"postgresql://{authority}/inference", authority) for name, authority in cases.items()]


@pytest.mark.parametrize(("case", "url", "authority"), ambiguous_urls(seed=1409))
def test_an_ambiguous_url_is_a_config_error_that_quotes_no_part_of_it(cli, tmp_path, case, url, authority):
    """Every command that reads the URL, from the environment, a file or the flag: exit 2
    naming where the URL came from and what is wrong, and not one piece of the authority."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(exporter_config("shop_ml.t")))
    url_file = tmp_path / "database-url"
    url_file.write_text(url + "\n")
    with_file = tmp_path / "with-url-file.yaml"
    with_file.write_text(
        yaml.safe_dump({**exporter_config("shop_ml.t"), "database": {"url_file": str(url_file)}})
    )
    runs = [
        (("run", "--config", str(config)), {"DATABASE_URL": url}, "DATABASE_URL: postgresql://…: "),
        (("check-config", "--config", str(config)), {"DATABASE_URL": url}, "DATABASE_URL: postgresql://…: "),
        (("snapshot", "--config", str(config)), {"DATABASE_URL": url}, "DATABASE_URL: postgresql://…: "),
        (
            ("report", "--config", str(config), "--monitor", "shop:m"),
            {"DATABASE_URL": "", "DATABASE_URL_FILE": str(url_file)},
            f"DATABASE_URL_FILE ({url_file}): postgresql://…: ",
        ),
        (("migrate", "--database-url", url), {"DATABASE_URL": ""}, "--database-url: postgresql://…: "),
        (
            ("gate", "--config", str(with_file), "--monitor", "shop:m", "--reference", "version:a",
             "--current", "version:b"),
            {"DATABASE_URL": ""},
            f"database.url_file ({url_file}): postgresql://…: ",
        ),
    ]  # fmt: skip
    for args, env, named in runs:
        result = run_cli(cli, *args, env={"DATABASE_URL_FILE": "", **env}, timeout=60)
        output = result.stdout + result.stderr
        assert result.returncode == 2, (args, output)
        assert f"config error: {named}" in result.stderr, (args, output)
        assert "Traceback" not in output
        assert not leaks(authority, output), (args, leaks(authority, output), output)


def test_the_authority_is_named_by_what_is_wrong():
    cases = {name: url for name, url, _ in ambiguous_urls(seed=7)}
    expected = {
        "at-in-password": "the password contains '@': percent-encode it as %40",
        "at-in-user-name": "the user name contains '@': percent-encode it as %40",
        "slash-in-user-name": "the user name contains '/' or '?'",
        "letters-in-port": "the port is not a number",
        "several-hosts": "?host=HOST1:PORT1&host=HOST2:PORT2",
    }
    for name, words in expected.items():
        with pytest.raises(ConfigError) as error:
            resolve_database_url(None, env={"DATABASE_URL": cases[name]})
        assert error.value.problems[0].startswith("DATABASE_URL: postgresql://…: ")
        assert words in error.value.problems[0], (name, error.value.problems)


def unambiguous_secret(rng: random.Random) -> tuple[str, str]:
    """A password with every character a URL must encode, and its percent-encoded form."""
    password = f"{token(rng, 6)}@{token(rng, 5)}:{token(rng, 5)}/{token(rng, 4)}?#%{token(rng, 5)}"
    return password, urllib.parse.quote(password, safe="")


def test_no_piece_of_the_password_reaches_logs_pages_or_errors(cli, admin_engine, exporter_url, tmp_path):
    """A percent-encoded password with '@', ':', '/', '?', '#' and '%', and a second secret in
    the query string: start line, failing refreshes, pages, check-config, snapshot."""
    rng = random.Random(2214)
    password, encoded = unambiguous_secret(rng)
    ssl_password = token(rng, 12)
    table = create_scored_events(admin_engine)
    proxy = TcpProxy(exporter_url)  # never started: every connection is refused
    target = make_url(proxy.url_for(exporter_url))
    url = (
        f"postgresql://{target.username}:{encoded}@{target.host}:{target.port}/{target.database}"
        f"?sslpassword={ssl_password}&connect_timeout=2"
    )
    config = exporter_config(table, refresh_interval="300ms", initial_backoff="100ms", max_backoff="500ms")
    exporter = ExporterProcess(cli, config, url, tmp_path)
    try:
        wait_until(
            lambda: (
                exporter.metrics()[
                    ("confusion_exporter_refresh_failures_total", frozenset({("monitor", "shop:m")}))
                ]
                >= 3
            )
        )
        bodies = [
            http_get(exporter.url(path))[1].decode()
            for path in ("/", "/metrics", "/healthz", "/report?monitor=shop:m")
        ]
    finally:
        exporter.stop()
    log = exporter.log()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"DATABASE_URL": url}
    check = run_cli(cli, "check-config", "--config", str(path), env=env)
    snapshot = run_cli(cli, "snapshot", "--config", str(path), env=env)
    texts = [log, *bodies, check.stdout + check.stderr, snapshot.stdout + snapshot.stderr]
    for text in texts:
        for secret in (password, encoded, ssl_password):
            assert not leaks(secret, text), (leaks(secret, text), text[:3000])
    assert "monitor refresh failed" in log
    assert "sslpassword=***" in log and ":***@127.0.0.1" in log  # the URL is logged, masked
    assert check.returncode == 0 and "database: postgresql+psycopg2://" in check.stdout, check.stderr
    assert snapshot.returncode == 1 and "monitor shop:m: " in snapshot.stderr


def test_an_encrypted_tls_key_is_a_config_error_not_a_prompt(cli, tmp_path):
    """OpenSSL would ask for the passphrase on the terminal (blocking the start) or fail with
    'PEM lib'; the web config has no passphrase, so say what is wrong and how to fix it."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-keyout", str(key), "-out", str(cert), "-days",
         "1", "-subj", "/CN=localhost", "-passout", "pass:unused-passphrase"],
        check=True, capture_output=True,
    )  # fmt: skip
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"tls_server_config": {"cert_file": str(cert), "key_file": str(key)}}))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(exporter_config("shop_ml.t", web_config=str(web))))
    result = subprocess.run(
        [*cli, "run", "--config", str(config)],
        env={**os.environ, "DATABASE_URL": "postgresql://u@127.0.0.1:1/d"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,  # no controlling terminal to prompt on
    )
    assert result.returncode == 2, result.stderr
    assert (
        f"config error: exporter.web_config: tls_server_config.key_file: {key} is encrypted" in result.stderr
    )


def test_a_driver_error_quoting_a_secret_from_another_field_is_scrubbed(cli, tmp_path):
    """libpq quotes a bad option value ('invalid sslmode value: "..."'); here the value is the
    sslpassword pasted one field too far. Every registered secret is scrubbed wherever it is."""
    secret = token(random.Random(3141), 14)
    url = f"postgresql://confusion_exporter@127.0.0.1:5432/postgres?sslpassword={secret}&sslmode={secret}"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(exporter_config("shop_ml.t")))
    result = run_cli(cli, "snapshot", "--config", str(path), env={"DATABASE_URL": url})
    assert result.returncode == 1
    assert 'monitor shop:m: OperationalError: invalid sslmode value: "***"' in result.stderr, result.stderr
    assert not leaks(secret, result.stdout + result.stderr)
