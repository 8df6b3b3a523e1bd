"""Write an SVG of the chat screen (the README's screenshot).

    python -m slm.tui.screenshot --model PACKAGE     # the README's: a real package, greedy
    python -m slm.tui.screenshot                     # canned reply, fixed numbers (no model needed)

`CannedEngine` stands in for `runtime.Engine` where output must not vary (this script, the
snapshot tests): it yields fixed GenerationEvents, word by word.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
from pathlib import Path
from types import SimpleNamespace

from slm.runtime.events import GenerationEvent, KVStats

QUESTION = "Why is the sky blue? Keep it short."
ANSWER = """The sky looks blue because of **Rayleigh scattering**:

1. Sunlight holds every colour.
2. Air molecules are much smaller than the light's wavelength, so they scatter short
   wavelengths (blue, violet) far more than long ones (red): about `1/λ⁴`.
3. Our eyes are more sensitive to blue than to violet, so the scattered light looks blue.

At sunset the light crosses more air, the blue is scattered away, and red is left."""


class CannedEngine:
    """The parts of Engine the chat uses, with fixed replies and numbers."""

    def __init__(self, replies: list[str], *, name: str = "canned-demo", capacity: int = 2048,
                 kv_bytes: int = 2048 * 23040):
        self.path = Path(name)
        self.capacity = capacity
        self.manifest = SimpleNamespace(kv=SimpleNamespace(default_capacity=capacity))   # uncapped: the whole context
        self.kv_policy = "none"
        self.provider = "cpu"
        self.provider_note = "canned replies"
        self.replies = list(replies)
        self.kv_bytes = kv_bytes
        self.calls = 0

    def generate(self, prompt, *, params=None, max_tokens: int = 256, cancel=None, **_):
        reply = self.replies[self.calls % len(self.replies)]
        self.calls += 1
        prompt_tokens = 20 + sum(len(m["content"]) // 4 + 4 for m in prompt)
        pieces = re.findall(r"\s*\S+", reply)[:max_tokens]
        for n, piece in enumerate(pieces, 1):
            stopped = cancel is not None and cancel.is_set()
            finish = "cancelled" if stopped else "stop" if n == len(pieces) else None
            kv = KVStats(cached_tokens=prompt_tokens + n, capacity_tokens=self.capacity, evicted_tokens=0,
                         kv_bytes=self.kv_bytes, policy=self.kv_policy)
            yield GenerationEvent(text=piece, token=n, finish_reason=finish, prompt_tokens=prompt_tokens,
                                  generated_tokens=n, ttft_s=0.084, tokens_per_s=61.7, kv=kv)
            if finish:
                return


async def save_screenshot(engine, out: Path, *, size: tuple[int, int] = (110, 34)) -> None:
    from slm.tui.app import ChatApp
    from slm.tui.store import ChatSettings, Store

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "chats.sqlite3")
        store.new_conversation(title="Tokenizers, briefly")
        store.new_conversation(title="A haiku about the sea")
        app = ChatApp(engine, store, settings=ChatSettings(temperature=0.0, max_tokens=200))
        async with app.run_test(size=size) as pilot:
            await pilot.press("ctrl+n", *QUESTION, "enter")
            while app.generating:
                await pilot.pause(0.05)
            await pilot.pause(0.2)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(app.export_screenshot(title="slm chat"))
        store.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a package folder (default: canned replies)")
    p.add_argument("--out", default="docs/tui.svg")
    args = p.parse_args()
    if args.model:
        from slm.runtime import Engine
        engine = Engine(args.model)
    else:
        engine = CannedEngine([ANSWER])
    asyncio.run(save_screenshot(engine, Path(args.out)))
    print(args.out)


if __name__ == "__main__":
    main()
