"""A pipeline for a saved program, written by `autoopt search FILE.pt2` (a torch.export program) or `FILE.pt`
(TorchScript). Edit it freely: `autoopt search THIS_FILE` runs the same search.

Inputs: seeded random batches of INPUTS (one sample's shape without the batch axis, the dtype, and for integer
inputs the lowest and highest value): make_inputs(b) is the same batch for the same b; calibration draws other
seeds. Metric: output fidelity, the mean cosine similarity of each sample's outputs (every output tensor
flattened) to the original program's, on METRIC_SAMPLES samples of their own. Random inputs exercise every
layer's numerics, not the task: for a task metric and int8 calibrated on real data, replace evaluate and
calibration_data with your data.
"""

from __future__ import annotations

import functools
import types

import torch
from torch.utils import _pytree as pytree

import autoopt

# --- settings (written by autoopt) ---
NAME = "program"
PROGRAM_FILE = "model.pt2"
FORM = "exported"  # "exported": torch.export.save's .pt2; "scripted": torch.jit.save's .pt
INPUTS = [((3, 32, 32), "float32", None, None)]  # (one sample's shape, dtype, lowest, highest: integer inputs)
# --- end of settings ---

METRIC_SAMPLES = 64


def build_model():
    if FORM == "scripted":
        return torch.jit.load(PROGRAM_FILE, map_location="cpu").eval()
    program = torch.export.load(PROGRAM_FILE).module()
    # its train/eval mode was fixed when it was exported: train()/eval() raise on it, and are no-ops here
    program.train = types.MethodType(lambda self, mode=True: self, program)
    program.eval = types.MethodType(lambda self: self, program)
    return program


def batch(batch_size: int, seed: int) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for shape, dtype, low, high in INPUTS:
        dtype, size = getattr(torch, dtype), (batch_size, *shape)
        if dtype.is_floating_point:
            tensors.append(torch.randn(size, generator=generator).to(dtype))
        elif dtype == torch.bool:
            tensors.append(torch.randint(0, 2, size, generator=generator).bool())
        else:
            tensors.append(torch.randint(low, high + 1, size, generator=generator, dtype=dtype))
    return tuple(tensors)


def make_inputs(batch_size: int) -> tuple:
    return batch(batch_size, 0)


def calibration_data():
    return [batch(16, seed) for seed in range(1, 9)]


def outputs(predict) -> torch.Tensor:
    """Each sample's outputs as one row: every output tensor flattened, side by side."""
    inputs, rows = batch(METRIC_SAMPLES, 1000), []
    for start in range(0, METRIC_SAMPLES, 16):
        out = predict(*(t[start : start + 16] for t in inputs))
        rows.append(torch.cat([leaf.float().reshape(leaf.shape[0], -1) for leaf in pytree.tree_leaves(out)], dim=1))
    return torch.cat(rows)


@functools.cache
def expected() -> torch.Tensor:
    with torch.inference_mode():
        return outputs(build_model())


def evaluate(predict) -> float:
    return float(torch.nn.functional.cosine_similarity(outputs(predict), expected(), dim=-1).mean())


PIPELINE = autoopt.Pipeline(name=NAME, build_model=build_model, make_inputs=make_inputs, evaluate=evaluate,
                            calibration_data=calibration_data, padding_mask=False, model_form=FORM)
