"""TLS and basic authentication of the HTTP endpoint, configured like Prometheus exporters.

The file has the shape of the Prometheus exporter-toolkit's web configuration, so the same
file and the same Prometheus ``scrape_config`` (``scheme: https``, ``tls_config``,
``basic_auth``) work::

    tls_server_config:
      cert_file: /etc/confusion-exporter/tls.crt
      key_file: /etc/confusion-exporter/tls.key
      client_ca_file: /etc/confusion-exporter/ca.crt   # optional: require client certificates
      min_version: TLS12                               # TLS12 (default) or TLS13
    basic_auth_users:
      prometheus: $2y$10$...                            # bcrypt hashes, never passwords

Every endpoint but ``/healthz`` (which a container health check must reach) requires the
credentials when users are configured.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ssl
import threading
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .config import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSServerConfig(_Strict):
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    min_version: Literal["TLS12", "TLS13"] = "TLS12"


class WebConfig(_Strict):
    tls_server_config: TLSServerConfig | None = None
    basic_auth_users: dict[str, str] = Field(default_factory=dict)

    @field_validator("basic_auth_users")
    @classmethod
    def _bcrypt_hashes(cls, users: dict[str, str]) -> dict[str, str]:
        for user, hashed in users.items():
            if not hashed.startswith(("$2a$", "$2b$", "$2y$")) or len(hashed) != 60:
                raise ValueError(
                    f"user {user!r}: expected a bcrypt hash ($2y$..., 60 characters), not a password; "
                    "make one with: confusion-exporter hash-password (or htpasswd -nBC 10 USER)"
                )
        return users


def load_web_config(path: str | Path, key: str = "exporter.web_config") -> WebConfig:
    """Read and check the web configuration; every problem names the key and the fix."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError([f"{key}: cannot read {path}: {exc.strerror}"]) from None
    except yaml.YAMLError:
        raise ConfigError([f"{key}: {path} is not valid YAML"]) from None
    try:
        config = WebConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key; see docs/security.md for the web configuration's keys"
            problems.append(f"{key} ({path}): {where}: {message}")
        raise ConfigError(problems) from None
    if config.tls_server_config is not None:
        ssl_context(config, key)  # certificate problems are config errors, found at start
    return config


def ssl_context(config: WebConfig, key: str = "exporter.web_config") -> ssl.SSLContext | None:
    tls = config.tls_server_config
    if tls is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.min_version == "TLS13" else ssl.TLSVersion.TLSv1_2
    asked_for_passphrase = []

    def no_passphrase() -> str:
        # Without a callback OpenSSL would prompt on the terminal and block the start (or
        # fail obscurely without one); the exporter-toolkit format has no passphrase key.
        asked_for_passphrase.append(True)
        raise ssl.SSLError("encrypted key")

    try:
        context.load_cert_chain(tls.cert_file, tls.key_file, password=no_passphrase)
    except (OSError, ssl.SSLError) as exc:
        if asked_for_passphrase:
            raise ConfigError(
                [
                    f"{key}: tls_server_config.key_file: {tls.key_file} is encrypted and the web config "
                    "has no passphrase; give an unencrypted key (openssl pkey -in KEY -out PLAIN_KEY)"
                ]
            ) from None
        raise ConfigError(
            [
                f"{key}: tls_server_config.cert_file/key_file: cannot load {tls.cert_file} with "
                f"{tls.key_file}: {getattr(exc, 'strerror', None) or exc}; give a PEM certificate and its key"
            ]
        ) from None
    if tls.client_ca_file is not None:
        try:
            context.load_verify_locations(tls.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                [f"{key}: tls_server_config.client_ca_file: cannot load {tls.client_ca_file}: {exc}"]
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes.

    bcrypt costs tens of milliseconds by design; a scrape every 15 s must not pay it each
    time, so a successful check is remembered by a keyed digest of the credentials (never the
    password itself), as the exporter-toolkit does.
    """

    def __init__(self, users: dict[str, str]):
        self._users = users
        self._key = hashlib.sha256(repr(sorted(users.items())).encode()).digest()
        self._verified: set[bytes] = set()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    def check(self, header: str | None) -> bool:
        if not self._users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        hashed = self._users.get(user)
        if hashed is None:
            return False
        token = hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        with self._lock:
            if token in self._verified:
                return True
        import bcrypt

        if not bcrypt.checkpw(password.encode("utf-8"), hashed.encode("ascii")):
            return False
        with self._lock:
            if len(self._verified) > 1000:
                self._verified.clear()
            self._verified.add(token)
        return True


def describe(config: WebConfig | None) -> dict[str, Any]:
    """What the endpoint enforces, for the start-up log line."""
    if config is None:
        return {"tls": False, "basic_auth": False}
    return {"tls": config.tls_server_config is not None, "basic_auth": bool(config.basic_auth_users)}
