"""MLflow tracking: one parent run per study, one child run per trial, artifacts at the end.

The default store is `mlruns/` in the working directory: a sqlite database (mlruns/mlflow.db) plus
artifacts (mlruns/artifacts). MLflow is imported lazily (it costs seconds) and its telemetry is off.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
import urllib.parse
import warnings
from pathlib import Path

from ..errors import ConfigError, option
from .results import INTERRUPTED, TrialRecord, TrialState

log = logging.getLogger("autoopt")
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# PRUNED shows as KILLED: stopped on purpose, at a glance apart from the trials that finished their measurement
_MLFLOW_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAILED: "FAILED"}
# Metric names in MLflow carry their unit where the record's key does not say it
UNITS = {"throughput": "throughput_samples_per_s"}
PARTIAL = ("latency_ms_p50", "latency_ms_p95", "throughput")  # a trial stopped early measured these over a few calls


def metric_name(key: str, partial: bool = False) -> str:
    return ("partial_" if partial and key in PARTIAL else "") + UNITS.get(key, key)


def _mlflow():
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    warnings.filterwarnings("ignore", message=".*noload.*")  # SQLAlchemy 2.1 deprecation inside MLflow
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."
    return mlflow


def resolve_store(tracking_uri: str | os.PathLike | None) -> tuple[str, Path | None]:
    """(MLflow tracking URI, local store directory or None). A plain path is a store directory; without
    one, MLflow's own setting (MLFLOW_TRACKING_URI) decides, then ./mlruns. A file: URI is a store
    directory too (MLflow 3 refuses its plain file store: autoopt keeps sqlite + artifacts there)."""
    if tracking_uri is None:
        tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or None
    if tracking_uri is not None and str(tracking_uri).startswith("file:"):
        tracking_uri = urllib.parse.unquote(urllib.parse.urlparse(str(tracking_uri)).path)
    if tracking_uri is None or "://" not in str(tracking_uri):
        store = Path(tracking_uri if tracking_uri is not None else "mlruns").resolve()
        try:
            store.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{option('tracking_uri', str(store))}: cannot create the MLflow store there "
                              f"({exc.strerror or exc}). Give a writable directory or a tracking server URL.") from exc
        return f"sqlite:///{store}/mlflow.db", store
    uri = str(tracking_uri)
    if uri.startswith("sqlite:///"):
        return uri, Path(uri[len("sqlite:///"):]).resolve().parent
    return uri, None


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """A tracking server that does not answer fails here in seconds, not after MLflow's minutes of retries."""
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return  # it answered: a server is there (one without /health, or behind a proxy)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(f"{option('tracking_uri', uri)}: no MLflow server answers there ({reason}). Start it "
                          f"(mlflow server), or give a local store directory.") from exc


def runs_filter(study_name: str) -> str:
    return f"tags.`autoopt.study` = '{study_name}' and tags.`autoopt.role` = 'trial'"


class Tracker:
    """A study listener that mirrors every trial into MLflow as it happens."""

    def __init__(self, tracking_uri: str, store: Path | None, experiment: str):
        mlflow = _mlflow()
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            location = (store / "artifacts" / experiment).as_uri() if store else None
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location, tags=EXPERIMENT_KIND)
        else:
            self.experiment_id = found.experiment_id
            if found.tags.get("mlflow.experimentKind") != EXPERIMENT_KIND["mlflow.experimentKind"]:
                self.client.set_experiment_tag(self.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
        self._entities = mlflow.entities
        self.parent_run_id: str | None = None
        self.study_name: str | None = None
        self._runs: dict[int, str] = {}
        self._created: set[str] = set()  # trial runs of this process: other machines' live in their own stores

    def start_study(self, study_name: str, params: dict) -> str:
        """The study's parent run: created once, reopened when the study is resumed or joined by
        another search process (the earliest parent wins a creation race; the loser deletes its own)."""
        self.study_name = study_name
        where = f"tags.`autoopt.study` = '{study_name}' and tags.`autoopt.role` = 'study'"
        found = self.client.search_runs([self.experiment_id], where, max_results=1)
        if not found:
            run = self.client.create_run(self.experiment_id, run_name=study_name,
                                         tags={"autoopt.study": study_name, "autoopt.role": "study"})
            self._log(run.info.run_id, params=params)
            found = self.client.search_runs([self.experiment_id], where, max_results=1,
                                            order_by=["attributes.start_time ASC", "attributes.run_id ASC"])
            if found[0].info.run_id != run.info.run_id:
                self.client.delete_run(run.info.run_id)
        self.parent_run_id = found[0].info.run_id
        self.client.update_run(self.parent_run_id, status="RUNNING")
        return self.parent_run_id

    def log_text(self, text: str, name: str) -> None:
        """A file on the study's run (a resumed study's replaces the earlier one's)."""
        self.client.log_text(self.parent_run_id, text, name)

    def trial_started(self, record: TrialRecord) -> None:
        run = self.client.create_run(
            self.experiment_id, run_name=f"trial-{record.number}",
            tags={
                "mlflow.parentRunId": self.parent_run_id, "autoopt.study": self.study_name,
                "autoopt.role": "trial", "autoopt.trial": str(record.number), "autoopt.state": TrialState.RUNNING,
                "autoopt.reference": str(record.reference).lower(),
            },
        )
        self._runs[record.number] = record.run_id = run.info.run_id
        self._created.add(run.info.run_id)
        self._log(run.info.run_id, params=record.config)

    def trial_recovered(self, record: TrialRecord, owner: dict | None = None) -> None:
        """A trial abandoned by a dead search process: close its run (if it got one) as FAILED, and that
        process's study run, in the MLflow store of the process that ran it (`owner`: its search meta)."""
        if not record.run_id:
            return
        from mlflow.tracking import MlflowClient

        uri = (owner or {}).get("tracking_uri") or self.uri
        client = self.client if uri == self.uri else MlflowClient(tracking_uri=uri)
        try:
            self._log(record.run_id, tags={"autoopt.state": record.state, "autoopt.feasible": "false",
                                           "autoopt.reason": record.reason}, client=client)
            client.set_terminated(record.run_id, status="FAILED")
            parent = (owner or {}).get("parent_run_id")
            if parent and parent != self.parent_run_id and client.get_run(parent).info.status == "RUNNING":
                self._log(parent, tags={"autoopt.error": "the search process died; its trials were recovered"},
                          client=client)
                client.set_terminated(parent, status="FAILED")
        except Exception as exc:  # noqa: BLE001 - the other machine's store may be out of reach from here
            log.warning("trial %d: its MLflow run in %s could not be closed (%s)", record.number, uri, exc)

    def trial_finished(self, record: TrialRecord) -> None:
        run_id = self._runs.pop(record.number)
        tags = {"autoopt.state": record.state, "autoopt.feasible": str(record.feasible).lower()}
        if record.reason:
            tags["autoopt.reason"] = record.reason[:5000]
        if record.reused_from is not None:
            tags["autoopt.reused_from"] = str(record.reused_from)
        if record.curve:
            tags["autoopt.curve"] = record.curve[:5000]
        if record.climb:
            tags["autoopt.climb"] = record.climb
        if record.metrics.get("float_layers") is not None:  # int8_layers: what int8 left in float
            tags["autoopt.float_layers"] = record.metrics["float_layers"][:5000] or "(none)"
        if record.metrics.get("latency_unreliable"):
            tags["autoopt.unreliable"] = "latency: the timed calls stayed noisy after a repeat (see latency_cv)"
        partial = bool(record.metrics.get("stopped_early"))
        metrics = {metric_name(k, partial): v for k, v in record.metrics.items() if isinstance(v, (int, float))}
        metrics.update({f"constraint_{k}": v for k, v in record.constraints.items()})
        self._log(run_id, metrics=metrics, tags=tags)
        if record.log_path and os.path.exists(record.log_path):
            self.client.log_artifact(run_id, record.log_path)
        status = "KILLED" if record.reason == INTERRUPTED else _MLFLOW_STATUS[record.state]
        self.client.set_terminated(run_id, status=status)

    def finish_study(self, best: TrialRecord | None, files: list[Path], interrupted: bool = False,
                     trials: list[TrialRecord] = ()) -> None:
        """The re-measured figures on each re-measured trial's run; the winner's run tagged; the winner's
        figures (re-measured where it was: what the CLI prints) and the report files on the parent run."""
        for t in trials:
            if t.remeasured and t.run_id in self._created:
                self._log(t.run_id, metrics={f"remeasured_{metric_name(k)}": v for k, v in t.remeasured.items()
                                             if isinstance(v, (int, float)) and not isinstance(v, bool)})
        if best is not None and best.run_id in self._created:
            self._log(best.run_id, tags={"autoopt.winner": "true"})
        from .results import winning_tie

        tie = winning_tie(list(trials)) if best is not None else None
        tags = {"autoopt.best_trial": str(best.number) if best else "none",
                **({"autoopt.best_tie": tie.describe()[:5000]} if tie else {}),
                "autoopt.best_figures": ("re-measured interleaved" if best and best.remeasured else "the trial's own")}
        metrics = {f"best_{metric_name(k)}": v for k, v in (best.figures if best else {}).items() if isinstance(v, (int, float))}
        self._log(self.parent_run_id, metrics=metrics, tags=tags)
        for path in files:
            self.client.log_artifact(self.parent_run_id, str(path))
        self.client.set_terminated(self.parent_run_id, status="KILLED" if interrupted else "FINISHED")

    @contextlib.contextmanager
    def failing_study(self):
        """An exception that escapes the search closes the study's run and its open trial runs (FAILED; KILLED
        for a Ctrl-C outside the trial loop, which handles its own), with the error as a tag: no run is left
        RUNNING."""
        try:
            yield
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            error = f"{type(exc).__name__}: {exc}"[:5000]
            for run_id in list(self._runs.values()):
                self._log(run_id, tags={"autoopt.state": TrialState.FAILED, "autoopt.reason": f"search stopped: {error}"})
                self.client.set_terminated(run_id, status=status)
            self._runs.clear()
            self._log(self.parent_run_id, tags={"autoopt.error": error})
            self.client.set_terminated(self.parent_run_id, status=status)
            raise

    def _log(self, run_id: str, params: dict | None = None, metrics: dict | None = None, tags: dict | None = None,
             client=None):
        e, now = self._entities, int(time.time() * 1000)
        (client or self.client).log_batch(
            run_id,
            params=[e.Param(k, str(v)) for k, v in (params or {}).items() if v is not None],  # no "None" strings
            metrics=[e.Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
            tags=[e.RunTag(k, str(v)) for k, v in (tags or {}).items()],
        )


def start_ui(tracking_uri: str, host: str = "127.0.0.1", port: int = 5000, **popen) -> subprocess.Popen:
    """The MLflow UI with settings that start fast on a small machine: one worker, no job runner. It
    runs in its own process group: stop it with `stop_ui`, which also ends the server it spawns."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    return subprocess.Popen(cmd, env=env, start_new_session=True, **popen)


def wait_ui(proc: subprocess.Popen, base: str, timeout_s: float = 120.0) -> None:
    """Until the UI answers on `base`; an AutoOptError when it exits first or stays silent."""
    import urllib.request

    from ..errors import AutoOptError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise AutoOptError(f"the MLflow UI exited with code {proc.returncode} (is the port of {base} free?).")
        if time.monotonic() > deadline:
            raise AutoOptError(f"the MLflow UI did not answer within {timeout_s:g} s.")
        time.sleep(0.5)


def stop_ui(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def runs_url(base: str, experiment_id: str, study_name: str) -> str:
    """The runs table of the experiment, filtered to the study's trials (knob and metric columns)."""
    query = urllib.parse.urlencode({"searchFilter": runs_filter(study_name)}, quote_via=urllib.parse.quote)
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"


def study_urls(tracking_uri: str, base: str, study_name: str | None = None) -> dict | None:
    """URLs of the named study (or the latest one in the store), None when there is none:
    "compare": MLflow's compare page over the study's trials (every knob and metric, a parallel
    coordinates plot); "runs": the experiment's runs table filtered to the study, where MLflow shows the
    trials collapsed under the study's run (its expand state lives in the browser, not in the URL)."""
    _mlflow()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    where = "tags.`autoopt.role` = 'study'"
    if study_name:
        where += f" and tags.`autoopt.study` = '{study_name}'"
    found = client.search_runs(experiments, where, order_by=["attributes.start_time DESC"], max_results=1)
    if not found:
        return None
    experiment_id, name = found[0].info.experiment_id, found[0].data.tags["autoopt.study"]
    trials = client.search_runs([experiment_id], runs_filter(name), max_results=1000)
    query = urllib.parse.urlencode({"runs": json.dumps([r.info.run_id for r in trials]),
                                    "experiments": json.dumps([experiment_id])}, quote_via=urllib.parse.quote)
    return {"study": name, "compare": f"{base}/#/compare-runs?{query}", "runs": runs_url(base, experiment_id, name)}
