"""How an Engine runs a package, as one frozen value.

    options = EngineOptions(kv_budget="8MiB", kv_policy="h2o", threads=2)
    engine = Engine(package, options)            # and later, for another package:
    other = Engine(other_package, engine.options)

Built once (from the CLI's flags, or by an embedding application) and passed whole, so a model
switch in the TUI, the server and evolve's worker processes keep every setting.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineOptions:
    provider: str = "auto"                  # auto | cpu | cuda
    threads: int | None = None              # ONNX Runtime intra-op threads (None: all cores)
    kv_budget: str | int | None = None      # tokens (2048) or bytes ("16MiB"); None: 4,096 or the context
    kv_policy: str = "none"                 # slm.runtime.eviction.POLICIES; none refuses a prompt over the budget
    kv_dtype: str | None = None             # fp32 | fp16 | int8 | int4 (None: the package's)
    evict_chunk: int | None = None          # slots freed per eviction (None: 1/8 of the budget)
    keep_recent: int | None = None          # newest tokens never evicted (None: 1/8 of the budget)
    protect_chat: bool = True               # never evict the system prompt and the current user turn
    prefill_chunk: int | None = None        # tokens per prefill call (None: the engine's default)
    lookup: int = 0                         # prompt lookup decoding's draft length (0 = off)
