"""On-disk cache of teacher requests and responses (SQLite, WAL).

Every paid response is committed the moment it arrives, so a run killed at any point (even with
kill -9) loses nothing it paid for: re-running asks only for what is not in the cache yet, and two
runs that send the same request share one answer.

The key is a SHA-256 over the canonical JSON of what determines the answer: teacher kind, endpoint
(scheme, host, port, path; never credentials), model, the full messages, the sampling parameters
and the sample index. API keys are never part of a key or a stored row.
"""

import json
import os
import sqlite3
import time
from hashlib import sha256
from pathlib import Path
from typing import Any

from cotdistill.errors import CotdistillError

DEFAULT_CACHE_DIR = Path("~/.cache/cotdistill")
CACHE_FILE = "teach.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def cache_dir() -> Path:
    """The folder of everything cotdistill caches: $COTDISTILL_CACHE, else ~/.cache/cotdistill.
    One meaning everywhere: the teacher cache is a file inside it, converted models a sub-folder."""
    from cotdistill.checks import env_folder

    return env_folder("COTDISTILL_CACHE", DEFAULT_CACHE_DIR)


def default_cache_path() -> Path:
    """The teacher cache: teach.sqlite in cache_dir() (shared by all runs of a user)."""
    return cache_dir() / CACHE_FILE


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def request_key(request: dict[str, Any]) -> str:
    return sha256(canonical_json(request).encode("utf-8")).hexdigest()


class ResponseCache:
    """A small key -> (request, response) store; safe to share between concurrent processes."""

    def __init__(self, path: Path):
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: autocommit, every put is its own durable transaction.
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash (kill -9); only power loss can drop the last commit.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise CotdistillError(f"cannot open teacher cache {self.path}: {e}") from e

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def has(self, key: str) -> bool:
        return self._db.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None

    def put(self, key: str, request: dict[str, Any], response: dict[str, Any]) -> None:
        # OR IGNORE: a concurrent run may have stored the same request first; keep the first answer.
        self._db.execute(
            "INSERT OR IGNORE INTO responses (key, request, response, created) VALUES (?, ?, ?, ?)",
            (key, canonical_json(request), canonical_json(response), time.time()),
        )

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def keys(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT key FROM responses")}

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ResponseCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
