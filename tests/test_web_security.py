"""TLS and basic authentication on the exporter's endpoint, checked with real clients: urllib,
curl-like raw TLS, and a real Prometheus scraping with tls_config and basic_auth."""

from __future__ import annotations

import base64
import collections
import contextlib
import logging
import socket
import ssl
import statistics
import struct
import subprocess
import threading
import time
from pathlib import Path

import bcrypt
import pytest
import yaml

from confusion_exporter.refresher import Published
from confusion_exporter.web import make_server

from .conftest import run_cli
from .helpers import COLUMNS, create_scored_events, exporter_config
from .processes import ExporterProcess, PrometheusProcess, http_get, samples, wait_until

PASSWORD = "correct horse battery staple"
# bcrypt reads at most 72 bytes: bcrypt 4 ignores the rest, bcrypt 5 raises
LONG_PASSWORD = "é" * 36  # 36 characters, 72 bytes in UTF-8: the longest bcrypt can check
VALID_HASH = bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=4)).decode()
# The salt's 22nd character carries 2 unused bits that must be 0 (".Oeu"): "z" breaks it
MALFORMED_SALT = VALID_HASH[:28] + ("z" if VALID_HASH[28] != "z" else "y") + VALID_HASH[29:]


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
        # 60 characters with the right prefix, but no bcrypt hash: every request failed with
        # "Invalid salt" (an empty reply) instead of the server refusing to start
        (
            f"basic_auth_users: {{prometheus: '$2b$10${'!' * 53}'}}\n",
            "user 'prometheus': not a valid bcrypt hash",
        ),
        (f"basic_auth_users: {{ops: '{MALFORMED_SALT}'}}\n", "user 'ops': not a valid bcrypt hash"),
        (f"basic_auth_users: {{ops: '$2b$99${VALID_HASH[7:]}'}}\n", "user 'ops': not a valid bcrypt hash"),
        (f"basic_auth_users: {{ops: '$2b$03${VALID_HASH[7:]}'}}\n", "user 'ops': not a valid bcrypt hash"),
        (
            f"basic_auth_users: {{'a:b': '{VALID_HASH}'}}\n",
            "user 'a:b': a basic-auth user name cannot contain ':'",
        ),
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
    for command in ("run", "check-config"):
        result = run_cli(
            cli,
            command,
            "--config",
            str(config),
            env={"DATABASE_URL": "postgresql://x@127.0.0.1:1/x"},
            timeout=30,  # a server that starts anyway would run until killed
        )
        assert result.returncode == 2, (command, result.stderr)
        assert any(
            line.startswith("config error: exporter.web_config") and expected in line
            for line in result.stderr.splitlines()
        ), (command, result.stderr)
        assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


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


@pytest.fixture(scope="module")
def plain_auth(tmp_path_factory, cli, admin_engine, exporter_url):  # type: ignore[no-untyped-def]
    """Plain HTTP with basic auth at the documented cost (10): two users, one whose password
    is the longest bcrypt can check."""
    tmp = tmp_path_factory.mktemp("auth")
    web = tmp / "web-config.yml"
    users = {
        "prometheus": bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode(),
        "long": bcrypt.hashpw(LONG_PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode(),
    }
    web.write_text(yaml.safe_dump({"basic_auth_users": users}))
    table = create_scored_events(admin_engine)
    exporter = ExporterProcess(cli, exporter_config(table, web_config=str(web)), exporter_url, tmp)
    yield exporter
    exporter.stop()


def test_passwords_bcrypt_cannot_check_get_401_not_an_empty_reply(plain_auth):
    exporter = plain_auth
    url = exporter.url("/metrics")
    assert http_get(url, headers=basic("long", LONG_PASSWORD))[0] == 200
    # Under bcrypt 4 the 73rd byte would be ignored (accepted); under bcrypt 5 the check raised
    # (an empty reply). Both refuse it now, as hash-password refuses to hash it.
    for user, password in (
        ("long", LONG_PASSWORD + "x"),
        ("long", LONG_PASSWORD + "é" * 100),
        ("prometheus", PASSWORD + "y" * 100),
        ("nobody", "z" * 200),
        ("prometheus", PASSWORD[:5] + "\0" + PASSWORD[5:]),
    ):
        status, body, _ = http_get(url, headers=basic(user, password))
        assert (status, body) == (401, b"unauthorized\n"), (user, len(password))
    assert http_get(url, headers=basic("prometheus", PASSWORD))[0] == 200
    assert "Traceback" not in exporter.log()


def test_unknown_and_known_users_take_the_same_time(plain_auth):
    """A 401 for an unknown user took 0.7 ms, for a known one 75 ms (bcrypt): the time told
    which user names exist. Medians of interleaved tries must now agree within a factor 2."""
    exporter = plain_auth
    url = exporter.url("/metrics")
    attempts = {
        "known user, wrong password": basic("prometheus", "wrong"),
        "unknown user": basic("nobody", "wrong"),
        "unknown user, long password": basic("mallory", "w" * 100),
        "known user, long password": basic("long", LONG_PASSWORD + "!"),
    }
    times: dict[str, list[float]] = {name: [] for name in attempts}
    for _ in range(15):
        for name, headers in attempts.items():
            status, _, elapsed = http_get(url, headers=headers)
            assert status == 401
            times[name].append(elapsed)
    medians = {name: statistics.median(t) for name, t in times.items()}
    known = medians["known user, wrong password"]
    assert known > 0.02, medians  # bcrypt at cost 10 really ran
    for name, median in medians.items():
        assert 0.5 < median / known < 2, (name, medians)


def test_hash_password_refuses_what_bcrypt_cannot_check_with_exit_2(cli):
    for password, expected in (
        ("é" * 37, "the password is 74 bytes; bcrypt uses at most 72"),  # 37 characters, 74 bytes
        ("p" * 200, "the password is 200 bytes; bcrypt uses at most 72"),
    ):
        result = subprocess.run(
            [*cli, "hash-password"], input=password + "\n", capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("config error: hash-password: " + expected), result.stderr
        assert "Traceback" not in result.stderr and password not in result.stderr and not result.stdout
    not_utf8 = subprocess.run([*cli, "hash-password"], input=b"caf\xe9\n", capture_output=True, timeout=30)
    assert not_utf8.returncode == 2 and b"not UTF-8" in not_utf8.stderr, not_utf8.stderr
    assert b"Traceback" not in not_utf8.stderr
    longest = subprocess.run(
        [*cli, "hash-password"], input=LONG_PASSWORD + "\n", capture_output=True, text=True, timeout=30
    )
    assert longest.returncode == 0, longest.stderr
    assert bcrypt.checkpw(LONG_PASSWORD.encode(), longest.stdout.strip().encode())


def test_tls_clients_that_fail_or_leave_cost_a_count_and_a_line_not_a_traceback(secured, promtool):
    """10 connect-and-close on the TLS port gave 150 lines of SSLEOFError tracebacks."""
    exporter, client, _, _ = secured
    auth = basic("prometheus", PASSWORD)

    def counts() -> dict[str, float]:
        _, body, _ = http_get(exporter.url("/metrics"), context=client, headers=auth)
        return {
            dict(labels)["reason"]: v
            for (name, labels), v in samples(body).items()
            if name == "confusion_exporter_http_client_errors_total"
        }

    before, lines_before = counts(), exporter.log().count("client connection ended")
    for _ in range(10):  # connect and close
        socket.create_connection(("127.0.0.1", exporter.port), timeout=5).close()
    for _ in range(5):  # plain HTTP to the TLS port
        with socket.create_connection(("127.0.0.1", exporter.port), timeout=5) as raw:
            raw.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            raw.recv(100)
    for _ in range(5):  # half a ClientHello, then a reset
        with socket.create_connection(("127.0.0.1", exporter.port), timeout=5) as raw:
            raw.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    untrusting = ssl.create_default_context()
    for _ in range(5):  # the client refuses the certificate
        with (
            socket.create_connection(("127.0.0.1", exporter.port), timeout=5) as raw,
            contextlib.suppress(ssl.SSLError),
        ):
            untrusting.wrap_socket(raw, server_hostname="127.0.0.1")
    for _ in range(5):  # a full handshake, then a hang-up before any request
        with socket.create_connection(("127.0.0.1", exporter.port), timeout=5) as raw:
            client.wrap_socket(raw, server_hostname="127.0.0.1").close()

    after = wait_until(lambda: (c := counts())["tls_handshake"] - before["tls_handshake"] >= 25 and c)
    assert after["tls_handshake"] - before["tls_handshake"] == 25, (before, after)
    assert after["disconnect"] - before["disconnect"] == 5, (before, after)
    # one line per event, and no traceback
    wait_until(lambda: exporter.log().count("client connection ended") - lines_before >= 30)
    assert exporter.log().count("client connection ended") - lines_before == 30
    assert "Traceback" not in exporter.log()
    _, body, _ = http_get(exporter.url("/metrics"), context=client, headers=auth)
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert check.returncode == 0, check.stderr


def test_an_exception_in_a_handler_is_a_500_and_one_log_line(caplog):
    """The real server on a real socket, serving from a snapshot source that fails."""

    def broken() -> Published:
        raise RuntimeError("snapshot source failed")

    server = make_server("127.0.0.1", 0, broken, lambda: True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        with caplog.at_level(logging.INFO, logger="confusion_exporter.web"):
            for path in ("/metrics", "/", "/healthz"):
                status, body, _ = http_get(f"http://127.0.0.1:{server.server_address[1]}{path}")
                assert (status, body) == (500, b"internal server error\n"), path
            still = http_get(f"http://127.0.0.1:{server.server_address[1]}/nowhere")
            assert still[0] == 404
        failures = [r for r in caplog.records if r.getMessage() == "request failed"]
        assert len(failures) == 3, caplog.text
        assert failures[0].fields["error"] == "RuntimeError"  # type: ignore[attr-defined]
        assert "Traceback" not in caplog.text
    finally:
        server.shutdown()
        server.server_close()


def test_silent_tls_clients_hold_no_thread(secured):
    """A thread per connection did the TLS handshake: 150 silent sockets held 150 threads."""
    exporter, client, _, _ = secured
    status = Path(f"/proc/{exporter.process.pid}/status")
    idle = int(status.read_text().split("Threads:")[1].split()[0])
    silent = [socket.create_connection(("127.0.0.1", exporter.port), timeout=5) for _ in range(150)]
    try:
        for _ in range(5):
            code, _, elapsed = http_get(
                exporter.url("/metrics"), context=client, headers=basic("prometheus", PASSWORD)
            )
            assert code == 200 and elapsed < 2.0
        assert int(status.read_text().split("Threads:")[1].split()[0]) <= idle + 8
    finally:
        for sock in silent:
            sock.close()


def test_an_oversized_request_head_is_431_and_counted(plain_auth):
    exporter = plain_auth

    def too_large() -> float:
        status, metrics, _ = http_get(exporter.url("/metrics"), headers=basic("prometheus", PASSWORD))
        assert status == 200
        return samples(metrics)[
            ("confusion_exporter_http_client_errors_total", frozenset({("reason", "head_too_large")}))
        ]

    before = too_large()
    with socket.create_connection(("127.0.0.1", exporter.port), timeout=5) as raw:
        raw.sendall(b"GET /metrics HTTP/1.1\r\nX-Padding: " + b"a" * 70_000)
        reply = raw.recv(100)
    assert reply.startswith(b"HTTP/1.0 431 "), reply
    assert too_large() == before + 1
    assert "Traceback" not in exporter.log()


def test_a_flood_of_wrong_passwords_does_not_queue_prometheus(plain_auth):
    """Each wrong password costs a bcrypt check (~60 ms of CPU at cost 10). 48 clients sending
    them without pause must not occupy every worker: Prometheus, whose credentials were
    verified once, is answered meanwhile; the flood gets 401s, or 429s while every bcrypt
    slot is busy."""
    exporter = plain_auth
    url = exporter.url("/metrics")
    auth = basic("prometheus", PASSWORD)
    assert http_get(url, headers=auth)[0] == 200  # verified once, remembered
    stop = threading.Event()
    answers: list[int] = []

    def flood(n: int) -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                answers.append(http_get(url, headers=basic("prometheus" if n % 2 else f"x{n}", "wrong"))[0])

    flooders = [threading.Thread(target=flood, args=(n,), daemon=True) for n in range(48)]
    for thread in flooders:
        thread.start()
    latencies = []
    try:
        time.sleep(1)
        for _ in range(15):
            status, _, elapsed = http_get(url, headers=auth, timeout=10)
            assert status == 200
            latencies.append(elapsed)
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in flooders:
            thread.join(10)
    assert set(answers) <= {401, 429} and answers.count(401) > 20, collections.Counter(answers)
    assert statistics.median(latencies) < 0.25 and max(latencies) < 1.0, latencies
