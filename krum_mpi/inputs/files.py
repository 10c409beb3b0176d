"""Check what a path is before opening it: a FIFO would block ``open``, a device would stream forever.

``os.stat`` tells the kind of a path without opening it; only a regular file is opened afterwards.
The messages say what the path is ("is a directory", "is a FIFO, not a regular file"), never
"not found" for a path that exists.
"""
from __future__ import annotations

import os
import stat

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def kind_of(mode: int) -> str:
    """'a directory', 'a regular file', 'a FIFO (named pipe)', ... for an ``st_mode``."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def regular_file_problem(path) -> str | None:
    """None when ``path`` is a regular file (links followed), else what it is, for a message:
    'not found', 'is a directory', 'is a FIFO (named pipe), not a regular file', ..."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "not found"
    except NotADirectoryError:
        return "not found (a part of the path is not a directory)"
    except OSError as exc:   # permission, a symlink loop, a name too long
        return f"cannot be examined ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    return f"is {kind_of(mode)}, not a regular file"


def folder_problem(path) -> str | None:
    """None when ``path`` is a directory, else what it is."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "not found"
    except OSError as exc:
        return f"cannot be examined ({exc.strerror or exc})"
    return None if stat.S_ISDIR(mode) else f"is {kind_of(mode)}, not a directory"

