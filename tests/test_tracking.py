"""MLflow store resolution, and `autoopt ui` serving the runs of a real study over REST."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

import autoopt
from autoopt.report.tracking import resolve_store
from conftest import FAST, TINY_MLP


def test_store_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri, store = resolve_store(None)
    assert uri == f"sqlite:///{tmp_path}/mlruns/mlflow.db" and store == tmp_path / "mlruns"
    assert resolve_store(str(tmp_path / "elsewhere"))[0] == f"sqlite:///{tmp_path}/elsewhere/mlflow.db"
    assert resolve_store("http://127.0.0.1:5000") == ("http://127.0.0.1:5000", None)
    uri, store = resolve_store(f"sqlite:///{tmp_path}/db/mlflow.db")
    assert store == tmp_path / "db"



def test_mlflow_tracking_uri_decides_the_store_when_no_flag_does(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from autoopt.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(tmp_path / "team-store"))
    assert resolve_store(None) == (f"sqlite:///{tmp_path}/team-store/mlflow.db", tmp_path / "team-store")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "file-store").as_uri())  # MLflow's file: spelling
    assert resolve_store(None)[1] == tmp_path / "file-store"
    assert resolve_store(str(tmp_path / "flag"))[1] == tmp_path / "flag"  # the flag wins
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(tmp_path / "team-store"))
    result = CliRunner().invoke(app, ["search", TINY_MLP, "--trials", "1", "--seed", "0", "--min-time", "0.05s",
                                      "--remeasure-top", "0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "mlruns").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/team-store/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tiny_mlp").experiment_id])
    assert {r.data.tags["autoopt.role"] for r in runs} == {"study", "trial"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ui_serves_the_study_runs_over_rest(tmp_path):
    result = autoopt.search(TINY_MLP, trials=2, seed=0, study="ui-study", tracking_uri=str(tmp_path), **FAST)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoopt", "ui", "--tracking-uri", str(tmp_path), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        url, compare, lines, deadline = None, None, [], time.monotonic() + 150
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Trials of study ui-study"):
                compare = line.split(": ", 1)[1].strip()
            if line.startswith("MLflow UI: http"):
                url = line.split("MLflow UI: ", 1)[1].split("  ")[0].strip()
        assert url and compare, "".join(lines)
        trial_ids = {t.run_id for t in result.trials}
        assert compare.startswith(f"http://127.0.0.1:{port}/#/compare-runs?runs=")
        assert all(run_id in urllib.parse.unquote(compare) for run_id in trial_ids)
        base = f"http://127.0.0.1:{port}"
        assert url.startswith(f"{base}/#/experiments/{result.experiment_id}/runs?searchFilter=")
        assert "ui-study" in urllib.parse.unquote(url)
        body = json.dumps({"experiment_ids": [result.experiment_id], "max_results": 100}).encode()
        request = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            runs = json.load(response)["runs"]
        tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
        trials = [t for t in tags if t.get("autoopt.role") == "trial"]
        assert len(trials) == 2 and sum(t.get("autoopt.role") == "study" for t in tags) == 1
        metrics = {m["key"] for r in runs for m in r["data"].get("metrics", [])}
        assert {"latency_ms_p95", "throughput_samples_per_s", "accuracy_drop"} <= metrics
    finally:
        proc.terminate()  # SIGTERM: `autoopt ui` stops the MLflow server it started, children included
        proc.wait(timeout=60)
    time.sleep(1)
    import psutil

    leftovers = [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert not leftovers, [p.info["cmdline"] for p in leftovers]
