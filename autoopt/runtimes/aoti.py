"""inductor_aot: the model exported with torch.export and compiled ahead of time by AOTInductor into a
`.pt2` package, loaded with torch._inductor.aoti_load_package: the inductor path that ships.

The package is what is measured and what the `aoti` export format ships, so an inductor-class winner is
deployable with plain torch. The batch dimension is dynamic where torch.export allows it (the package
serves any batch size up to MAX_BATCH); otherwise it is compiled for the trial's batch size, which the
manifest records. Model-level knobs come first (pruning, precision, PT2E int8 as for inductor). A model
torch.export cannot capture (data-dependent control flow, unsupported ops) is pruned at build time with
the reason. The compile (tens of seconds: it runs a C++ compiler) is build time, cached by the model's
fingerprint and the shape it was compiled for. The package is compiled for this machine's CPU (its
instruction set is in the package's metadata and in the manifest).
"""

from __future__ import annotations

import os

from ..cache import ArtifactCache, model_fingerprint
from ..errors import Unsupported
from .base import (BuildContext, Built, ExportFormat, Prepared, cast_inputs, export_shapes, model_dtype, output_spec,
                   torch_built, torch_predictor)

PROGRAMS = frozenset({"exported"})  # torch.export cannot capture a TorchScript program (autoopt.study.programs)
MAX_BATCH = 4096  # the dynamic batch dimension's upper bound


def unavailable(value: str, device: str) -> str | None:
    import shutil

    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        return "AOTInductor compiles C++: no C++ compiler (c++, g++, clang++) on PATH"
    return None


def _export(model, inputs: tuple, dynamic: bool):
    import torch

    # a trimming model (padding.trimming) takes *inputs, and its padded inputs have a dynamic sequence axis
    shapes = export_shapes(model, len(inputs), MAX_BATCH, hasattr(model, "sequence_inputs"), batch=dynamic)
    return torch.export.export(model, inputs, dynamic_shapes=shapes)


def exported(model, example: tuple, batch: tuple, scope: dict):
    """(torch.export's program with a dynamic batch, True), else for `batch`'s size (..., False); Unsupported
    with torch.export's reason when neither captures the model."""
    import torch

    with torch.no_grad():
        try:
            return _export(model, example, True), True
        except Exception:  # noqa: BLE001 - a batch-specialized graph: compiled for the trial's batch
            try:
                return _export(model, batch, False), False
            except Exception as exc:
                first = str(exc).splitlines()[0] if str(exc) else ""
                raise Unsupported(f"{scope['compile_mode']}: torch.export cannot capture this model: "
                                  f"{type(exc).__name__}: {first}"[:300], scope) from exc


def prepare(model, config: dict, ctx: BuildContext) -> Prepared:
    import torch
    from torch.utils import _pytree as pytree

    model = model.to(ctx.device)
    dtype = model_dtype(model)
    example = cast_inputs(ctx.example_inputs, dtype, ctx.device)
    batch = cast_inputs(ctx.batch_inputs or ctx.example_inputs, dtype, ctx.device)
    key = model_fingerprint(model, ctx.example_inputs, device=ctx.device, torch=torch.__version__)

    def build() -> tuple[str, dict]:
        scope = {"compile_mode": config["compile_mode"], "quantization": config.get("quantization", "none")}
        program, dynamic = exported(model, example, batch, scope)
        path = os.path.join(ctx.workdir, "model.pt2")
        with torch.no_grad():
            torch._inductor.aoti_compile_and_package(program, package_path=path)
            spec = output_spec(model(*(example if dynamic else batch)))
        fixed = None if dynamic else int(batch[0].shape[0])
        return path, {"output_spec": pytree.treespec_dumps(spec), "fixed_batch": fixed}

    # A fixed-batch package depends on the batch size: the cache key says which one it was built for.
    artifact, meta = ArtifactCache("aoti").get_or_build(key, "model.pt2", build, ctx.workdir)
    if meta["fixed_batch"] is not None and meta["fixed_batch"] != int(batch[0].shape[0]):
        shaped = f"{key}-b{int(batch[0].shape[0])}"
        artifact, meta = ArtifactCache("aoti").get_or_build(shaped, "model.pt2", build, ctx.workdir)
    return Prepared(os.path.getsize(artifact) / 1e6, artifact=artifact, state={
        "dtype": dtype, "output_spec": pytree.treespec_loads(meta["output_spec"]), "fixed_batch": meta["fixed_batch"]})


def load(prepared: Prepared, config: dict, ctx: BuildContext) -> Built:
    import torch

    package = torch._inductor.aoti_load_package(prepared.artifact)
    return torch_built(package, prepared.state["dtype"], ctx.device, prepared.state["output_spec"])


def plain_loader(bundle: str, manifest: dict):
    """Stock torch (torch._inductor.aoti_load_package) with the trial's threads and dtype (see ExportFormat)."""
    import torch

    torch.set_num_threads(manifest["runtime"]["threads"])
    package = torch._inductor.aoti_load_package(bundle + "/" + manifest["model_file"])
    dtype = getattr(torch, manifest["runtime"]["dtype"])
    paths = manifest["outputs"]["paths"]

    def run(arrays):
        tensors = [torch.from_numpy(a) for a in arrays]
        tensors = [t.to(dtype) if t.is_floating_point() else t for t in tensors]
        with torch.no_grad():
            leaves = torch.utils._pytree.tree_leaves(package(*tensors))
        return {path: leaf.float().numpy() if leaf.is_floating_point() else leaf.numpy()
                for path, leaf in zip(paths, leaves)}

    return run


def _load_bundle(bundle, manifest, spec):
    import torch

    torch.set_num_threads(manifest.runtime["threads"])
    package = torch._inductor.aoti_load_package(str(bundle / manifest.model_file))
    return torch_predictor(package, getattr(torch, manifest.runtime["dtype"]), "cpu", spec)


def _settings(config: dict, prepared: Prepared) -> dict:
    import torch

    cpu_isa = torch._inductor.aoti_load_package(prepared.artifact).get_metadata().get("AOTI_CPU_ISA")
    return {"dtype": str(prepared.state.get("dtype", torch.float32)).replace("torch.", ""),
            "fixed_batch": prepared.state.get("fixed_batch"), "cpu_isa": cpu_isa}


def _admits(model, config: dict, ctx: BuildContext) -> None:
    """An inductor trial ships as an AOTInductor package: a model torch.export cannot capture is pruned, with the
    reason, before any compile."""
    model = model.to(ctx.device)
    dtype = model_dtype(model)
    exported(model, cast_inputs(ctx.example_inputs, dtype, ctx.device),
             cast_inputs(ctx.batch_inputs or ctx.example_inputs, dtype, ctx.device),
             {"compile_mode": config["compile_mode"], "quantization": config.get("quantization", "none")})


EXPORT = ExportFormat(
    name="aoti", model_file="model.pt2", plain_loader=plain_loader, load=_load_bundle, packages=("torch",),
    settings=_settings, carries=("inductor", "inductor_max_autotune"), admits=_admits,
)
