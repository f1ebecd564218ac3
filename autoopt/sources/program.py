"""`FILE.pt2` (a torch.export program) and `FILE.pt` (a TorchScript module) as a pipeline file
(program_template.py with the settings filled in). Inputs: `--input-shape 3x224x224` (one sample, without
the batch axis; several inputs: `3x224x224,16`) and `--input-dtype`, or a .pt2's own example inputs. The
program is run on them here, once, so that a wrong shape is one error line and not a failed search.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ConfigError, option

TEMPLATE = Path(__file__).with_name("program_template.py")
SETTINGS_BLOCK = re.compile(r"# --- settings \(written by autoopt\) ---\n.*?# --- end of settings ---\n", re.S)
INT_RANGE = (0, 9)  # integer inputs without an example to take the range from
SHAPE_FIX = "Give --input-shape as one sample's sizes without the batch axis, e.g. 3x224x224 (several inputs: 3x224x224,16)."


def pipeline_text(ref, input_shape: str | None = None, input_dtype: str | None = None) -> str:
    import torch

    path = Path(ref).expanduser()
    if not path.is_file():
        raise ConfigError(f"{ref}: no such file. Expected a torch.export program (.pt2, written by torch.export.save) "
                          "or a TorchScript module (.pt, written by torch.jit.save).")
    form = "exported" if path.suffix == ".pt2" else "scripted"
    program, example = _load(path, form)
    if input_shape is None:
        if example is None:
            why = "a TorchScript module" if form == "scripted" else "no example inputs saved with it"
            raise ConfigError(f"{ref} does not record its input shapes ({why}). {SHAPE_FIX} Add --input-dtype when not "
                              "float32.")
        inputs = example
    else:
        inputs = [(shape, "float32", *INT_RANGE) for shape in _shapes(input_shape)]
    inputs = _with_dtypes(inputs, input_dtype)
    settings = {"NAME": re.sub(r"\W+", "_", path.stem).strip("_") or "program", "PROGRAM_FILE": str(path.resolve()),
                "FORM": form, "INPUTS": inputs}
    block = "# --- settings (written by autoopt) ---\n" + "".join(f"{k} = {v!r}\n" for k, v in settings.items()) \
        + "# --- end of settings ---\n"
    text = SETTINGS_BLOCK.sub(lambda _: block, TEMPLATE.read_text(), count=1)
    namespace: dict = {}
    exec(compile(text, str(TEMPLATE), "exec"), namespace)  # the batches the search will draw, made as it makes them
    _check_runs(ref, program, namespace["batch"], inputs, example, torch)
    return text


def _load(path: Path, form: str):
    """(the loaded program, its example inputs as INPUTS entries, or None)."""
    import torch

    try:
        if form == "scripted":
            return torch.jit.load(str(path), map_location="cpu"), None
        program = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001 - any unreadable file: one message
        kind = ("TorchScript module (torch.jit.save; torch.save's weights or a pickled nn.Module are not TorchScript: "
                "load those in a pipeline file)" if form == "scripted" else "torch.export program (torch.export.save)")
        raise ConfigError(f"{path}: cannot load it as a {kind}: {_first(exc)}.") from None
    _check_batch_axis(path, program)
    args, kwargs = program.example_inputs or ((), {})
    if kwargs or not args or not all(isinstance(a, torch.Tensor) for a in args):
        return program.module(), None
    return program.module(), [(tuple(a.shape[1:]), str(a.dtype).removeprefix("torch."),
                               *((int(a.min()), int(a.max())) if not a.dtype.is_floating_point and a.dtype != torch.bool
                                 and a.numel() else (None, None))) for a in args]


def _check_batch_axis(path: Path, program) -> None:
    """autoopt times several batch sizes: every input's axis 0 must be dynamic (a torch.export Dim)."""
    users = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        value = node.meta.get("val")
        if node.op == "placeholder" and node.name in users and getattr(value, "shape", None) is not None \
                and len(value.shape) and isinstance(value.shape[0], int):
            raise ConfigError(f"{path} was exported with a fixed batch of {value.shape[0]} (axis 0 of input "
                              f"{node.name!r}), and autoopt searches batch sizes. Export it with a dynamic batch axis: "
                              "torch.export.export(model, args, dynamic_shapes=({0: torch.export.Dim('batch')}, ...)).")


def _shapes(spec: str) -> list[tuple]:
    shapes = []
    for part in str(spec).replace(" ", "").split(","):
        if not re.fullmatch(r"(\d+(x\d+)*)?", part) or any(int(s) == 0 for s in filter(None, part.split("x"))):
            raise ConfigError(f"{option('input_shape', spec)}: {part!r} is not a shape. " + SHAPE_FIX)
        shapes.append(tuple(int(s) for s in part.split("x")) if part else ())
    return shapes


def _with_dtypes(inputs: list, spec: str | None) -> list:
    import torch

    if spec is None:
        return inputs
    names = str(spec).replace(" ", "").split(",")
    if len(names) not in (1, len(inputs)):
        raise ConfigError(f"{option('input_dtype', spec)} names {len(names)} dtypes for {len(inputs)} inputs. Expected one "
                          "dtype for all, or one per input, in --input-shape's order.")
    for name in names:
        if not isinstance(getattr(torch, name, None), torch.dtype):
            raise ConfigError(f"{option('input_dtype', spec)}: {name!r} is not a torch dtype. Expected e.g. float32, "
                              "bfloat16, int64, int32, bool.")
    names = names * len(inputs) if len(names) == 1 else names
    return [(shape, name, *(low_high if low_high[0] is not None else INT_RANGE))
            for (shape, _, *low_high), name in zip(inputs, names)]


def _check_runs(ref, program, batch, inputs: list, example, torch) -> None:
    """The program runs at two batch sizes on the inputs, and every output has the batch axis first."""
    given = ",".join("x".join(map(str, shape)) + f" ({dtype})" for shape, dtype, *_ in inputs)
    for rows in (1, 3):
        try:
            with torch.no_grad():
                leaves = torch.utils._pytree.tree_leaves(program(*batch(rows, 0)))
        except Exception as exc:  # noqa: BLE001 - a wrong shape, dtype or number of inputs: one message
            hint = (" The program was exported with " + ",".join("x".join(map(str, s)) + f" ({d})" for s, d, *_ in example)
                    + ": leave --input-shape out, or give that." if example else " " + SHAPE_FIX)
            raise ConfigError(f"{ref} does not run on inputs {given} at batch {rows}: {_first(exc)}.{hint}") from None
        if not leaves or any(not isinstance(t, torch.Tensor) or not t.dim() or t.shape[0] != rows for t in leaves):
            raise ConfigError(f"{ref}: its outputs on a batch of {rows} are not tensors with the batch axis first. "
                              "autoopt compares outputs sample by sample: write a pipeline file for this model.")


def _first(exc: Exception) -> str:
    """An exception's gist in one line: TorchScript puts it last, under a traceback of the scripted code."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
    line = lines[-1] if "TorchScript interpreter" in lines[0] else lines[0]
    line = line.split(". ")[0].rstrip(".")[:200]
    return line if re.match(r"\w+(Error|Exception): ", line) else f"{type(exc).__name__}: {line}"
