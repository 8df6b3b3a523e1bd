"""Stop strings over streamed text: hold back what could still become a stop string."""
from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: tuple[str, ...]):
        if any(not isinstance(s, str) or not s for s in stops):
            raise ValueError(f"stop strings must be non-empty strings, got {list(stops)!r}")
        self.stops = stops
        self.held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit, whether a stop string was hit). On a hit, text ends before it."""
        if not self.stops:
            return text, False
        buf = self.held + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return buf[:min(hits)], True
        keep = max((k for s in self.stops for k in range(1, len(s)) if buf.endswith(s[:k])), default=0)
        self.held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep], False

    def flush(self, text: str = "") -> str:
        """End of generation: whatever is held (no stop string completed) plus `text`, checked once more."""
        out, hit = self.feed(text)
        if hit:
            return out
        out, self.held = out + self.held, ""
        return out
