"""Stop signals while the ranks start: every rank krum-mpi starts itself is started as ``mpiexec -n R
env --block-signal=TERM --block-signal=INT --block-signal=USR1 python -m krum_mpi run ...``, so a
signal that ``mpiexec`` passes on while a rank's interpreter is still starting stays pending; the
handlers' install unblocks it and it becomes a recorded stop (exit 3), never the default action
(status 15, nothing written). Real processes, real signals, real mpiexec.
"""
import importlib.util
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import pytest

from conftest import REPO, mpiexec_path, run_cli
from krum_mpi.launch import block_stops_prefix, rank_command
from krum_mpi.study.folder import StudyFolder
from krum_mpi.study.local import run_command

needs_block_signal = pytest.mark.skipif(not block_stops_prefix(),
                                        reason="this env has no --block-signal (GNU coreutils 8.31 or later)")

CONFIG = """
[run]
steps = 3000
checkpoint_every = 5
eval_every = 1000
[workers]
n = 6
batch_size = 4
[data]
name = "synthetic"
n_train = 400
n_test = 100
n_features = 8
[model]
hidden = [8]
[aggregator]
name = "krum"
f = 1
"""


def _trials_script():
    spec = importlib.util.spec_from_file_location("sigterm_trials", REPO / "scripts" / "sigterm_trials.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _python(code: str, prefix=()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT", "SIGUSR1"])
def test_a_signal_pending_since_start_becomes_a_recorded_stop(name):
    """Blocked, then sent (as to a rank whose interpreter was starting): the install unblocks it and
    the handler records it; before, it stayed blocked, never seen, and the run went on."""
    done = _python(f"""
        import os, signal
        signum = signal.{name}
        signal.pthread_sigmask(signal.SIG_BLOCK, {{signum}})
        os.kill(os.getpid(), signum)
        from krum_mpi.run.stop import STOP_SIGNALS, process_stop
        stop = process_stop()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        print(int(stop.signal), int(stop.seen()), sorted(int(s) for s in blocked if s in STOP_SIGNALS))
    """)
    assert done.returncode == 0, done.stderr
    signum = int(getattr(signal, name))
    assert done.stdout.split() == [str(signum), str(signum), "[]"], done.stdout


@needs_block_signal
def test_the_prefix_blocks_the_stop_signals_and_other_commands_unblock_them():
    """Under the prefix a process starts with TERM, INT and USR1 blocked; every krum-mpi command but
    run (which has handlers) unblocks them, so none of them, nor any child they start (a study's
    mpiexec), keeps a stop signal blocked."""
    show = "import signal; print(sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])))"
    stops = sorted(int(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1))
    started = _python(show, block_stops_prefix())
    assert started.stdout.strip() == str(stops), started.stdout
    for argv in (["--version"], ["summary", "--help"], ["study", "--help"]):
        done = _python(f"""
            import signal, subprocess, sys
            from krum_mpi.cli import main
            try:
                main({argv!r})
            except SystemExit:
                pass
            child = subprocess.run([sys.executable, "-c", {show!r}], capture_output=True, text=True)
            print("child", child.stdout.strip())
        """, block_stops_prefix())
        assert done.returncode == 0, done.stderr
        assert "child []" in done.stdout, (argv, done.stdout)


@needs_block_signal
def test_the_study_runner_and_rank_command_start_ranks_with_the_prefix(tmp_path):
    folder = StudyFolder(tmp_path / "study")
    cmd = run_command(folder, "base.toml", {"id": "abc", "ranks": 3, "overrides": ["run.seed=1"]}, "mpiexec")
    prefix = list(block_stops_prefix())
    assert cmd[:3] == ["mpiexec", "-n", "3"] and cmd[3:3 + len(prefix)] == prefix
    assert cmd[3 + len(prefix):] == [sys.executable, "-m", "krum_mpi", "run", str(folder.path / "base.toml"),
                                     "--set", "run.seed=1", "--out", str(folder.result("abc")), "--resume"]
    assert rank_command("mpiexec", 2, ["demo"])[3:3 + len(prefix)] == prefix


@needs_block_signal
def test_the_job_scripts_start_ranks_with_the_prefix(tmp_path):
    """The rendered array script probes env --block-signal through its launcher and starts each rank
    with it: run here, its pick_block_stops (launcher: plain exec) gives ranks the signals blocked."""
    spec = tmp_path / "study.toml"
    spec.write_text(textwrap.dedent("""
        [study]
        name = "blocked"
        [base.run]
        steps = 10
        [base.workers]
        n = 4
        [base.data]
        name = "synthetic"
        [base.model]
        name = "logistic"
        [launch]
        ranks = 2
        time = "00:05:00"
        [sweep]
        "run.seed" = [1]
    """))
    out = tmp_path / "scripts"
    done = run_cli(["study", "render", spec, "--profile", "local-test", "--out", out], timeout=120)
    assert done.returncode == 0, done.stderr
    (array,) = out.glob("array-*.sbatch")
    text = array.read_text()
    assert '$LAUNCH $BLOCK_STOPS "$PYTHON" -m krum_mpi run' in text and "\npick_block_stops\n" in text
    start, end = text.index("BLOCK_STOPS=\"\""), text.index("# run_one ID")
    show = "import signal; print(sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])))"
    probe = subprocess.run(["bash", "-c", text[start:end] + f'LAUNCH=command\npick_block_stops\n'
                            f'$LAUNCH $BLOCK_STOPS {sys.executable} -c "{show}"'],
                           capture_output=True, text=True, timeout=60)
    stops = sorted(int(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1))
    assert probe.returncode == 0, probe.stderr
    assert "ranks start with the stop signals blocked" in probe.stdout
    assert probe.stdout.strip().splitlines()[-1] == str(stops), probe.stdout
    # a launcher (or nodes) where the probe fails: the ranks start without the prefix, and the log says so
    fallback = subprocess.run(["bash", "-c", text[start:end] + 'LAUNCH=false\npick_block_stops\necho "[$BLOCK_STOPS]"'],
                              capture_output=True, text=True, timeout=60)
    assert "stop signals unblocked" in fallback.stdout and fallback.stdout.strip().endswith("[]"), fallback.stdout


def test_where_env_has_no_block_signal_the_ranks_start_without_the_prefix(tmp_path, monkeypatch):
    """An env without --block-signal (macOS, the BSDs, coreutils before 8.31: it refuses the option)
    gives no prefix: the command is the plain mpiexec one, which still runs."""
    fake = tmp_path / "env"
    fake.write_text('#!/bin/sh\necho "env: illegal option -- -" >&2\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    block_stops_prefix.cache_clear()
    try:
        assert block_stops_prefix() == ()
        assert rank_command("mpiexec", 2, ["run", "x.toml"]) == ["mpiexec", "-n", "2", sys.executable, "-m", "krum_mpi",
                                                                 "run", "x.toml"]
    finally:
        block_stops_prefix.cache_clear()


@pytest.mark.mpi
@pytest.mark.slow
@needs_block_signal
def test_a_stop_as_the_ranks_start_exits_3_never_15(tmp_path):
    """mpiexec -n 2 with the prefix, signalled 0 to 50 ms after both rank processes exist (their
    interpreters still starting, before any handler): each launch exits 3 with a checkpointed file,
    SIGINT as SIGTERM. Without the prefix such a signal killed the ranks (15, no file)."""
    if mpiexec_path() is None:
        pytest.skip("no mpiexec")
    trials = _trials_script()
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    rng = random.Random(21)
    for number, signum in enumerate([signal.SIGTERM] * 4 + [signal.SIGINT] * 2):
        out = tmp_path / f"r{number}.h5"
        proc = subprocess.Popen(rank_command(mpiexec_path(), 2, ["run", config, "--out", out, "--quiet"]),
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        assert trials.wait_for_ranks(proc, 2), "the ranks did not appear"
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signum)
        try:
            _, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"launch {number}: the run did not end after the signal")
        assert proc.returncode == 3, f"launch {number} ({signum.name}): exit {proc.returncode}\n{err}"
        with h5py.File(out, "r") as h5:
            assert str(h5.attrs["status"]) == "interrupted", (number, dict(h5.attrs))
