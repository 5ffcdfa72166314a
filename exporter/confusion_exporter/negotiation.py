"""What a scrape asked for: gzip or not (``Accept-Encoding``), OpenMetrics or the text
format (``Accept``), with q-values (RFC 9110: ``q=0`` means "not this")."""

from __future__ import annotations

from collections.abc import Iterator

# Prometheus asks for these (scrape_protocols); prometheus_client writes 1.0.0 for either.
_OPENMETRICS_VERSIONS = ("1.0.0", "0.0.1")


def _items(header: str | None) -> Iterator[tuple[str, dict[str, str], float]]:
    """Each comma-separated item as (lower-cased value, parameters, q); an unreadable q is 0."""
    for item in (header or "").split(","):
        value, *raw = (part.strip() for part in item.split(";"))
        if not value:
            continue
        parameters = {}
        for parameter in raw:
            name, _, setting = parameter.partition("=")
            parameters[name.strip().lower()] = setting.strip().strip('"')
        try:
            q = float(parameters.pop("q", "1"))
        except ValueError:
            q = 0.0
        yield value.lower(), parameters, q if 0 <= q <= 1 else 0.0


def accepts_gzip(accept_encoding: str | None) -> bool:
    """True when ``gzip`` (or ``x-gzip``, or ``*`` without gzip named) has a q above 0."""
    named, star = None, None
    for coding, _, q in _items(accept_encoding):
        if coding in ("gzip", "x-gzip"):
            named = q if named is None else max(named, q)
        elif coding == "*":
            star = q
    if named is not None:
        return named > 0
    return star is not None and star > 0


def wants_openmetrics(accept: str | None) -> bool:
    """True when an OpenMetrics range we write (version 1.0.0 or 0.0.1, or unversioned) is
    acceptable and preferred at least as much as the text format; no header: the text."""
    openmetrics, text = 0.0, 0.0
    for media, parameters, q in _items(accept):
        if media == "application/openmetrics-text":
            if parameters.get("version", _OPENMETRICS_VERSIONS[0]) in _OPENMETRICS_VERSIONS:
                openmetrics = max(openmetrics, q)
        elif media in ("text/plain", "text/*", "*/*"):
            text = max(text, q)
    return openmetrics > 0 and openmetrics >= text
