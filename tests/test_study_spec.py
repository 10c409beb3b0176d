"""Study specs, plans, job script rendering and run states, without MPI or SLURM."""
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from conftest import run_cli
from krum_mpi import config
from krum_mpi.errors import ConfigError
from krum_mpi.study import slurm, templates
from krum_mpi.study.folder import StudyFolder
from krum_mpi.study.plan import estimate_seconds, make_plan, override, toml_text
from krum_mpi.study.spec import format_time, load_spec, parse_time
from krum_mpi.study.status import run_states

REPO = Path(__file__).resolve().parents[1]

BASE = """
[study]
name = "t"

[base.run]
steps = 20
[base.workers]
n = 8
[base.data]
name = "synthetic"
n_train = 500
n_test = 100
n_features = 5
[base.model]
name = "logistic"
"""


def write_spec(tmp_path, body, base=BASE, name="spec.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(base) + textwrap.dedent(body))
    return path


def plan_of(tmp_path, body, base=BASE):
    return make_plan(load_spec(write_spec(tmp_path, body, base)))


# ---------------------------------------------------------------------------------------------
# expansion
def test_sweep_is_a_cartesian_product_with_resolved_configs(tmp_path):
    plan = plan_of(tmp_path, """
        [launch]
        ranks = 2
        [sweep]
        "aggregator.name" = ["average", "krum"]
        run.seed = [0, 1, 2]                  # unquoted dotted keys work too
    """)
    assert len(plan.runs) == 6 and not plan.invalid
    assert [r.config["aggregator"]["name"] for r in plan.runs] == ["average"] * 3 + ["krum"] * 3
    assert [r.config["run"]["seed"] for r in plan.runs] == [0, 1, 2] * 2
    assert all(r.ranks == 2 and r.config["run"]["steps"] == 20 for r in plan.runs)
    assert len({r.id for r in plan.runs}) == 6


def test_grouped_axis_sets_keys_together_and_launch_keys_sweep(tmp_path):
    plan = plan_of(tmp_path, """
        [sweep]
        scale = [{ "launch.ranks" = 1, "workers.n" = 4 }, { "launch.ranks" = 2, "workers.n" = 8 },
                 { launch.ranks = 4, workers.n = 16 }]
    """)
    assert [(r.ranks, r.config["workers"]["n"]) for r in plan.runs] == [(1, 4), (2, 8), (4, 16)]
    assert plan.runs[0].overrides == ["workers.n=4"]   # launch keys are not config overrides


def test_exclusions_match_all_keys_and_lists_mean_any_of(tmp_path):
    plan = plan_of(tmp_path, """
        [sweep]
        "attack.name" = ["none", "gaussian", "sign-flip"]
        "workers.byzantine" = [0, 1, 2]
        [[exclude]]
        "attack.name" = "none"
        "workers.byzantine" = [1, 2]
        [[exclude]]
        "attack.name" = ["gaussian", "sign-flip"]
        "workers.byzantine" = 0
    """)
    pairs = [(r.config["attack"]["name"], r.config["workers"]["byzantine"]) for r in plan.runs]
    assert pairs == [("none", 0), ("gaussian", 1), ("gaussian", 2), ("sign-flip", 1), ("sign-flip", 2)]
    assert not plan.invalid   # excluded combinations are not even validated
    assert any("4 combinations excluded" in n for n in plan.notes)


def test_exclusion_can_match_resolved_keys(tmp_path):
    # aggregator.f is never set: it resolves to workers.byzantine
    plan = plan_of(tmp_path, """
        [base.attack]
        name = "gaussian"
        [sweep]
        "workers.byzantine" = [1, 2, 3]
        [[exclude]]
        "aggregator.f" = 2
    """)
    assert [r.config["aggregator"]["f"] for r in plan.runs] == [1, 3]


def test_run_ids_are_stable_across_spec_forms_and_depend_on_ranks(tmp_path):
    a = plan_of(tmp_path, '[sweep]\n"aggregator.name" = ["krum", "average"]\n')
    base_file = tmp_path / "base.toml"
    base_file.write_text(toml_text(load_spec(write_spec(tmp_path, "")).base, header="base"))
    b_spec = write_spec(tmp_path, '[study]\nname = "other"\nbase = "base.toml"\n'
                                  '[sweep]\n"aggregator.name" = ["average"]\n"run.seed" = [0]\n', base="",
                        name="b.toml")
    b = make_plan(load_spec(b_spec))
    by_name = {r.config["aggregator"]["name"]: r.id for r in a.runs}
    assert b.runs[0].id == by_name["average"]
    c = plan_of(tmp_path, '[launch]\nranks = 2\n[sweep]\n"aggregator.name" = ["average"]\n')
    assert c.runs[0].id != by_name["average"]
    assert make_plan(load_spec(b_spec)).runs[0].id == b.runs[0].id   # stable between plans


def test_duplicate_combinations_are_kept_once(tmp_path):
    plan = plan_of(tmp_path, '[sweep]\n"aggregator.f" = [-1, 0]\n')   # -1 resolves to 0
    assert len(plan.runs) == 1
    assert any("same run" in n for n in plan.notes)


@pytest.mark.parametrize("value", ["krum", "multi-krum", "true", "1", "a b", " padded", "", 'q"uote',
                                   3, -1, 0.5, 1e-7, True, [20, 20]])
def test_overrides_read_back_exactly(value):
    key, _, text = override("x.y", value).partition("=")
    assert config.parse_value(text.strip()) == value and type(config.parse_value(text.strip())) is type(value)


def test_bare_words_stay_bare():
    assert override("aggregator.name", "multi-krum") == "aggregator.name=multi-krum"
    assert override("run.name", "true") == 'run.name="true"'


def test_toml_writer_round_trips_a_resolved_config():
    cfg = config.validate({"attack": {"name": "gaussian", "sigma": 200.0}, "workers": {"byzantine": 2},
                           "run": {"name": 'a "b"\n\U0001F600'}})
    import tomllib
    text = toml_text(cfg, header="hello\nworld")
    assert text.startswith("# hello\n# world\n") and tomllib.loads(text) == cfg
    nan = tomllib.loads(toml_text({"attack": {"sigma": float("nan")}}, header=""))["attack"]["sigma"]
    assert nan != nan   # NaN is written (as nan) and read back as NaN


@pytest.mark.parametrize("text, seconds", [(5, 300), ("5", 300), ("02:30", 150), ("01:00:00", 3600),
                                           ("1-00:00:01", 86401)])
def test_slurm_times(text, seconds):
    assert parse_time(text) == seconds
    assert parse_time(format_time(seconds)) == seconds


# ---------------------------------------------------------------------------------------------
# bad specs: one ConfigError line each, before anything runs
@pytest.mark.parametrize("body, match", [
    ('[sweep]\n"run.stpes" = [1, 2]\n', "unknown key run.stpes"),
    ('[sweep]\n"launch.rank" = [1, 2]\n', "unknown key launch.rank"),
    ('[sweep]\n"model.name" = []\n', "sweep axis model.name is empty"),
    ('[sweep]\nx = [{ "run.seed" = 1 }, 2]\n', "mixes tables and plain values"),
    ('[sweep]\n"run.seed" = 3\n', "must be a list"),
    ('[launch]\nranks = 0\n', "launch.ranks = 0 must be an integer >= 1"),
    ('[launch]\ntime = "soon"\n', "launch.time"),
    ('[swep]\n', "unknown study spec section [swep]"),
    ("[base.optimizer]\nlrr = 3\n", "unknown key optimizer.lrr in the base config"),
    ('[[exclude]]\n"run.sed" = 1\n', "unknown key run.sed in [[exclude]]"),
    ('[sweep]\n"run.seed" = [1]\ns = [{ "run.seed" = 2 }]\n', "both set run.seed"),
    ('[sweep]\n"run.seed" = [1]\n[[exclude]]\n"run.seed" = 1\n', "no runs"),
])
def test_bad_specs_raise_one_line(tmp_path, body, match):
    with pytest.raises(ConfigError, match=match.replace("[", r"\[").replace("]", r"\]")) as info:
        plan_of(tmp_path, body)
    assert "\n" not in str(info.value)


def test_yaml_specs_work_too(tmp_path):
    pytest.importorskip("yaml")
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent("""
        study: {name: y}
        base: {run: {steps: 5}, data: {name: synthetic, n_train: 100, n_test: 10}, model: {name: logistic}}
        launch: {ranks: 2}
        sweep:
          aggregator.name: [average, krum]
        exclude:
          - {aggregator.name: krum}
    """))
    plan = make_plan(load_spec(path))
    runs = [(r.ranks, r.config["aggregator"]["name"], r.config["run"]["steps"]) for r in plan.runs]
    assert runs == [(2, "average", 5)]


def test_invalid_runs_are_all_listed_before_anything_starts(tmp_path):
    spec = write_spec(tmp_path, """
        [base.attack]
        name = "gaussian"
        [sweep]
        "workers.byzantine" = [1, 9, 12]     # 9 and 12 exceed workers.n = 8
        "aggregator.name" = ["average"]
    """)
    plan = make_plan(load_spec(spec))
    assert len(plan.runs) == 1 and len(plan.invalid) == 2
    assert all("exceeds workers.n" in line and "\n" not in line for line in plan.invalid)
    with pytest.raises(ConfigError, match="2 of 3 runs"):
        plan.check()
    out = run_cli(["study", "plan", spec], timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("krum-mpi study: invalid run 1 (workers.byzantine=9")
    assert lines[-1].startswith("krum-mpi: error: 2 of 3 runs")
    out = run_cli(["study", "submit", spec, "--dir", tmp_path / "s"], timeout=60)
    assert out.returncode == 2 and not (tmp_path / "s").exists()   # nothing written, nothing submitted


def test_a_model_that_does_not_fit_the_data_is_an_invalid_run(tmp_path):
    plan = plan_of(tmp_path, '[sweep]\n"data.n_classes" = [2, 3]\n')   # logistic is binary
    assert len(plan.runs) == 1 and "logistic" in plan.invalid[0]


def test_plan_prints_every_run_and_a_cost(tmp_path):
    spec = write_spec(tmp_path, '[sweep]\n"aggregator.name" = ["average", "krum"]\n"run.seed" = [0, 1]\n')
    out = run_cli(["study", "plan", spec], timeout=60)
    assert out.returncode == 0, out.stderr
    plan = make_plan(load_spec(spec))
    for run in plan.runs:
        assert run.id in out.stdout
    assert "4 runs, configs checked" in out.stdout and "core-hours" in out.stdout


def test_estimate_grows_with_steps_workers_and_krum(tmp_path):
    plan = plan_of(tmp_path, '[sweep]\n"run.steps" = [100, 200]\n"workers.n" = [10, 40]\n'
                             '"aggregator.name" = ["average", "krum"]\n')
    est = {(r.config["run"]["steps"], r.config["workers"]["n"], r.config["aggregator"]["name"]):
           estimate_seconds(r) for r in plan.runs}
    assert est[(200, 10, "average")] > est[(100, 10, "average")]
    assert est[(100, 40, "average")] > est[(100, 10, "average")]
    assert est[(100, 40, "krum")] > est[(100, 40, "average")]


# ---------------------------------------------------------------------------------------------
# job scripts
def render(tmp_path, body, profile="local-test", **kw):
    plan = plan_of(tmp_path, body)
    plan_dict = plan.to_dict()
    files, tasks = slurm.render(plan_dict, plan_dict["runs"], slurm.load_profile(profile), "studies/t",
                                plan.base_text, **kw)
    return plan, files, tasks


def test_one_array_per_launch_shape_and_groups_of_runs(tmp_path):
    plan, files, tasks = render(tmp_path, """
        [launch]
        group = 2
        [sweep]
        "launch.ranks" = [1, 4]
        "run.seed" = [0, 1, 2]
    """)
    assert sorted(files) == ["array-r1-t30m-x2.sbatch", "array-r4-t30m-x2.sbatch", "report.sbatch", "submit.sh"]
    r4 = files["array-r4-t30m-x2.sbatch"]
    assert "#SBATCH --ntasks=4\n" in r4 and "#SBATCH --array=0-1\n" in r4
    assert "#SBATCH --time=01:01:00" in r4          # 2 runs of 30 minutes, plus a minute
    ids4 = [r.id for r in plan.runs if r.ranks == 4]
    assert tasks["array-r4-t30m-x2.sbatch"] == [ids4[:2], ids4[2:]]
    for run_id in ids4:
        assert f"run_one {run_id} --set run.seed=" in r4
    assert "afterany:" in files["submit.sh"] and "--kill-on-invalid-dep=yes" in files["submit.sh"]


def test_scripts_are_valid_bash_and_carry_the_base_config(tmp_path):
    plan, files, _ = render(tmp_path, '[sweep]\n"run.name" = ["it\'s", "a b"]\n')
    bash = shutil.which("bash")
    for name, text in files.items():
        path = tmp_path / name
        path.write_text(text)
        assert subprocess.run([bash, "-n", path]).returncode == 0, name
    array = next(t for n, t in files.items() if n.startswith("array"))
    assert plan.base_text in array and "srun --mpi=pmi2" in array and "SLURM_NTASKS" in array
    # the run lines hand each override to `krum-mpi run --set` intact, quotes and spaces included
    lines = [line.split(")  ")[-1].strip() for line in array.splitlines() if "run_one " in line
             and not line.lstrip().startswith(("#", "run_one()"))]
    script = "run_one() { shift; printf '%s\\n' \"$@\"; }\n" + "\n".join(lines)
    out = subprocess.run([bash, "-c", script], capture_output=True, text=True).stdout.splitlines()
    values = [config.parse_value(a.partition("=")[2]) for a in out if a != "--set"]
    assert values == ["it's", "a b"]


def test_gpu_runs_ask_for_gpus_and_profiles_fill_sbatch_lines(tmp_path):
    _, files, _ = render(tmp_path, '[sweep]\n"run.device" = ["cpu", "gpu"]\n', profile="example-cluster")
    gpu = [t for n, t in files.items() if "-g1" in n]
    cpu = [t for n, t in files.items() if n.startswith("array") and "-g" not in n]
    assert len(gpu) == 1 and "#SBATCH --gpus-per-node=1" in gpu[0]
    assert "--gpus" not in cpu[0]
    assert "#SBATCH --partition=gpu\n" in gpu[0] and "#SBATCH --partition=compute\n" in cpu[0]
    for text in gpu + cpu:
        assert "#SBATCH --account=my-project" in text
        assert "module load" in text and "PYTHON=python3" in text


def test_no_report_job_when_asked(tmp_path):
    _, files, _ = render(tmp_path, "", report=False)
    assert "report.sbatch" not in files and "sbatch --parsable --dependency" not in files["submit.sh"]


def test_bad_profiles(tmp_path):
    with pytest.raises(ConfigError, match="site profile 'nope' not found"):
        slurm.load_profile("nope")
    bad = tmp_path / "p.toml"
    bad.write_text('[slurm]\npartiton = "x"\n')
    with pytest.raises(ConfigError, match="unknown profile key slurm.partiton"):
        slurm.load_profile(str(bad))
    bad.write_text('[mpi]\nstart_s = -1\n')
    with pytest.raises(ConfigError, match="mpi.start_s = -1 must be 0 .no limit. or a number of seconds"):
        slurm.load_profile(str(bad))
    bad.write_text('[mpi]\nstart_s = "60"\n')
    with pytest.raises(ConfigError, match="mpi.start_s = '60' must be a int"):
        slurm.load_profile(str(bad))


def test_unreachable_slurm_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "missing.conf"))
    with pytest.raises(Exception, match="SLURM not reachable: SLURM_CONF=.* does not exist"):
        slurm.check_reachable()


def blind_pending(line):
    """An invalid run that is invalid only because the `blind` attack is not in this tree yet."""
    import krum_mpi.attacks

    return "blind" not in krum_mpi.attacks.names() and "unknown attack 'blind'" in line


def test_every_spec_in_jobs_plans_and_renders_for_the_example_site(tmp_path):
    """Every spec in jobs/ plans without invalid runs and renders to valid bash for a site profile;
    no rendered script is kept in the tree (they are made at submit time)."""
    specs = sorted((REPO / "jobs").glob("*.toml"))
    assert len(specs) >= 9
    assert not [p for p in (REPO / "jobs").rglob("*") if p.suffix in (".sbatch", ".sh")]
    profile = slurm.load_profile("example-cluster")
    for spec in map(load_spec, specs):
        if spec.bench:
            files = slurm.render_bench(spec, profile, f"studies/{spec.name}")
        else:
            plan = make_plan(spec, check_models=False)
            assert [line for line in plan.invalid if not blind_pending(line)] == [], spec.path
            plan_dict = plan.to_dict()
            files, _ = slurm.render(plan_dict, plan_dict["runs"], profile, f"studies/{spec.name}", plan.base_text)
        assert "submit.sh" in files
        for name, text in files.items():
            (tmp_path / name).write_text(text)
            assert subprocess.run(["bash", "-n", tmp_path / name]).returncode == 0, f"{spec.path}: {name}"
            assert "@{" not in text, f"{spec.path}: {name} has an unfilled placeholder"


def test_study_render_writes_scripts_to_read(tmp_path):
    out = tmp_path / "scripts"
    result = run_cli(["study", "render", "jobs/paper-spambase.toml", "--profile", "example-cluster", "--out", out],
                     timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["array-r4-t15m-x5.sbatch", "report.sbatch", "submit.sh"]
    assert "#SBATCH --account=my-project" in (out / "array-r4-t15m-x5.sbatch").read_text()


def test_templates_fill_in_one_pass_and_leave_bash_alone():
    text = templates.fill("A=@{A} B=@{B} ${x[@]} --signal=B:USR1@120 %x-%A_%a", {"A": "@{B}", "B": "$HOME"})
    assert text == "A=@{B} B=$HOME ${x[@]} --signal=B:USR1@120 %x-%A_%a"   # a value is never re-read
    with pytest.raises(KeyError, match="B"):
        templates.fill("@{A} @{B}", {"A": 1})
    with pytest.raises(ValueError, match="Invalid placeholder"):
        templates.fill("@{lower}", {})


def test_a_base_config_that_would_end_the_here_document_is_refused(tmp_path):
    plan = plan_of(tmp_path, "")
    plan_dict = plan.to_dict()
    with pytest.raises(ConfigError, match="holds the line KRUM_MPI_BASE"):
        slurm.render(plan_dict, plan_dict["runs"], slurm.load_profile("local-test"), "studies/t",
                     plan.base_text + "KRUM_MPI_BASE\n")


# ---------------------------------------------------------------------------------------------
# run states
def test_states_from_files_and_slurm(tmp_path):
    plan = plan_of(tmp_path, '[sweep]\n"run.seed" = [0, 1, 2, 3, 4, 5]\n').to_dict()
    folder = StudyFolder(tmp_path / "s")
    folder.runs.mkdir(parents=True)
    ids = [r["id"] for r in plan["runs"]]
    t0 = time.time() - 100
    folder.add_submission({"time": t0, "arrays": {"a.sbatch": "7"}, "tasks": {"a.sbatch": [[i] for i in ids]},
                           "report": "8"})
    import h5py
    with h5py.File(folder.result(ids[0]), "w") as f:
        f.attrs["status"] = "complete"
    folder.exit_file(ids[1]).write_text("2\n")
    folder.log(ids[1]).write_text("line\nDataError: no such file\n")
    folder.log(ids[3]).write_text("started\n")
    slurm_states = {"7_2": "PENDING", "7_3": "RUNNING", "7_4": "TIMEOUT"}
    states = {s.id: s for s in run_states(plan, folder, slurm_states)}
    assert [states[i].state for i in ids] == ["done", "failed", "pending", "running", "failed", "failed"]
    assert "exit status 2" in states[ids[1]].detail
    assert "TIMEOUT" in states[ids[4]].detail
    assert "unknown" in states[ids[5]].detail
    assert folder.log_tail(ids[1])[-1] == "DataError: no such file"
    # SLURM not reachable: submitted runs without an exit status are pending, not failed
    assert [s.state for s in run_states(plan, folder, None)][4:] == ["pending", "pending"]
