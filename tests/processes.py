"""Real processes for end-to-end tests: the exporter, Prometheus, and a TCP proxy to cut."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout: float = 30, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as error:  # the thing waited for may not be up yet
            last_error = error
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s (last error: {last_error})")


def http_get(
    url: str,
    timeout: float = 5,
    context: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, float]:
    started = time.perf_counter()
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            body = response.read()
            return response.status, body, time.perf_counter() - started
    except urllib.error.HTTPError as error:
        return error.code, error.read(), time.perf_counter() - started


def samples(body: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Parse an exposition with the official client parser (for process tests only)."""
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(parsed: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return parsed[(name, frozenset(labels.items()))]


class TcpProxy:
    """Forwards 127.0.0.1:port to a PostgreSQL server; ``stop()`` is a database outage."""

    def __init__(self, database_url: str):
        url = make_url(database_url)
        socket_dir = url.query.get("host")
        if url.host:
            self.target: tuple[int, Any] = (socket.AF_INET, (url.host, url.port or 5432))
        else:
            path = os.path.join(str(socket_dir), f".s.PGSQL.{url.port or 5432}")
            self.target = (socket.AF_UNIX, path)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()

    def url_for(self, database_url: str) -> str:
        url = make_url(database_url)
        url = url.set(
            host="127.0.0.1", port=self.port, query={k: v for k, v in url.query.items() if k != "host"}
        )
        return url.render_as_string(hide_password=False)

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self._listener is not listener:  # stopped while a connection was arriving
                client.close()
                return
            family, address = self.target
            upstream = socket.socket(family)
            try:
                upstream.connect(address)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(a, selectors.EVENT_READ, b)
        selector.register(b, selectors.EVENT_READ, a)
        try:
            while True:
                for key, _ in selector.select():
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            a.close()
            b.close()

    def stop(self) -> None:
        """Refuse new connections and cut the open ones, as a dead server would."""
        if self._listener is not None:
            # close() alone does not wake a thread blocked in accept(); shutdown() does.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._connections.clear()


class ExporterProcess:
    """``confusion-exporter run`` as a real subprocess on a free port."""

    def __init__(
        self,
        cli: list[str],
        config: dict[str, Any],
        database_url: str,
        tmp_path: Path,
        tls: ssl.SSLContext | None = None,
    ):
        self.port = free_port()
        self.tls = tls  # the client side: the exporter serves https when its config has a web_config
        config = {
            **config,
            "exporter": {**config.get("exporter", {}), "listen_address": "127.0.0.1", "port": self.port},
        }
        self.config_path = tmp_path / f"exporter-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = tmp_path / f"exporter-{self.port}.log"
        env = {**os.environ, "DATABASE_URL": database_url, "CONFUSION_EXPORTER_LOG_LEVEL": "debug"}
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [*cli, "run", "--config", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        wait_until(lambda: http_get(self.url("/healthz"), context=tls)[0] == 200, timeout=30)

    def url(self, path: str) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"

    def metrics(self) -> dict:  # type: ignore[type-arg]
        status, body, _ = http_get(self.url("/metrics"), context=self.tls)
        assert status == 200
        return samples(body)

    def stop(self) -> int:
        self.process.terminate()
        try:
            code = self.process.wait(10)
        finally:
            self._log.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class PrometheusProcess:
    """The real Prometheus binary scraping the given targets every second."""

    def __init__(
        self,
        binary: str,
        targets: list[str],
        tmp_path: Path,
        rule_files: list[str] | None = None,
        scrape: dict[str, Any] | None = None,
        alertmanagers: list[str] | None = None,
    ):
        self.port = free_port()
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": "confusion-exporter", "static_configs": [{"targets": targets}], **(scrape or {})}
            ],
        }
        if alertmanagers:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": alertmanagers}]}]}
        if rule_files:
            config["rule_files"] = rule_files
        config_path = tmp_path / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log_path = tmp_path / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: http_get(f"http://127.0.0.1:{self.port}/-/ready")[0] == 200, timeout=30)

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": promql, **({"time": f"{at:.3f}"} if at is not None else {})}
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(params)
        status, body, _ = http_get(url)
        payload = json.loads(body)
        assert status == 200 and payload["status"] == "success", payload
        return payload["data"]["result"]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        finally:
            self._log.close()
