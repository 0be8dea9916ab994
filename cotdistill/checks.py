"""Checks of user-given places before any work starts: output paths and URLs.

A command checks its outputs first, so that a mistyped `--out` costs a second, not an hour of
generation that is then lost; and so that a failed command leaves nothing behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from cotdistill.errors import CotdistillError


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_can_create_in(path: Path, option: str, shown: Path) -> None:
    """`path` (not existing yet, or a folder) can get new files: its nearest existing ancestor is a
    writable folder. Tried for real (a temporary file made and removed): permission bits lie to root."""
    base = _nearest_existing(path)
    if not base.is_dir():
        raise CotdistillError(f"{option} {shown}: {base} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as e:
        raise CotdistillError(f"{option} {shown}: cannot write in {base} ({e.strerror or e})") from None


def check_out_file(path: Path, option: str = "--out") -> Path:
    """An output file: not a folder, and its folder exists or can be made, and is writable."""
    path = Path(path)
    if path.is_dir():
        raise CotdistillError(f"{option} {path} is a folder; expected a file name")
    _check_can_create_in(path.parent if path.parent.exists() else path, option, path)
    return path


def check_out_dir(path: Path, option: str = "--out") -> Path:
    """An output folder: not a file, and it exists or can be made, and is writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CotdistillError(f"{option} {path} is a file; expected a folder")
    _check_can_create_in(path, option, path)
    return path


def check_url(url: str, option: str = "--base-url", allow_credentials: bool = False) -> str:
    """`url` if it is an http(s) URL with a host and a valid port; credentials only where allowed."""
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018  (raises ValueError for a port out of 0..65535 or not a number)
    except ValueError:
        ok = False
    if not ok:
        raise CotdistillError(f"{option} {url!r} is not an http(s) URL such as http://127.0.0.1:8000/v1")
    if (parts.username or parts.password) and not allow_credentials:
        raise CotdistillError(f"{option} must not hold credentials; put the key in an environment variable")
    return url


def mask_url(url: str) -> str:
    """`url` with its user:password replaced by *** (for anything printed or written)."""
    parts = urlsplit(url)
    if not (parts.username or parts.password):
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"***@{host}").geturl()


def url_secrets(url: str | None) -> list[str]:
    """The credential parts of a URL (to redact from messages a server sends back)."""
    if not url:
        return []
    parts = urlsplit(url)
    return [s for s in (parts.password, parts.username and parts.netloc.rsplit("@", 1)[0]) if s]


def env_folder(name: str, default: Path) -> Path:
    """A folder named by an environment variable (or the default); a file there is an error."""
    value = os.environ.get(name)
    path = Path(value).expanduser() if value else default.expanduser()
    if path.exists() and not path.is_dir():
        raise CotdistillError(f"${name} {path} is a file; it must name a folder")
    return path
