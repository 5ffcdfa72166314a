"""The database URL: read strictly, logged only in a form that holds no secret.

Redaction must not depend on the URL being read the way its author meant it. An unencoded
``@`` in a password makes SQLAlchemy (and libpq) take the first ``@`` as the end of the
password and the rest of the password as the host: masking "the password" then logs the
rest of it, in the start-up line and in every connection error that names the host. So a
URL that can be read in more than one way is refused before anything connects or logs: the
error names the scheme and what is wrong, never any part of the authority. Only a URL that
reads one way is ever rendered, with its password and secret parameters masked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote, unquote_plus

from . import redaction

SCHEMES = ("postgresql", "postgres", "postgresql+psycopg2")
# libpq parameters that hold a secret when given in the query string instead of the userinfo.
SECRET_PARAMETERS = frozenset({"password", "sslpassword"})
EXAMPLE = "postgresql://USER:PASSWORD@HOST:5432/DATABASE"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]{0,30})://")


class UrlProblem(ValueError):
    """What is wrong with a database URL, in words that quote no part of it but the scheme."""


@dataclass(frozen=True)
class DatabaseUrl:
    """A database URL that reads one way only, with a form that is safe to log.

    Constructing one checks the URL (:class:`UrlProblem` if it is ambiguous) and registers
    its secrets with :mod:`redaction`, so no line this process writes can carry them, even
    where a driver quotes them in an error.
    """

    url: str
    secrets: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _redacted: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        redacted, secrets = _check(self.url)
        object.__setattr__(self, "_redacted", redacted)
        object.__setattr__(self, "secrets", secrets)
        redaction.register(secrets)

    def redacted(self) -> str:
        return self._redacted

    def __repr__(self) -> str:
        return f"DatabaseUrl({self._redacted})"

    __str__ = __repr__


def check_database_url(url: str) -> None:
    """Raise :class:`UrlProblem` if ``url`` is not a PostgreSQL URL that reads one way only."""
    _check(url)


def _check(url: str) -> tuple[str, tuple[str, ...]]:
    """The URL's loggable form and its secrets, or a :class:`UrlProblem`."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise UrlProblem("it contains a control character (a stray newline?); remove it")
    match = _SCHEME.match(url)
    if match is None:
        raise UrlProblem(f"not a URL; write it as {EXAMPLE} (a libpq 'key=value' string is not accepted)")
    scheme, rest = match.group(1), url[match.end() :]
    where = f"{scheme}://…"
    if scheme not in SCHEMES:
        raise UrlProblem(f"{where}: unsupported scheme; use postgresql:// (the database must be PostgreSQL)")
    at_signs = rest.count("@")
    if at_signs > 1:
        raise UrlProblem(f"{where}: {_which_part_has_at(rest)}: percent-encode it as %40")
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UrlProblem(f"{where}: cannot be read as {EXAMPLE}") from None
    except ValueError:  # int(port) failed; its message would quote the port text
        raise UrlProblem(
            f"{where}: the port is not a number (several hosts? write ?host=HOST1:PORT1&host=HOST2:PORT2; "
            "a ':' or '/' in the user name must be percent-encoded as %3A, %2F)"
        ) from None
    if at_signs == 1 and parsed.username is None:
        # A '/' before the '@' ends the authority for SQLAlchemy: what was meant as
        # user:password@host is read as a host and a database name holding the password.
        raise UrlProblem(f"{where}: the user name contains '/' or '?': percent-encode them as %2F and %3F")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise UrlProblem(f"{where}: the port must be between 1 and 65535")
    secrets = [parsed.password, *_raw_password(rest)]
    query = []
    for key, value in parsed.query.items():
        values = (value,) if isinstance(value, str) else tuple(value)
        for v in values:
            if key.lower() in SECRET_PARAMETERS:
                secrets.append(v)
                query.append(f"{quote(key)}={redaction.MASK}")
            else:
                query.append(f"{quote(key)}={quote(v, safe='/:,')}")
    secrets += _raw_secret_parameters(rest)
    base = parsed.set(query={}).render_as_string(hide_password=True)
    redacted = base + ("?" + "&".join(query) if query else "")
    return redacted, tuple(s for s in secrets if s)


def _which_part_has_at(rest: str) -> str:
    """Say where the extra '@' probably is, without quoting anything around it."""
    first_at, first_colon = rest.find("@"), rest.find(":")
    authority_end = min(
        (i for i in (rest.find("/", first_at), rest.find("?", first_at)) if i >= 0), default=-1
    )
    second_at = rest.find("@", first_at + 1)
    if authority_end != -1 and second_at > authority_end:
        return "more than one '@' (in the user name, the password, the database name or the parameters)"
    if first_colon == -1 or first_at < first_colon:
        return "the user name contains '@'"
    return "the password contains '@'"


def _raw_password(rest: str) -> list[str]:
    """The password as written (still percent-encoded), which an error may echo too."""
    userinfo = rest[: rest.find("@")] if "@" in rest else ""
    return [userinfo.split(":", 1)[1]] if ":" in userinfo else []


def _raw_secret_parameters(rest: str) -> list[str]:
    _, _, query = rest.partition("?")
    out = []
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if unquote_plus(key).lower() in SECRET_PARAMETERS and value:
            out.append(value)
    return out
