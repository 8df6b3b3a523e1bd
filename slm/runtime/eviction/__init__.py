"""KV-cache eviction policies. The cache owns the budget and decides when to evict; a policy decides
which tokens go. `make_policy(name, package)` -> a policy, or None for "none" (never evict: over budget is an
error); a learned policy (namm) reads its parameters from the package."""
from __future__ import annotations

from pathlib import Path

from slm.runtime.eviction.base import CacheView, Policy, Statistic
from slm.runtime.eviction.h2o import H2O
from slm.runtime.eviction.knorm import KeyNorm
from slm.runtime.eviction.namm import NAMM
from slm.runtime.eviction.snapkv import SnapKV
from slm.runtime.eviction.streaming_llm import StreamingLLM
from slm.runtime.eviction.tova import TOVA
from slm.core.errors import SlmError

POLICIES = {"none": None, "streaming": StreamingLLM, "h2o": H2O, "tova": TOVA, "snapkv": SnapKV, "knorm": KeyNorm, "namm": NAMM}
POLICY_NAMES = tuple(POLICIES)          # every message and choice list that names the policies reads this
EVICTING = POLICY_NAMES[1:]             # the policies that evict (all but none)
# every statistic some policy reads, by name, in a fixed order: what a cache made for no policy keeps
STATISTICS: dict[str, Statistic] = {s.name: s for cls in POLICIES.values() if cls for s in cls.statistics}


def make_policy(name: str, package: str | Path | None = None) -> Policy | None:
    if name not in POLICIES:
        raise SlmError(f"--kv-policy {name!r} is unknown; accepted: {', '.join(POLICIES)}")
    cls = POLICIES[name]
    if cls is NAMM:
        if package is None:
            raise SlmError("--kv-policy namm reads its evolved scorer from a package; none was given")
        return NAMM.from_package(package)
    return cls() if cls else None


__all__ = ["CacheView", "Policy", "POLICIES", "POLICY_NAMES", "EVICTING", "STATISTICS", "Statistic", "make_policy",
           "H2O", "KeyNorm", "NAMM", "SnapKV", "StreamingLLM", "TOVA"]
