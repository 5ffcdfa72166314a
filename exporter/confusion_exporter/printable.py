"""One escaping function for every text a person reads on a terminal or in a log.

Class, model, version and segment names come from the user's rows, and monitor and table
names from the config: any of them can hold a newline (a forged report or log line), an ANSI
or OSC escape (clear the screen, retitle the terminal, hide text), a C1 control, or a bidi
override (U+202E shows ``evil`` as ``live``). Text outputs pass such strings through
:func:`printable`, which writes every control and format character as a visible escape
(``\\n``, ``\\x1b``, ``\\u202e``) and leaves everything else (accents, CJK, emoji) as it is.
JSON output needs none of this (``json.dumps`` escapes controls itself, and non-ASCII with
``ensure_ascii``); HTML output needs ``html.escape`` instead.
"""

from __future__ import annotations

import unicodedata

# Cc: C0, DEL and C1 controls. Cf: format characters (bidi embeddings, overrides and
# isolates, LRM/RLM, zero-width characters, BOM, tag characters). Zl, Zp: U+2028 and U+2029,
# which some terminals and editors break lines at. Cs: lone surrogates (unencodable).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """``text`` with each control or format character replaced by its escape.

    Backslashes are left alone so that names read as written; the exact value is in the
    JSON output. The result holds no character a terminal acts on.
    """
    if text.isprintable():  # the common case, in C: nothing to escape (spaces are printable)
        return text
    return "".join(_escape(c) if unicodedata.category(c) in _UNSAFE_CATEGORIES else c for c in text)


def _escape(char: str) -> str:
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
