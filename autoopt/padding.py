"""Padding masks: which input of a pipeline is one (declared, or detected in its batches), and the module
that trims the padding inside the model (the trim_padding knob).

A padding mask is a 2-D integer or bool input of 0/1 (batch, sequence) whose zeros form a suffix of every
row: right padding, as tokenizers pad by default. The inputs it pads share its batch and sequence axes
(input_ids, token_type_ids). Trimming cuts all of them to the batch's longest real row before the model
runs: for a model that masks its padding (attention, masked pooling) the outputs are those of the padded
batch, computed on fewer positions. It is done inside the model that is measured and shipped, so an
exported file trims by itself.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from .errors import PipelineError

BUCKET = 8  # trim_padding=bucketed: the kept length rounded up to a multiple of this (fewer distinct shapes)
CHECKED_BATCH_SIZES = (2, 8, 33)  # make_inputs batches a detection looks at, beside calibration_data's
CHECKED_CALIBRATION_BATCHES = 16


@dataclass(frozen=True)
class PaddingMask:
    mask: int  # the mask's position among the model's inputs
    padded: tuple[int, ...]  # the inputs cut on axis 1 (the mask among them)
    names: tuple[str, ...]  # every input's name (forward's arguments)
    how: str  # "declared" or "detected"
    padding_share: float  # the share of padded positions in the batches looked at
    refused: str | None = None  # why trimming would not keep this model's outputs (_changed_outputs)

    def describe(self) -> str:
        trimmed = ", ".join(self.names[i] for i in self.padded)
        return (f"padding mask {self.names[self.mask]} ({self.how}; zeros a suffix of every row): trim_padding cuts "
                f"{trimmed} to the longest real row; {self.padding_share:.0%} of the positions in the pipeline's "
                f"batches are padding")


def trimmed_length(mask) -> int:
    """The longest real row of a batch (at least 2: one position would specialize the graphs' shapes)."""
    return max(int(mask.sum(dim=1).max()), min(2, mask.shape[1]))


def trim(inputs: tuple, found: PaddingMask, bucket: int = 1) -> tuple:
    """A batch cut as a trimming model cuts it: to its longest real row, rounded up to a multiple of `bucket`."""
    kept = -(-trimmed_length(inputs[found.mask]) // bucket) * bucket
    return tuple(t[:, :kept] if i in found.padded else t for i, t in enumerate(inputs))


def trimmed_batches(batches: list[tuple], pipeline, value: str) -> list[tuple]:
    """`batches` as a model with trim_padding=`value` sees them."""
    if value == "off" or (found := find(pipeline)) is None:
        return batches
    return [trim(b, found, multiple(value)) for b in batches]


def annotate_manifest(manifest, pipeline) -> None:
    """A bundle of a trimming model: the manifest (bundle.manifest.Manifest) says what it expects (`padding`), and
    the inputs it cuts have a `sequence` axis."""
    value = manifest.config.get("trim_padding", "off")
    # A declared mask (hf:PATH declares one) is said even untrimmed: a server must pad as the bundle was timed.
    found = find(pipeline) if value != "off" or pipeline.padding_mask not in (None, False) else None
    if found is None:
        return
    if value == "off":
        mask = next(e for e in manifest.inputs if e["name"] == found.names[found.mask])
        manifest.padding = {"mask": mask["name"], "trims": [], "expects": "right padding: the mask's zeros end each row",
                               "sequence_axis": f"fixed: every input padded to {mask['shape'][1]} positions, as timed"}
        return
    trims = [found.names[i] for i in found.padded]
    manifest.padding = {
        "mask": found.names[found.mask], "trims": trims, "bucket": multiple(value),
        "expects": "right padding: the mask's zeros end each row (the model keeps each batch's longest real row)",
        "sequence_axis": "dynamic: the trimmed inputs may come padded to any length"}
    for entry in manifest.inputs:
        if entry["name"] in trims:
            entry["shape"][1] = "sequence"


def multiple(value: str) -> int:
    """What a trim_padding value rounds the kept length up to."""
    return BUCKET if value == "bucketed" else 1


def share(inputs: tuple, found: PaddingMask) -> float:
    mask = inputs[found.mask]
    return 1.0 - float(mask.sum()) / max(mask.numel(), 1)


def trimming(model, found: PaddingMask, bucket: int = 1):
    """`model` behind a module that cuts the padded inputs to the batch's longest real row (rounded up to a
    multiple of `bucket`) before calling it. Its forward takes the same positional inputs; `input_names` and
    `sequence_inputs` tell the graph exporters the names and which inputs have a dynamic sequence axis."""
    import torch

    class TrimPadding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.input_names = list(found.names)
            self.sequence_inputs = tuple(found.padded)

        def extra_repr(self) -> str:  # in the fingerprint of the artifacts built from it (cache.model_fingerprint)
            return f"mask={found.names[found.mask]}, cuts={[found.names[i] for i in found.padded]}, bucket={bucket}"

        def forward(self, *inputs):
            mask = inputs[found.mask]
            kept = mask.sum(dim=1).max().clamp(min=2)
            if bucket > 1:
                kept = (kept + (bucket - 1)) // bucket * bucket
            if torch.compiler.is_compiling():  # torch.export (ONNX, AOTInductor): a data-dependent size
                kept = kept.clamp(max=mask.shape[1]).item()  # a bucket may round past the padded length
                torch._check(kept >= 2)
                for i in found.padded:  # each input's own length symbol: a slice of it is then `kept` long
                    torch._check(kept <= inputs[i].shape[1])
            # a TorchScript trace (and OpenVINO's) records a tensor slice bound as a value of the graph
            return self.model(*(t[:, :kept] if i in found.padded else t for i, t in enumerate(inputs)))

    return TrimPadding().eval()


def find(pipeline) -> PaddingMask | None:
    """The pipeline's padding mask: declared (Pipeline.padding_mask), else detected in its batches; None
    when it has none (or padding_mask=False). Computed once per pipeline object."""
    cached = _FOUND.get(id(pipeline))
    if cached is not None and cached[0] is pipeline:
        return cached[1]
    found = _find(pipeline)
    _FOUND[id(pipeline)] = (pipeline, found)
    return found


_FOUND: dict[int, tuple] = {}


def _find(pipeline) -> PaddingMask | None:
    from .pipeline import call_user
    from .runtimes.base import input_names

    if pipeline.padding_mask is False:
        return None
    where = pipeline.source or f"pipeline {pipeline.name!r}"
    batches = [call_user(pipeline, f"make_inputs({b})", pipeline.make_inputs, b) for b in CHECKED_BATCH_SIZES]
    if pipeline.calibration_data is not None:
        batches += call_user(pipeline, "calibration_data()", lambda: [
            tuple(b) for b in itertools.islice(pipeline.calibration_data(), CHECKED_CALIBRATION_BATCHES)])
    model = pipeline.build_model()
    names = tuple(input_names(model, len(batches[0])))
    if pipeline.padding_mask is None:
        candidates = [i for i in range(len(names)) if all(_suffix_rows(b[i]) is None for b in batches)
                      and any(bool((b[i] == 0).any()) for b in batches)]
        if len(candidates) > 1:  # two 0/1 inputs with suffix zeros: the one named a mask, else none
            candidates = [i for i in candidates if "mask" in names[i].lower()]
        if len(candidates) != 1:
            return None
        mask, how = candidates[0], "detected"
    else:
        mask, how = _index(pipeline.padding_mask, names, where, "padding_mask"), "declared"
        for batch in batches:
            if (problem := _suffix_rows(batch[mask])) is not None:
                raise PipelineError(f"{where}: padding_mask {names[mask]!r} must be a (batch, sequence) mask of 0/1 whose "
                                    f"zeros end each row (right padding); {problem}. Pad on the right (tokenizer "
                                    f"padding_side='right'), or leave padding_mask out.")
    padded = _padded(pipeline, batches, mask, names, where)
    total = sum(b[mask].numel() for b in batches)
    share_ = 1.0 - sum(float(b[mask].sum()) for b in batches) / max(total, 1)
    return PaddingMask(mask, padded, names, how, share_, _changed_outputs(model, batches, mask, padded, names))


def _changed_outputs(model, batches: list[tuple], mask: int, padded: tuple[int, ...], names) -> str | None:
    """Why trimming would not keep the model's outputs (an output per position; a model that does not mask its
    padding; one that fails on fewer positions), or None: checked on the batch with the most padding to cut."""
    import torch
    from torch.utils import _pytree as pytree

    from .knobs.base import EXACT

    batch = max(batches, key=lambda b: b[mask].shape[1] - trimmed_length(b[mask]))
    cut = trim(batch, PaddingMask(mask, padded, names, "", 0.0))
    try:
        with torch.inference_mode():
            full, short = (pytree.tree_leaves(model.eval()(*b)) for b in (batch, cut))
    except Exception as exc:  # noqa: BLE001 - e.g. a model built for one sequence length
        return f"the model fails on a batch cut to its longest real row: {type(exc).__name__}: {exc}"[:300]
    for i, (a, b) in enumerate(zip(full, short)):
        if not isinstance(a, torch.Tensor):
            continue
        if a.shape != b.shape:
            return (f"output {i} has the sequence axis (shape {tuple(a.shape)} padded, {tuple(b.shape)} trimmed): its "
                    f"padded positions cannot be returned as the model computes them")
        a, b = a.double().flatten(), b.double().flatten()
        error = float((a - b).abs().max()) / max(1.0, float(a.abs().max()))
        cosine = float(torch.nn.functional.cosine_similarity(a, b, dim=0)) if a.norm() and b.norm() else 1.0
        if error > EXACT[1] or cosine < EXACT[0]:
            return (f"output {i} changes when the padding is cut (relative error {error:.3g}): the model does not mask "
                    f"its padding, so trimming would change what it computes")
    return None


def _index(ref, names: tuple[str, ...], where: str, field: str) -> int:
    if isinstance(ref, int) and not isinstance(ref, bool) and 0 <= ref < len(names):
        return ref
    if isinstance(ref, str) and ref in names:
        return names.index(ref)
    raise PipelineError(f"{where}: Pipeline {field} {ref!r} names no input of the model. Expected one of "
                        f"{list(names)} (forward's arguments) or a position 0..{len(names) - 1}.")


def _padded(pipeline, batches: list[tuple], mask: int, names: tuple[str, ...], where: str) -> tuple[int, ...]:
    """The inputs the mask pads: declared (padded_inputs), else every input with its batch and sequence axes."""
    def shaped(i: int) -> bool:
        return all(b[i].dim() >= 2 and tuple(b[i].shape[:2]) == tuple(b[mask].shape) for b in batches)

    if pipeline.padded_inputs is None:
        return tuple(i for i in range(len(names)) if shaped(i))
    padded = {mask, *(_index(ref, names, where, "padded_inputs entry") for ref in pipeline.padded_inputs)}
    for i in sorted(padded):
        if not shaped(i):
            raise PipelineError(f"{where}: padded_inputs names {names[i]!r}, whose first two axes are not the mask's "
                                f"(batch, sequence) in every batch. List only inputs padded like {names[mask]!r}.")
    return tuple(sorted(padded))


def _suffix_rows(mask) -> str | None:
    """Why `mask` is not a right-padding mask (None: it is one): 2-D, integer or bool, 0/1, each row's ones
    first and at least one of them."""
    import torch

    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or mask.is_floating_point() or mask.is_complex():
        return f"got {'a tensor of shape ' + str(tuple(mask.shape)) if isinstance(mask, torch.Tensor) else mask!r}"
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        return "it holds values other than 0 and 1"
    lengths = mask.sum(dim=1, keepdim=True)
    expected = torch.arange(mask.shape[1]).unsqueeze(0) < lengths
    bad = (mask.bool() != expected).any(dim=1).nonzero()
    if len(bad):
        return f"row {int(bad[0])} has a zero before a one (left padding?)"
    if bool((lengths == 0).any()):
        return f"row {int((lengths == 0).nonzero()[0, 0])} is all padding"
    return None
