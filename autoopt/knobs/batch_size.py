"""batch_size: how many samples one predict call carries. Realized by the measurement (the inputs)."""

from .base import Knob

KNOB = Knob(
    name="batch_size",
    doc="Samples per predict call; throughput = batch_size / p50 latency.",
    baseline=1,
    bounds=(1, 65536),
    integer=True,
    tasks=("infer", "train"),
    changes_numerics=False,  # evaluate batches by itself; fidelity and training numerics use fixed batches
)
