"""Secrets this process holds, and the one function that removes them from text it writes.

Masking a password where the code knows it sits (the URL's password field) is not enough:
a driver error can quote it anywhere in a message. So every secret the process is given
(the database URL's password and secret parameters, the exporter role's password) is
registered here, and every line the process writes (log lines, error lines, ``/healthz``
and metric label values derived from errors) passes through :func:`scrub`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

MASK = "***"
# A secret of one or two characters would turn every occurrence of those letters in a
# message into the mask; such a password protects nothing, the message would protect less.
MIN_SECRET_LENGTH = 3

_lock = threading.Lock()
_secrets: set[str] = set()


def register(secrets: Iterable[str | None]) -> None:
    """Remember secrets so that :func:`scrub` removes them from any later text."""
    with _lock:
        _secrets.update(s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH)


def scrub(text: str, extra: Iterable[str | None] = ()) -> str:
    """``text`` with every registered secret (and every one in ``extra``) replaced by the mask.

    Longest first, so a secret that contains another is masked whole, not in two pieces.
    """
    with _lock:
        known = set(_secrets)
    known.update(s for s in extra if s and len(s) >= MIN_SECRET_LENGTH)
    for secret in sorted(known, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text
