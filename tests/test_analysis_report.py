"""`krum-mpi report` and the notebooks on a synthetic study (the real-run version of these checks
is in test_analysis_real.py)."""
import base64
import os
import re
from pathlib import Path

import matplotlib.image
import nbformat
import pytest
from nbclient import NotebookClient
from test_analysis_fakes import make_config, make_fake_study, write_run
from test_analysis_load import add_bad_files

from krum_mpi.analysis import report
from krum_mpi.errors import KrumMPIError, ResultsError

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "analysis").glob("*.ipynb"))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_valid_png(data):
    assert data[:8] == PNG_SIGNATURE
    from io import BytesIO
    image = matplotlib.image.imread(BytesIO(data), format="png")
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    PIL = pytest.importorskip("PIL.Image")
    PIL.open(BytesIO(data)).verify()


def check_markdown_report(path):
    """Every image the Markdown report links exists and is a valid PNG; returns the text."""
    text = path.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links, "the report shows no figure"
    for link in links:
        assert link.endswith(".png")
        assert_valid_png((path.parent / link).read_bytes())
    return text


def execute_notebook(path, study_dir, timeout=180):
    nb = nbformat.read(path, as_version=4)
    old = os.environ.get("KRUM_MPI_STUDY")
    os.environ["KRUM_MPI_STUDY"] = str(study_dir)  # the kernel inherits this process's environment
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        if old is None:
            os.environ.pop("KRUM_MPI_STUDY", None)
        else:
            os.environ["KRUM_MPI_STUDY"] = old
    return nb


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fake-study")
    make_fake_study(folder)
    return folder


def test_markdown_report_answers_and_lists_what_it_cannot(study_dir, tmp_path):
    assert report.main([str(study_dir), "--out", str(tmp_path / "r")]) == 0
    text = check_markdown_report(tmp_path / "r" / "report.md")
    for heading in ("Short answers to the review", "1. The cost without attack", "2. How this changes",
                    "3. Time overhead as workers grow", "What this data cannot support", "Files skipped"):
        assert heading in text
    assert "-5.0 pp" in text  # krum without attack: 84% against averaging's 89% (fakes)
    assert "the review's 33% is not covered" in text
    assert "model size is not measured" in text
    # every report says how its numbers were made: here no tuning stage, so it says the rules were not tuned
    assert "## The protocol: tuning, momentum, seeds, convergence" in text and "not tuned per rule" in text
    assert (tmp_path / "r" / "figures" / "accuracy_over_steps.svg").is_file()
    assert (tmp_path / "r" / "tables" / "cost_of_resilience.csv").is_file()
    report.main([str(study_dir), "--out", str(tmp_path / "lean"), "--no-tables", "--figure-formats", "png"])
    assert not (tmp_path / "lean" / "tables").exists()
    assert {p.suffix for p in (tmp_path / "lean" / "figures").iterdir()} == {".png"}


def test_html_report_is_one_file_with_embedded_pngs(study_dir, tmp_path):
    report.main([str(study_dir), "--out", str(tmp_path), "--format", "html", "--figure-formats", "png"])
    text = (tmp_path / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) >= 3
    for data in images:
        assert_valid_png(base64.b64decode(data))
    assert "<table>" in text and 'src="figures/' not in text
    assert not list((tmp_path / "figures").glob("*.svg"))


def test_report_survives_bad_files_and_lists_them(tmp_path):
    folder = tmp_path / "study"
    make_fake_study(folder, seeds=(0, 1))
    expected = add_bad_files(folder, folder / "krum-b0-s0.h5")
    write_run(folder / "still-running.h5", make_config(rule="krum", seed=7), status="running", steps_done=5)
    report.main([str(folder)])
    text = check_markdown_report(folder / "report" / "report.md")
    skipped = text[text.index("## Files skipped"):]
    for name in set(expected) - {"copy-of-a-run.h5"}:
        assert name in skipped
    assert "not an HDF5 file" in skipped and "cannot be read by HDF5" in skipped
    assert "1 runs are not complete" in skipped and "still-running.h5" in skipped
    assert "1 x .log" in skipped
    # a second report does not read the first report's folder
    report.main([str(folder)])
    assert ".png" not in (folder / "report" / "report.md").read_text().split("## Files skipped")[1].split("## Runs")[0]


def test_report_on_a_folder_without_runs(tmp_path):
    (tmp_path / "junk.h5").write_text("x")
    report.main([str(tmp_path), "--out", str(tmp_path / "out")])
    text = (tmp_path / "out" / "report.md").read_text()
    assert "No complete run could be read" in text and "junk.h5" in text


def test_report_errors_are_one_line(tmp_path):
    with pytest.raises(ResultsError, match="does not exist"):
        report.main([str(tmp_path / "missing")])
    with pytest.raises(KrumMPIError, match="must include png"):
        report.main([str(tmp_path), "--figure-formats", "svg"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebooks_execute_headless(path, study_dir):
    nb = execute_notebook(path, study_dir)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("12 runs" in o.get("text", "") for o in outputs)


def test_there_are_three_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"paper_figures.ipynb", "cost_of_resilience.ipynb", "scaling.ipynb"}


def test_report_on_files_without_provenance_or_selection(tmp_path):
    import h5py
    make_fake_study(tmp_path, seeds=(0,))
    for path in tmp_path.glob("*.h5"):
        with h5py.File(path, "a") as h5:
            del h5.attrs["provenance"]
            del h5["selection"]
    report.main([str(tmp_path), "--format", "html", "--out", str(tmp_path / "html")])
    report.main([str(tmp_path), "--out", str(tmp_path / "md")])
    text = (tmp_path / "md" / "report.md").read_text()
    assert "do not record the number of MPI ranks" in text and "do not record host names" in text
    assert "every experiment has a single seed" in text
