"""Which layers int8 breaks: the sensitivity of each quantizable layer, and the layers an `int8_layers`
value keeps in float.

A *unit* is a quantizable layer (Conv, Linear, LSTM, GRU) named by its module path; a model with more
than MAX_UNITS of them is ranked by groups (their common parent: `encoder.layer.0` for the six Linear
layers of a BERT block), as NNCF and ORT rank quantizer groups. The sensitivity of a unit is how much
output error goes away when that unit alone returns to float in the otherwise int8 model, built by the
runtime family that quantizes it (NNCF for openvino, ORT's quantizer for onnxruntime, torch FX for
eager and torchscript), on the pipeline's data: the error is the relative squared error of the
outputs against the fp32 model on FIDELITY batches (the metric itself is too slow to run once per
layer). Ranked once per model x family x quantization settings, cached by the model's fingerprint.

`int8_layers` then keeps a share of the units in int8, the most tolerant first, or (`auto`) returns
the most sensitive to float, fewest first, until the pipeline's metric is within --max-accuracy-drop.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import tempfile

from ..cache import cache_dir, model_fingerprint

MAX_UNITS = 16
RANKING_CALIBRATION_BATCHES = 4  # enough to rank; the trial's own build calibrates on all of them
DEFAULT_DROP = 0.01  # int8_layers=auto without a target (a stand-alone build): the metric within 1%
QUANTIZABLE = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "Linear", "LSTM", "GRU")


def quantizable_units(model) -> list[str]:
    """The model's quantizable layers in module order, grouped by their parents
    (the deepest grouping with at most MAX_UNITS units) when there are more than MAX_UNITS."""
    names = [n for n, m in model.named_modules() if n and type(m).__name__ in QUANTIZABLE]
    depth = max((n.count(".") + 1 for n in names), default=0)
    while depth > 1:
        units = list(dict.fromkeys(".".join(n.split(".")[:depth]) for n in names))
        if len(units) <= MAX_UNITS:
            return units
        depth -= 1
    return list(dict.fromkeys(n.split(".")[0] for n in names))


def family(config: dict) -> str:
    """The compile_mode whose quantizer realizes int8 for `config`: the runtime's own where it quantizes
    its graph (openvino, onnxruntime), else eager (torch FX: TorchScript runs the same int8 model)."""
    from .. import runtimes

    mode = config.get("compile_mode", "eager")
    return mode if "quantization" in runtimes.get(mode).REALIZES else "eager"


def variant_predict(model, config: dict, ctx, float_units, calibration=None):
    """predict of `model` int8-quantized by `config`'s family with `float_units` left in float."""
    from .. import knobs, runtimes

    mode = family(config)
    runtime = runtimes.get(mode)
    workdir = tempfile.mkdtemp(dir=ctx.workdir, prefix="int8-variant-")
    sub = dataclasses.replace(ctx, workdir=workdir, report={}, notes=[], int8={"float_layers": list(float_units)},
                              calibration=calibration or ctx.calibration)
    variant = {**config, "compile_mode": mode}
    candidate = copy.deepcopy(model)
    if "quantization" not in runtime.REALIZES:
        candidate = knobs.REGISTRY["quantization"].apply(candidate, variant, sub)
    candidate.eval()
    return runtime.load(runtime.prepare(candidate, variant, sub), variant, sub).predict


def relative_error(predict, expected: list, batches: list) -> float:
    """Mean over batches and output tensors of |candidate - fp32|^2 / |fp32|^2."""
    import torch
    from torch.utils import _pytree as pytree

    errors = []
    for inputs, reference in zip(batches, expected):
        for cand, ref in zip(pytree.tree_leaves(predict(*inputs)), pytree.tree_leaves(reference)):
            if not (isinstance(ref, torch.Tensor) and ref.is_floating_point()):
                continue
            ref, cand = ref.float(), cand.float()
            errors.append(float((cand - ref).pow(2).sum() / ref.pow(2).sum().clamp(min=1e-12)))
    return sum(errors) / max(len(errors), 1)


def _settings(config: dict) -> dict:
    """What a ranking depends on besides the model: knobs that change nothing here (graph_fusion off ORT) are
    at their baseline, so equivalent trials share one ranking."""
    from .. import knobs

    shown = knobs.canonical(config)
    return {"family": family(config), **{k: shown.get(k) for k in ("quantization", "quant_granularity", "precision",
                                                                     "graph_fusion")}}


def _path(key: str) -> str:
    return os.path.join(cache_dir("sensitivity"), f"{key}.json")


def load_ranking(key: str) -> dict | None:
    """A cached ranking (or auto decision) by its key; None when it is not in this machine's cache."""
    if not os.path.exists(_path(key)):
        return None
    with open(_path(key)) as f:
        return json.load(f)


def _cached(key: str, compute) -> dict:
    value = load_ranking(key)
    if value is not None:
        return value
    value = compute()
    path = _path(key)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)  # atomic: workers of one search may rank the same model at once
    return value


def ranking(model, config: dict, ctx) -> dict:
    """{"units": most sensitive first, "sensitivity": {unit: error removed by keeping it float},
    "error_int8": the all-int8 error, "family", "key"}; cached."""
    import torch

    from .accuracy import fidelity_inputs

    key = model_fingerprint(model, ctx.example_inputs, ranking=_settings(config), torch=torch.__version__)

    def compute() -> dict:
        batches = fidelity_inputs(ctx.pipeline)
        with torch.inference_mode():
            expected = [model(*b) for b in batches]
        calibration = list(ctx.calibration())[:RANKING_CALIBRATION_BATCHES]
        units = quantizable_units(model)

        def error(float_units) -> float:
            return relative_error(variant_predict(model, config, ctx, float_units, lambda: calibration), expected, batches)

        base = error(())
        sensitivity = {u: base - error((u,)) for u in units}
        ordered = sorted(units, key=lambda u: -sensitivity[u])
        return {"units": ordered, "sensitivity": sensitivity, "error_int8": base, **_settings(config)}

    return {**_cached(key, compute), "key": key}


def float_units(model, config: dict, ctx) -> tuple[list[str], dict | None]:
    """(the units `config["int8_layers"]` leaves in float, the ranking it used: None when `auto` found the
    whole int8 model within the drop, which needs no ranking)."""
    if config["int8_layers"] == "auto":
        return _auto(model, config, ctx)
    ranked = ranking(model, config, ctx)
    units = ranked["units"]
    keep_int8 = max(1, round(float(config["int8_layers"]) * len(units)))
    return units[:len(units) - keep_int8], ranked


def _auto(model, config: dict, ctx) -> tuple[list[str], dict | None]:
    """The fewest most-sensitive units whose return to float brings the metric within the drop: a binary
    search on the count, which assumes that returning more layers to float does not lower the metric."""
    import torch

    from .accuracy import candidate_accuracy, reference_accuracy

    floor = ctx.accuracy_floor
    if floor is None:
        floor = reference_accuracy(ctx.pipeline) - DEFAULT_DROP

    def meets(float_units) -> bool:
        return candidate_accuracy(ctx.pipeline, variant_predict(model, config, ctx, float_units)) >= floor

    whole = model_fingerprint(model, ctx.example_inputs, auto=_settings(config), floor=round(floor, 6), torch=torch.__version__)
    if _cached(whole, lambda: {"meets": meets(())})["meets"]:
        return [], None
    ranked = ranking(model, config, ctx)
    units = ranked["units"]

    def compute() -> dict:
        low, high = 1, len(units) - 1  # all float is no int8 model: the most we revert is all but one
        if high < low or not meets(units[:high]):
            return {"count": max(high, 0), "missed": True}
        while low < high:
            middle = (low + high) // 2
            if meets(units[:middle]):
                high = middle
            else:
                low = middle + 1
        return {"count": low}

    decision = _cached(f"{ranked['key']}-auto-{floor:.6f}", compute)
    if decision.get("missed"):
        ctx.notes.append(f"int8_layers=auto: even with only the most tolerant layer in int8 the metric is below {floor:.4f}")
    return units[:decision["count"]], ranked


def float_layers(model, config: dict, ctx) -> tuple[str, ...]:
    """The layers (module paths) the int8 quantizer of `config` leaves in float: what int8_layers decides for
    `model` (kept in ctx.int8, and said in the trial's report and notes), or what ctx.int8 was given (an export
    ships the trial's own). Each int8 quantizer calls it once per build; () where int8_layers does not apply."""
    if config.get("quantization") != "static_int8":
        return ()
    chosen = ctx.int8.get("float_layers")
    if config.get("int8_layers", "all") == "all":  # the ranking's own variants are given theirs
        return tuple(chosen or ())
    total = None
    if chosen is None:
        chosen, ranked = float_units(model, config, ctx)
        ctx.int8["float_layers"] = chosen
        if ranked is not None:
            total = len(ranked["units"])
            ctx.report["int8_ranking"] = ranked["key"]
    ctx.report.update(float_layers=",".join(chosen), int8_float_layers=len(chosen))
    kept = f"{len(chosen)} of {total} layers" if total else f"{len(chosen)} layers"
    ctx.notes.append(f"int8_layers={config['int8_layers']}: {kept} kept in float" + (f" ({', '.join(chosen)})" if chosen else ""))
    return tuple(chosen)
