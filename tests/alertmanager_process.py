"""A real Alertmanager process, and the webhook server its receivers post to in tests."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .processes import free_port, http_get, wait_until


@dataclass(frozen=True)
class Notification:
    receiver: str  # the path the receiver posted to: /<receiver name>
    payload: dict[str, Any]  # Alertmanager's webhook JSON (version 4)
    at: float  # time.monotonic() on arrival

    @property
    def alertnames(self) -> set[str]:
        return {a["labels"]["alertname"] for a in self.payload["alerts"]}


class WebhookSink:
    """Records every POST: what Alertmanager delivered, to which receiver, when."""

    def __init__(self) -> None:
        self.notifications: list[Notification] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with sink._lock:
                    sink.notifications.append(
                        Notification(self.path.strip("/"), json.loads(body), time.monotonic())
                    )
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass  # the test prints what it needs

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, receiver: str) -> str:
        return f"http://127.0.0.1:{self.port}/{receiver}"

    def received(self, receiver: str | None = None) -> list[Notification]:
        with self._lock:
            return [n for n in self.notifications if receiver is None or n.receiver == receiver]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class AlertmanagerProcess:
    """``prometheus-alertmanager`` on a free port, alone (no cluster), with the given config."""

    def __init__(self, binary: str, config_path: Path, tmp_path: Path):
        self.port = free_port()
        self.log_path = tmp_path / "alertmanager.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.path={tmp_path / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",  # one instance: no gossip port, no peers to wait for
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: http_get(f"{self.url}/-/ready")[0] == 200, timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alerts(self, **filters: str) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds (API v2), with their state: active, suppressed."""
        query = urllib.parse.urlencode([("filter", f'{k}="{v}"') for k, v in filters.items()])
        status, body, _ = http_get(f"{self.url}/api/v2/alerts?{query}")
        assert status == 200, body
        return json.loads(body)  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        finally:
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
