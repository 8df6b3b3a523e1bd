"""The flags every model-running command shares, and the one EngineOptions they build."""
from __future__ import annotations

import argparse
import sys
import warnings

from slm.core.errors import ProviderFallbackWarning, SlmError


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, metavar="PACKAGE_OR_SOURCE",
                   help="a package folder, a HF folder, a .gguf file or a hub id (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--kv-budget", default=None, metavar="TOKENS|BYTES",
                   help="KV cache budget: tokens (2048) or bytes (16MiB); the buffer never grows past it")
    p.add_argument("--kv-policy", default="none", help="eviction policy when the budget is full (none refuses)")
    p.add_argument("--kv-dtype", default=None, metavar="fp32|fp16|int8|int4",
                   help="KV cache storage (default: the package's); a byte budget holds 2x (fp16), 4x (int8) "
                        "or 8x (int4) the fp32 tokens")
    p.add_argument("--evict-chunk", type=int, default=None, metavar="TOKENS",
                   help="slots freed per eviction (default: 1/8 of the budget)")
    p.add_argument("--keep-recent", type=int, default=None, metavar="TOKENS",
                   help="newest tokens never evicted (default: 1/8 of the budget)")
    p.add_argument("--lookup", type=int, default=0, metavar="TOKENS",
                   help="prompt lookup decoding: draft up to this many tokens from the conversation per step "
                        "(0 = off; same output, faster where replies repeat their context; policies none, "
                        "streaming, knorm)")


def engine_options(args: argparse.Namespace):
    """The model flags -> one EngineOptions, built once and handed whole to every engine opened."""
    from slm.runtime.options import EngineOptions
    return EngineOptions(provider=args.provider, threads=args.threads, kv_budget=args.kv_budget,
                         kv_policy=args.kv_policy, kv_dtype=args.kv_dtype, evict_chunk=args.evict_chunk,
                         keep_recent=args.keep_recent, lookup=args.lookup)


def engine_at(package, options):
    """Engine(package, options), quiet about a provider fallback (the caller prints engine.provider_note)."""
    from slm.runtime import Engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProviderFallbackWarning)
        return Engine(package, options)


def open_engine(args: argparse.Namespace):
    """--model and friends -> a running Engine; prints which provider runs and why, on stderr."""
    from slm.cli.packages import resolve_package
    package = resolve_package(args.model)
    try:
        engine = engine_at(package, engine_options(args))
    except (ValueError, RuntimeError) as e:
        raise SlmError(str(e)) from None
    print(f"slm: {package.name}: {engine.provider_note}", file=sys.stderr)
    return engine


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """Unset flags stay None, so a command can tell "not given" from a default (slm.runtime.sampling's)."""
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (the default)")
    p.add_argument("--top-k", type=int, default=None, help="0 = off (the default)")
    p.add_argument("--top-p", type=float, default=None, help="1 = off (the default)")
    p.add_argument("--min-p", type=float, default=None, help="0 = off (the default)")
    p.add_argument("--repetition-penalty", type=float, default=None, help="1 = off (the default)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def sampling_given(args: argparse.Namespace) -> bool:
    """Whether the user set any sampling flag on this command line."""
    from slm.runtime.sampling import SAMPLING_FIELDS
    return any(getattr(args, name) is not None for name in SAMPLING_FIELDS)


def sampling(args: argparse.Namespace):
    """The sampling flags -> SamplingParams (slm.runtime.sampling's defaults for those not given)."""
    from slm.runtime.sampling import SAMPLING_FIELDS, SamplingParams
    try:
        return SamplingParams(**{name: getattr(args, name) for name in SAMPLING_FIELDS
                                 if getattr(args, name) is not None})
    except ValueError as e:
        raise SlmError(str(e)) from None
