"""pruning_method: how pruning_amount is applied (see pruning_amount). Only matters when pruning."""

from .base import Knob

KNOB = Knob(
    name="pruning_method",
    doc="l1_unstructured (zeroed weights: smaller when compressed, no dense speedup), structured "
        "(channels/neurons removed: smaller and faster) or depth (repeated blocks dropped: faster).",
    baseline="l1_unstructured",
    choices=("l1_unstructured", "structured", "depth"),
    relevant=lambda config: config.get("pruning_amount", 0.0) > 0,
    relevant_in={"pruning_amount": 0.5},
)
