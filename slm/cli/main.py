"""`slm`: one parser whose subcommands register lazily. Only the command being run adds its flags
(importing what that takes); the others are listed by name and help alone, so `slm export` starts
without ONNX Runtime and `slm chat --help` without torch. User errors print one line and exit 2."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from slm.cli import commands
from slm.core.errors import SlmError

EXIT_USER_ERROR = 2

# name -> (help, what registers its flags); in the order `slm --help` lists them
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "pull": ("prepare the embedded default model (GGUF -> ONNX int4 package)", commands.register_pull),
    "export": ("export a model source to a package folder", commands.register_export),
    "generate": ("generate text for one prompt, streamed to stdout", commands.register_generate),
    "chat": ("chat with a model in the terminal", commands.register_chat),
    "serve": ("OpenAI-compatible HTTP server", commands.register_serve),
    "eval": ("evaluations", commands.register_eval),
    "evolve": ("evolve a NAMM KV-eviction scorer for a package (CMA-ES, resumable)", commands.register_evolve),
    "distill": ("distilling step-by-step: rationales, train, eval (needs slm[distill])", commands.register_distill),
}
EXTRA_OF_COMMAND = {"distill": "distill"}    # a third-party module missing here names the extra to install
OURS = {"slm"}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the flags of `command` (None: every command, for tests and docs)."""
    parser = argparse.ArgumentParser(prog="slm", description="On-device small language models: distill, export, run.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, register) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if command is None or name == command:
            register(p)
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named on the command line: its first word (`slm` itself takes only -h)."""
    return next((a for a in argv if not a.startswith("-")), "")


def _missing_extra(command: str, error: ModuleNotFoundError) -> str | None:
    """'slm distill needs ...' when `error` is a third-party module of `command`'s extra; else None (a bug)."""
    extra = EXTRA_OF_COMMAND.get(command)
    if extra is None or error.name is None or error.name.split(".")[0] in OURS:
        return None
    return f"slm {command} needs the {extra} extra, which is not installed: pip install 'slm[{extra}]' ({error})"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_command_of(argv)).parse_args(argv)
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
