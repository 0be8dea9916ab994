"""A lock file that claims one job, safe across processes and machines sharing a folder.

The lock is created whole and exclusively (content written to a temp file, then hard-linked to
the lock's name: link() fails when the name exists, on local disks and NFS alike). It holds
who claimed it (host, pid, start time, a random token); its mtime is a heartbeat that the owner
refreshes every few seconds. A lock is stale, and may be taken over, when its process is gone
(same host) or its heartbeat is older than `stale_after` seconds (any host).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0


@dataclass
class Holder:
    host: str
    pid: int
    started: float
    token: str
    age: float  # seconds since the last heartbeat
    stale: bool


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child its parent has not reaped yet is a zombie: dead for our purpose
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def holder(path: Path, stale_after: float = STALE_AFTER_S) -> Holder | None:
    """Who holds the lock at `path` (None: nobody)."""
    try:
        age = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return None
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # gone or unreadable: judged by its age alone
        info = {}
    host, pid = str(info.get("host", "")), int(info.get("pid", 0) or 0)
    dead = host == socket.gethostname() and pid > 0 and not _pid_alive(pid)
    return Holder(host, pid, float(info.get("started", 0)), str(info.get("token", "")), age,
                  stale=dead or age > stale_after)


class JobLock:
    """`acquire()` claims the lock (taking over a stale one) or returns False when someone alive
    holds it; while held, a thread refreshes its heartbeat; `release()` removes it if still ours."""

    def __init__(self, path: Path, heartbeat_s: float = HEARTBEAT_S, stale_after: float = STALE_AFTER_S) -> None:
        self.path = Path(path)
        self.heartbeat_s, self.stale_after = heartbeat_s, stale_after
        self.token = uuid.uuid4().hex
        self.took_over: Holder | None = None  # the stale holder replaced, if any
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "token": self.token}
        tmp = self.path.with_name(f".{self.path.name}.{self.token}")
        tmp.write_text(json.dumps(info), encoding="utf-8")
        try:
            for _ in range(5):
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    h = holder(self.path, self.stale_after)
                    if h is None:
                        continue  # released between our link and our look: try again
                    if not h.stale or not self._remove_stale(h):
                        return False
                    self.took_over = h
                    continue
                self._start_heartbeat()
                return True
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _remove_stale(self, stale: Holder) -> bool:
        """Move the stale lock aside; if what we moved is not the lock we judged (someone took it
        over in between), put it back. True when the stale lock is gone."""
        aside = self.path.with_name(f".{self.path.name}.stale.{self.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True
        try:
            moved = json.loads(aside.read_text(encoding="utf-8")).get("token", "")
        except (OSError, ValueError):
            moved = stale.token
        if moved != stale.token:
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    os.utime(self.path)
                except OSError:
                    return

        self._thread = threading.Thread(target=beat, name=f"heartbeat {self.path.parent.name}", daemon=True)
        self._thread.start()

    def owned(self) -> bool:
        h = holder(self.path, self.stale_after)
        return h is not None and h.token == self.token

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.owned():
            self.path.unlink(missing_ok=True)
