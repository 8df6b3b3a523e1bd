"""The engine: a package folder on ONNX Runtime, and the generation loop.

    engine = Engine("path/to/package")
    for event in engine.generate("Why is the sky blue?"):
        print(event.text, end="", flush=True)

`prefill` and `decode_step` are the two model calls; `generate` is the loop around them.
Imports neither torch nor transformers (nor onnx).
"""
from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from slm.runtime.chat_template import compile_template
from slm.runtime.constraint import Constraint, Grammars, Guide
from slm.runtime.detokenizer import StreamingDetokenizer
from slm.runtime.events import GenerationEvent, KVStats
from slm.runtime.eviction import Statistic, make_policy
from slm.runtime.kv_cache import EvictionConfig, KVCache, capacity_of
from slm.runtime.lookup import PromptLookup
from slm.runtime.options import EngineOptions
from slm.runtime.sampling import SamplingParams, accept_or_resample, make_rng, sample
from slm.runtime.session import open_session
from slm.runtime.stops import StopMatcher
from slm.core.errors import PackageError, PromptTooLongError, SlmError
from slm.core.package import KV_DTYPES, read_manifest
from slm.core.resources import release_freed_heap

PREFILL_CHUNK = 512     # tokens per prefill call: bounds activation memory for long prompts
# With the attention-statistics graph ONNX Runtime holds each layer's (heads, chunk, cache) attention
# probabilities of a prefill call at once: `python bench/stats_rss.py` (3,900-token prompt, 2,048-token
# h2o cache) peaked at 734 MiB with 128-token chunks, 571 at 64, 491 at 32 (plain graph: 495), 448 at 16.
STATS_PREFILL_CHUNK = 32


class Engine:
    def __new__(cls, package: str | Path, options: EngineOptions = EngineOptions(), **changes):
        """A byte package (architecture megabyte) opens as slm.runtime.byte_engine.ByteEngine, with the
        same options and the same generate/new_cache/kv_stats; everything else as below."""
        if cls is Engine and read_manifest(Path(package)).patches is not None:
            from slm.runtime.byte_engine import ByteEngine
            return ByteEngine(package, options, **changes)
        return super().__new__(cls)

    def __init__(self, package: str | Path, options: EngineOptions = EngineOptions(), **changes):
        """`options` (slm.runtime.options.EngineOptions) say how to run the package; keyword `changes`
        replace some of its fields (`Engine(path, kv_budget="8MiB", kv_policy="h2o")`), and the
        result is `self.options`, which opens another package the same way. kv_budget: tokens or
        bytes ("16MiB"); kv_policy: see slm.runtime.eviction.POLICIES. evict_chunk: slots freed per
        eviction (default 1/8 of the budget); keep_recent: newest tokens never evicted (default 1/8
        of the budget); protect_chat: never evict the system prompt and the current user turn;
        prefill_chunk: tokens per prefill call (default PREFILL_CHUNK, or STATS_PREFILL_CHUNK when
        the policy reads attention statistics); lookup: tokens drafted per step by prompt lookup
        decoding (slm.runtime.lookup; 0 = off): same output, fewer graph calls where the reply repeats
        its context; kv_dtype: the KV cache's storage, fp32 | fp16 | int8 | int4 (default: the
        package's), one of the package's exported KV graphs; a byte budget counts tokens at that dtype."""
        self.options = o = replace(options, **changes)
        provider, threads, kv_budget, kv_policy, kv_dtype = o.provider, o.threads, o.kv_budget, o.kv_policy, o.kv_dtype
        evict_chunk, keep_recent, prefill_chunk, lookup = o.evict_chunk, o.keep_recent, o.prefill_chunk, o.lookup
        protect_chat = o.protect_chat
        self.path = Path(package)
        self.manifest = read_manifest(self.path)
        m = self.manifest
        self.policy = make_policy(kv_policy, self.path)
        self.kv_policy = kv_policy
        if kv_dtype is not None and kv_dtype not in KV_DTYPES:
            raise SlmError(f"--kv-dtype {kv_dtype!r} is not a KV cache dtype; accepted: {', '.join(KV_DTYPES)}")
        self.kv_dtype = KV_DTYPES[kv_dtype] if kv_dtype else m.kv.dtype       # manifest name ("int8", "float32")
        variant = m.kv.variant(self.kv_dtype)            # PackageError naming the dtypes this package has
        plain, with_stats = (variant.model_file, variant.attention_model_file) if variant.model_file else \
            (m.model_file, m.attention_model_file)
        graph = plain
        if self.policy is not None and self.policy.needs_attention:
            if not with_stats:
                raise PackageError(f"--kv-policy {kv_policy} needs attention statistics, but package {str(self.path)!r} "
                                   f"was exported without them; re-export it without --no-attention-stats, or use "
                                   f"streaming or knorm")
            graph = with_stats
        self.stats_outputs = m.io.attention_mass if graph == with_stats and graph else []
        self.scale_inputs = list(zip(variant.k_scale, variant.v_scale))
        d = m.dims
        self.kv_scales = _load_scales(self.path / variant.scales_file, (d.num_layers, d.num_kv_heads, d.head_dim)) \
            if variant.scales_file else None
        try:
            self.session, self.provider, self.provider_note = open_session(self.path / graph, provider, threads)
        except ort.capi.onnxruntime_pybind11_state.Fail as e:
            raise PackageError(f"{str(self.path / graph)!r} does not load in ONNX Runtime "
                               f"({str(e).splitlines()[0][:200]}); the package is corrupt, re-export it") from None
        except ort.capi.onnxruntime_pybind11_state.InvalidProtobuf:
            raise PackageError(f"{str(self.path / graph)!r} is not a valid ONNX model; the package "
                               f"is corrupt, re-export it") from None
        try:
            self.tokenizer = Tokenizer.from_file(str(self.path / m.tokenizer_file))
        except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception on a bad file
            raise PackageError(f"{str(self.path / m.tokenizer_file)!r} is not a tokenizers file ({e})") from None
        self.template = compile_template(m.chat_template) if m.chat_template else None
        self.capacity = capacity_of(kv_budget, m, self.kv_dtype)
        self.evict_chunk, self.keep_recent = evict_chunk, keep_recent
        self.protect_chat = protect_chat
        for name, value, least in (("prefill_chunk", prefill_chunk, 1), ("evict_chunk", evict_chunk, 1),
                                   ("keep_recent", keep_recent, 0)):
            if value is not None and value < least:
                raise SlmError(f"{name}={value} must be at least {least} token{'s' * (least != 1)} (or omitted for the default)")
        if lookup < 0 or (lookup and self.stats_outputs):
            raise SlmError(f"lookup={lookup} needs 0 (off) or a draft length >= 1 with a KV policy that reads no "
                           f"attention statistics (none, streaming, knorm); kv_policy is {kv_policy!r}"
                           if lookup > 0 else f"lookup={lookup} must be 0 (off) or a draft length >= 1")
        self.lookup = PromptLookup(max_draft=lookup) if lookup else None
        self.prefill_chunk = prefill_chunk or (STATS_PREFILL_CHUNK if self.stats_outputs else PREFILL_CHUNK)
        self.device = "cuda" if self.provider == "cuda" else "cpu"
        self.eos_ids = frozenset(m.eos_token_ids)
        self._decode_bindings: weakref.WeakKeyDictionary[KVCache, _DecodeBinding] = weakref.WeakKeyDictionary()
        self.cache = self.new_cache()
        self._lock = threading.Lock()
        self._grammars: Grammars | None = None     # built on the first constrained request
        self._grammars_lock = threading.Lock()
        release_freed_heap()        # what loading freed goes back to the OS, not into the peak RSS

    # --- text in ---------------------------------------------------------------------------------
    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                    tools: list[dict] | None = None) -> str:
        """`tools` (OpenAI function specs) go to the template as its `tools` variable."""
        if self.template is None:
            raise SlmError(f"package {str(self.path)!r} has no chat template; use raw prompts (--raw)")
        m = self.manifest
        return self.template.render(messages, bos_token=m.bos_token, eos_token=m.eos_token,
                                    add_generation_prompt=add_generation_prompt, extra={"tools": tools or None})

    def encode(self, prompt: str | list[dict], raw: bool = False, tools: list[dict] | None = None) -> list[int]:
        """Chat messages (or a string, as one user message) through the chat template; raw text as is."""
        if raw:
            if not isinstance(prompt, str):
                raise SlmError("a raw prompt must be a string, not a list of messages")
            return self.tokenizer.encode(prompt, add_special_tokens=True).ids
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if self.template is None:   # a base model without a template: the user text as is
            return self.tokenizer.encode("\n".join(x["content"] for x in messages), add_special_tokens=True).ids
        return self.tokenizer.encode(self.render_chat(messages, tools=tools), add_special_tokens=False).ids

    def grammars(self) -> Grammars:
        """The constraint compiler for this package's tokenizer (built once, on first use)."""
        with self._grammars_lock:
            if self._grammars is None:
                text = (self.path / self.manifest.tokenizer_file).read_text(encoding="utf-8")
                self._grammars = Grammars(text, vocab_size=self.manifest.dims.vocab_size,
                                          eos_ids=sorted(self.eos_ids))
            return self._grammars

    # --- the two model calls -----------------------------------------------------------------------
    def new_cache(self, capacity: int | None = None, *, statistics: tuple[Statistic, ...] | None = None) -> KVCache:
        """A fresh cache of `capacity` slots (default the budget's), keeping the statistics the
        engine's policy reads (or `statistics`, for another policy passed in an EvictionConfig)."""
        if statistics is None:
            statistics = self.policy.statistics if self.policy is not None else ()
        return KVCache(self.manifest, capacity or self.capacity, self.device, attention_stats=bool(self.stats_outputs),
                       kv_dtype=self.kv_dtype, scales=self.kv_scales, statistics=statistics)

    def _bind(self, cache: KVCache, binding: ort.IOBinding) -> None:
        kv = self.manifest.kv
        for i in range(self.manifest.dims.num_layers):
            binding.bind_ortvalue_input(kv.past_key[i], cache.key_ort[i])
            binding.bind_ortvalue_input(kv.past_value[i], cache.value_ort[i])
            binding.bind_ortvalue_output(kv.present_key[i], cache.key_ort[i])     # same buffer: GQA appends in place
            binding.bind_ortvalue_output(kv.present_value[i], cache.value_ort[i])
        for name, buf in zip(self.stats_outputs, cache.mass_ort):
            binding.bind_ortvalue_output(name, buf)
        for (k_name, v_name), (k_scale, v_scale) in zip(self.scale_inputs, cache.scale_ort):
            binding.bind_ortvalue_input(k_name, k_scale)
            binding.bind_ortvalue_input(v_name, v_scale)

    def eviction_for(self, cache: KVCache, protected: tuple = ()) -> EvictionConfig:
        """How `cache` evicts under this engine's policy and options (KVCache.eviction has the defaults)."""
        return cache.eviction(self.policy, self.evict_chunk, self.keep_recent, protected)

    def prefill(self, cache: KVCache, ids: list[int], eviction: EvictionConfig | None = None,
                cancel: threading.Event | None = None) -> np.ndarray | None:
        """Feed `ids` after what the cache holds, in chunks, evicting to stay within the budget;
        return the last position's logits (vocab,), or None when `cancel` was set between chunks
        (the cache then holds the chunks fed so far, consistently with its history)."""
        out = np.zeros((1, 1, self.manifest.dims.vocab_size), np.float32)
        eviction = eviction or self.eviction_for(cache)
        step = cache.chunk_size(self.prefill_chunk)
        for start in range(0, len(ids), step):
            if cancel is not None and cancel.is_set():
                return None
            self._feed(cache, ids[start:start + step], eviction, out)
        return out[0, 0]

    def verify(self, cache: KVCache, ids: list[int], eviction: EvictionConfig | None = None) -> np.ndarray:
        """Feed `ids` in one call; return the logits after each of them (len(ids), vocab)."""
        out = np.zeros((1, len(ids), self.manifest.dims.vocab_size), np.float32)
        self._feed(cache, ids, eviction or self.eviction_for(cache), out)
        return out[0]

    def _feed(self, cache: KVCache, chunk: list[int], eviction: EvictionConfig, out: np.ndarray) -> None:
        """One graph call on `chunk` after what the cache holds; the logits of its last out.shape[1]
        positions land in `out`."""
        io, n = self.manifest.io, len(chunk)
        cache.make_room(n, eviction)
        binding = self.session.io_binding()
        binding.bind_cpu_input(io.input_ids, np.array([chunk], np.int64))
        binding.bind_cpu_input(io.position_ids, np.arange(cache.next_position, cache.next_position + n, dtype=np.int64)[None])
        binding.bind_cpu_input(io.seqlens_k, np.array([cache.length + n - 1], np.int32))
        binding.bind_cpu_input(io.total_sequence_length, np.array(cache.length + n, np.int32))
        binding.bind_cpu_input(io.num_logits_to_keep, np.array(out.shape[1], np.int64))
        self._bind(cache, binding)
        binding.bind_ortvalue_output(io.logits, ort.OrtValue.ortvalue_from_numpy(out))
        self.session.run_with_iobinding(binding)
        cache.commit(chunk)

    def decode_step(self, cache: KVCache, token: int, eviction: EvictionConfig | None = None) -> np.ndarray:
        """Feed one token; return its logits (vocab,). The step's inputs live in fixed numpy arrays
        bound once per cache, so a step writes four numbers and runs the graph."""
        cache.make_room(1, eviction or self.eviction_for(cache))
        step = self.decode_binding(cache)
        step.input_ids[0, 0] = token
        step.position_ids[0, 0] = cache.next_position
        step.seqlens_k[0] = cache.length
        step.total_len[()] = cache.length + 1
        self.session.run_with_iobinding(step.binding)
        cache.commit((token,))
        return step.logits[0, 0]

    def decode_binding(self, cache: KVCache) -> _DecodeBinding:
        """The fixed one-token binding of `cache`'s buffers, made on first use (kept while the cache lives)."""
        step = self._decode_bindings.get(cache)
        if step is None:
            step = self._decode_bindings[cache] = _DecodeBinding(self, cache)
        return step

    # --- the loop --------------------------------------------------------------------------------
    def generate(self, prompt: str | list[dict], *, params: SamplingParams = SamplingParams(),
                 max_tokens: int = 256, stop: tuple[str, ...] | list[str] = (), raw: bool = False,
                 cancel: threading.Event | None = None, cache: KVCache | None = None,
                 ignore_eos: bool = False, constraint: Constraint | None = None,
                 tools: list[dict] | None = None) -> Iterator[GenerationEvent]:
        """Yield one event per generated token; the last one carries `finish_reason`.

        With the engine's own cache, a prompt that extends the previous conversation prefills only
        the new tokens. Pass `cache=engine.new_cache()` for an independent conversation.
        `ignore_eos` keeps going past end-of-sequence tokens (benchmarks). `constraint` (a JSON
        Schema, regex or Lark grammar: slm.runtime.constraint) masks every step, so the reply is in
        its language; it ends ("stop") once the grammar is complete, or is cut at max_tokens
        ("length") or a stop string. `tools` are rendered by the chat template.
        """
        t0 = time.perf_counter()
        if max_tokens < 1:
            raise SlmError(f"max_tokens={max_tokens} must be at least 1")
        guide = self.grammars().guide(constraint) if constraint is not None else None
        ids = self.encode(prompt, raw, tools)
        if not ids:
            raise SlmError("the prompt is empty after tokenisation")
        cache = cache or self.cache
        with self._lock if cache is self.cache else _nolock():
            yield from self._generate(prompt, ids, params, max_tokens, tuple(stop), cancel, cache, t0,
                                      frozenset() if ignore_eos else self.eos_ids, guide, tools)

    def _generate(self, prompt, ids, params, max_tokens, stop, cancel, cache, t0, eos_ids, guide, tools):
        bounded = self.policy is None          # no eviction: the budget and the context are hard limits
        limit = cache.limit
        if bounded and len(ids) >= limit:
            raise PromptTooLongError(f"the prompt has {len(ids)} tokens; this model and KV budget take at most "
                                     f"{limit - 1} prompt tokens (context {self.manifest.dims.max_positions}, "
                                     f"KV budget {cache.capacity} tokens, policy none)")
        self._reuse_or_reset(cache, ids)
        fed = len(cache.history)
        eviction = self.eviction_for(cache, self._protected(prompt, ids, cache.next_position - fed, tools))
        logits = self.prefill(cache, ids[fed:], eviction, cancel)
        if logits is None:          # cancelled during a long prefill
            yield GenerationEvent(text="", token=None, finish_reason="cancelled", prompt_tokens=len(ids),
                                  generated_tokens=0, ttft_s=0.0, tokens_per_s=0.0, kv=self.kv_stats(cache))
            return
        rng = make_rng(params)
        tokens = np.zeros(len(ids) + max_tokens, np.int64)     # the prompt, then the reply
        tokens[:len(ids)] = ids
        penalty = params.repetition_penalty != 1.0
        detok, stops = StreamingDetokenizer(self.tokenizer), StopMatcher(stop)
        ttft, t_first, n, finish = 0.0, 0.0, 0, None
        chosen = [self._choose(logits, params, rng, tokens[:len(ids)] if penalty else None, guide)]
        draft_len = self.lookup.max_draft if self.lookup else 0
        while True:
            for token in chosen:     # one token, or with prompt lookup several: each is its own event
                n += 1
                now = time.perf_counter()
                if n == 1:
                    ttft, t_first = now - t0, now
                tps = (n - 1) / (now - t_first) if n > 1 and now > t_first else 0.0
                if token in eos_ids:
                    text, finish = stops.flush(detok.flush()), "stop"
                else:
                    text, hit = stops.feed(detok.add(token))
                    if hit:
                        finish = "stop"
                    elif guide is not None and guide.complete_at == n:     # the grammar takes no more
                        text, finish = text + stops.flush(detok.flush()), "stop"
                    elif n >= max_tokens or (bounded and not cache.fits(1)):
                        text, finish = text + stops.flush(detok.flush()), "length"
                    elif cancel is not None and cancel.is_set():
                        text, finish = text + stops.flush(detok.flush()), "cancelled"
                yield GenerationEvent(text=text, token=token, finish_reason=finish, prompt_tokens=len(ids),
                                      generated_tokens=n, ttft_s=ttft, tokens_per_s=tps, kv=self.kv_stats(cache))
                if finish:
                    return
                tokens[len(ids) + n - 1] = token
            chosen, drafted = self._advance(cache, tokens[:len(ids) + n], eviction, params, rng, penalty,
                                            min(cache.draft_room(evicts=not bounded), draft_len), guide)
            if drafted:   # Hugging Face's assisted-generation schedule: +2 after a full hit, -1 after a miss
                draft_len = min(draft_len + 2, self.lookup.max_draft) if len(chosen) > drafted else max(1, draft_len - 1)

    def _advance(self, cache: KVCache, tokens: np.ndarray, eviction: EvictionConfig, params: SamplingParams,
                 rng: np.random.Generator, penalty: bool, room: int, guide: Guide | None) -> tuple[list[int], int]:
        """Feed the last chosen token (tokens[-1]) and choose what follows: one token, or with prompt
        lookup the drafted tokens the model agrees with plus the one after them. At most `room`
        drafted tokens, so every chosen token but the last is in the cache; a constraint drafts
        only what its grammar takes. Returns (chosen, drafted)."""
        draft = self.lookup.draft(tokens)[:max(0, room)] if self.lookup else []
        if guide is not None:
            draft = draft[:guide.valid_prefix(draft)]
        if not draft:
            return [self._choose(self.decode_step(cache, int(tokens[-1]), eviction), params, rng,
                                 tokens if penalty else None, guide)], 0
        rows = self.verify(cache, [int(tokens[-1])] + draft, eviction)
        seen = np.concatenate([tokens, draft]) if penalty else None
        chosen = []
        for i, row in enumerate(rows):       # row i: what follows the draft's first i tokens
            context = seen[:len(tokens) + i] if penalty else None
            token = self._choose(row, params, rng, context, guide, draft[i] if i < len(draft) else None)
            chosen.append(token)
            if i == len(draft) or token != draft[i]:
                break
        rejected = len(draft) - (len(chosen) - 1)
        if not cache.rewind(len(cache.history) - rejected):
            raise RuntimeError("prompt lookup: the rejected draft tokens could not be rewound")
        return chosen, len(draft)

    @staticmethod
    def _choose(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator, seen: np.ndarray | None,
                guide: Guide | None, draft: int | None = None) -> int:
        """Sample the next token (keeping or replacing a drafted one), from what the grammar allows."""
        if guide is not None:
            logits = guide.mask(logits)
        token = sample(logits, params, rng, seen) if draft is None else accept_or_resample(logits, params, rng, seen, draft)
        if guide is not None:
            while not guide.allows(token):      # masked in, refused by the parser: draw again without it
                logits[token] = -np.inf
                if not np.isfinite(logits).any():
                    raise guide.refused(token)
                token = sample(logits, params, rng, seen)
            guide.consume(token)
        return token

    @staticmethod
    def _reuse_or_reset(cache: KVCache, ids: list[int]) -> None:
        """Keep what the cache holds of the conversation `ids` continues, rewinding a changed tail
        (e.g. a reply re-tokenised differently); start over when eviction makes that inexact."""
        common = min(_common_prefix(cache.history, ids), len(ids) - 1)   # one token must run for logits
        if not cache.rewind(common):
            cache.reset()

    def _protected(self, prompt, ids: list[int], shift: int, tools=None) -> tuple[tuple[int, int], ...]:
        """Positions of the system prompt and the current user turn, never evicted (chat only)."""
        if not self.protect_chat or isinstance(prompt, str) or self.template is None:
            return ()
        ranges = []
        encode = lambda msgs: len(self.tokenizer.encode(self.render_chat(msgs, add_generation_prompt=False, tools=tools),
                                                        add_special_tokens=False).ids)
        if prompt[0]["role"] == "system":
            ranges.append((0, encode(prompt[:1])))
        if prompt[-1]["role"] == "user":
            start = encode(prompt[:-1]) if len(prompt) > 1 else 0
            ranges.append((start + shift, len(ids) + shift))
        return tuple(ranges)

    def kv_stats(self, cache: KVCache) -> KVStats:
        return KVStats(cached_tokens=cache.length, capacity_tokens=cache.capacity, evicted_tokens=cache.evicted,
                       kv_bytes=cache.nbytes, policy=self.kv_policy)


class _DecodeBinding:
    """Fixed inputs/outputs for one-token steps: numpy arrays viewed by OrtValues, bound once."""

    def __init__(self, engine: Engine, cache: KVCache):
        io, vocab = engine.manifest.io, engine.manifest.dims.vocab_size
        self.input_ids = np.zeros((1, 1), np.int64)
        self.position_ids = np.zeros((1, 1), np.int64)
        self.seqlens_k = np.zeros(1, np.int32)
        self.total_len = np.zeros((), np.int32)
        self.keep = np.ones((), np.int64)
        self.logits = np.zeros((1, 1, vocab), np.float32)
        self.binding = b = engine.session.io_binding()
        for name, arr in ((io.input_ids, self.input_ids), (io.position_ids, self.position_ids),
                          (io.seqlens_k, self.seqlens_k), (io.total_sequence_length, self.total_len),
                          (io.num_logits_to_keep, self.keep)):
            b.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr))
        b.bind_ortvalue_output(io.logits, ort.OrtValue.ortvalue_from_numpy(self.logits))
        engine._bind(cache, b)


def _load_scales(path: Path, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A quantized cache's (key, value) scales, each `shape` (num_layers, num_kv_heads, head_dim)."""
    try:
        with np.load(path) as f:
            scales = f["key"].astype(np.float32), f["value"].astype(np.float32)
    except (OSError, KeyError, ValueError) as e:
        raise PackageError(f"{str(path)!r} is not a KV scales file ({e}); re-export the package") from None
    if any(s.shape != shape or not (s > 0).all() for s in scales):
        raise PackageError(f"{str(path)!r} holds scales of shape {scales[0].shape}, expected {shape} and positive; "
                           f"re-export the package")
    return scales


class _nolock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
