"""`autoopt.load(DIR)`: a predict callable for an exported bundle, with the runtime settings it was
measured with (threads, ORT session options, glibc malloc thresholds) and the reference model's output structure."""

from __future__ import annotations

import json
from pathlib import Path


def load(path):
    import torch
    from torch.utils import _pytree as pytree

    from .measure import pin_allocator
    from .runtimes.base import torch_predictor

    bundle = Path(path)
    manifest = json.loads((bundle / "autoopt.json").read_text())
    spec = pytree.treespec_loads(manifest["outputs"]["pytree"])
    names = [i["name"] for i in manifest["inputs"]]
    runtime = manifest["runtime"]
    pin_allocator(runtime.get("environment", {}))  # the malloc settings it was measured with (process-wide)
    model_file = str(bundle / manifest["model_file"])
    if manifest["format"] == "onnx":
        from .runtimes.onnxruntime import predictor, session

        return predictor(session(model_file, runtime["threads"], "cpu", runtime["graph_fusion"]), names, spec)
    torch.set_num_threads(runtime["threads"])
    module = torch.jit.load(model_file)
    return torch_predictor(module, getattr(torch, runtime["dtype"]), "cpu", spec)
