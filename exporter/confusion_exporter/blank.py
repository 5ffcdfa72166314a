"""The one definition of a blank name, shared by the SQL read paths and the config checks.

A class (or any name) is blank when nothing is left after stripping these characters: every
character Unicode calls whitespace (what Python's ``str.isspace`` accepts; PostgreSQL's
``btrim`` strips only spaces by default) and the invisible zero-width ones, which print as
nothing and are no more a class name than a space is. SQL strips the same set with
``btrim(value, BLANK_CHARACTERS)``, so a row the database calls blank is one the config
check would refuse, and the other way round.
"""

from __future__ import annotations

BLANK_CHARACTERS = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
    "\u180e\u200b\u200c\u200d\u2060\ufeff"  # zero-width: a name of these prints as nothing
)


def is_blank(value: str | None) -> bool:
    """True for None, '' and a string of only blank characters."""
    return value is None or not value.strip(BLANK_CHARACTERS)
