"""An exported bundle as an MLflow pyfunc ("models from code"), the same for every format: MLflow copies
this file into the logged model and runs it where the model is loaded or served, so it imports only
mlflow, numpy and the format's runtime (inside the loader), never autoopt.

The artifact `bundle` is the bundle directory (model file, autoopt.json) plus `plain_loader.py`: the
format's self-contained loader (runtimes.base.ExportFormat.plain_loader), the one the export verifier
runs. So the logged model runs with the settings the trial was measured with (threads, inter-op 1,
graph optimization level, spinning off, OpenVINO's precision hint) and the bundle's malloc thresholds
(applied with mallopt at load). Inputs: a dict of arrays by input name (or a list in input order);
outputs: a dict of arrays by output path (`logits`, `extra.0`).
"""

import ctypes
import json
import os
from typing import Any

import mlflow
import numpy as np

LOADER_FILE = "plain_loader.py"
_MALLOPT = {"MALLOC_MMAP_THRESHOLD_": -3, "MALLOC_TRIM_THRESHOLD_": -1}  # glibc's M_MMAP_THRESHOLD, M_TRIM_THRESHOLD


def _apply_malloc(environment: dict) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: the thresholds do not exist there
        return
    for name, value in environment.items():
        if name in _MALLOPT:
            libc.mallopt(_MALLOPT[name], int(value))


class BundleModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        bundle = context.artifacts["bundle"]
        with open(os.path.join(bundle, "autoopt.json")) as f:
            manifest = json.load(f)
        _apply_malloc(manifest["runtime"].get("environment", {}))
        with open(os.path.join(bundle, LOADER_FILE)) as f:
            namespace: dict = {}
            exec(compile(f.read(), LOADER_FILE, "exec"), namespace)  # noqa: S102 - the bundle's own loader
        self.run = namespace[manifest["plain_loader"]](bundle, manifest)
        self.inputs = manifest["inputs"]

    def predict(self, context, model_input: Any, params=None) -> Any:  # Any: the signature says the shapes
        if isinstance(model_input, dict):
            arrays = [model_input[i["name"]] for i in self.inputs]
        else:
            arrays = list(model_input)
        arrays = [np.ascontiguousarray(a, dtype=i["dtype"]) for a, i in zip(arrays, self.inputs)]
        return self.run(arrays)


mlflow.models.set_model(BundleModel())
