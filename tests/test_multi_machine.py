"""Several machines on one study: a real PostgreSQL server (Debian's package, started here) as the
Optuna RDB storage and two search processes, each with its own MLflow store, joining one study."""

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY_MLP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    if found is None:
        pytest.skip("no PostgreSQL server installed (Debian: apt-get install postgresql; .ci/run installs it)")
    bindir = Path(found).resolve().parent
    base = Path(tempfile.mkdtemp(prefix="autoopt-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as the package's postgres user
        shutil.chown(base, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port, data = _free_port(), base / "data"
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "autoopt", "-A", "trust", "--no-sync"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w", "-o",
                    f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, capture_output=True)
    try:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={port} user=autoopt dbname=postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE autoopt")
        yield f"postgresql://autoopt@127.0.0.1:{port}/autoopt"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_two_machines_join_one_study_on_postgresql(tmp_path, postgres_url):
    space = tmp_path / "space.yaml"
    space.write_text("batch_size: [1, 2, 4, 8, 16, 32, 64]\nthreads: [1, 2]\ncompile_mode: [eager, torchscript]\n")

    def machine(name: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "autoopt", "search", TINY_MLP, "--storage", postgres_url, "--study", "shared",
             "--trials", "16", "--space", str(space), "--tracking-uri", str(tmp_path / name), "--min-time", "0.3s"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

    # Both start at once on a fresh database: the creation race is theirs to survive.
    machines = [machine("store-a"), machine("store-b")]
    outputs = [m.communicate(timeout=400)[0] for m in machines]
    assert [m.returncode for m in machines] == [0, 0], "\n".join(outputs)

    trials = optuna.load_study(study_name="shared", storage=postgres_url).trials
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(trials))) and 16 <= len(trials) <= 17  # one may overshoot by a running trial
    assert all(t.state.is_finished() for t in trials)
    assert len({t.user_attrs["owner"]["pid"] for t in trials}) == 2  # both machines ran trials
    runs = []
    for store in ("store-a", "store-b"):
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / store}/mlflow.db")
        runs += client.search_runs([client.get_experiment_by_name("tiny_mlp").experiment_id],
                                   "tags.`autoopt.role` = 'trial'")
    assert sorted(int(r.data.tags["autoopt.trial"]) for r in runs) == numbers  # one MLflow run per trial
    assert not [r for r in runs if r.info.status == "RUNNING"]


HANGS_ON_A = """
import os, time, torch, autoopt

class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(8, 2)

    def forward(self, x):
        if os.environ.get("AUTOOPT_HOST") == "a" and x.shape[0] != 2:  # a trial on host a; not the pipeline check
            open({marker!r}, "w").close()
            time.sleep(600)
        return self.fc(x)

PIPELINE = autoopt.Pipeline("hangs_on_a", Model, lambda b: (torch.randn(b, 8),))
"""


@pytest.mark.slow
def test_a_machine_killed_mid_trial_is_recovered_by_the_other_within_the_grace(tmp_path, postgres_url):
    import signal
    import time

    marker = tmp_path / "a-is-measuring"
    pipeline = tmp_path / "hangs_on_a.py"
    pipeline.write_text(HANGS_ON_A.format(marker=str(marker)))
    space = tmp_path / "space.yaml"
    space.write_text("batch_size: [1, 2, 4, 8, 16, 32]\nthreads: [1, 2]\n")
    heartbeat_s = 1.0

    def machine(host: str, trials: int) -> subprocess.Popen:
        env = {**os.environ, "AUTOOPT_HOST": host, "AUTOOPT_HEARTBEAT_S": str(heartbeat_s)}
        return subprocess.Popen(
            [sys.executable, "-m", "autoopt", "search", str(pipeline), "--storage", postgres_url, "--study", "killed",
             "--trials", str(trials), "--space", str(space), "--tracking-uri", str(tmp_path / f"store-{host}"),
             "--min-time", "0.3s", "--remeasure-top", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)

    a = machine("a", 8)
    deadline = time.monotonic() + 180
    while not marker.exists() and time.monotonic() < deadline and a.poll() is None:
        time.sleep(0.2)
    assert marker.exists(), a.communicate()[0]
    b = machine("b", 8)
    time.sleep(3)  # b is up and searching (its reference is a's: it waits for it, or samples)
    a.send_signal(signal.SIGKILL)
    killed_at = time.time()
    a.wait(timeout=30)
    output = b.communicate(timeout=400)[0]
    assert b.returncode == 0, output

    trials = optuna.load_study(study_name="killed", storage=postgres_url).trials
    abandoned = [t for t in trials if t.user_attrs.get("owner", {}).get("host") == "a"]
    assert len(abandoned) == 1 and abandoned[0].state.name == "FAIL"
    assert abandoned[0].user_attrs["reason"].startswith("abandoned:")
    stale_s = 4 * heartbeat_s  # study.STALE_S with this heartbeat
    assert abandoned[0].datetime_complete.timestamp() - killed_at <= stale_s + 2 * heartbeat_s + 5
    counted = [t for t in trials if t not in abandoned]
    assert len(counted) == 8 and all(t.state.is_finished() for t in counted)  # the abandoned one used no budget
    assert [t.number for t in trials] == list(range(len(trials)))
    assert sum(bool(t.user_attrs.get("reference")) and t.state.name == "COMPLETE" for t in counted) == 1  # measured again
    for store in ("store-a", "store-b"):
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / store}/mlflow.db")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert runs and not [r for r in runs if r.info.status == "RUNNING"], store
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'store-a'}/mlflow.db")
    parent = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
              if r.data.tags.get("autoopt.role") == "study"][0]
    assert parent.info.status == "FAILED" and "recovered" in parent.data.tags["autoopt.error"]
