"""quant_granularity: per_tensor or per_channel int8 weights. Only matters when quantizing.

On transformer models per-tensor int8 weights can cost several points of output fidelity where
per-channel keeps most of it. Read by the quantization knob and the onnxruntime runtime.
"""

from .base import Knob

KNOB = Knob(
    name="quant_granularity",
    doc="Scale granularity of int8 weights: per_channel (baseline) or per_tensor.",
    baseline="per_channel",
    choices=("per_channel", "per_tensor"),
    relevant=lambda config: config.get("quantization", "none") != "none",
    relevant_in={"quantization": "dynamic_int8"},
)
