"""A throwaway runtime for the registry's conformance test (tests/test_runtime_registry.py): the candidate as a
torch.export program, run uncompiled. One module; registered by one entry (AUTOOPT_RUNTIMES), nothing else."""

from __future__ import annotations

import os

from autoopt.runtimes.base import BuildContext, Built, ExportFormat, Prepared, export_shapes, output_spec, torch_built


def prepare(model, config: dict, ctx: BuildContext) -> Prepared:
    import torch

    program = torch.export.export(model, ctx.example_inputs, dynamic_shapes=export_shapes(model, len(ctx.example_inputs)))
    path = os.path.join(ctx.workdir, "model.pt2")
    torch.export.save(program, path)
    with torch.no_grad():
        spec = output_spec(model(*ctx.example_inputs))
    return Prepared(os.path.getsize(path) / 1e6, artifact=path, state={"output_spec": spec})


def load(prepared: Prepared, config: dict, ctx: BuildContext) -> Built:
    import torch

    return torch_built(torch.export.load(prepared.artifact).module(), torch.float32, ctx.device,
                       prepared.state["output_spec"])


def plain_loader(bundle: str, manifest: dict):
    """Stock torch.export.load (see ExportFormat)."""
    import torch

    module = torch.export.load(bundle + "/" + manifest["model_file"]).module()

    def flat(value, prefix=""):
        if isinstance(value, torch.Tensor):
            return {prefix or "output": value.float().numpy()}
        items = value.items() if isinstance(value, dict) else enumerate(value)
        out = {}
        for key, item in items:
            out.update(flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return out

    def run(arrays):
        with torch.no_grad():
            return flat(module(*[torch.from_numpy(a) for a in arrays]))

    return run


def _load_bundle(bundle, manifest, spec):
    import torch

    from autoopt.runtimes.base import torch_predictor

    return torch_predictor(torch.export.load(str(bundle / manifest.model_file)).module(), torch.float32, "cpu", spec)


EXPORT = ExportFormat(name="pt2program", model_file="model.pt2", plain_loader=plain_loader, load=_load_bundle,
                      packages=("torch",))
