"""runtime/: run an slm package on ONNX Runtime. Imports neither torch, transformers nor onnx.

    from runtime import Engine, SamplingParams
"""
from runtime.engine import Engine
from runtime.events import GenerationEvent, KVStats
from runtime.sampling import SamplingParams

__all__ = ["Engine", "GenerationEvent", "KVStats", "SamplingParams"]
