"""torchscript: trace (script as the fallback), freeze, optimize for inference; saved and reloaded.

Tracing records one path through the model. A model with data-dependent control flow traces
silently wrong, so the trace is checked against eager on other inputs (the trial's batch and a
calibration batch); on a mismatch the model is scripted instead, and when scripting fails too the
trial is pruned with the reason. Dict and tuple outputs are traced with strict=False.
torch.ao int8 models (dynamic, FX static) survive tracing and freezing: this is the runtime that
ships them.
The file does not depend on batch size or threads (traced at batch 2, checked at the trial's batch and
a calibration batch), so it is cached by the fingerprint of the model it was built from.
"""

from __future__ import annotations

import os
import warnings

from ..cache import ArtifactCache, model_fingerprint
from ..errors import Unsupported
from .base import (BuildContext, Built, ExportFormat, Prepared, cast_inputs, model_dtype, output_spec, outputs_close,
                   torch_built, torch_predictor)

PROGRAMS = frozenset({"exported", "scripted"})  # the saved programs it builds from (autoopt.study.programs)


def script_module(model, example_inputs: tuple, check_inputs: list[tuple], scope: dict | None = None):
    """A TorchScript module equivalent to `model` on `check_inputs`: traced, or scripted as fallback."""
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # every torch.jit API warns that it is deprecated
        try:
            traced = torch.jit.trace(model, example_inputs, strict=False, check_trace=False)
            if all(outputs_close(traced(*x), model(*x)) for x in check_inputs):
                return traced, "trace"
        except Exception:  # noqa: BLE001 - scripting below is the fallback
            pass
        try:
            scripted = torch.jit.script(model)
        except Exception as exc:
            raise Unsupported(
                f"torchscript: tracing gives different results on other inputs (data-dependent control flow?) "
                f"and scripting fails: {type(exc).__name__}", scope
            ) from exc
        if not all(outputs_close(scripted(*x), model(*x)) for x in check_inputs):
            raise Unsupported("torchscript: neither the traced nor the scripted model matches eager", scope)
        return scripted, "script"


def prepare(model, config: dict, ctx: BuildContext) -> Prepared:
    import torch
    from torch.utils import _pytree as pytree

    model = model.to(ctx.device)
    dtype = model_dtype(model)
    cast = lambda xs: cast_inputs(xs, dtype, ctx.device)  # noqa: E731
    key = model_fingerprint(model, ctx.example_inputs, device=ctx.device, torch=torch.__version__)

    def build() -> tuple[str, dict]:
        path, how = _build(model, config, ctx, cast)
        with torch.no_grad():
            spec = output_spec(model(*cast(ctx.example_inputs)))
        return path, {"how": how, "output_spec": pytree.treespec_dumps(spec)}

    artifact, meta = ArtifactCache("torchscript").get_or_build(key, "model.pt", build, ctx.workdir)
    return Prepared(os.path.getsize(artifact) / 1e6, artifact=artifact, state={
        "dtype": dtype, "how": meta["how"], "output_spec": pytree.treespec_loads(meta["output_spec"]), "cache_key": key,
    })


def _build(model, config: dict, ctx: BuildContext, cast) -> tuple[str, str]:
    import torch

    checks = [cast(b) for b in ctx.check_batches()]
    scope = {"compile_mode": "torchscript", "quantization": config.get("quantization", "none"),
             "precision": config.get("precision", "fp32")}
    module, how = script_module(model, cast(ctx.example_inputs), checks, scope)
    path = os.path.join(ctx.workdir, "model.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.freeze(module.eval())
        torch.jit.save(module, path)
        try:
            # optimize_for_inference prepacks MKLDNN conv weights, and some of those graphs cannot be
            # loaded back: ship it only when the saved file loads, since the shipped file is what is measured.
            optimized = torch.jit.optimize_for_inference(module)
            torch.jit.save(optimized, candidate := path + ".optimized")
            torch.jit.load(candidate)
            os.replace(candidate, path)
            how += "+optimize_for_inference"
        except Exception:  # noqa: BLE001 - the frozen module is already saved and good
            pass
    return path, how


def load(prepared: Prepared, config: dict, ctx: BuildContext) -> Built:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(prepared.artifact, map_location=ctx.device)
    return torch_built(module, prepared.state["dtype"], ctx.device, prepared.state["output_spec"])


def plain_loader(bundle: str, manifest: dict):
    """Stock torch.jit.load with the trial's threads and dtype (see ExportFormat)."""
    import torch

    torch.set_num_threads(manifest["runtime"]["threads"])
    module = torch.jit.load(bundle + "/" + manifest["model_file"])
    dtype = getattr(torch, manifest["runtime"]["dtype"])

    def flat(value, prefix=""):
        if isinstance(value, torch.Tensor):
            return {prefix or "output": value.float().numpy()}
        items = value.items() if isinstance(value, dict) else enumerate(value)
        out = {}
        for key, item in items:
            out.update(flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return out

    def run(arrays):
        tensors = [torch.from_numpy(a) for a in arrays]
        tensors = [t.to(dtype) if t.is_floating_point() else t for t in tensors]
        with torch.no_grad():
            return flat(module(*tensors))

    return run


def _load_bundle(bundle, manifest, spec):
    import torch

    torch.set_num_threads(manifest.runtime["threads"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(bundle / manifest.model_file))
    return torch_predictor(module, getattr(torch, manifest.runtime["dtype"]), "cpu", spec)


EXPORT = ExportFormat(
    name="torchscript", model_file="model.pt", plain_loader=plain_loader, load=_load_bundle, packages=("torch",),
    carries=("eager",),
    settings=lambda config, prepared: {"dtype": str(prepared.state.get("dtype", "torch.float32")).replace("torch.", "")},
)
