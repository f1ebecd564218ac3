"""A candidate's build, as a trial, an export and the serving-memory measurement do it: the model-level knobs
(in registry order), then the runtime's prepare (the offline work whose artifact ships); and the calibration
batches int8 and the trace checks see.
"""

from __future__ import annotations

import functools
import time

CALIBRATION_BATCHES = 16  # calibration_data batches read: enough for int8 ranges, bounded for a large dataset


def calibration_batches(pipeline, config: dict | None = None) -> list[tuple]:
    """The pipeline's calibration_data, or seeded make_inputs batches when it has none; cut as the model cuts
    them where `config` trims padding (a quantizer calibrated on padded positions would widen its ranges
    for values the trimmed model never sees)."""
    from ..padding import trimmed_batches

    return trimmed_batches(_calibration_batches(pipeline), pipeline, (config or {}).get("trim_padding", "off"))


def _calibration_batches(pipeline) -> list[tuple]:
    import torch

    if pipeline.calibration_data is not None:
        import itertools

        from ..pipeline import call_user

        def first_batches():
            return [tuple(batch) for batch in itertools.islice(pipeline.calibration_data(), CALIBRATION_BATCHES)]

        # a bug in the user's function is a PipelineError, not a reason to prune int8 for good
        return call_user(pipeline, "calibration_data()", first_batches)
    batches = []
    for seed in range(8):
        torch.manual_seed(seed)
        batches.append(pipeline.make_inputs(32))
    return batches


def build_candidate(pipeline, config: dict, device: str, threads: int, workdir: str, batch_inputs: tuple,
                    accuracy_floor: float | None = None, float_layers: list | None = None):
    """Model-level knobs, then the runtime's prepare: (runtime, Prepared, context, build seconds).
    `accuracy_floor`: the lowest metric within the drop (int8_layers=auto); `float_layers`: the int8 layers
    to leave in float as given (an export ships the trial's own) instead of choosing them again."""
    from .. import knobs, runtimes
    from ..study import programs
    from . import sensitivity

    programs.check_build(pipeline, config)  # a saved program: before any work
    runtime = runtimes.get(config["compile_mode"])
    ctx = runtimes.BuildContext(
        device=device, threads=threads, workdir=workdir, example_inputs=pipeline.make_inputs(2),
        batch_inputs=batch_inputs, make_inputs=pipeline.make_inputs, pipeline=pipeline,
        # once per build: quantization and the trace check may both ask (the user's data read once)
        calibration=functools.cache(lambda: calibration_batches(pipeline, config)),
        accuracy_floor=accuracy_floor, int8={} if float_layers is None else {"float_layers": list(float_layers)},
        choose_layers=sensitivity.float_layers,
    )
    started = time.perf_counter()
    model = knobs.apply_model_knobs(pipeline.build_model().eval(), config, ctx, runtime.REALIZES)
    model.eval()  # a statement: exported (PT2E) models return None from eval()
    runtimes.check_carried(model, config, ctx)  # the winner must ship: a trial its format cannot ship stops here
    prepared = runtime.prepare(model, config, ctx)
    return runtime, prepared, ctx, time.perf_counter() - started
