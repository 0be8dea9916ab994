"""Usage errors through the real `cotdistill` entry point: one `error:` line, exit 2, no traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).parent / "cotdistill")


@pytest.mark.parametrize(
    "args, names",
    [
        (["evl"], "evl"),  # unknown command
        (["eval", "--bogus"], "--bogus"),  # unknown option
        (["train", "--lr", "abc"], "--lr"),  # a value of the wrong type
        (["eval"], "model"),  # a missing required setting
        (["--bogus"], "--bogus"),
        (["data", "audit", "--dataset", "nope"], "nope"),
    ],
)
def test_usage_error_is_one_line(tmp_path, args, names):
    r = subprocess.run([CLI, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert names in lines[0]
    assert "Traceback" not in r.stderr + r.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_internal_error_points_to_a_log(tmp_path):
    """An unexpected exception is one line naming a log that holds the traceback (exit 1)."""
    code = (
        "import sys; from cotdistill import cli\n"
        "from cotdistill.cli.app import app\n"
        "@app.command('boom')\n"
        "def boom():\n    raise RuntimeError('kaboom')\n"
        "sys.argv = ['cotdistill', 'boom']; cli.main()\n"
    )
    env = {"TMPDIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: internal error (RuntimeError: kaboom)"), r.stderr
    log = Path(lines[0].rsplit("traceback in ", 1)[1])
    assert log.is_file() and "kaboom" in log.read_text() and "Traceback" in log.read_text()
