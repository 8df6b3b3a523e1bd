"""The KV cache: one pre-allocated K and V buffer per layer, sized once by the budget, never grown.

Buffers are (1, num_kv_heads, capacity, head_dim). ONNX Runtime's GroupQueryAttention reads past
keys from, and appends new ones into, the same buffer (past and present are bound to one OrtValue),
so a decode step copies no KV.

When the budget is full, `make_room` asks the policy for scores and compacts each (layer, KV head)
to its best slots, keeping slot order = position order. Each slot remembers the true rotary position
of its token, so the graph (which takes position ids as an input) continues at the true position.
Decisions are per (layer, KV head) with the same count everywhere, so every layer keeps one length.

The cache stores keys and values at one dtype (fp32, fp16, int8 or int4, the package's `KVVariant`s):
a quantized cache has fixed per-channel scales (calibrated at export), so a slot's codes move on
compaction alone, and the runtime dequantises (slm/runtime/kv_quant.py) only what it reads itself.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from slm.runtime.eviction import EVICTING, STATISTICS, CacheView, Policy, Statistic
from slm.runtime.kv_quant import PER_BYTE, STORAGE, dequantize, quantize
from slm.core.errors import BudgetExceededError, PromptTooLongError, SlmError
from slm.core.package import Manifest

_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3,
          "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3}


DEFAULT_CAPACITY = 4096  # KV slots when no budget is given (the model's context if smaller)


def capacity_of(budget: str | int | None, manifest: Manifest, dtype: str | None = None) -> int:
    """A --kv-budget (tokens or bytes, see parse_budget) as KV slots; no budget: DEFAULT_CAPACITY,
    or the model's context if that is smaller."""
    return parse_budget(budget, manifest, dtype) or min(manifest.kv.default_capacity, DEFAULT_CAPACITY)


def parse_budget(text: str | int | None, manifest: Manifest, dtype: str | None = None) -> int | None:
    """A KV budget as tokens: "2048" or "2048tok" are tokens, "16MiB"/"64MB"/"1000000B" are bytes,
    counted at the cache's `dtype` (default: the package's), a quantized cache's scales included."""
    if text is None:
        return None
    per_token = manifest.kv.bytes_per_token(manifest.dims, dtype)
    fixed = manifest.kv.fixed_bytes(manifest.dims, dtype)
    if isinstance(text, int):
        tokens = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(tok|tokens|[kmg]i?b|b)?\s*", str(text).lower())
        if not m:
            raise SlmError(f"KV budget {text!r} is not understood; give tokens (2048) or bytes (16MiB, 64MB, 1GiB)")
        value, unit = float(m.group(1)), m.group(2) or "tok"
        tokens = int(value) if unit in ("tok", "tokens") else max(0, int(value * _UNITS[unit]) - fixed) // per_token
    if tokens < 16:
        scales = f" + {fixed} bytes of scales" if fixed else ""
        raise SlmError(f"KV budget {text!r} holds {tokens} tokens; at least 16 are needed "
                       f"({16 * per_token + fixed} bytes for this model at KV dtype {dtype or manifest.kv.dtype}: "
                       f"{per_token} bytes per token{scales})")
    return tokens


class _FloatKeys(Sequence):
    """A quantized cache's keys per layer, dequantised only when a policy reads them (knorm)."""

    def __init__(self, cache: "KVCache"):
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache.keys)

    def __getitem__(self, layer: int) -> np.ndarray:
        return self.cache.float_keys(layer)


@dataclass(frozen=True)
class EvictionConfig:
    policy: Policy | None           # None: never evict
    evict_chunk: int                # slots freed per eviction (at least what is needed)
    keep_recent: int                # the most recent tokens are never evicted
    n_sink: int = 4                 # nor the first tokens: attention sinks (Xiao et al. 2023), whatever the policy
    protected: tuple[tuple[int, int], ...] = ()   # true-position ranges never evicted (system prompt, current turn)


@dataclass(frozen=True)
class CacheSnapshot:
    """A cache's whole state at one moment (KVCache.snapshot), to go back to with KVCache.restore."""
    keys: tuple[np.ndarray, ...]
    values: tuple[np.ndarray, ...]
    positions: np.ndarray
    stats: dict[str, np.ndarray]
    length: int
    next_position: int
    history: tuple[int, ...]
    evicted: int


class KVCache:
    def __init__(self, manifest: Manifest, capacity: int, device: str = "cpu", attention_stats: bool = False,
                 kv_dtype: str | None = None, scales: tuple[np.ndarray, np.ndarray] | None = None,
                 statistics: Sequence[Statistic] | None = None):
        """kv_dtype: a dtype of the package's (manifest names, default its own); scales: a quantized
        cache's (key, value) scales, each (num_layers, num_kv_heads, head_dim) float32; statistics:
        the per-slot statistics to keep (those the evicting policy reads, `Policy.statistics`;
        None: every policy's), folded from the graph's attention mass when `attention_stats`."""
        d = manifest.dims
        self.kv_dtype = kv_dtype or manifest.kv.dtype
        dtype = STORAGE[self.kv_dtype]
        shape = (1, d.num_kv_heads, capacity, d.head_dim // PER_BYTE.get(self.kv_dtype, 1))
        self.capacity = capacity
        self.manifest = manifest
        if (scales is None) != (self.kv_dtype not in ("int8", "int4")):
            raise ValueError(f"a {self.kv_dtype} KV cache takes scales exactly when it is quantized")
        # (L, H, 1, hd) for dequantising a layer's (H, n, hd) slice; the graph reads each layer's (1, H, 1, hd)
        self.k_scale, self.v_scale = ((np.ascontiguousarray(s[:, :, None], np.float32) for s in scales)
                                      if scales is not None else (None, None))
        self.scale_ort = ([(ort.OrtValue.ortvalue_from_numpy(self.k_scale[i][None]),
                            ort.OrtValue.ortvalue_from_numpy(self.v_scale[i][None])) for i in range(d.num_layers)]
                          if scales is not None else [])
        self.sliding = np.asarray(manifest.kv.sliding_window) > 0     # layers that keep a recent window
        if device == "cpu":      # numpy owns the memory, OrtValues view it: eviction compacts in numpy
            self.keys = [np.zeros(shape, dtype) for _ in range(d.num_layers)]
            self.values = [np.zeros(shape, dtype) for _ in range(d.num_layers)]
            self.key_ort = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.keys]
            self.value_ort = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.values]
        else:
            self.keys = self.values = None
            self.key_ort = [ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, device, 0) for _ in range(d.num_layers)]
            self.value_ort = [ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, device, 0) for _ in range(d.num_layers)]
        self.nbytes = 2 * d.num_layers * int(np.prod(shape)) * np.dtype(dtype).itemsize + \
            (self.k_scale.nbytes + self.v_scale.nbytes if scales is not None else 0)
        stats_shape = (d.num_layers, d.num_kv_heads, capacity)
        self.positions = np.zeros(stats_shape, np.int64)   # true position of the token in each slot
        self.statistics = tuple(STATISTICS.values() if statistics is None else statistics)
        self.stats = {s.name: np.zeros(((s.bank,) if s.bank else ()) + stats_shape, np.float32) for s in self.statistics}
        # where the graph writes each layer's attention mass per slot (padded to capacity), bound once
        self.mass = np.zeros((d.num_layers, 1, d.num_kv_heads, capacity), np.float32) if attention_stats else None
        self.mass_ort = [ort.OrtValue.ortvalue_from_numpy(m) for m in self.mass] if attention_stats else []
        self.reset()

    def __getattr__(self, name: str) -> np.ndarray:
        """A kept statistic by name (cache.cumulative, cache.spectrum, ...)."""
        stats = self.__dict__.get("stats")
        if stats is not None and name in stats:
            return stats[name]
        raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}"
                             + (f" (statistics kept: {', '.join(stats) or 'none'})" if name in STATISTICS else ""))

    def reset(self) -> None:
        self.length = 0             # slots in use
        self.next_position = 0      # true position of the next token
        self.history: list[int] = []  # every token fed, in order (the logical conversation)
        self.evicted = 0
        for value in self.stats.values():
            value[:] = 0

    # --- the budget ------------------------------------------------------------------------------
    def eviction(self, policy: Policy | None, evict_chunk: int | None = None, keep_recent: int | None = None,
                 protected: tuple[tuple[int, int], ...] = ()) -> EvictionConfig:
        """When and how much to evict here: by default 1/8 of the capacity at a time, and the newest
        1/8 never."""
        return EvictionConfig(policy=policy, evict_chunk=evict_chunk or max(1, self.capacity // 8),
                              keep_recent=self.capacity // 8 if keep_recent is None else keep_recent,
                              protected=protected)

    @property
    def limit(self) -> int:
        """Tokens this cache holds without evicting: its capacity, or the rotary table if shorter."""
        return min(self.capacity, self.manifest.dims.max_positions)

    def fits(self, n: int) -> bool:
        """Whether `n` more tokens fit without evicting."""
        return self.length + n <= self.limit

    def chunk_size(self, preferred: int) -> int:
        """Tokens per graph call when feeding many: at most a quarter of the capacity, so that a
        chunk leaves room to evict around it."""
        return max(1, min(preferred, self.capacity // 4))

    def draft_room(self, evicts: bool) -> int:
        """Drafted tokens one call may check after the token it feeds: with eviction, a chunk's worth;
        without, what still fits (less one, so that the token chosen after them fits too)."""
        return self.chunk_size(self.capacity) - 1 if evicts else self.limit - self.length - 2

    # --- what the graph wrote ------------------------------------------------------------------
    def commit(self, tokens: Sequence[int]) -> None:
        """Record a graph call that appended `tokens` (their keys and values, and when the graph
        outputs them, their attention mass) after what the cache held."""
        self.append(len(tokens))
        self.history.extend(tokens)
        if self.mass is not None:
            self.observe(len(tokens))

    def append(self, n: int) -> None:
        """Record that the graph appended n tokens at slots [length, length+n)."""
        new = slice(self.length, self.length + n)
        self.positions[:, :, new] = np.arange(self.next_position, self.next_position + n)
        for value in self.stats.values():
            value[..., new] = 0.0               # slots freed by eviction hold stale statistics
        self.length += n
        self.next_position += n

    def rewind(self, keep: int) -> bool:
        """Forget every token fed after the first `keep` of the history (a conversation that changed
        its last turn). False when eviction already removed some of them: then only a reset is exact."""
        drop = len(self.history) - keep
        if drop <= 0:
            return True
        cut = self.next_position - drop                 # the dropped tokens sit at positions >= cut
        counts = (self.positions[:, :, :self.length] >= cut).sum(-1)
        if (counts != drop).any():
            return False
        self.length -= drop
        self.next_position = cut
        del self.history[keep:]
        return True

    def observe(self, n_queries: int) -> None:
        """Fold the step's attention mass (written by the graph into `self.mass`, summed over the
        step's n queries, whose tokens are the last n slots) into the statistics kept."""
        n = self.length
        m = self.mass[:, 0, :, :n]                          # (L, H, length)
        positions = self.positions[:, :, :n]
        for statistic in self.statistics:
            statistic.fold(self.stats[statistic.name][..., :n], m, n_queries, positions)

    def view(self) -> CacheView:
        n = self.length
        return CacheView(positions=self.positions[:, :, :n],
                         keys=[k[0, :, :n] for k in self.keys] if self.k_scale is None else _FloatKeys(self),
                         next_position=self.next_position, stats={k: v[..., :n] for k, v in self.stats.items()})

    def snapshot(self) -> CacheSnapshot:
        """The whole state (keys, values, statistics, history), to come back to with `restore`."""
        if self.keys is None:
            raise SlmError("a snapshot is taken of CPU caches only")
        return CacheSnapshot(keys=tuple(k.copy() for k in self.keys), values=tuple(v.copy() for v in self.values),
                             positions=self.positions.copy(), stats={k: v.copy() for k, v in self.stats.items()},
                             length=self.length, next_position=self.next_position, history=tuple(self.history),
                             evicted=self.evicted)

    def restore(self, snap: CacheSnapshot) -> None:
        """Back to `snap`, in place: the graph's bindings view these same buffers."""
        for buf, saved in zip(self.keys + self.values, snap.keys + snap.values):
            buf[...] = saved
        self.positions[...] = snap.positions
        for name, value in self.stats.items():
            value[...] = snap.stats[name]
        self.length, self.next_position, self.evicted = snap.length, snap.next_position, snap.evicted
        self.history = list(snap.history)

    def float_keys(self, layer: int) -> np.ndarray:
        """A layer's cached keys (H, length, head_dim) as floats: a view, or dequantised codes."""
        k = self.keys[layer][0, :, :self.length]
        return dequantize(k, self.k_scale[layer], self.kv_dtype) if self.k_scale is not None else k

    def make_room(self, n: int, config: EvictionConfig) -> int:
        """Make `n` more tokens fit: re-position past the rotary table (StreamingLLM), then evict;
        return how many slots were freed (0 if they fit)."""
        max_positions = self.manifest.dims.max_positions
        if self.next_position + n > max_positions:
            if config.policy is None:
                raise PromptTooLongError(f"position {self.next_position + n} is past the model's rotary table "
                                         f"({max_positions}); start a new conversation")
            self.reposition()
        if self.length + n <= self.capacity:
            return 0
        need = self.length + n - self.capacity
        if config.policy is None:
            raise BudgetExceededError(f"the KV budget of {self.capacity} tokens is full ({self.length} cached, "
                                      f"{n} more needed) and the eviction policy is 'none'; choose one with "
                                      f"--kv-policy ({', '.join(EVICTING)}) "
                                      f"or raise --kv-budget")
        if self.keys is None:
            raise SlmError("KV eviction runs on CPU caches only in this version; use --provider cpu with a budget")
        missing = [s.name for s in config.policy.statistics if s.name not in self.stats]
        if missing:
            raise ValueError(f"policy {config.policy.name} reads statistics this cache does not keep ({', '.join(missing)}); "
                             f"make the cache with that policy's (engine.new_cache(policy=...))")
        scores = np.array(config.policy.score(self.view()), np.float32, copy=True)   # (L, H, length)
        pos = self.positions[:, :, :self.length]
        locked = (pos >= self.next_position - config.keep_recent) | (pos < config.n_sink)
        for start, end in config.protected:
            locked |= (pos >= start) & (pos < end)
        scores[locked] = np.inf
        # A sliding-window layer (Gemma 3's local layers, Mistral) never attends past its window, and
        # GroupQueryAttention applies the window to slots, not positions: such a layer keeps its most
        # recent tokens (no sinks, no protected turns), so its last `window` slots are exactly the
        # positions the model was trained to see.
        scores[self.sliding] = pos[self.sliding]
        evictable = int((~np.isinf(scores)).sum(-1).min())
        if evictable < need:
            raise BudgetExceededError(f"the KV budget of {self.capacity} tokens cannot take {n} more: "
                                      f"{self.length - evictable} cached tokens are protected (system prompt, "
                                      f"current turn, the {config.keep_recent} most recent); raise --kv-budget")
        k = min(max(need, config.evict_chunk), evictable)
        # the k lowest scores of each (layer, head) go; the rest keep their order
        drop = np.argpartition(scores, k - 1, axis=-1)[..., :k]
        keep_mask = np.ones(scores.shape, bool)
        np.put_along_axis(keep_mask, drop, False, axis=-1)
        keep = np.nonzero(keep_mask)[2].reshape(scores.shape[0], scores.shape[1], -1)   # (L, H, length-k), sorted
        self._compact(keep)
        self.evicted += k
        return k

    def _compact(self, keep: np.ndarray) -> None:
        m = keep.shape[-1]
        for layer, idx in enumerate(keep):
            for buf in (self.keys[layer], self.values[layer]):
                buf[0, :, :m] = np.take_along_axis(buf[0, :, :self.length], idx[..., None], axis=1)
        self.positions[:, :, :m] = np.take_along_axis(self.positions[:, :, :self.length], keep, axis=-1)
        for value in self.stats.values():       # a bank of statistics: the same slots in each
            value[..., :m] = np.take_along_axis(value[..., :self.length], keep.reshape((1,) * (value.ndim - 3) + keep.shape), axis=-1)
        self.length = m

    def reposition(self) -> None:
        """Move every kept token to the position of its slot (0..length-1), rotating its key to match
        (StreamingLLM's positions-within-cache), so a conversation can outlast the rotary table."""
        if self.keys is None:
            raise SlmError("re-positioning runs on CPU caches only")
        rope = self.manifest.rope
        n = self.length
        new = np.arange(n)
        for layer in range(len(self.keys)):
            inv = np.asarray(rope.inv_freq[rope.of_layer[layer]], np.float64)
            delta = (new[None, :] - self.positions[layer, :, :n]).astype(np.float64)     # (H, n), <= 0
            ang = delta[..., None] * inv                                                  # (H, n, hd/2)
            cos, sin = np.cos(ang), np.sin(ang)
            k = self.float_keys(layer)          # a quantized cache: dequantise, rotate, requantise
            half = k.shape[-1] // 2
            k1, k2 = k[..., :half].astype(np.float64), k[..., half:].astype(np.float64)
            rotated = np.concatenate([k1 * cos - k2 * sin, k2 * cos + k1 * sin], -1)
            scale = self.k_scale[layer] if self.k_scale is not None else None
            self.keys[layer][0, :, :n] = quantize(rotated, scale, self.kv_dtype)
        self.positions[:, :, :n] = new
        self.next_position = n
