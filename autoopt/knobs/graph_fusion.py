"""graph_fusion: how much the onnxruntime runtime fuses the graph. Ignored by the other runtimes.

- none: ORT's basic optimizations only (constant folding, redundant nodes), no fusion.
- basic: every ORT session optimization (Conv+BN+ReLU, GELU, LayerNorm, MatMul+Add fusions ...).
- transformer: ORT's offline transformer optimizer first (attention, SkipLayerNorm, BiasGelu fusion
  in BERT/GPT-style graphs), before quantization; a graph without those patterns is pruned with a
  message saying so.
"""

from .base import Knob

KNOB = Knob(
    name="graph_fusion",
    doc="ONNX Runtime graph fusion: none, basic (ORT session fusions), transformer (attention fusion).",
    baseline="basic",
    choices=("none", "basic", "transformer"),
    relevant=lambda config: config.get("compile_mode", "eager") == "onnxruntime",
    relevant_in={"compile_mode": "onnxruntime"},
)
