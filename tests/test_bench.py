"""``krum-mpi bench``: a tiny run of the whole pipeline (floors, rules, pair loop, memory), its
errors, and the pair-loop reference it compares against. Its file format: test_file_formats.py."""
import numpy as np
import pytest

from conftest import run_cli
from krum_mpi.bench import aggregate as bench, schema as benchfile
from krum_mpi.aggregators.distances import sq_distances
from krum_mpi.errors import ConfigError, DeviceError

TINY = ["aggregate", "--n", "8,11", "--d", "3000", "--repeats", "2", "--pairloop-n", "9", "--pairloop-d", "2000"]


def test_bench_aggregate_measures_every_rule(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(TINY + ["--out", str(out)]) == 0
    report = benchfile.read(out)
    rows = report["results"]
    assert {r["rule"] for r in rows} == set(bench.DEFAULT_RULES)
    assert {(r["n"], r["d"]) for r in rows} == {(8, 3000), (11, 3000)}
    for row in rows:
        assert row["min_ms"] > 0 and row["median_ms"] >= row["min_ms"] and len(row["times_ms"]) == 2
        assert row["x_floor"] == pytest.approx(row["min_ms"] / row["floor_ms"])
        assert row["peak_extra_pct"] is not None and row["peak_extra_pct"] >= 0 and row["device"] == "cpu"
    krum = next(r for r in rows if r["rule"] == "krum" and r["n"] == 11)
    assert krum["floor"] == "max(read, gram)" and krum["f"] == 2  # (n - 3) // 4
    assert report["gemm"]["flops_per_s"] > 0 and len(report["floors"]) == 2
    machine = report["machine"]
    assert machine["cores"] >= 1 and "loadavg_after" in machine and machine["cpu_model"]
    assert isinstance(machine["blas"], list)  # threadpoolctl's view (empty only without a BLAS)
    assert [p["rule"] for p in report["pairloop"]] == ["sq_distances", "krum", "multi-krum"]
    assert all(p["speedup"] > 0 and p["f"] == 1 for p in report["pairloop"])   # (9 - 3) // 4
    printed = capsys.readouterr().out
    assert "read floor" in printed and "krum" in printed and "pair loop" in printed


def test_the_pair_loop_runs_the_same_selection_as_the_kernel():
    X = np.random.default_rng(3).standard_normal((9, 400)).astype(np.float32)
    for name, case in bench.pair_loop_cases(["krum", "multi-krum", "bulyan"], 9, 2).items():
        fast, loop = case(X, sq_distances), case(X, bench.pair_loop_distances)
        if name == "sq_distances":
            np.testing.assert_allclose(loop.sq, fast.sq, rtol=1e-5)
        else:
            assert loop.tolist() == fast.tolist()
    assert list(bench.pair_loop_cases(["median"], 9, 2)) == []
    assert list(bench.pair_loop_cases(["nnm+average"], 9, 2)) == ["sq_distances"]


def test_bench_through_the_cli(tmp_path):
    proc = run_cli(["bench", "aggregate", "--rules", "average", "--n", "5", "--d", "100", "--repeats", "1",
                    "--pairloop-n", "0", "--out", str(tmp_path / "b.json")], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "average" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["--out", "x.txt"], "--out must end in .h5, .json or .csv"),
    (["--rules", "krum,nope"], "unknown aggregation rule 'nope'"),
    (["--f", "lots"], "--f takes"),
    (["--repeats", "0"], "--repeats must be >= 1"),
])
def test_bench_errors_are_one_line(tmp_path, args, message):
    full = ["aggregate", "--n", "5", "--d", "50", "--pairloop-n", "0"] + args
    if "--out" not in args:
        full += ["--out", str(tmp_path / "b.json")]
    with pytest.raises(ConfigError, match=message) as caught:
        bench.main(full)
    assert "\n" not in str(caught.value)
    proc = run_cli(["bench"] + full, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("krum-mpi: error:") and len(proc.stderr.splitlines()) == 1


def test_gpu_paths_fail_clearly_without_a_gpu(tmp_path):
    from krum_mpi.backend import gpu_unavailable_reason

    if gpu_unavailable_reason() is None:
        pytest.skip("a GPU is present: the GPU paths run for real in test_aggregators_gpu.py")
    with pytest.raises(DeviceError, match="--device gpu"):
        bench.main(["aggregate", "--device", "gpu", "--out", str(tmp_path / "b.json")])
    with pytest.raises(DeviceError):
        bench.main(["gpu-check"])


def test_pair_loop_reference_agrees_with_the_kernel():
    X = np.random.default_rng(0).standard_normal((9, 700)).astype(np.float32)
    np.testing.assert_allclose(bench.pair_loop_sq_distances(X), sq_distances(X).sq, rtol=1e-5)


def test_f_policies():
    assert bench.choose_f("krum", 64, "quarter") == 15 and bench.choose_f("krum", 64, "max") == 30
    assert bench.choose_f("bulyan", 64, "max") == 15 and bench.choose_f("median", 16, "max") == 7
    assert bench.choose_f("mda", 64, "max") == 2 and bench.choose_f("krum", 16, "100") == 6


def test_bench_sizes_its_comparison_and_writes_under_results(tmp_path):
    """Small sizes asked, small pair-loop comparison (not n = 64, d = 1e6), file under results/."""
    proc = run_cli(["bench", "aggregate", "--rules", "krum", "--n", "7", "--d", "300", "--repeats", "1",
                    "--no-memory"], timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "# pair loop, n=7 d=3e+02" in proc.stdout
    out = tmp_path / "results" / "bench-aggregate.h5"
    assert {(p["n"], p["d"]) for p in benchfile.read(out)["pairloop"]} == {(7, 300)}
    assert not (tmp_path / "bench-aggregate.h5").exists()
