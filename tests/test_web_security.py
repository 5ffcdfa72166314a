"""TLS and basic authentication on the exporter's endpoint, checked with real clients: urllib,
curl-like raw TLS, and a real Prometheus scraping with tls_config and basic_auth."""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
from pathlib import Path

import bcrypt
import pytest
import yaml

from .conftest import run_cli
from .helpers import COLUMNS, create_scored_events, exporter_config
from .processes import ExporterProcess, PrometheusProcess, http_get, wait_until

PASSWORD = "correct horse battery staple"


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture(scope="module")
def secured(tmp_path_factory, cli, admin_engine, exporter_url):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("web")
    cert, key = self_signed(tmp)
    web = tmp / "web-config.yml"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=8)).decode()
    web.write_text(
        yaml.safe_dump(
            {
                "tls_server_config": {"cert_file": str(cert), "key_file": str(key)},
                "basic_auth_users": {"prometheus": hashed},
            }
        )
    )
    table = create_scored_events(admin_engine)
    config = exporter_config(table, web_config=str(web))
    client = ssl.create_default_context(cafile=str(cert))
    exporter = ExporterProcess(cli, config, exporter_url, tmp, tls=client)
    yield exporter, client, cert, tmp
    exporter.stop()


def test_https_with_basic_auth_answers_only_the_right_credentials(secured):
    exporter, client, _, _ = secured
    ok, body, _ = http_get(exporter.url("/metrics"), context=client, headers=basic("prometheus", PASSWORD))
    assert ok == 200 and b"confusion_exporter_build_info" in body
    for headers in (
        {},
        basic("prometheus", "wrong"),
        basic("nobody", PASSWORD),
        {"Authorization": "Basic !!"},
    ):
        status, body, _ = http_get(exporter.url("/metrics"), context=client, headers=headers)
        assert status == 401 and b"confusion_" not in body
    for path in ("/", "/report?monitor=shop:m"):
        assert http_get(exporter.url(path), context=client)[0] == 401
    # the container health check needs no credentials (and reveals only status and age)
    assert http_get(exporter.url("/healthz"), context=client)[0] == 200


def test_plain_http_and_untrusted_clients_are_refused(secured):
    exporter, client, _, _ = secured
    with pytest.raises(Exception):  # noqa: B017 - a plain-HTTP request to a TLS port fails one way or another
        http_get(f"http://127.0.0.1:{exporter.port}/metrics", timeout=3)
    untrusting = ssl.create_default_context()  # does not know the self-signed certificate
    with (
        pytest.raises(ssl.SSLCertVerificationError),
        socket.create_connection(("127.0.0.1", exporter.port), timeout=5) as raw,
    ):
        untrusting.wrap_socket(raw, server_hostname="127.0.0.1")
    # A client that connects and never speaks TLS does not stop others from being served.
    with socket.create_connection(("127.0.0.1", exporter.port), timeout=5):
        status, _, _ = http_get(
            exporter.url("/metrics"), context=client, headers=basic("prometheus", PASSWORD)
        )
        assert status == 200


def test_real_prometheus_scrapes_over_tls_with_basic_auth(secured, prometheus_binary, tmp_path):
    exporter, _, cert, _ = secured
    scrape = {
        "scheme": "https",
        "tls_config": {"ca_file": str(cert)},
        "basic_auth": {"username": "prometheus", "password": PASSWORD},
    }
    prometheus = PrometheusProcess(prometheus_binary, [f"127.0.0.1:{exporter.port}"], tmp_path, scrape=scrape)
    try:
        up = wait_until(lambda: prometheus.query("up == 1"), timeout=60)
        assert up[0]["metric"]["instance"] == f"127.0.0.1:{exporter.port}"
        assert wait_until(lambda: prometheus.query("confusion_exporter_build_info"), timeout=30)
    finally:
        prometheus.stop()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("basic_auth_users: {prometheus: hunter2}\n", "user 'prometheus': expected a bcrypt hash"),
        (
            "tls_server_config: {cert_file: /nonexistent.crt, key_file: /nonexistent.key}\n",
            "cannot load /nonexistent.crt",
        ),
        ("tls_server_config: {cert_file: a}\n", "tls_server_config.key_file: Field required"),
        ("tls_srever_config: {}\n", "tls_srever_config: unknown key"),
    ],
)
def test_web_config_mistakes_exit_2_naming_the_key(cli, tmp_path, content, expected):
    web = tmp_path / "web.yml"
    web.write_text(content)
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "exporter": {"web_config": str(web)},
                "sources": [{"name": "s", "table": "t", "columns": COLUMNS}],
                "monitors": [
                    {
                        "source": "s",
                        "model": "m",
                        "window": "1h",
                        "reference": {"kind": "trailing", "length": "3h"},
                    }
                ],
            }
        )
    )
    result = run_cli(
        cli, "run", "--config", str(config), env={"DATABASE_URL": "postgresql://x@127.0.0.1:1/x"}
    )
    assert result.returncode == 2, result.stderr
    assert any(
        line.startswith("config error: exporter.web_config") and expected in line
        for line in result.stderr.splitlines()
    ), result.stderr
    assert "hunter2" not in result.stderr


def test_hash_password_command_makes_a_hash_the_exporter_accepts(cli):
    result = subprocess.run(
        [*cli, "hash-password"], input="s3cret\n", capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    hashed = result.stdout.strip()
    assert bcrypt.checkpw(b"s3cret", hashed.encode()) and not bcrypt.checkpw(b"other", hashed.encode())


def test_healthcheck_command_follows_the_configs_port_and_scheme(secured, cli):
    exporter, _, _, tmp = secured
    ok = run_cli(cli, "healthcheck", "--config", str(exporter.config_path))
    assert ok.returncode == 0, ok.stderr
    elsewhere = tmp / "elsewhere.yaml"
    moved = yaml.safe_load(exporter.config_path.read_text())
    moved["exporter"]["port"] = exporter.port + 1 if exporter.port < 65535 else exporter.port - 1
    elsewhere.write_text(yaml.safe_dump(moved))
    down = run_cli(cli, "healthcheck", "--config", str(elsewhere))
    assert down.returncode == 1 and "unhealthy" in down.stderr
