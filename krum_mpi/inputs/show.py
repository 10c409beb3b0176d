"""A value as a short, one-line repr for an error message: never the repr of a huge structure.

``repr`` of a deeply nested list built from YAML aliases, or of a 10k-character string, would make a
message of megabytes (or take minutes): ``show`` walks at most a few levels and elements, cuts long
strings and numbers, and caps the whole text at ``limit`` characters.
"""
from __future__ import annotations

import reprlib

_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4
_REPR.maxstring = 60
_REPR.maxlong = 40
_REPR.maxother = 60


def show(value, limit: int = 80) -> str:
    """``repr(value)`` bounded: one line of at most ``limit`` characters (cut with '...')."""
    text = " ".join(_REPR.repr(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def one_line(text, limit: int = 600) -> str:
    """Any message text as one line of at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
