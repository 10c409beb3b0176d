"""The checkpoint file of a run: what a resume needs, written whole and atomically, checked on read.

``<out>.ckpt`` beside the results file ``<out>``. A flat binary format, parsed here without HDF5
(a damaged HDF5 file can fail deep inside the library; these few fields are checked one by one):

    8 bytes   magic b"KRUMCKPT"
    4 bytes   format version (uint32, little-endian)
    8 bytes   header length H (uint64, little-endian)
    H bytes   header: UTF-8 JSON {"run_id", "step", "arrays": [{"name", "dtype", "shape", "offset",
              "nbytes", "crc32"}, ...], "rows": {dataset: SHA-256 of the results rows 0..step}}
    4 bytes   CRC-32 of the header bytes (uint32, little-endian)
    then each array's raw bytes (C order, little-endian dtype), at its offset (64-byte aligned)

Every array carries the CRC-32 of its raw bytes (zlib.crc32: it finds any single damaged burst of up
to 32 bits and all but 2^-32 of other damage; it is a check against corruption, not tampering; about
2.5 GB/s here, so a flush pays 0.05 s for 121 MB). A write goes to one of two hidden files of this
process (``.<out>.ckpt.<host-pid-random>.a`` / ``.b``, alternating, overwritten in place), is fsynced,
then hard-linked over ``<out>.ckpt`` with an atomic rename, and the folder is fsynced. So
``<out>.ckpt`` is always one whole checkpoint, the new one or the previous one.

The header's CRC covers the arrays' CRCs, so header and data are checked as one; ``rows`` binds
the checkpoint to the results rows it continues (krum_mpi.run.digests): a header whose step was
changed no longer matches the rows up to that step. All of these find accidental damage; none is
a signature (docs/reliability.md says what that leaves open).
"""
from __future__ import annotations

import errno
import json
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import ResultsError
from .outfiles import fsync_folder, open_regular, os_error_text, unique_suffix, unlink_quietly

MAGIC = b"KRUMCKPT"
FORMAT = 1
ALIGN = 64
MAX_HEADER = 1 << 20       # a header is a few hundred bytes; refuse to read more than this
DTYPES = {"float32": "<f4", "float64": "<f8", "int64": "<i8", "int32": "<i4", "bool": "|b1"}


def path_for(results_path) -> Path:
    """The checkpoint file of a results file."""
    results_path = Path(results_path)
    return results_path.with_name(results_path.name + ".ckpt")


class CheckpointStore:
    """Writes the checkpoint of one run (rank 0) into two files that alternate, overwritten in place
    (no blocks freed and allocated again: half the time of a new file here), each hard-linked over
    ``<out>.ckpt`` once whole and fsynced. ``<out>.ckpt`` itself is never written."""

    def __init__(self, path, run_id: str):
        self.path = Path(path)
        self.run_id = run_id
        self.last_step: int | None = None
        suffix = unique_suffix()
        self.slots = [self.path.with_name(f".{self.path.name}.{suffix}.{x}") for x in "ab"]
        self.next_slot = 0

    def write(self, step: int, arrays: dict, rows: dict | None = None) -> int:
        """Write ``arrays`` (name -> ndarray or None) as the checkpoint after ``step``; returns bytes.
        ``rows``: the results rows' digests up to ``step`` (ResultsWriter.row_digests after its flush).

        One pass over each array in slices of 4 MiB: checksum, finiteness and write while the slice
        is in cache; the header (offsets laid out first, checksums filled in last) is written at the end."""
        items = [(name, a if isinstance(a, Streamed) else np.ascontiguousarray(a))
                 for name, a in arrays.items() if a is not None]
        entries = []
        for name, a in items:
            if a.dtype.name not in DTYPES:
                raise ResultsError(f"checkpoint array {name} has dtype {a.dtype.name}, which a checkpoint cannot hold")
            shape = np.shape(arrays[name])   # a 0-d step count stays 0-d (ascontiguousarray made it (1,))
            entries.append({"name": name, "dtype": a.dtype.name, "shape": list(shape), "nbytes": int(a.nbytes),
                            "crc32": 0xFFFFFFFF, "finite": False, "offset": 0})   # widest values: room kept
        header = b""
        first = -1
        while first != _aligned(len(MAGIC) + 12 + len(header) + 4):
            # offsets depend on the header length, which depends on the offsets: until they agree (two
            # passes were not always enough: a longer header could overlap the first array)
            first = offset = _aligned(len(MAGIC) + 12 + len(header) + 4)
            for e in entries:
                e["offset"] = offset
                offset = _aligned(offset + e["nbytes"])
            header = self._header(step, entries, rows)
        reserved = len(header)
        slot = self.slots[self.next_slot]
        try:
            with os.fdopen(os.open(slot, os.O_RDWR | os.O_CREAT, 0o644), "r+b") as fh:
                for e, (_, a) in zip(entries, items):
                    fh.seek(e["offset"])
                    e["crc32"], e["finite"] = _write_array(fh, a)
                fh.truncate(offset)
                header = self._header(step, entries, rows).ljust(reserved)   # JSON allows trailing spaces
                fh.seek(0)
                fh.write(MAGIC + struct.pack("<IQ", FORMAT, reserved) + header + struct.pack("<I", zlib.crc32(header)))
                fh.flush()
                os.fsync(fh.fileno())
            _link_over(slot, self.path)
        except OSError as exc:
            unlink_quietly(slot)   # never leave a half checkpoint holding the space
            kept = f"the previous one (step {self.last_step}) is kept" if self.last_step is not None \
                else "there is none yet"
            raise ResultsError(f"cannot write checkpoint {self.path}: {os_error_text(exc)}; {kept}: "
                               "free space or fix the folder, then rerun with --resume") from None
        fsync_folder(self.path.parent)
        self.last_step = int(step)
        self.next_slot = 1 - self.next_slot
        return offset

    def _header(self, step: int, entries: list, rows) -> bytes:
        meta = {"run_id": self.run_id, "step": int(step), "arrays": entries}
        if rows is not None:
            meta["rows"] = rows
        return json.dumps(meta, sort_keys=True).encode()

    def remove(self) -> None:
        for path in (self.path, *self.slots):
            unlink_quietly(path)


def _link_over(slot: Path, path: Path) -> None:
    """Make ``path`` name the file ``slot`` (atomic): a hard link renamed over it; where the file
    system has no hard links, the slot itself is renamed (the next write makes it anew)."""
    tmp = path.with_name(f".{path.name}.{unique_suffix()}.link")
    try:
        os.link(slot, tmp)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        os.replace(slot, path)
        return
    try:
        os.replace(tmp, path)
    except OSError:
        unlink_quietly(tmp)
        raise


SLICE = 1 << 22   # bytes per slice of a checkpoint write


class Streamed:
    """An array that reaches the writer piece by piece (model-parallel shards arriving from their
    ranks), so the writer never holds it whole. ``pieces()``: an iterator of arrays of ``dtype``
    whose C-order bytes, one after the other, are the array's."""

    def __init__(self, shape, dtype, pieces):
        self.shape, self.dtype, self.pieces = tuple(int(x) for x in shape), np.dtype(dtype), pieces
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def _write_array(fh, a) -> tuple[int, bool]:
    """Write ``a``'s bytes (little-endian) at the file position: (CRC-32, all finite)."""
    crc, finite, written = 0, True, 0
    for whole in (a.pieces() if isinstance(a, Streamed) else [a]):
        if whole.dtype.byteorder == ">":
            whole = whole.astype(whole.dtype.newbyteorder("<"))
        flat = np.ascontiguousarray(whole).reshape(-1)
        step = max(1, SLICE // max(1, whole.itemsize))
        for i in range(0, flat.size, step):
            piece = flat[i:i + step]
            crc = zlib.crc32(piece, crc)
            if finite and whole.dtype.kind == "f":
                finite = bool(np.isfinite(piece).all())
            fh.write(piece)
        written += flat.nbytes
    if written != a.nbytes:
        raise ResultsError(f"checkpoint array of {a.nbytes} bytes received {written}: the pieces do not fit")
    return crc, finite


def all_finite(a: np.ndarray) -> bool:
    """Whether every value is finite, in slices (no temporary the size of the array)."""
    if a.dtype.kind != "f":
        return True
    flat = a.reshape(-1)
    return all(bool(np.isfinite(flat[i:i + (1 << 20)]).all()) for i in range(0, flat.size, 1 << 20))


def _aligned(x: int) -> int:
    return (x + ALIGN - 1) // ALIGN * ALIGN


def read(path, run_id: str, expected: dict, optional_prefix: str = "aggregator_state.",
         into: dict | None = None, select=None, header_out: dict | None = None) -> tuple[int, dict]:
    """Read and check a checkpoint: (step, arrays). Any problem raises ResultsError, one line.

    ``expected``: name -> (shape, dtype name) of every array that must be there, and nothing else
    except names starting with ``optional_prefix`` (whose shape is checked by the caller). ``into``:
    name -> preallocated array to read that array into (saves a copy of the largest one). ``select``:
    the names to read (None: all); the others are listed with None, to be read one at a time later
    (a model-parallel resume never holds every shard at once). ``header_out``: a dict that receives
    the checked header (its ``rows`` digests, for the caller to compare with the results).
    """
    path = Path(path)
    where = f"checkpoint {path}"
    try:
        with os.fdopen(open_regular(path), "rb") as fh:     # a FIFO or a device: refused, never waited on
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(len(MAGIC) + 12)
            if len(head) < len(MAGIC) + 12 or head[:len(MAGIC)] != MAGIC:
                raise ResultsError(f"{where} is not a krum-mpi checkpoint (bad magic or truncated)")
            version, hlen = struct.unpack("<IQ", head[len(MAGIC):])
            if version != FORMAT:
                raise ResultsError(f"{where} has format {version}, this krum-mpi reads {FORMAT}")
            if hlen > MAX_HEADER or len(MAGIC) + 12 + hlen + 4 > size:
                raise ResultsError(f"{where}: header length {hlen} does not fit the file ({size} bytes)")
            header = fh.read(hlen)
            (crc,) = struct.unpack("<I", fh.read(4))
            if zlib.crc32(header) != crc:
                raise ResultsError(f"{where}: header checksum mismatch (the file is damaged)")
            meta = _parse_header(header, where)
            if header_out is not None:
                header_out.update(meta)
            if meta["run_id"] != run_id:
                raise ResultsError(f"{where} belongs to run {meta['run_id']!r}, not {run_id!r}")
            arrays = {}
            for e in meta["arrays"]:
                wanted = select is None or e["name"] in select
                arrays[e["name"]] = _read_array(fh, e, size, where, expected, optional_prefix, into) if wanted else None
    except OSError as exc:
        raise ResultsError(f"cannot read {where}: {os_error_text(exc)}") from None
    missing = sorted(set(expected) - set(arrays))
    if missing:
        raise ResultsError(f"{where} lacks {', '.join(missing)}: it cannot restore this run "
                           "(rerun without --resume and with --force to start over)")
    return meta["step"], arrays


def _parse_header(header: bytes, where: str) -> dict:
    try:
        meta = json.loads(header.decode("utf-8"))
        ok = (isinstance(meta, dict) and isinstance(meta.get("run_id"), str)
              and type(meta.get("step")) is int and isinstance(meta.get("arrays"), list))
        names = set()
        for e in meta["arrays"] if ok else []:
            ok = ok and isinstance(e, dict) and isinstance(e.get("name"), str) and e.get("dtype") in DTYPES \
                and isinstance(e.get("shape"), list) and all(type(s) is int and s >= 0 for s in e["shape"]) \
                and all(type(e.get(k)) is int and e[k] >= 0 for k in ("offset", "nbytes", "crc32")) \
                and type(e.get("finite")) is bool \
                and e["name"] not in names
            names.add(e.get("name") if isinstance(e, dict) else None)
        rows = meta.get("rows", {}) if ok else {}
        ok = ok and isinstance(rows, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in rows.items())
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, RecursionError):   # RecursionError: [[[[...
        ok = False
    if not ok:
        raise ResultsError(f"{where}: header is not a valid checkpoint description")
    return meta


def _read_array(fh, e, size, where, expected, optional_prefix, into):
    name, shape, dtype = e["name"], tuple(e["shape"]), np.dtype(DTYPES[e["dtype"]])
    if name in expected:
        want_shape, want_dtype = expected[name]
        if shape != tuple(want_shape) or e["dtype"] != want_dtype:
            raise ResultsError(f"{where}: {name} is {e['dtype']} {shape}, this run needs {want_dtype} "
                               f"{tuple(want_shape)} (another model or worker count?)")
    elif not name.startswith(optional_prefix):
        raise ResultsError(f"{where}: unexpected array {name!r} (this run has no such state)")
    count = math.prod(shape)     # exact: a forged shape of 2^64 elements must not wrap around
    if count * dtype.itemsize != e["nbytes"] or e["offset"] + e["nbytes"] > size:
        raise ResultsError(f"{where}: {name} claims {e['nbytes']} bytes at {e['offset']}, "
                           f"inconsistent with its shape or the file size ({size} bytes)")
    target = into.get(name) if into else None
    if target is None or target.shape != shape or target.dtype != dtype:
        target = np.empty(shape, dtype=dtype)
    fh.seek(e["offset"])
    view = memoryview(target.reshape(-1)).cast("B")
    if fh.readinto(view) != e["nbytes"]:
        raise ResultsError(f"{where}: {name} is truncated")
    if zlib.crc32(view) != e["crc32"]:
        raise ResultsError(f"{where}: checksum mismatch in {name} (the file is damaged)")
    if e["finite"] and not all_finite(target):   # a run that made NaN itself (averaging under attack) may go on
        raise ResultsError(f"{where}: {name} holds NaN or Inf, but was finite when saved (the file is damaged)")
    return target
