"""inductor: torch.compile with freezing. Serves compile_mode inductor (default mode),
inductor_max_autotune and inductor_reduce_overhead (CUDA graphs: CUDA only). It writes no file: its
trials ship as AOTInductor packages (the aoti format carries them), so a model torch.export cannot
capture is pruned at build time with the reason.

Compilation happens in `prepare`, on the trial's batch shape, so its seconds count as build_s and
never as latency. On CPU it pays off for convolution/elementwise-heavy models, not for GEMM-bound
ones. The compiled model's weights exist before the memory measurement starts: its peak memory is
the serving growth (activations, workspaces) without the weights.
"""

from __future__ import annotations

from .base import BuildContext, Built, Prepared, cast_inputs, model_dtype, state_dict_mb, torch_built

PROGRAMS = frozenset({"exported"})  # torch.export cannot capture a TorchScript program (autoopt.study.programs)
EXPORT = None  # nothing of its own to ship
MODES = {"inductor": "default", "inductor_max_autotune": "max-autotune", "inductor_reduce_overhead": "reduce-overhead"}


def unavailable(value: str, device: str) -> str | None:
    if value == "inductor_reduce_overhead" and device != "cuda":
        return "reduce-overhead uses CUDA graphs and needs a CUDA device"
    return None


def train_forward(model, config: dict):
    """The training step's forward, compiled (backward too, by AOTAutograd), for static shapes."""
    import torch

    return torch.compile(model, mode=MODES[config["compile_mode"]], dynamic=False)


def prepare(model, config: dict, ctx: BuildContext) -> Prepared:
    import torch
    import torch._inductor.config as inductor_config

    import torch._dynamo.config as dynamo_config

    inductor_config.freezing = True  # weights become constants: folds BN, enables int8 fusions
    # Dynamo counts compiles per code object (a model class's forward) and silently runs eager past
    # the limit: each served shape and each variant of the same class needs its own compile.
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
    dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 512)
    model = model.to(ctx.device)
    dtype = model_dtype(model)
    # Static shapes: one compile per served batch size (a fixed-batch server), and no dynamic-shape
    # kernels (those failed stride checks on int8 convolutions at batch 1 in torch 2.13).
    compiled = torch.compile(model, mode=MODES[config["compile_mode"]], dynamic=False)
    with torch.no_grad():
        compiled(*cast_inputs(ctx.batch_inputs, dtype, ctx.device))  # compiles for the measured shape
    try:
        size = state_dict_mb(model)
    except Exception:  # noqa: BLE001 - some quantized graph modules do not serialize their state
        size = None  # unknown, not zero
    return Prepared(size, state={"compiled": compiled, "dtype": dtype})


def load(prepared: Prepared, config: dict, ctx: BuildContext) -> Built:
    return torch_built(prepared.state["compiled"], prepared.state["dtype"], ctx.device)
