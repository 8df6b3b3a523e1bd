"""slm/runtime/: run an slm package on ONNX Runtime. Imports neither torch, transformers nor onnx.

    from slm.runtime import Engine, EngineOptions, SamplingParams
"""
from slm.runtime.engine import Engine
from slm.runtime.events import GenerationEvent, KVStats
from slm.runtime.options import EngineOptions
from slm.runtime.sampling import SamplingParams

__all__ = ["Engine", "EngineOptions", "GenerationEvent", "KVStats", "SamplingParams"]
