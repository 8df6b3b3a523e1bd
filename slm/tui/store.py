"""Conversations in one SQLite file under the user's data directory (stdlib sqlite3).

    store = Store(default_db_path())
    chat = store.new_conversation(system_prompt="Be brief.")
    store.add_message(chat.id, "user", "Why is the sky blue?")

A conversation carries its own system prompt and sampling settings; an assistant message carries
the numbers of the generation that wrote it (`ReplyStats`). Used from the UI thread only.
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from slm.runtime.events import GenerationEvent
from slm.runtime.sampling import SAMPLING_FIELDS, SamplingParams
from slm.core.errors import SlmError

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,   -- ids are never reused
    title         TEXT NOT NULL,
    system_prompt TEXT NOT NULL DEFAULT '',
    settings      TEXT NOT NULL,                -- ChatSettings as JSON
    updated       REAL NOT NULL                 -- time.time() of the last change
);
CREATE TABLE IF NOT EXISTS messages (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role            TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content         TEXT NOT NULL,
    stats           TEXT                        -- ReplyStats as JSON, assistant messages only
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
"""
UNTITLED = "New chat"


def default_db_path() -> Path:
    from slm.core.paths import data_dir
    return data_dir() / "chats.sqlite3"


@dataclass(frozen=True)
class ChatSettings:
    """Per-conversation sampling settings; `params()` validates them into a SamplingParams."""
    temperature: float = 0.2
    top_k: int = 0
    top_p: float = 0.9
    min_p: float = 0.0
    repetition_penalty: float = 1.1
    seed: int | None = None
    max_tokens: int = 512

    def params(self) -> SamplingParams:
        return SamplingParams.of(self)

    def validate(self) -> None:
        """Raise ValueError naming the first bad value."""
        self.params()
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens={self.max_tokens!r} is out of range; use an integer max_tokens >= 1")

    @staticmethod
    def from_params(params: SamplingParams, max_tokens: int) -> "ChatSettings":
        return ChatSettings(**{name: getattr(params, name) for name in SAMPLING_FIELDS}, max_tokens=max_tokens)


@dataclass(frozen=True)
class ReplyStats:
    """What the status bar and a reply's footer show: the last GenerationEvent, minus the text."""
    finish_reason: str
    prompt_tokens: int
    generated_tokens: int
    ttft_s: float
    tokens_per_s: float
    cached_tokens: int
    capacity_tokens: int
    evicted_tokens: int
    policy: str

    @staticmethod
    def from_event(e: GenerationEvent) -> "ReplyStats":
        return ReplyStats(finish_reason=e.finish_reason or "", prompt_tokens=e.prompt_tokens,
                          generated_tokens=e.generated_tokens, ttft_s=e.ttft_s, tokens_per_s=e.tokens_per_s,
                          cached_tokens=e.kv.cached_tokens, capacity_tokens=e.kv.capacity_tokens,
                          evicted_tokens=e.kv.evicted_tokens, policy=e.kv.policy)


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    system_prompt: str
    settings: ChatSettings


@dataclass(frozen=True)
class ChatMessage:
    id: int
    role: str                   # "user" | "assistant"
    content: str
    stats: ReplyStats | None    # assistant messages only


def _from_json(cls, text: str | None):
    """A dataclass from JSON, ignoring unknown keys (a newer slm may add some)."""
    if not text:
        return None
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in json.loads(text).items() if k in known})


class Store:
    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path)
            self.db.execute("PRAGMA foreign_keys = ON")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SlmError(f"{str(self.path)!r} was written by a newer slm (schema {version}); this slm reads "
                               f"schema {SCHEMA_VERSION}: upgrade slm or pass another database")
            with self.db:
                self.db.executescript(SCHEMA)
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except (sqlite3.DatabaseError, OSError) as e:
            raise SlmError(f"cannot open the chat database {str(self.path)!r} ({e}); move it away or set SLM_DATA "
                           f"to another folder") from None

    def close(self) -> None:
        self.db.close()

    # --- conversations ------------------------------------------------------------------------------
    def conversations(self) -> list[Conversation]:
        """Most recently changed first."""
        rows = self.db.execute("SELECT id, title, system_prompt, settings FROM conversations "
                               "ORDER BY updated DESC, id DESC").fetchall()
        return [Conversation(id, title, system, _from_json(ChatSettings, settings))
                for id, title, system, settings in rows]

    def conversation(self, conversation_id: int) -> Conversation:
        row = self.db.execute("SELECT id, title, system_prompt, settings FROM conversations WHERE id = ?",
                              (conversation_id,)).fetchone()
        if row is None:
            raise KeyError(conversation_id)
        return Conversation(row[0], row[1], row[2], _from_json(ChatSettings, row[3]))

    def new_conversation(self, *, title: str = UNTITLED, system_prompt: str = "",
                         settings: ChatSettings = ChatSettings()) -> Conversation:
        with self.db:
            cur = self.db.execute("INSERT INTO conversations (title, system_prompt, settings, updated) VALUES (?, ?, ?, ?)",
                                  (title, system_prompt, json.dumps(asdict(settings)), time.time()))
        return Conversation(cur.lastrowid, title, system_prompt, settings)

    def update_conversation(self, chat: Conversation, **changes) -> Conversation:
        """`title`, `system_prompt` or `settings` changed; returns the new Conversation."""
        chat = replace(chat, **changes)
        with self.db:
            self.db.execute("UPDATE conversations SET title = ?, system_prompt = ?, settings = ?, updated = ? "
                            "WHERE id = ?", (chat.title, chat.system_prompt, json.dumps(asdict(chat.settings)),
                                             time.time(), chat.id))
        return chat

    def delete_conversation(self, conversation_id: int) -> None:
        with self.db:
            self.db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # --- messages -----------------------------------------------------------------------------------
    def messages(self, conversation_id: int) -> list[ChatMessage]:
        rows = self.db.execute("SELECT id, role, content, stats FROM messages WHERE conversation_id = ? ORDER BY id",
                               (conversation_id,)).fetchall()
        return [ChatMessage(id, role, content, _from_json(ReplyStats, stats)) for id, role, content, stats in rows]

    def add_message(self, conversation_id: int, role: str, content: str,
                    stats: ReplyStats | None = None) -> ChatMessage:
        with self.db:
            cur = self.db.execute("INSERT INTO messages (conversation_id, role, content, stats) VALUES (?, ?, ?, ?)",
                                  (conversation_id, role, content, json.dumps(asdict(stats)) if stats else None))
            self.db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (time.time(), conversation_id))
        return ChatMessage(cur.lastrowid, role, content, stats)

    def delete_message(self, message_id: int) -> None:
        with self.db:
            self.db.execute("DELETE FROM messages WHERE id = ?", (message_id,))

    def recent_prompts(self, limit: int = 200) -> list[str]:
        """The user's past messages, oldest first (the prompt input's history)."""
        rows = self.db.execute("SELECT content FROM messages WHERE role = 'user' ORDER BY id DESC LIMIT ?",
                               (limit,)).fetchall()
        return [content for (content,) in reversed(rows)]
