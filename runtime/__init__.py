"""runtime/: run an slm package on ONNX Runtime. Imports neither torch, transformers nor onnx.

    from runtime import Engine, EngineOptions, SamplingParams
"""
from runtime.engine import Engine
from runtime.events import GenerationEvent, KVStats
from runtime.options import EngineOptions
from runtime.sampling import SamplingParams

__all__ = ["Engine", "EngineOptions", "GenerationEvent", "KVStats", "SamplingParams"]
