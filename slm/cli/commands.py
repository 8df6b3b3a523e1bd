"""The subcommands: each `register_*` adds its flags (stdlib only, so building the parser imports
no stage) and each `cmd_*` imports the stage it runs when it runs. User errors are SlmError."""
from __future__ import annotations

import argparse
import sys

from slm.cli.options import add_model_flags, add_sampling_flags, engine_at, engine_options, open_engine, sampling, \
    sampling_given
from slm.core.errors import SlmError


def register_pull(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="re-export even if the package exists")
    p.set_defaults(func=cmd_pull)


def cmd_pull(args) -> None:
    from slm.cli.packages import pull
    built = pull(args.force)
    if built is not None:
        print(built)


def register_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="HF folder, .gguf file, hub id, 'default', or a byte-model checkpoint (python -m slm.megabyte.train)")
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
                   help="read the 8-bit head (a tied table, or an untied Q8_0/Q6_K/int8 lm_head) through a 4-bit "
                        "copy and re-score its top K logits from the 8-bit blocks (fewer bytes per token; 0 = off; "
                        "see docs/BENCHMARKS.md)")
    p.add_argument("--outliers", type=int, default=8, metavar="N",
                   help="with accuracy level 4: up to N calibrated outlier channels per quantised input go through an "
                        "exact fp32 path instead of int8 activations (LLM.int8() decomposition; 0 = off; docs/BENCHMARKS.md)")
    p.add_argument("--no-attention-stats", dest="attention_stats", action="store_false",
                   help="skip the second graph with per-layer attention mass (needed by h2o, tova, snapkv, namm)")
    p.add_argument("--k-quant-scales", default="float32", choices=["float32", "gguf"],
                   help="--quant gguf: store Q4_K/Q6_K scales as float32 (default: the least memory while loading) or "
                        "as the file's own factors (gguf: ~1.1x the GGUF on disk instead of ~1.4x, a higher peak RSS "
                        "while the session opens; docs/BENCHMARKS.md)")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> None:
    from slm.export.megabyte import export_checkpoint, is_checkpoint
    if is_checkpoint(args.src):         # a byte model from `python -m slm.megabyte.train`
        if args.quant not in (None, "fp32"):
            raise SlmError(f"--quant {args.quant}: a slm/megabyte/flat byte-model checkpoint exports at fp32 only")
        export_checkpoint(args.src, args.out)
        print(args.out)
        return
    from slm.export import ExportOptions, build_package
    build_package(args.src, args.out, ExportOptions(quant=args.quant, accuracy_level=args.accuracy_level,
                                                    block_size=args.block_size, max_positions=args.max_positions,
                                                    attention_stats=args.attention_stats, head_topk=args.head_topk,
                                                    outliers=args.outliers, k_quant_scales=args.k_quant_scales))
    print(args.out)


def register_generate(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt")
    p.add_argument("--raw", action="store_true", help="skip the chat template")
    p.add_argument("-v", "--verbose", action="store_true", help="print timings to stderr")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--json-schema", default=None, metavar="FILE",
                       help="constrain the reply to JSON valid under this JSON Schema")
    shape.add_argument("--regex", default=None, metavar="R", help="constrain the reply to match this regex whole")
    shape.add_argument("--grammar", default=None, metavar="FILE",
                       help="constrain the reply to this Lark grammar (llguidance's dialect)")
    add_model_flags(p)
    add_sampling_flags(p)
    p.set_defaults(func=cmd_generate)


def _constraint(args):
    """--json-schema FILE | --regex R | --grammar FILE (Lark) -> a Constraint, or None."""
    from pathlib import Path

    from slm.runtime.constraint import Constraint
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
    params = sampling(args)
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


def register_chat(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plain", action="store_true", help="a plain line-by-line chat instead of the Textual UI")
    p.add_argument("--system", default=None, help="system prompt")
    add_model_flags(p)
    add_sampling_flags(p)
    p.set_defaults(func=cmd_chat)


def cmd_chat(args) -> None:
    engine = open_engine(args)
    if not args.plain:
        try:
            from slm.tui.app import run_chat
        except ImportError as e:
            print(f"slm: the Textual UI is not available ({e}); using the plain chat", file=sys.stderr)
        else:
            options = engine_options(args)
            # the app's own defaults (mild sampling) unless the user set a sampling flag
            run_chat(engine, system_prompt=args.system, engine_factory=lambda package: engine_at(package, options),
                     max_tokens=args.max_tokens, params=sampling(args) if sampling_given(args) else None)
            return
    plain_chat(engine, sampling(args), args.max_tokens, args.system)


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


def register_serve(p: argparse.ArgumentParser) -> None:
    add_model_flags(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None)
    p.add_argument("--max-queue", type=int, default=16, help="requests waiting beyond this get 429")
    p.add_argument("--max-concurrent", type=int, default=2, help="requests generating at once")
    p.add_argument("--served-model-name", default=None, metavar="NAME",
                   help="the model id clients ask for (default: the package folder's name)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> None:
    from slm.runtime.serve import serve
    engine = open_engine(args)
    serve(engine, host=args.host, port=args.port, api_key=args.api_key, max_queue=args.max_queue,
          max_concurrent=args.max_concurrent, model_id=args.served_model_name)


def register_eval(p: argparse.ArgumentParser) -> None:
    from slm.evals.longctx import evaluate as longctx       # the harness's flags: stdlib only
    harnesses = p.add_subparsers(dest="eval_command", required=True)
    e = harnesses.add_parser("longctx", help="long-context retrieval under each KV policy and budget (RULER-style, LongEval)")
    longctx.add_arguments(e)
    e.set_defaults(func=_with_package(longctx.run))


def register_evolve(p: argparse.ArgumentParser) -> None:
    from slm.evolve.cli import add_arguments, run
    add_arguments(p)
    p.set_defaults(func=_with_package(run))


def register_distill(p: argparse.ArgumentParser) -> None:
    from slm.distill.cli import register     # stdlib only: listed whether or not its extra is in
    register(p.add_subparsers(dest="distill_command", required=True))


def _with_package(run):
    """A stage's command that takes --model, run on a package folder this layer built on demand
    (the stages below find packages but never export one)."""
    def run_on_package(args):
        from slm.cli.packages import resolve_package
        args.model = str(resolve_package(args.model))
        return run(args)
    return run_on_package
