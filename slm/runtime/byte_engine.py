"""A byte package (MEGABYTE, Yu et al. 2023) on ONNX Runtime: bytes in, bytes out, no tokenizer.

    engine = Engine("path/to/byte-package")       # opens a ByteEngine (Engine.__new__ looks at the manifest)
    for event in engine.generate("ROMEO:\n", raw=True):
        print(event.text, end="", flush=True)

The global graph runs once per patch of P bytes; its KV cache (slm.runtime.kv_cache.KVCache, the one
token models use) holds one slot per patch, so the budget, eviction (every policy: those that read
attention statistics take them from model_attn.onnx, per patch) and re-positioning are the token
engine's. Slot 0 holds the learned
pad patch. The local graph runs once per byte with its own cache of P slots, emptied every patch.

    prompt bytes ─► whole patches ─► global prefill ─► context of the next patch (P, D)
                └─► the partial patch: local prefill [pad, bytes...] ─► logits of the next byte
    decode_step(byte): the patch goes on ─► local step ─► logits
                       the patch is full  ─► global step (a new slot) ─► local step on [pad] ─► logits

A budget in tokens counts bytes of text (converted to patches); in bytes of memory, through the
global layout's bytes per patch. Event fields named "tokens" count bytes. Imports neither torch,
transformers nor onnx.
"""
from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from slm.runtime.chat_template import compile_template
from slm.runtime.detokenizer import ByteDetokenizer
from slm.runtime.events import GenerationEvent, KVStats
from slm.runtime.eviction import make_policy
from slm.runtime.kv_cache import EvictionConfig, KVCache, parse_budget
from slm.runtime.options import EngineOptions
from slm.runtime.sampling import SamplingParams, make_rng, sample
from slm.runtime.session import open_session
from slm.runtime.stops import StopMatcher
from slm.runtime.engine import _common_prefix, _nolock    # the token engine's helpers, shared
from slm.core.errors import PackageError, PromptTooLongError, SlmError
from slm.core.package import Manifest, read_manifest

PREFILL_CHUNK = 256         # patches per global prefill call
DEFAULT_CAPACITY = 4096     # global slots (patches) when no budget is given (the model's context if smaller)
MIN_PATCHES = 16


def parse_byte_budget(text: str | int | None, manifest: Manifest) -> int | None:
    """--kv-budget for a byte model as global slots (patches): a count ("4096", "4096tok") is bytes of
    text, one slot per patch of them; a size ("1MiB", "64KB") is bytes of memory."""
    if text is None:
        return None
    P = manifest.patches.patch_size
    m = re.fullmatch(r"\s*(\d+)\s*(tok|tokens)?\s*", str(text).lower())
    if not m:
        return parse_budget(text, manifest)     # memory; its bytes per "token" are the global bytes per patch
    patches = int(m.group(1)) // P
    if patches < MIN_PATCHES:
        raise SlmError(f"KV budget {text!r} holds {patches} patches of {P} bytes; at least {MIN_PATCHES} are needed "
                       f"({MIN_PATCHES * P} bytes of text, or {MIN_PATCHES * manifest.kv.bytes_per_token(manifest.dims)} "
                       f"bytes of memory)")
    return patches


class LocalCache:
    """The local graph's KV: P slots per layer, emptied at every patch (no budget, no eviction)."""

    def __init__(self, manifest: Manifest):
        p = manifest.patches
        d = p.local_dims
        shape = (1, d.num_kv_heads, p.patch_size, d.head_dim)
        self.keys = [np.zeros(shape, np.float32) for _ in range(d.num_layers)]
        self.values = [np.zeros(shape, np.float32) for _ in range(d.num_layers)]
        self.key_ort = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.keys]
        self.value_ort = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.values]
        self.nbytes = 2 * d.num_layers * int(np.prod(shape)) * 4
        self.length = 0


class ByteCache:
    """One conversation: the global cache (one slot per patch), the local cache of the current patch,
    the bytes of that patch so far and their context from the global model."""

    def __init__(self, manifest: Manifest, capacity: int, device: str, attention_stats: bool = False,
                 statistics: tuple = ()):
        self.glob = KVCache(manifest, capacity, device, attention_stats=attention_stats, statistics=statistics)
        self.local = LocalCache(manifest)
        self.context = np.zeros((manifest.patches.patch_size, manifest.patches.local_dims.hidden_size), np.float32)
        self.local_step = None          # the engine's fixed one-byte binding of the local graph, made on first use
        self.reset()

    def reset(self) -> None:
        self.glob.reset()
        self.local.length = 0
        self.pending: list[int] = []    # bytes of the current patch (not in the global cache)
        self.history: list[int] = []    # every byte fed

    @property
    def capacity(self) -> int:
        return self.glob.capacity

    @property
    def evicted(self) -> int:
        """Global slots (patches) evicted so far, as KVCache.evicted."""
        return self.glob.evicted

    @property
    def nbytes(self) -> int:
        return self.glob.nbytes + self.local.nbytes


class ByteEngine:
    def __init__(self, package: str | Path, options: EngineOptions = EngineOptions(), **changes):
        """As runtime.Engine; evict_chunk, keep_recent and prefill_chunk count patches (global slots).
        protect_chat is not applied: a byte package protects only the first 4 slots (the pad patch
        and the opening) and the newest `keep_recent`. kv_dtype: byte packages have an fp32 cache only."""
        self.options = o = replace(options, **changes)
        provider, threads, kv_budget, kv_policy, kv_dtype = o.provider, o.threads, o.kv_budget, o.kv_policy, o.kv_dtype
        evict_chunk, keep_recent, prefill_chunk, lookup = o.evict_chunk, o.keep_recent, o.prefill_chunk, o.lookup
        self.path = Path(package)
        self.manifest = m = read_manifest(self.path)
        if kv_dtype not in (None, "fp32", "float32"):
            raise SlmError(f"--kv-dtype {kv_dtype!r}: a byte package (megabyte) has an fp32 KV cache only; accepted: fp32")
        self.kv_dtype = "float32"
        if m.patches is None:
            raise PackageError(f"package {str(self.path)!r} is a token model ({m.architecture}); open it with Engine")
        self.patch_size = P = m.patches.patch_size
        self.policy = make_policy(kv_policy, self.path)
        self.kv_policy = kv_policy
        graph = m.model_file
        if self.policy is not None and self.policy.needs_attention:
            if not m.attention_model_file:
                raise PackageError(f"--kv-policy {kv_policy} needs attention statistics, but package {str(self.path)!r} "
                                   f"has no attention graph; re-export it, or use streaming or knorm")
            graph = m.attention_model_file
        self.stats_outputs = m.io.attention_mass if graph == m.attention_model_file else []
        if lookup:
            raise SlmError(f"lookup={lookup}: prompt lookup decoding is for token packages; a byte package takes 0")
        for name, value, least in (("prefill_chunk", prefill_chunk, 1), ("evict_chunk", evict_chunk, 1),
                                   ("keep_recent", keep_recent, 0)):
            if value is not None and value < least:
                raise SlmError(f"{name}={value} must be at least {least} patch{'es' * (least != 1)} (or omitted for the default)")
        self.session, self.provider, self.provider_note = _open(self.path / graph, provider, threads)
        self.local_session, _, _ = _open(self.path / m.patches.local_model_file, "cpu" if self.provider == "cpu" else provider, threads)
        self.template = compile_template(m.chat_template) if m.chat_template else None
        self.capacity_patches = parse_byte_budget(kv_budget, m) or min(m.kv.default_capacity, DEFAULT_CAPACITY)
        self.capacity = self.capacity_patches * P       # bytes of context
        self.evict_chunk, self.keep_recent = evict_chunk, keep_recent
        self.prefill_chunk = prefill_chunk or PREFILL_CHUNK
        self.device = "cuda" if self.provider == "cuda" else "cpu"
        self.tokenizer = None
        self.eos_ids = frozenset()
        self.pad_patch = np.full((1, P), m.patches.pad_id, np.int64)
        self.cache = self.new_cache()
        self._lock = threading.Lock()

    # --- text in ---------------------------------------------------------------------------------
    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if self.template is None:
            raise SlmError(f"package {str(self.path)!r} has no chat template; use raw prompts (--raw)")
        return self.template.render(messages, bos_token="", eos_token="", add_generation_prompt=add_generation_prompt)

    def encode(self, prompt: str | list[dict], raw: bool = False) -> list[int]:
        """UTF-8 bytes of the prompt: raw text as is, messages (or a string as one user message) through the template."""
        if raw:
            if not isinstance(prompt, str):
                raise SlmError("a raw prompt must be a string, not a list of messages")
            return list(prompt.encode("utf-8"))
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        text = self.render_chat(messages) if self.template else "\n".join(x["content"] for x in messages)
        return list(text.encode("utf-8"))

    # --- the model calls -------------------------------------------------------------------------
    def new_cache(self, capacity: int | None = None) -> ByteCache:
        """capacity: global slots (patches); default the engine's budget."""
        return ByteCache(self.manifest, capacity or self.capacity_patches, self.device, bool(self.stats_outputs),
                         self.policy.statistics if self.policy is not None else ())

    def eviction_for(self, cache: ByteCache, protected: tuple = ()) -> EvictionConfig:
        return cache.glob.eviction(self.policy, self.evict_chunk, self.keep_recent, protected)

    def _global(self, cache: ByteCache, rows: np.ndarray, eviction: EvictionConfig) -> None:
        """Feed patches `rows` (n, P) after what the global cache holds, in chunks that leave room to
        evict; the context of the patch after the last lands in cache.context."""
        glob, io, kv = cache.glob, self.manifest.io, self.manifest.kv
        step = glob.chunk_size(self.prefill_chunk)
        out = np.zeros((1, 1) + cache.context.shape, np.float32)
        for start in range(0, len(rows), step):
            chunk = rows[start:start + step]
            n = len(chunk)
            if glob.next_position + n > self.manifest.dims.max_positions:
                if eviction.policy is None:
                    raise PromptTooLongError(f"patch position {glob.next_position + n} is past the model's rotary table "
                                             f"({self.manifest.dims.max_positions} patches); start a new conversation")
                glob.reposition()
            glob.make_room(n, eviction)
            b = self.session.io_binding()
            b.bind_cpu_input(self.manifest.patches.patch_ids, np.ascontiguousarray(chunk[None]))
            b.bind_cpu_input(io.position_ids, np.arange(glob.next_position, glob.next_position + n, dtype=np.int64)[None])
            b.bind_cpu_input(io.seqlens_k, np.array([glob.length + n - 1], np.int32))
            b.bind_cpu_input(io.total_sequence_length, np.array(glob.length + n, np.int32))
            b.bind_cpu_input(io.num_logits_to_keep, np.array(1, np.int64))
            _bind_kv(b, kv, glob.key_ort, glob.value_ort)
            b.bind_ortvalue_output(self.manifest.patches.local_context, ort.OrtValue.ortvalue_from_numpy(out))
            for name, buf in zip(self.stats_outputs, glob.mass_ort):
                b.bind_ortvalue_output(name, buf)
            self.session.run_with_iobinding(b)
            glob.commit([tuple(row) for row in chunk.tolist()])
        cache.context[:] = out[0, 0]
        cache.local.length = 0

    def _local(self, cache: ByteCache, ids: list[int]) -> np.ndarray:
        """Feed bytes `ids` (the pad id first in a patch) at the next local positions; return the
        logits of the byte after the last (256,)."""
        local, io, n = cache.local, self.manifest.io, len(ids)
        start = local.length
        logits = np.zeros((1, n, 256), np.float32)
        b = self.local_session.io_binding()
        b.bind_cpu_input(self.manifest.patches.context, np.ascontiguousarray(cache.context[None, start:start + n]))
        b.bind_cpu_input(io.input_ids, np.array([ids], np.int64))
        b.bind_cpu_input(io.position_ids, np.arange(start, start + n, dtype=np.int64)[None])
        b.bind_cpu_input(io.seqlens_k, np.array([start + n - 1], np.int32))
        b.bind_cpu_input(io.total_sequence_length, np.array(start + n, np.int32))
        _bind_kv(b, self.manifest.patches.local_kv, local.key_ort, local.value_ort)
        b.bind_ortvalue_output(io.logits, ort.OrtValue.ortvalue_from_numpy(logits))
        self.local_session.run_with_iobinding(b)
        local.length += n
        return logits[0, -1]

    def prefill(self, cache: ByteCache, data: list[int], eviction: EvictionConfig | None = None,
                cancel: threading.Event | None = None) -> np.ndarray | None:
        """Feed bytes after what the cache holds; return the logits of the next byte (256,), or None
        when `cancel` was set."""
        eviction = eviction or self.eviction_for(cache)
        P, pad = self.patch_size, self.manifest.patches.pad_id
        if cancel is not None and cancel.is_set():
            return None
        data = cache.pending + list(data)
        full = len(data) // P * P
        rows = np.array(data[:full], np.int64).reshape(-1, P)
        if cache.glob.length == 0:
            rows = np.concatenate([self.pad_patch, rows])
        if len(rows):
            self._global(cache, rows, eviction)
        cache.history.extend(data[len(cache.pending):])
        cache.pending = data[full:]
        cache.local.length = 0
        return self._local(cache, [pad] + cache.pending)

    def decode_step(self, cache: ByteCache, byte: int, eviction: EvictionConfig | None = None) -> np.ndarray:
        """Feed one byte; return the logits of the next (256,)."""
        cache.pending.append(int(byte))
        cache.history.append(int(byte))
        if len(cache.pending) == self.patch_size:
            self._global(cache, np.array([cache.pending], np.int64), eviction or self.eviction_for(cache))
            cache.pending, byte = [], self.manifest.patches.pad_id
        step = cache.local_step
        if step is None:
            step = cache.local_step = _LocalStep(self, cache)
        p = cache.local.length
        step.input_ids[0, 0], step.position_ids[0, 0], step.seqlens_k[0], step.total_len[()] = byte, p, p, p + 1
        step.context[0, 0] = cache.context[p]
        self.local_session.run_with_iobinding(step.binding)
        cache.local.length += 1
        return step.logits[0, 0]

    # --- the loop --------------------------------------------------------------------------------
    def generate(self, prompt: str | list[dict], *, params: SamplingParams = SamplingParams(),
                 max_tokens: int = 256, stop: tuple[str, ...] | list[str] = (), raw: bool = False,
                 cancel: threading.Event | None = None, cache: ByteCache | None = None,
                 ignore_eos: bool = False, constraint=None, tools: list[dict] | None = None) -> Iterator[GenerationEvent]:
        """Yield one event per generated byte (max_tokens counts bytes); a chat reply also stops at
        the package's end-of-turn bytes (a byte model has no end-of-sequence token). Constrained
        output and tools need a tokenizer's vocabulary to mask: not for byte packages."""
        t0 = time.perf_counter()
        if constraint is not None or tools:
            raise SlmError("constrained output (--json-schema/--regex/--grammar, response_format, tools) needs a "
                           "token package; a byte package (megabyte) generates unconstrained bytes only")
        if max_tokens < 1:
            raise SlmError(f"max_tokens={max_tokens} must be at least 1")
        ids = self.encode(prompt, raw)
        if not ids:
            raise SlmError("the prompt is empty")
        turn = () if raw or ignore_eos or self.template is None else (self.manifest.patches.end_of_turn,)
        cache = cache or self.cache
        with self._lock if cache is self.cache else _nolock():
            yield from self._generate(ids, params, max_tokens, tuple(stop) + turn, cancel, cache, t0)

    def _generate(self, ids, params, max_tokens, stop, cancel, cache, t0):
        P, bounded = self.patch_size, self.policy is None
        limit = min(cache.capacity, self.manifest.dims.max_positions)      # global slots
        if bounded and 1 + len(ids) // P >= limit:
            raise PromptTooLongError(f"the prompt has {len(ids)} bytes; this model and KV budget take at most "
                                     f"{(limit - 1) * P - 1} prompt bytes ({limit} patches of {P} bytes, "
                                     f"one for the pad patch, policy none)")
        eviction = self.eviction_for(cache)
        logits = self.prefill(cache, self._reuse_or_reset(cache, ids), eviction, cancel)
        if logits is None:
            yield GenerationEvent(text="", token=None, finish_reason="cancelled", prompt_tokens=len(ids),
                                  generated_tokens=0, ttft_s=0.0, tokens_per_s=0.0, kv=self.kv_stats(cache))
            return
        rng, seen = make_rng(params), list(ids)
        detok, stops = ByteDetokenizer(), StopMatcher(stop)
        ttft, t_first, n = 0.0, 0.0, 0
        while True:
            byte = sample(logits, params, rng, np.array(seen) if params.repetition_penalty != 1.0 else None)
            n, now = n + 1, time.perf_counter()
            if n == 1:
                ttft, t_first = now - t0, now
            text, hit = stops.feed(detok.add(byte))
            full = bounded and len(cache.pending) + 1 == P and cache.glob.length + 1 > limit
            finish = "stop" if hit else "length" if n >= max_tokens or full else \
                "cancelled" if cancel is not None and cancel.is_set() else None
            if finish and not hit:
                text += stops.flush(detok.flush())
            yield GenerationEvent(text=text, token=byte, finish_reason=finish, prompt_tokens=len(ids), generated_tokens=n,
                                  ttft_s=ttft, tokens_per_s=(n - 1) / (now - t_first) if n > 1 and now > t_first else 0.0,
                                  kv=self.kv_stats(cache))
            if finish:
                return
            seen.append(byte)
            logits = self.decode_step(cache, byte, eviction)

    def _reuse_or_reset(self, cache: ByteCache, ids: list[int]) -> list[int]:
        """Keep the global slots of the whole patches this prompt shares with the cache's history and
        return the bytes still to feed; the last shared patch (or the pad) is fed again, since its
        output is the context of the next. Start over when eviction makes that inexact."""
        P, shared = self.patch_size, _common_prefix(cache.history, ids) // self.patch_size
        cache.pending, cache.local.length = [], 0
        if shared == 0 or not cache.glob.rewind(shared):     # slots: the pad and patches 0..shared-2
            cache.reset()
            return ids
        del cache.history[(shared - 1) * P:]
        return ids[(shared - 1) * P:]

    def kv_stats(self, cache: ByteCache) -> KVStats:
        """In bytes of text: each global slot stands for P bytes."""
        P = self.patch_size
        return KVStats(cached_tokens=cache.glob.length * P, capacity_tokens=cache.capacity * P,
                       evicted_tokens=cache.glob.evicted * P, kv_bytes=cache.nbytes, policy=self.kv_policy)


class _LocalStep:
    """Fixed inputs/outputs for one-byte local steps: numpy arrays viewed by OrtValues, bound once."""

    def __init__(self, engine: ByteEngine, cache: ByteCache):
        io, p = engine.manifest.io, engine.manifest.patches
        self.input_ids = np.zeros((1, 1), np.int64)
        self.position_ids = np.zeros((1, 1), np.int64)
        self.seqlens_k = np.zeros(1, np.int32)
        self.total_len = np.zeros((), np.int32)
        self.context = np.zeros((1, 1, p.local_dims.hidden_size), np.float32)
        self.logits = np.zeros((1, 1, p.local_dims.vocab_size), np.float32)
        self.binding = b = engine.local_session.io_binding()
        for name, arr in ((io.input_ids, self.input_ids), (io.position_ids, self.position_ids),
                          (io.seqlens_k, self.seqlens_k), (io.total_sequence_length, self.total_len),
                          (p.context, self.context)):
            b.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr))
        b.bind_ortvalue_output(io.logits, ort.OrtValue.ortvalue_from_numpy(self.logits))
        _bind_kv(b, p.local_kv, cache.local.key_ort, cache.local.value_ort)


def _bind_kv(b: ort.IOBinding, kv, keys: list, values: list) -> None:
    for i, (k, v) in enumerate(zip(keys, values)):
        b.bind_ortvalue_input(kv.past_key[i], k)
        b.bind_ortvalue_input(kv.past_value[i], v)
        b.bind_ortvalue_output(kv.present_key[i], k)      # same buffer: GQA appends in place
        b.bind_ortvalue_output(kv.present_value[i], v)


def _open(path: Path, provider: str, threads: int | None):
    try:
        return open_session(path, provider, threads)
    except ort.capi.onnxruntime_pybind11_state.Fail as e:
        raise PackageError(f"{str(path)!r} does not load in ONNX Runtime ({str(e).splitlines()[0][:200]}); "
                           f"the package is corrupt, re-export it") from None
    except ort.capi.onnxruntime_pybind11_state.InvalidProtobuf:
        raise PackageError(f"{str(path)!r} is not a valid ONNX model; the package is corrupt, re-export it") from None
