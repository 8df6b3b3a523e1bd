"""The `slm` command. Each subcommand is a small function; user errors print one line and exit 2."""
from __future__ import annotations

import argparse
import sys
import warnings

from slm.errors import ProviderFallbackWarning, SlmError

EXIT_USER_ERROR = 2


def _add_model(p: argparse.ArgumentParser) -> None:
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


def _open_engine(package, args: argparse.Namespace):
    from runtime import Engine

    with warnings.catch_warnings():       # the caller prints engine.provider_note, which says the same
        warnings.simplefilter("ignore", ProviderFallbackWarning)
        return Engine(package, provider=args.provider, threads=args.threads, kv_budget=args.kv_budget,
                      kv_policy=args.kv_policy, evict_chunk=args.evict_chunk, keep_recent=args.keep_recent,
                      lookup=args.lookup, kv_dtype=args.kv_dtype)


def _add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def _sampling(args):
    from runtime.sampling import SamplingParams
    try:
        return SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                              repetition_penalty=args.repetition_penalty, seed=args.seed)
    except ValueError as e:
        raise SlmError(str(e)) from None


def open_engine(args):
    """--model and friends -> a running Engine; prints which provider runs and why, on stderr."""
    from slm.paths import resolve_package
    try:
        package = resolve_package(args.model)
    except ImportError as e:
        raise SlmError(f"exporting {args.model or 'the default model'} needs the export extra "
                       f"(pip install 'slm[export]'): {e}") from None
    try:
        engine = _open_engine(package, args)
    except (ValueError, RuntimeError) as e:
        raise SlmError(str(e)) from None
    print(f"slm: {package.name}: {engine.provider_note}", file=sys.stderr)
    return engine


def cmd_pull(args) -> None:
    from export import build_package
    from slm.paths import default_package
    from slm.sources import resolve_source
    target = default_package()
    from runtime.eviction.namm import install_scorer_file
    from slm.package import read_manifest
    if target.joinpath("manifest.json").is_file() and not args.force:
        if not read_manifest(target).namm_file:     # pulled before the scorer shipped
            print(f"slm: installed the evolved NAMM scorer: {install_scorer_file(target)}", file=sys.stderr)
        print(f"slm: default package ready at {target}", file=sys.stderr)
        return
    build_package(resolve_source(None), target)
    install_scorer_file(target)             # --kv-policy namm works out of the box
    print(target)


def cmd_export(args) -> None:
    from export.megabyte import export_checkpoint, is_checkpoint
    if is_checkpoint(args.src):         # a byte model from `python -m megabyte.train`
        if args.quant not in (None, "fp32"):
            raise SlmError(f"--quant {args.quant}: a megabyte/flat byte-model checkpoint exports at fp32 only")
        export_checkpoint(args.src, args.out)
        print(args.out)
        return
    from export import build_package
    build_package(args.src, args.out, quant=args.quant, accuracy_level=args.accuracy_level,
                  block_size=args.block_size, max_positions=args.max_positions,
                  attention_stats=args.attention_stats, head_topk=args.head_topk, outliers=args.outliers)
    print(args.out)


def _constraint(args):
    """--json-schema FILE | --regex R | --grammar FILE (Lark) -> a Constraint, or None."""
    from pathlib import Path

    from runtime.constraint import Constraint
    if args.regex is not None:
        return Constraint.regex(args.regex)
    for flag, path, make in (("--json-schema", args.json_schema, Constraint.json_schema),
                             ("--grammar", args.grammar, Constraint.lark)):
        if path is not None:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise SlmError(f"{flag} {path!r} cannot be read ({getattr(e, 'strerror', None) or e}); "
                               f"give a UTF-8 text file") from None
            return make(text)
    return None


def cmd_generate(args) -> None:
    constraint = _constraint(args)
    engine = open_engine(args)
    params = _sampling(args)
    if constraint is not None:
        engine.grammars().check(constraint)         # a bad schema is an error before any output
    last = None
    for event in engine.generate(args.prompt, params=params, max_tokens=args.max_tokens, stop=tuple(args.stop),
                                 raw=args.raw, constraint=constraint):
        sys.stdout.write(event.text)
        sys.stdout.flush()
        last = event
    sys.stdout.write("\n")
    if args.verbose and last is not None:
        print(f"slm: {last.prompt_tokens} prompt tokens, {last.generated_tokens} generated, "
              f"time to first token {last.ttft_s:.3f} s, {last.tokens_per_s:.1f} tokens/s, "
              f"finish: {last.finish_reason}", file=sys.stderr)


def cmd_chat(args) -> None:
    engine = open_engine(args)
    if not args.plain:
        try:
            from tui.app import run_chat
        except ImportError as e:
            print(f"slm: the Textual UI is not available ({e}); using the plain chat", file=sys.stderr)
        else:
            def engine_factory(package):
                return _open_engine(package, args)
            # the app's own defaults (mild sampling) unless the user set a sampling flag
            user_set = any(f in sys.argv for f in ("--temperature", "--top-k", "--top-p", "--min-p",
                                                   "--repetition-penalty", "--seed"))
            run_chat(engine, system_prompt=args.system, engine_factory=engine_factory, max_tokens=args.max_tokens,
                     params=_sampling(args) if user_set else None)
            return
    plain_chat(engine, _sampling(args), args.max_tokens, args.system)


def plain_chat(engine, params, max_tokens: int, system: str | None) -> None:
    """A terminal chat loop: type a message, Enter sends, Ctrl-D (or /exit) quits, /reset forgets."""
    messages = [{"role": "system", "content": system}] if system else []
    print("slm chat — Ctrl-D or /exit quits, /reset starts over", file=sys.stderr)
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return
        if line.strip() in ("/exit", "/quit"):
            return
        if line.strip() == "/reset":
            messages = messages[:1] if system else []
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        reply, last = [], None
        sys.stdout.write("slm> ")
        try:
            for event in engine.generate(messages, params=params, max_tokens=max_tokens):
                sys.stdout.write(event.text)
                sys.stdout.flush()
                reply.append(event.text)
                last = event
        except KeyboardInterrupt:
            pass
        except SlmError as e:
            print(f"\nerror: {e}", file=sys.stderr)
            messages.pop()
            continue
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})
        if last is not None:
            print(f"  [{last.generated_tokens} tokens, {last.tokens_per_s:.1f} tok/s, "
                  f"{last.kv.cached_tokens}/{last.kv.capacity_tokens} KV slots]", file=sys.stderr)


def cmd_serve(args) -> None:
    from runtime.serve import serve
    engine = open_engine(args)
    serve(engine, host=args.host, port=args.port, api_key=args.api_key, max_queue=args.max_queue,
          max_concurrent=args.max_concurrent)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slm", description="On-device small language models: distill, export, run.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pull", help="prepare the embedded default model (GGUF -> ONNX int4 package)")
    p.add_argument("--force", action="store_true", help="re-export even if the package exists")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("export", help="export a model source to a package folder")
    p.add_argument("src", help="HF folder, .gguf file, hub id, 'default', or a byte-model checkpoint (python -m megabyte.train)")
    p.add_argument("out", help="package folder to write")
    p.add_argument("--quant", default=None, choices=["fp32", "fp16", "int8", "int4", "gguf", "compact"],
                   help="default: gguf (carry the GGUF's blocks exactly) for a .gguf source, int4 otherwise; compact: "
                        "4-bit blocks of 64 with integer zero points fitted by least squares (smaller and faster than "
                        "gguf for K-quant files, not exact; docs/BENCHMARKS.md)")
    p.add_argument("--accuracy-level", type=int, default=4, choices=[0, 1, 2, 3, 4],
                   help="MatMulNBits accuracy_level (4: int8 activations, fastest on CPU; see docs/BENCHMARKS.md)")
    p.add_argument("--block-size", type=int, default=None, choices=[16, 32, 64, 128],
                   help="block of the re-quantising modes (default 32 for int4/int8, 64 for compact)")
    p.add_argument("--max-positions", type=int, default=None, help="rotary table length (default: min(model's, 8192))")
    p.add_argument("--head-topk", type=int, default=0, metavar="K",
                   help="read a tied 8-bit head at 4 bits and re-score its top K logits from the 8-bit table "
                        "(fewer bytes per token; 0 = off; see docs/BENCHMARKS.md)")
    p.add_argument("--outliers", type=int, default=8, metavar="N",
                   help="with accuracy level 4: up to N calibrated outlier channels per quantised input go through an "
                        "exact fp32 path instead of int8 activations (LLM.int8() decomposition; 0 = off; docs/BENCHMARKS.md)")
    p.add_argument("--no-attention-stats", dest="attention_stats", action="store_false",
                   help="skip the second graph with per-layer attention mass (needed by h2o, tova, snapkv, namm)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("generate", help="generate text for one prompt, streamed to stdout")
    p.add_argument("prompt")
    p.add_argument("--raw", action="store_true", help="skip the chat template")
    p.add_argument("-v", "--verbose", action="store_true", help="print timings to stderr")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--json-schema", default=None, metavar="FILE",
                       help="constrain the reply to JSON valid under this JSON Schema")
    shape.add_argument("--regex", default=None, metavar="R", help="constrain the reply to match this regex whole")
    shape.add_argument("--grammar", default=None, metavar="FILE",
                       help="constrain the reply to this Lark grammar (llguidance's dialect)")
    _add_model(p)
    _add_sampling(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="chat with a model in the terminal")
    p.add_argument("--plain", action="store_true", help="a plain line-by-line chat instead of the Textual UI")
    p.add_argument("--system", default=None, help="system prompt")
    _add_model(p)
    _add_sampling(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server")
    _add_model(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None)
    p.add_argument("--max-queue", type=int, default=16, help="requests waiting beyond this get 429")
    p.add_argument("--max-concurrent", type=int, default=2, help="requests generating at once")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("eval", help="evaluations")
    evals = p.add_subparsers(dest="eval_command", required=True)
    from runtime.longctx import evaluate as longctx
    e = evals.add_parser("longctx", help="long-context retrieval under each KV policy and budget (RULER-style, LongEval)")
    longctx.add_arguments(e)
    e.set_defaults(func=longctx.run)

    from evolve.cli import register as register_evolve      # `slm evolve`: NAMM scorer by CMA-ES
    register_evolve(sub)

    from distill.cli import register as register_distill     # stdlib only: listed whether or not its extra is in
    d = sub.add_parser("distill", help="distilling step-by-step: rationales, train, eval (needs slm[distill])")
    register_distill(d.add_subparsers(dest="distill_command", required=True))
    return parser


EXTRA_OF_COMMAND = {"distill": "distill"}    # a third-party module missing here names the extra to install


def _missing_extra(command: str, error: ModuleNotFoundError) -> str | None:
    """'slm distill needs ...' when `error` is a third-party module of `command`'s extra; else None (a bug)."""
    ours = {"slm", "runtime", "export", "distill", "evolve", "tui"}
    extra = EXTRA_OF_COMMAND.get(command)
    if extra is None or error.name is None or error.name.split(".")[0] in ours:
        return None
    return f"slm {command} needs the {extra} extra, which is not installed: pip install 'slm[{extra}]' ({error})"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except SlmError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except ModuleNotFoundError as e:
        message = _missing_extra(args.command, e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
