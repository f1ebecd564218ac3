"""The exported bundle as a logged MLflow model: one pyfunc for every format (bundle/pyfunc.py) that runs
the bundle with its format's plain loader, so that what MLflow loads and serves is what was measured."""

from __future__ import annotations

from pathlib import Path

from .manifest import FILE, Manifest
from ..report.tracking import _mlflow, metric_name


def log_exported_model(tracking_uri: str, parent_run_id: str, bundle: Path, manifest: Manifest,
                       register: str | None = None) -> str:
    """Log the bundle on the study's parent run as one pyfunc (bundle/pyfunc.py) that runs it with its
    format's plain loader, so MLflow serves what was measured: the trial's runtime settings and malloc
    thresholds, requirements pinned to the manifest's versions, a signature with a dynamic batch axis and
    an example for every input, the knob configuration as the model's params and the trial's figures as
    its metrics. Optionally registered. The manifest also goes along as a run artifact. Returns its URI."""
    import dataclasses
    import inspect
    import shutil
    import tempfile

    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from . import pyfunc as bundle_pyfunc
    from ..runtimes import export_format

    mlflow = _mlflow()
    mlflow.set_tracking_uri(tracking_uri)
    fmt = export_format(manifest.format)
    staging = Path(tempfile.mkdtemp(prefix="autoopt-pyfunc-"))
    try:
        shutil.copytree(bundle, staging / "bundle")
        (staging / "bundle" / bundle_pyfunc.LOADER_FILE).write_text(inspect.getsource(fmt.plain_loader))
        dataclasses.replace(manifest, plain_loader=fmt.plain_loader.__name__).write(staging / "bundle")
        example = _input_example(bundle, manifest)
        outputs = _run_once(fmt.plain_loader, bundle, manifest, example)
        rows = manifest.fixed_batch or -1  # -1: any batch size
        signature = ModelSignature(
            inputs=Schema([TensorSpec(a.dtype, (rows, *a.shape[1:]), name) for name, a in example.items()]),
            outputs=Schema([TensorSpec(a.dtype, (rows, *a.shape[1:]), path) for path, a in outputs.items()]))
        with mlflow.start_run(run_id=parent_run_id):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=bundle_pyfunc.__file__, artifacts={"bundle": str(staging / "bundle")},
                pip_requirements=pinned_requirements(manifest, fmt.packages), signature=signature,
                input_example=example, params={k: str(v) for k, v in manifest.config.items()})
            figures = {metric_name(k): v for k, v in (manifest.metrics or {}).items()}
            figures.update({f"remeasured_{metric_name(k)}": v for k, v in (manifest.remeasured or {}).items()})
            # the bundle's own: its fresh-process verification served it (bundle/export.py)
            figures["serving_rss_mb"] = manifest.verified.get("serving_rss_mb")
            metrics = {k: float(v) for k, v in figures.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if metrics:
                mlflow.log_metrics(metrics, model_id=info.model_id)
            mlflow.log_artifact(str(bundle / FILE), artifact_path="export")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if register:
        mlflow.register_model(info.model_uri, register)
    return info.model_uri


def _run_once(plain_loader, bundle: Path, manifest: Manifest, example: dict) -> dict:
    """The bundle's outputs on the example (their shapes and dtypes make the signature), run here with
    the plain loader; the torch thread count it sets for a server is put back for this process."""
    import torch

    threads = torch.get_num_threads()
    try:
        return plain_loader(str(bundle), manifest.as_dict())(list(example.values()))
    finally:
        torch.set_num_threads(threads)


def _input_example(bundle: Path, manifest: Manifest) -> dict:
    """Two rows of the bundle's example inputs by input name (zeros for a bundle without them)."""
    import numpy as np

    rows = manifest.fixed_batch or 2  # a package compiled for one batch size takes that many
    path = bundle / "example_inputs.npz"
    if path.is_file():
        with np.load(path) as data:
            return {i["name"]: data[f"arr_{n}"][np.arange(rows) % len(data[f"arr_{n}"])]
                    for n, i in enumerate(manifest.inputs)}
    return {i["name"]: np.zeros([rows, *i["shape"][1:]], dtype=i["dtype"]) for i in manifest.inputs}


TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def pinned_requirements(manifest: Manifest, packages: tuple[str, ...]) -> list[str]:
    """The format's packages at the versions the bundle was built and verified with (the installed ones
    where the manifest does not say), and numpy. A CPU build of torch comes from PyTorch's CPU index:
    from PyPI, a torch pin pulls several GB of CUDA wheels."""
    from importlib.metadata import PackageNotFoundError, version

    versions = manifest.versions or {}
    lines = []
    for name in (*packages, "numpy"):
        try:
            pinned = versions.get(name) or version(name)
        except PackageNotFoundError:
            lines.append(name)
            continue
        if name == "torch" and pinned.endswith("+cpu"):
            lines.append(f"--extra-index-url {TORCH_CPU_INDEX}")
        lines.append(f"{name}=={pinned}")
    return lines
