"""Open text or binary data files, compressed or not (.gz, .bz2, .xz), as a streamed reader."""
from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path

from ..errors import DataError
from .paths import require_file

_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def open_binary(path):
    path = require_file(path, "file", "check data.path or run 'krum-mpi data download'")
    return _OPENERS.get(path.suffix, open)(path, "rb")


def open_text(path):
    path = require_file(path, "file", "check data.path or run 'krum-mpi data download'")
    opener = _OPENERS.get(path.suffix)
    if opener is None:
        return open(path, "r", encoding="ascii", errors="replace", newline=None)
    return opener(path, "rt", encoding="ascii", errors="replace", newline=None)


class reading:
    """Context manager: turn the errors of a truncated or corrupt (compressed) file into a DataError."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, DataError):
            return False
        if isinstance(exc, (EOFError, OSError, lzma.LZMAError, UnicodeDecodeError)):
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise DataError(f"{self.path}: truncated or corrupt file ({detail}); "
                            "download it again ('krum-mpi data download')") from None
        return False
