"""The training task: a trial is the pipeline's training step (forward, backward, optimizer step)
under a configuration of batch size, autocast precision, activation checkpointing and compile mode.

Measured, in the worker:
- throughput: samples/s = batch_size / p50 step time, over full steps after warm-up (the first step,
  which compiles, counts as build time);
- peak memory of one step: on CUDA the peak allocated bytes; on CPU the peak of PyTorch's memory
  profiler timeline (every allocation of the step by category: parameters, gradients, optimizer state,
  activations, temporaries). The process RSS cannot be used: freed chunks stay with glibc, and RSS
  showed checkpointing every block using more than every second block where the allocator's timeline
  shows the true order;
- numerics instead of accuracy: NUMERICS_STEPS steps from the same weights and batches as the
  reference (fp32, eager, no checkpointing), dropout switched off so that the comparison sees
  arithmetic, not random masks. accuracy_drop is the relative deviation of the loss at the last step;
  grad_cosine compares the first step's gradient with the reference's. A loss that turns NaN/inf or
  diverges stops the trial (PRUNED, reason numerics).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time

from ..knobs.checkpointing import wrap
from ..knobs.precision import torch_dtype
from .measure import OverTarget, device_lock
from .protocol import TrainRequest, TrialResult

NUMERICS_STEPS = 5
NUMERICS_BATCH = 8
DIVERGED = 0.5  # a relative loss deviation past this is divergence, not rounding


def _autocast(precision: str, device: str):
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=torch_dtype(precision))


def _without_dropout(model) -> None:
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
        elif isinstance(module, nn.MultiheadAttention):
            module.dropout = 0.0


def _forward(model, config: dict):
    """The forward the step calls: what the compile_mode's runtime makes of the model for training."""
    from .. import runtimes
    from ..errors import Unsupported

    mode = config.get("compile_mode", "eager")
    runtime = runtimes.get(mode)
    if runtime.train_forward is None:
        raise Unsupported(f"compile_mode={mode} runs no training step (--task train)", {"compile_mode": mode})
    return runtime.train_forward(model, config)


def build_step(pipeline, config: dict, device: str, dropout: bool = True):
    """(step(batch) -> loss, model): the configured training step on a fresh copy of the model."""
    import torch

    torch.manual_seed(0)
    model = pipeline.build_model().to(device).train()
    if not dropout:
        _without_dropout(model)
    _, blocks = pipeline.train_blocks(model)
    wrap(blocks, config.get("checkpointing", "none"))
    forward = _forward(model, config)
    optimizer = pipeline.optimizer(model.parameters())
    precision = config.get("precision", "fp32")
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None  # fp16 gradients underflow
    n = pipeline.n_inputs()

    def step(batch: tuple):
        optimizer.zero_grad(set_to_none=True)
        with _autocast(precision, device):
            loss = pipeline.loss_fn(forward(*batch[:n]), batch)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return loss

    return step, model


def numerics_batches(pipeline, device: str) -> list[tuple]:
    import torch

    batches = []
    for i in range(NUMERICS_STEPS):
        torch.manual_seed(1000 + i)
        batches.append(tuple(t.to(device) for t in pipeline.make_batch(NUMERICS_BATCH)))
    return batches


def trajectory(pipeline, config: dict, device: str) -> tuple[list[float], object]:
    """The losses of NUMERICS_STEPS steps and the first step's gradient (flat, fp32, on CPU)."""
    import torch

    step, model = build_step(pipeline, config, device, dropout=False)
    losses, grad = [], None
    for i, batch in enumerate(numerics_batches(pipeline, device)):
        losses.append(float(step(batch).detach().float()))
        if i == 0:
            grad = torch.cat([p.grad.detach().float().flatten().cpu() for p in model.parameters() if p.grad is not None])
    return losses, grad


def reference_numerics(pipeline, device: str, workdir: str) -> dict:
    """The reference trajectory (fp32, eager, no checkpointing), its gradient saved for the workers."""
    import torch

    losses, grad = trajectory(pipeline, {"precision": "fp32", "compile_mode": "eager", "checkpointing": "none"}, device)
    path = os.path.join(workdir, "reference_gradient.pt")
    torch.save(grad, path)
    return {"losses": losses, "gradient_path": path}


def numerics(pipeline, config: dict, device: str, reference: dict) -> dict:
    import torch

    losses, grad = trajectory(pipeline, config, device)
    for i, loss in enumerate(losses):
        if not math.isfinite(loss):
            raise OverTarget(f"numerics: the loss is {loss} at step {i + 1} of {NUMERICS_STEPS}")
    ref_loss = reference["losses"][-1]
    deviation = abs(losses[-1] - ref_loss) / max(abs(ref_loss), 1e-12)
    if deviation > DIVERGED:
        raise OverTarget(f"numerics: the loss diverged: {losses[-1]:.4g} at step {NUMERICS_STEPS} against "
                         f"{ref_loss:.4g} for the reference")
    ref_grad = torch.load(reference["gradient_path"], weights_only=True)
    cosine = float(torch.nn.functional.cosine_similarity(grad.double(), ref_grad.double(), dim=0))
    return {"loss_final": losses[-1], "loss_deviation": deviation, "grad_cosine": cosine, "accuracy_drop": deviation}


def step_peak_memory_mb(step, batch: tuple, device: str, workdir: str) -> float:
    """Peak memory of one training step (see the module docstring for the method)."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step(batch)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 1e6
    import warnings

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step(batch)
    path = os.path.join(workdir, "memory_timeline.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "use the CUDA memory snapshot": CPU has none
        prof.export_memory_timeline(path, device="cpu")
    with open(path) as f:
        _, sizes = json.load(f)
    return max((sum(v) for v in sizes), default=0) / 1e6


def run_train_trial(pipeline, request: TrainRequest) -> TrialResult:
    """One training-step trial in the worker (the configuration's threads already set)."""
    import torch

    from .measure import latency_metrics, machine_load, time_steadily
    from ..runtimes.base import state_dict_mb

    config, device = request.config, request.device
    batch_size = int(config["batch_size"])
    batch = tuple(t.to(device) for t in pipeline.make_batch(batch_size))
    sync = torch.cuda.synchronize if device == "cuda" else None
    with device_lock(device, exclusive=False):
        started = time.perf_counter()
        step, model = build_step(pipeline, config, device)
        step(batch)  # the first step compiles (inductor) and allocates the optimizer state
        if sync:
            sync()
        build_s = time.perf_counter() - started

    with device_lock(device, exclusive=True):
        started = time.perf_counter()
        peak_mb = step_peak_memory_mb(step, batch, device, request.workdir)
        if request.targets.over("memory", {"peak_memory_mb": peak_mb}):
            raise OverTarget(f"memory: peak {peak_mb:.1f} MB is over the {request.targets.memory_mb:g} MB target "
                             f"(one step measured, not timed)", {"peak_memory_mb": peak_mb, "build_s": build_s})
        load = machine_load()
        latency, repeats = time_steadily(lambda: step(batch), min_time_s=request.min_time_s, min_calls=5,
                                         warmup_min_calls=2, sync=sync)
        measure_s = time.perf_counter() - started

    started = time.perf_counter()
    known = request.known_numerics
    if not known:
        with device_lock(device, exclusive=False):
            known = numerics(pipeline, config, device, request.reference_numerics)
    numerics_s = time.perf_counter() - started
    return TrialResult.complete({
        **latency_metrics(latency, repeats, load, batch_size),  # of one full training step
        "peak_memory_mb": peak_mb,
        "model_size_mb": state_dict_mb(model),
        **known,
        "threads": torch.get_num_threads(),
        "build_s": build_s,
        "measure_s": measure_s,
        "accuracy_s": numerics_s,
    })
