"""``krum-mpi data download NAME``: fetch a public dataset into data_dir(), checked and resumable.

Each file is downloaded to ``FILE.part``; an interrupted download resumes from the bytes already
there with an HTTP Range request (a server that ignores the Range header sends the whole file, and
the part is started over). The finished file is checked against its SHA-256 (or, where the
publisher gives only that, its MD5: Fashion-MNIST, CIFAR-10) before it is moved into place; a
mismatch removes the part and raises DataError. Where the publisher gives no checksum (the LIBSVM
copies of covtype, HIGGS, SUSY, epsilon), the digest of the first download is written next to the file
(``FILE.sha256``) and later downloads are checked against it.
"""
from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..run.progress import Progress as ProgressLine
from ..errors import DataError
from .paths import data_dir

BLOCK = 1 << 20
LIBSVM = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets"
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist", "http://yann.lecun.com/exdb/mnist")
FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
                   "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"


@dataclass(frozen=True)
class Remote:
    filename: str
    urls: tuple                          # tried in order
    sha256: tuple = ()                   # accepted digests; empty: none published
    size: int | None = None
    md5: str = ""                        # the publisher's MD5, where that is all it gives


@dataclass(frozen=True)
class RemoteDataset:
    folder: str
    files: tuple
    description: str
    convert_hint: str = ""
    notes: list = field(default_factory=list)


def _mnist(name, sha):
    return Remote(name, tuple(f"{m}/{name}" for m in MNIST_MIRRORS), (sha,))


def _fashion(name, md5):
    return Remote(name, tuple(f"{m}/{name}" for m in FASHION_MIRRORS), md5=md5)


DATASETS = {
    "spambase": RemoteDataset("spambase", (
        # The UCI original has CRLF line endings (702,942 bytes); a copy with LF endings is accepted too.
        Remote("spambase.data",
               ("https://archive.ics.uci.edu/ml/machine-learning-databases/spambase/spambase.data",),
               ("b1ef93de71f97714d3d7d4f58fc9f718da7bbc8ac8a150eff2778616a8097b12",
                "ebec58cfca94ea61c77df632314acae15bad410f4769d38b1a66cb41050e3431"), 702_942),),
        "UCI Spambase, 4,601 e-mails x 57 features (CC BY 4.0)"),
    "mnist": RemoteDataset("mnist", (
        _mnist("train-images-idx3-ubyte.gz", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        _mnist("train-labels-idx1-ubyte.gz", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        _mnist("t10k-images-idx3-ubyte.gz", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        _mnist("t10k-labels-idx1-ubyte.gz", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    ), "MNIST, 60,000 + 10,000 images 28x28 (LeCun, Cortes, Burges)"),
    # Zalando publishes MD5 sums only (README of the fashion-mnist repository)
    "fashion-mnist": RemoteDataset("fashion-mnist", (
        _fashion("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        _fashion("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        _fashion("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        _fashion("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    ), "Fashion-MNIST, 60,000 + 10,000 images 28x28 (Xiao, Rasul, Vollgraf; MIT)",
        "krum-mpi data convert fashion-mnist . fashion-mnist.h5"),
    # the binary version (fixed-length records): the Python version is pickled, which krum-mpi never loads
    "cifar10": RemoteDataset("cifar10", (
        Remote("cifar-10-binary.tar.gz", (CIFAR10_URL,), size=170_052_171, md5="c32a1d4ab5d03f1284b67883e8d87530"),),
        "CIFAR-10, 50,000 + 10,000 colour images 32x32 (Krizhevsky 2009), official binary archive",
        "krum-mpi data convert cifar10 cifar-10-binary.tar.gz cifar10.h5"),
    "covtype": RemoteDataset("covtype", (
        Remote("covtype.libsvm.binary.scale.bz2", (f"{LIBSVM}/binary/covtype.libsvm.binary.scale.bz2",)),),
        "Covertype (binary, scaled; LIBSVM copy of UCI), 581,012 x 54",
        "krum-mpi data convert libsvm covtype.libsvm.binary.scale.bz2 covtype.h5 --test-fraction 0.1"),
    "higgs": RemoteDataset("higgs", (Remote("HIGGS.xz", (f"{LIBSVM}/binary/HIGGS.xz",)),),
                           "HIGGS (LIBSVM copy of UCI), 11,000,000 x 28, about 2.7 GB compressed",
                           "krum-mpi data convert libsvm HIGGS.xz higgs.h5 --test-fraction 0.05"),
    "susy": RemoteDataset("susy", (Remote("SUSY.xz", (f"{LIBSVM}/binary/SUSY.xz",)),),
                          "SUSY (LIBSVM copy of UCI), 5,000,000 x 18",
                          "krum-mpi data convert libsvm SUSY.xz susy.h5 --test-fraction 0.1"),
    "epsilon": RemoteDataset("epsilon", (
        Remote("epsilon_normalized.xz", (f"{LIBSVM}/binary/epsilon_normalized.xz",)),
        Remote("epsilon_normalized.t.xz", (f"{LIBSVM}/binary/epsilon_normalized.t.xz",))),
        "epsilon (PASCAL Large Scale Learning Challenge, LIBSVM copy), 400,000 + 100,000 x 2,000",
        "krum-mpi data convert libsvm epsilon_normalized.xz epsilon.h5 --test-file epsilon_normalized.t.xz"),
}


def sha256_file(path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()


class Progress(ProgressLine):
    """A download's bytes, on stderr (krum_mpi.run.progress: a bar on a terminal, a line now and then in a log)."""

    def __init__(self, label: str, total: int | None, done: int = 0, stream=None, enabled: bool = True):
        super().__init__(total, label, unit="B", quiet=not enabled, stream=stream or sys.stderr, start=done)

    def update(self, n: int) -> None:
        super().update(self.done + n)


def fetch(url: str, part: Path, progress: bool = True, timeout: float = 60.0) -> None:
    """Download url into ``part``, resuming from its current size with a Range request."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "krum-mpi"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:   # nothing left to send: the part is complete (checked later)
            return
        raise
    with response:
        resumed = response.status == 206 and _range_start(response) == offset
        if response.status == 206 and not resumed:
            # a range we did not ask for: drop the part and ask for the whole file
            response.close()
            part.unlink()
            return fetch(url, part, progress, timeout)
        if not resumed:
            offset = 0   # the server sent the whole file: start the part over
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        bar = Progress(part.name.removesuffix(".part"), total, offset, enabled=progress)
        with open(part, "ab" if resumed else "wb") as out:
            for block in iter(lambda: response.read(BLOCK), b""):
                out.write(block)
                bar.update(len(block))
        bar.close()


def _range_start(response) -> int | None:
    value = response.headers.get("Content-Range", "")   # "bytes START-END/TOTAL"
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def download_file(remote: Remote, folder: Path, progress: bool = True, sha256: str | None = None) -> Path:
    """Fetch one file into folder (resuming a part), check its digest, move it into place."""
    folder.mkdir(parents=True, exist_ok=True)
    final, part = folder / remote.filename, folder / (remote.filename + ".part")
    recorded = folder / (remote.filename + ".sha256")
    accepted = (sha256,) if sha256 else remote.sha256
    if not accepted and recorded.is_file():
        accepted = (recorded.read_text().split()[0],)
    if final.is_file():
        digest = sha256_file(final)
        if remote.md5 and not accepted:
            if sha256_file(final, "md5") == remote.md5:
                return final
        elif not accepted or digest in accepted:
            return final
        final.rename(folder / (remote.filename + ".bad"))   # keep the evidence, fetch again
    errors = []
    for url in remote.urls:
        try:
            fetch(url, part, progress)
            break
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            errors.append(f"{url}: {' '.join(str(exc).split())}")
    else:
        kept = part.stat().st_size if part.exists() else 0
        advice = (f"the {kept} bytes so far are kept in {part}: run the command again to resume" if kept
                  else "check the network connection (or download the file by hand into "
                       f"{folder}) and run the command again")
        raise DataError(f"could not download {remote.filename} ({'; '.join(errors)}); {advice}")
    digest = sha256_file(part)
    if accepted and digest not in accepted:
        part.unlink()
        raise DataError(f"{final}: checksum mismatch (sha256 {digest}, expected {accepted[0]}); "
                        "the download was removed: run the command again")
    if remote.md5 and not accepted:
        md5 = sha256_file(part, "md5")
        if md5 != remote.md5:
            part.unlink()
            raise DataError(f"{final}: checksum mismatch (MD5 {md5}, published {remote.md5}); "
                            "the download was removed: run the command again")
    os.replace(part, final)
    if not accepted and not remote.md5:
        recorded.write_text(f"{digest}  {remote.filename}\n")
        print(f"{remote.filename}: the publisher gives no checksum; recorded sha256 {digest} in "
              f"{recorded}", file=sys.stderr)
    return final


def download(name: str, dest: Path | None = None, progress: bool = True, sha256: str | None = None) -> Path:
    """Download dataset ``name`` into (dest or data_dir())/<folder>/; returns the folder."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r} to download: choose one of {', '.join(DATASETS)}")
    spec = DATASETS[name]
    if sha256 and len(spec.files) != 1:
        raise DataError(f"--sha256 applies to one-file datasets; {name} has {len(spec.files)} files")
    folder = Path(dest or data_dir()) / spec.folder
    for remote in spec.files:
        download_file(remote, folder, progress, sha256)
    return folder
