"""The text exposition's other forms, derived from its bytes without rendering again:
gzip-compressed, and OpenMetrics 1.0.0.

Both come from one observation: for the gauge, counter and info families this exporter
writes (no timestamps, exemplars or ``_created`` samples), a sample line is the same in the
text format and in OpenMetrics; only each family's ``# HELP``/``# TYPE`` lines differ (a
counter's family is named without ``_total``, an info family has type ``info``, HELP also
escapes ``"``). So the exposition is cut into segments at those header lines, and:

- gzip: a large family's samples are compressed as a gzip member of their own, the rest
  (header lines, small families) in members between them. RFC 1952 lets a stream be a
  concatenation of members, and the readers that matter read them all (Go's
  ``compress/gzip``, so Prometheus's scraper; Python's ``gzip``).
- OpenMetrics: the rewritten header lines, and the text's own sample segments, compressed
  ones included: an OpenMetrics gzip stream reuses the text's sample-only members, so a
  first OpenMetrics scrape compresses only header lines and small families.

Only possible because a label value's newline is escaped: a line that starts with ``#``
is always a comment, never the tail of a label.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from . import metric_catalog as catalog

# Fast enough to run once per refresh at 300k samples; the exposition's repetitive labels
# still shrink ~20x (benchmarks/exposition_benchmark.py, docs/performance.md).
GZIP_LEVEL = 1
# A family's samples at least this long get a gzip member of their own, for OpenMetrics to reuse.
REUSE_BYTES = 64 * 1024
_GZIP_WBITS = 31  # zlib's gzip wrapper: a member with a header (mtime 0) and a CRC trailer

OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
EOF = b"# EOF\n"

# In the text format an info family is a gauge whose name ends in _info; only the catalog
# can tell it from a gauge that happens to (confusion_monitor_info is a gauge).
_INFO_SAMPLE_NAMES = frozenset(f.name + "_info" for f in catalog.ALL if f.kind == "info")
_HELP = b"# HELP "


def gzip_member(data: bytes) -> bytes:
    return zlib.compress(data, GZIP_LEVEL, wbits=_GZIP_WBITS) if data else b""


@dataclass(frozen=True)
class Segments:
    """Where each family's header lines and samples lie in a text exposition: a list of
    (header start, header end, samples end), in order; ``lead`` is any text before the first
    header (none in what render() writes)."""

    lead: int
    families: tuple[tuple[int, int, int], ...]


def segments(text: bytes) -> Segments:
    def after(position: int) -> int:  # the start of the next header line, or -1
        found = text.find(b"\n" + _HELP, position)
        return found + 1 if found >= 0 else -1

    starts = []
    at = 0 if text.startswith(_HELP) else after(0)
    while at >= 0:
        starts.append(at)
        at = after(at)
    families = []
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(text)
        help_end = text.index(b"\n", start) + 1
        type_end = text.find(b"\n", help_end) + 1 or end
        families.append((start, min(type_end, end), end))
    return Segments(starts[0] if starts else len(text), tuple(families))


@dataclass(frozen=True)
class Compressed:
    """A text exposition as gzip members: ``body`` is the whole stream; ``members`` says which
    text each member holds, (text start, text end, body start, body end, samples only), so
    OpenMetrics can reuse the members that hold nothing but sample lines."""

    body: bytes
    members: tuple[tuple[int, int, int, int, bool], ...]


def compress(text: bytes, parts: Segments) -> Compressed:
    """A member per large family's samples (at least REUSE_BYTES), reused as they are by the
    OpenMetrics stream; everything between them (header lines, small families) in one member
    each run, so a small exposition is one member and compresses as well as one stream."""
    cuts: list[tuple[int, int, bool]] = []  # text spans, in order, covering all of it
    run_start = 0
    for _, header_end, end in parts.families:
        if end - header_end >= REUSE_BYTES:
            cuts += [(run_start, header_end, False), (header_end, end, True)]
            run_start = end
    cuts.append((run_start, len(text), False))
    members, spans, offset = [], [], 0
    for start, end, samples_only in cuts:
        member = gzip_member(text[start:end])
        members.append(member)
        spans.append((start, end, offset, offset + len(member), samples_only))
        offset += len(member)
    return Compressed(b"".join(members), tuple(spans))


def openmetrics_header(header: bytes) -> bytes:
    """A family's text ``# HELP``/``# TYPE`` lines as OpenMetrics writes them."""
    # split at "\n" only: splitlines() would also cut at a \r or U+2028 inside a help text
    help_line, type_line = header.decode("utf-8").removesuffix("\n").split("\n")
    sample_name, _, help_text = help_line[len("# HELP ") :].partition(" ")
    kind = type_line.rsplit(" ", 1)[1]
    name = sample_name
    if kind == "counter" and name.endswith("_total"):
        name = name[: -len("_total")]
    elif kind == "gauge" and name in _INFO_SAMPLE_NAMES:
        name, kind = name[: -len("_info")], "info"
    elif kind == "untyped":
        kind = "unknown"
    # The text format escaped \ and newline already; every " left in it is a literal one.
    help_text = help_text.replace('"', '\\"')
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n".encode()


def openmetrics(text: bytes, parts: Segments) -> bytes:
    """The exposition in OpenMetrics, without its ``# EOF`` (per-scrape lines follow)."""
    out = [text[: parts.lead]]
    for start, header_end, end in parts.families:
        out += [openmetrics_header(text[start:header_end]), text[header_end:end]]
    return b"".join(out)


def openmetrics_gzip(text: bytes, compressed: Compressed) -> bytes:
    """The OpenMetrics exposition as gzip members, the text's sample-only members reused."""
    out = []
    for start, end, first, last, samples_only in compressed.members:
        out.append(
            compressed.body[first:last] if samples_only else gzip_member(to_openmetrics(text[start:end]))
        )
    return b"".join(out)


def to_openmetrics(text: bytes) -> bytes:
    """A short text exposition (the per-scrape lines) in OpenMetrics, without ``# EOF``."""
    return openmetrics(text, segments(text))
