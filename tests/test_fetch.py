"""`data fetch` against a real HTTP server on 127.0.0.1 serving copies of ../shared/data files
laid out like their upstream raw URLs."""

import functools
import gzip
import http.server
import shutil
import threading

import pytest
from typer.testing import CliRunner

from cotdistill.benchmarks import load_benchmark
from cotdistill.cli.app import app
from cotdistill.data import SOURCES, fetch, load_manifest

PAPER = "EIT-NLP/Distilling-CoT-Reasoning/cc33822e99534615a87841bd6c2e865e0d24d123/data"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def mirror(tmp_path, data_dir):
    """(base_url, served_root): an http.server in a thread serving a few upstream-shaped files."""
    root = tmp_path / "srv"
    (root / PAPER).mkdir(parents=True)
    (root / PAPER / "SVAMP_only_ans.json").write_bytes(gzip.open(data_dir / "cot/SVAMP_only_ans.json.gz").read())
    (root / "arkilpatel/SVAMP/689d7cc").mkdir(parents=True)
    shutil.copy(data_dir / "benchmarks/svamp/SVAMP.json", root / "arkilpatel/SVAMP/689d7cc/SVAMP.json")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


SVAMP_FILES = ["cot/SVAMP_only_ans.json", "benchmarks/svamp/SVAMP.json"]


def test_fetch_verifies_resumes_and_feeds_the_loader(tmp_path, mirror):
    base, _ = mirror
    to = tmp_path / "data"
    r = fetch(to, base_url=base, only=SVAMP_FILES)
    assert (sorted(r.downloaded), r.skipped, r.failed, r.unverified) == (sorted(SVAMP_FILES), [], [], [])
    assert len(load_benchmark("svamp", "test", to)) == 300  # the loader reads the plain upstream JSON
    again = fetch(to, base_url=base, only=SVAMP_FILES)
    assert (again.downloaded, sorted(again.skipped)) == ([], sorted(SVAMP_FILES))


def test_bad_checksum_and_missing_upstream_file_are_reported(tmp_path, mirror):
    base, root = mirror
    served = root / PAPER / "SVAMP_only_ans.json"
    served.write_bytes(served.read_bytes().replace(b'"145"', b'"146"'))  # tampered mirror
    to = tmp_path / "data"
    r = fetch(to, base_url=base, only=["cot/SVAMP_only_ans.json", "cot/svamp_human_annotation.json"])
    failed = dict(r.failed)
    assert failed["cot/SVAMP_only_ans.json"].startswith("sha256 mismatch")
    assert failed["cot/svamp_human_annotation.json"].startswith("HTTP 404")
    assert not to.exists() or not any(p.is_file() for p in to.rglob("*"))  # nothing (half-)written


def test_file_without_known_sum_is_unverified(tmp_path, mirror):
    base, root = mirror
    (root / PAPER / "gsm8k_ChatGPT_level1_ranked.json").write_text('[{"instruction": "q", "output": "The answer is 1"}]')
    r = fetch(tmp_path / "data", base_url=base, only=["cot/gsm8k_ChatGPT_level1_ranked.json"])
    assert r.unverified == ["cot/gsm8k_ChatGPT_level1_ranked.json"] and not r.failed


def test_cli_fetch_exit_codes(tmp_path, mirror):
    base, _ = mirror
    to = tmp_path / "data"
    ok = CliRunner().invoke(app, ["data", "fetch", "--to", str(to), "--base-url", base,
                                  "--only", SVAMP_FILES[0], "--only", SVAMP_FILES[1]])
    assert ok.exit_code == 0 and "2 downloaded, 0 already present" in ok.output
    bad = CliRunner().invoke(app, ["data", "fetch", "--to", str(to), "--base-url", base, "--only", "cot/SVAMP_llama_*"])
    assert bad.exit_code == 1 and "failed: cot/SVAMP_llama_level1_ranked.json: HTTP 404" in bad.output
    none = CliRunner().invoke(app, ["data", "fetch", "--to", str(to), "--only", "cot/nothing*"])
    assert "matches no file of the manifest" in str(none.exception)


def test_manifest_covers_every_source_and_has_sums_for_the_shared_copy(data_dir):
    entries = {e["path"]: e for e in load_manifest()["files"]}
    for stem, _ in SOURCES.values():
        assert f"cot/{stem}.json" in entries
    for path, e in entries.items():
        present = (data_dir / path).is_file() or (data_dir / f"{path}.gz").is_file()
        assert (e["sha256"] is not None) == present, path
    assert sum(e["sha256"] is None for e in entries.values()) == 53  # README: 53 upstream files not copied
