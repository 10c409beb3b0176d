"""``krum-mpi data``: download, convert and inspect datasets.

    krum-mpi data list
    krum-mpi data download spambase [--dest DIR] [--sha256 HEX] [--quiet]
    krum-mpi data convert spambase|mnist [SRC] OUT.h5 [--test-fraction F] [--seed S]
    krum-mpi data convert fashion-mnist|cifar10 [SRC] OUT.h5      (images: the file records input_shape)
    krum-mpi data convert libsvm SRC OUT.h5 [--test-file T | --test-fraction F] [--name N]
    krum-mpi data convert csv SRC OUT.h5 [--label-column K] [--n-classes C] [--skip-header]
    krum-mpi data convert synthetic OUT.h5 --n-train N [--n-test N --n-features P --n-classes C ...]
    krum-mpi data info FILE.h5 [--json]
"""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import DataError, KrumMPIError


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so the top-level CLI prints one line and exits 2."""

    def error(self, message):
        raise KrumMPIError(f"{self.prog}: {message}")


INT64_MAX = (1 << 63) - 1


def _integer(low: int):
    """An argparse type: an integer in low..INT64_MAX (a size or seed is stored as int64)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an integer") from None
        if not low <= value <= INT64_MAX:
            raise argparse.ArgumentTypeError(f"{text[:40]} is out of range {low}..2^63-1")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="krum-mpi data", description="Download, convert and inspect datasets.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("list", help="datasets that 'download' knows")

    d = sub.add_parser("download", help="fetch a public dataset (checksum, resume, progress bar)")
    d.add_argument("name", help="spambase, mnist, fashion-mnist, cifar10, covtype, higgs, susy or epsilon")
    d.add_argument("--dest", help="folder to download into (default: KRUM_MPI_DATA or the user cache)")
    d.add_argument("--sha256", help="expected digest (for a one-file dataset without a published one)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")

    c = sub.add_parser("convert", help="convert a dataset to the krum-mpi HDF5 format")
    c.add_argument("format", choices=["spambase", "mnist", "fashion-mnist", "cifar10", "libsvm", "csv",
                                      "synthetic"])
    c.add_argument("paths", nargs="+", metavar="SRC OUT",
                   help="source file or folder (optional for spambase/mnist/synthetic) and the output .h5")
    c.add_argument("--test-fraction", type=float, default=None,
                   help="held-out fraction for sources without a test part (default: 0.2 for spambase and "
                        "the MNIST test set, 0 for libsvm/csv)")
    c.add_argument("--test-file", help="libsvm: a separate test file (e.g. epsilon_normalized.t.xz)")
    c.add_argument("--seed", type=_integer(0), default=0, help="seed of the test split / of the generator")
    c.add_argument("--name", help="dataset name stored in the file")
    c.add_argument("--label-column", type=_integer(-INT64_MAX), default=-1, help="csv: column of the label (default: last)")
    c.add_argument("--n-classes", type=_integer(2), help="csv/synthetic: number of classes")
    c.add_argument("--delimiter", default=",", help="csv: field separator")
    c.add_argument("--skip-header", action="store_true", help="csv: the first line is a header")
    c.add_argument("--compression", choices=["gzip", "lzf"], help="HDF5 compression (default: none, "
                   "fastest for random row reads)")
    for key, kind in (("n-train", _integer(1)), ("n-test", _integer(1)), ("n-features", _integer(1)), ("noise", float)):
        c.add_argument(f"--{key}", type=kind, help=f"synthetic: data.{key.replace('-', '_')}")
    c.add_argument("--generator", choices=["teacher", "mixture"], help="synthetic: data.generator")

    i = sub.add_parser("info", help="describe a dataset file")
    i.add_argument("file")
    i.add_argument("--json", action="store_true", help="print JSON")
    return p


def _convert(args) -> str:
    from . import convert

    fmt, paths = args.format, args.paths
    optional_src = fmt in ("spambase", "mnist", "fashion-mnist", "cifar10", "synthetic")
    if len(paths) == 1 and optional_src:
        src, out = None, paths[0]
    elif len(paths) == 2 and fmt != "synthetic":
        src, out = paths
    else:
        usage = "OUT.h5" if fmt == "synthetic" else ("[SRC] OUT.h5" if optional_src else "SRC OUT.h5")
        raise KrumMPIError(f"krum-mpi data convert {fmt} takes {usage}, got {' '.join(paths)}")
    frac = args.test_fraction
    if frac is not None and not 0 <= frac < 1:
        raise KrumMPIError(f"--test-fraction {frac} must be in [0, 1)")
    common = dict(compression=args.compression)
    if fmt == "spambase":
        return convert.spambase_to_h5(src, out, 0.2 if frac is None else frac, args.seed, **common)
    if fmt == "mnist":
        return convert.mnist_to_h5(src, out, 0.2 if frac is None else frac, args.seed, **common)
    if fmt == "fashion-mnist":
        return convert.fashion_mnist_to_h5(src, out, **common)
    if fmt == "cifar10":
        return convert.cifar10_to_h5(src, out, **common)
    if fmt == "libsvm":
        return convert.libsvm_to_h5(src, out, args.name, args.test_file, frac or 0.0, args.seed, **common)
    if fmt == "csv":
        return convert.csv_to_h5(src, out, args.name, args.label_column, args.n_classes, frac or 0.0,
                                 args.seed, args.delimiter, args.skip_header, **common)
    from ..inputs import typed
    from .synthetic import SyntheticDataset

    given = {key: getattr(args, key) for key in ("n_train", "n_test", "n_features", "n_classes", "noise", "generator")
             if getattr(args, key) is not None}
    return convert.synthetic_to_h5(SyntheticDataset(typed.section("data", {"name": "synthetic", **given}), args.seed),
                                   out, **common)


def _print_info(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    print(f"{summary['name']}: {summary['n_features']} features, {summary['n_classes']} classes "
          f"(format {summary['format']} v{summary['format_version']}, scaling {summary.get('scaling')})")
    for split in ("train", "test"):
        if split in summary:
            s = summary[split]
            print(f"  {split}: {s['rows']} rows, chunks {s['chunks']}, compression {s['compression']}, "
                  f"label counts {s['label_counts']}")
        elif split == "test":
            print("  test: none in the file (data.test_fraction splits the train rows)")
    for key in ("source", "description", "created"):
        if summary.get(key):
            print(f"  {key}: {summary[key]}")
    if summary.get("input_shape"):
        print(f"  images: rows are {' x '.join(map(str, summary['input_shape']))} (channels x height x width)")
    for name, digest in summary.get("source_sha256", {}).items():
        print(f"  sha256 {digest}  {name}")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        from .download import DATASETS

        for name, spec in DATASETS.items():
            print(f"{name:10s} {spec.description}")
        return 0
    if args.command == "download":
        from .download import DATASETS, download

        folder = download(args.name, args.dest, progress=not args.quiet, sha256=args.sha256)
        print(f"{args.name}: files in {folder}")
        hint = DATASETS[args.name].convert_hint
        if hint:
            print(f"next: cd {folder} && {hint}")
        return 0
    if args.command == "convert":
        out = _convert(args)
        print(f"wrote {out}")
        return 0
    if args.command == "info":
        from .store import info

        _print_info(info(args.file), args.json)
        return 0
    raise DataError(f"unknown data command {args.command!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
