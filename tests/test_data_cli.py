"""``krum-mpi data``: convert, info, list, and one-line errors through the real CLI."""
import json

import pytest
from conftest import run_cli

from krum_mpi.data import cli
from krum_mpi.errors import KrumMPIError


def test_convert_synthetic_then_info(tmp_path, capsys):
    out = tmp_path / "s.h5"
    assert cli.main(["convert", "synthetic", str(out), "--n-train", "300", "--n-test", "50",
                     "--n-features", "4", "--n-classes", "3", "--generator", "mixture"]) == 0
    assert cli.main(["info", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert summary["train"]["rows"] == 300 and summary["test"]["rows"] == 50 and summary["n_classes"] == 3


def test_convert_csv_and_text_info(tmp_path, capsys):
    src = tmp_path / "d.csv"
    src.write_text("".join(f"{i},{i % 2}\n" for i in range(40)))
    assert cli.main(["convert", "csv", str(src), str(tmp_path / "d.h5"), "--test-fraction", "0.25"]) == 0
    assert cli.main(["info", str(tmp_path / "d.h5")]) == 0
    text = capsys.readouterr().out
    assert "1 features, 2 classes" in text and "sha256" in text


def test_list(capsys):
    assert cli.main(["list"]) == 0
    assert "higgs" in capsys.readouterr().out


def test_bad_arguments_raise_one_line_errors(tmp_path):
    with pytest.raises(KrumMPIError, match="takes SRC OUT.h5"):
        cli.main(["convert", "libsvm", str(tmp_path / "x.h5")])
    with pytest.raises(KrumMPIError, match="invalid choice"):
        cli.main(["convert", "parquet", "a", "b"])
    with pytest.raises(KrumMPIError, match="--test-fraction"):
        cli.main(["convert", "csv", "a.csv", "b.h5", "--test-fraction", "1.5"])


def test_real_cli_converts_mnist_and_reports_errors(tmp_path, mnist_dir):
    out = tmp_path / "mnist.h5"
    done = run_cli(["data", "convert", "mnist", mnist_dir, out])
    assert done.returncode == 0, done.stderr
    info = run_cli(["data", "info", out])
    assert "train: 8000 rows" in info.stdout and "TEST images" in info.stdout
    bad = run_cli(["data", "info", tmp_path / "missing.h5"])
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and "missing.h5" in bad.stderr
    unknown = run_cli(["data", "download", "imagenet"])
    assert unknown.returncode == 2 and "unknown dataset" in unknown.stderr
