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
import re
import secrets
import ssl
import threading
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .config import ConfigError

# bcrypt's own format: version, a cost of 4 to 31, then 22 characters of salt and 31 of hash
# in bcrypt's base64 alphabet. The salt's last character carries 2 unused bits, which the
# library requires to be zero (hence [.Oeu]); a hash that breaks that fails every check with
# "Invalid salt", so it is refused at load time instead.
_BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{21}[.Oeu][./A-Za-z0-9]{31}")

# bcrypt reads at most 72 bytes of a password: bcrypt 4 silently ignores the rest (so a long
# password would match any other with the same first 72 bytes), bcrypt 5 raises. Both
# versions behave the same here: a longer password is never hashed and never accepted.
MAX_PASSWORD_BYTES = 72

# bcrypt checks run at once, at most: fewer than the endpoint's workers, so a flood of wrong
# credentials (each a deliberate tens of milliseconds of CPU) cannot occupy every worker and
# queue Prometheus's scrape, whose verified credentials need no check, behind it.
CONCURRENT_CHECKS = 4


def bcrypt_hash_problem(hashed: str) -> str | None:
    """What is wrong with a bcrypt hash from the web config, or None if the library accepts it."""
    if not _BCRYPT_HASH.fullmatch(hashed):
        if not hashed.startswith(("$2a$", "$2b$", "$2y$")) or len(hashed) != 60:
            return "expected a bcrypt hash ($2y$..., 60 characters), not a password"
        return "not a valid bcrypt hash (a cost of 04 to 31, then 53 characters of . / A-Z a-z 0-9)"
    import bcrypt

    # A check at the lowest cost exercises the library's parsing of this salt without paying
    # the configured cost at every start.
    try:
        bcrypt.checkpw(b"", hashed[:4].encode() + b"04" + hashed[6:].encode())
    except ValueError as error:
        return f"not a valid bcrypt hash ({error})"
    return None


def password_problem(password: bytes) -> str | None:
    """Why a password cannot be hashed with bcrypt (as the same rule applies when checking)."""
    if len(password) > MAX_PASSWORD_BYTES:
        return (
            f"the password is {len(password)} bytes; bcrypt uses at most {MAX_PASSWORD_BYTES}, "
            f"so a longer one could not be checked: choose one of at most {MAX_PASSWORD_BYTES} bytes"
        )
    return None


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
            if ":" in user:
                raise ValueError(
                    f"user {user!r}: a basic-auth user name cannot contain ':' (the header splits "
                    "user and password at the first one); rename the user"
                )
            problem = bcrypt_hash_problem(hashed)
            if problem is not None:
                raise ValueError(
                    f"user {user!r}: {problem}; make one with: confusion-exporter hash-password "
                    "(or htpasswd -nBC 10 USER)"
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

    Any other well-formed header costs one bcrypt check at a configured cost: an unknown user
    is checked against a dummy hash (as the exporter-toolkit does) and a password bcrypt
    cannot check (over 72 bytes) against the user's hash, so the time of a 401 does not tell
    which user names exist. With users of different costs, an unknown name gets the cost of one of them,
    chosen by a keyed digest of the name, so it times like some known user.
    """

    def __init__(self, users: dict[str, str]):
        self._users = users
        self._key = hashlib.sha256(repr(sorted(users.items())).encode()).digest()
        self._verified: set[bytes] = set()
        self._lock = threading.Lock()
        self._checks = threading.BoundedSemaphore(CONCURRENT_CHECKS)
        self._dummies = [_dummy_hash(cost) for cost in sorted({hashed[4:6] for hashed in users.values()})]

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    def check(self, header: str | None) -> bool | None:
        """True: let in; False: 401; None: every bcrypt slot is busy (429), whoever asks, so
        the answer tells nothing about the user."""
        if not self._users:
            return True
        credentials = _credentials(header)
        if credentials is None:
            return False  # malformed: no user name to reveal anything about
        user, password = credentials
        hashed = self._users.get(user)
        token = hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        if hashed is not None:
            with self._lock:
                if token in self._verified:
                    return True
        if not self._checks.acquire(blocking=False):
            return None
        try:
            return self._check(user, password, hashed, token)
        finally:
            self._checks.release()

    def _check(self, user: str, password: str, hashed: str | None, token: bytes) -> bool:
        secret = password.encode("utf-8")
        checkable = password_problem(secret) is None
        if hashed is None:
            pick = hmac.new(self._key, user.encode(), hashlib.sha256).digest()[0]
            _checkpw(secret, self._dummies[pick % len(self._dummies)])
            return False
        if not _checkpw(secret, hashed.encode("ascii")) or not checkable:
            return False
        with self._lock:
            if len(self._verified) > 1000:
                self._verified.clear()
            self._verified.add(token)
        return True


def _credentials(header: str | None) -> tuple[str, str] | None:
    if not header or not header.startswith("Basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, _, password = decoded.partition(":")
    return user, password


def _checkpw(password: bytes, hashed: bytes) -> bool:
    """bcrypt's check, paying its cost for any password: one over 72 bytes is checked on its
    first 72 (bcrypt 5 would raise) and the caller refuses it whatever the result."""
    import bcrypt

    try:
        return bool(bcrypt.checkpw(password[:MAX_PASSWORD_BYTES], hashed))
    except ValueError:  # the hashes were validated at load; never let one fail a request
        return False


def _dummy_hash(cost: str) -> bytes:
    import bcrypt

    return bytes(bcrypt.hashpw(secrets.token_bytes(16).hex().encode(), bcrypt.gensalt(rounds=int(cost))))


def describe(config: WebConfig | None) -> dict[str, Any]:
    """What the endpoint enforces, for the start-up log line."""
    if config is None:
        return {"tls": False, "basic_auth": False}
    return {"tls": config.tls_server_config is not None, "basic_auth": bool(config.basic_auth_users)}
