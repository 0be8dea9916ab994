"""Executors: the same study under local, subprocess and ray gives the same numbers; a Ray worker
killed mid-training is retried and resumes; two drivers on one folder run every job once; a
copied study folder keeps every finished job; bad input fails with one line."""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cotdistill import study
from cotdistill.errors import CotdistillError
from cotdistill.locks import JobLock, holder
from cotdistill.plan.spec import ExecutorSettings, executor_settings, parse_study

ASSETS = Path(__file__).parent / "assets" / "study"
CLI = Path(sys.executable).parent / "cotdistill"

# 4 cells, 2 of which share a train job (they differ only in evaluation): 1 train + 4 eval jobs.
FOUR_CELLS = """\
datasets: [svamp]
students: [STUDENT]
supervision: [tiny_supervision.jsonl, none]
train: {epochs: 1, batch_size: 4, lr: 1.0e-3}
eval: {limit: 3, max_new_tokens: 6, batch_size: 3}
resources: {train: {cpus: 1}, eval: {cpus: 1}}
cells:
  - {student: STUDENT, supervision: tiny_supervision.jsonl, eval: {limit: 2}}
  - {student: STUDENT, supervision: none, eval: {limit: 2}}
"""


def make_study(tmp_path: Path, student: Path, body: str) -> Path:
    shutil.copy(ASSETS / "tiny_supervision.jsonl", tmp_path / "tiny_supervision.jsonl")
    path = tmp_path / "study.yaml"
    path.write_text(body.replace("STUDENT", str(student)))
    return path


def outputs(out: Path) -> tuple[dict, dict]:
    """{cell: (status, accuracy, n)} from results.csv and {cell: [(question, generation, correct)]}."""
    with open(out / "results.csv") as f:
        acc = {r["cell"]: (r["status"], r["accuracy"], r["n"]) for r in csv.DictReader(f)}
    preds = {}
    for p in sorted(out.glob("cells/*/eval/predictions.jsonl")):
        rows = [json.loads(line) for line in p.read_text().splitlines()]
        preds[p.parent.parent.name] = sorted((r["id"], r["generation"], r["correct"]) for r in rows)
    return acc, preds


def attempts(out: Path) -> dict[str, list[str]]:
    """{job: [start, finish, ...]} from every job's attempts.jsonl."""
    return {p.parent.name: [e["event"] for e in study.job_attempts(out, p.parent.name)]
            for p in out.glob("jobs/*/job.json")}


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), "study", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs, no dashboard) for this module; the executor joins it."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


# ---------------------------------------------------------------- the plan


def test_plan_shares_train_jobs_and_keys_ignore_the_study_folder(tmp_path, tiny_student, data_dir):
    cfg = study.load_study(make_study(tmp_path, tiny_student, FOUR_CELLS))
    plan = study.plan_study(cfg, data_dir)
    kinds = [j.kind for j in plan.jobs.values()]
    assert len(plan.cells) == 4 and kinds.count("train") == 1 and kinds.count("eval") == 4
    shared = [j for j in plan.jobs.values() if j.kind == "eval" and j.deps and "tiny_supervision" in j.deps[0]]
    assert len(shared) == 2 and shared[0].deps == shared[1].deps  # one model, two evaluations
    for job in plan.jobs.values():
        assert str(tmp_path) not in job.model_dump_json().replace(str(tmp_path / "tiny_supervision.jsonl"), "")
        assert job.resources.cpus == 1 and job.resources.memory_mb > 1000
    # A file under the data directory is named relative to it: the key survives the data moving.
    from cotdistill import refs
    from cotdistill.plan.cells import check_student

    data = tmp_path / "data"
    shutil.copytree(tiny_student, data / "models" / "tiny")
    assert check_student(cfg, str(data / "models" / "tiny"), ("students", 0), data) == "data:models/tiny"
    assert refs.resolve("data:models/tiny", tmp_path / "moved", None) == str(tmp_path / "moved" / "models" / "tiny")
    assert refs.resolve("study:models/m", None, tmp_path / "s") == str(tmp_path / "s" / "models" / "m")
    assert refs.resolve("svamp/chatgpt/level1", None, None) == "svamp/chatgpt/level1"


# ---------------------------------------------------------------- the same study, three executors


def test_local_subprocess_and_ray_agree(tmp_path, tiny_student, data_dir, local_ray):
    cfg = study.load_study(make_study(tmp_path, tiny_student, FOUR_CELLS))
    runs = {}
    for name, extra in [("local", {}), ("subprocess", {"max_parallel": 2}), ("ray", {})]:
        out = tmp_path / name
        study.run_study(cfg, out, data_dir=data_dir, report=name == "local",
                        executor=ExecutorSettings(name=name, **extra))
        runs[name] = outputs(out)
        assert all(events == ["start", "finish"] for events in attempts(out).values()), attempts(out)
    acc, preds = runs["local"]
    assert len(acc) == 4 and all(status == "done" and n in ("2", "3") for status, _, n in acc.values())
    assert sum(len(p) for p in preds.values()) == 3 + 2 + 3 + 2
    assert runs["subprocess"] == runs["local"] and runs["ray"] == runs["local"]
    assert (tmp_path / "subprocess" / "jobs").is_dir() and list((tmp_path / "subprocess").glob("jobs/*/log.txt"))

    # A study folder copied elsewhere keeps every job: --plan shows them all done.
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(tmp_path / "local", moved)
    r = cli(str(tmp_path / "study.yaml"), "--out", str(moved), "--plan", "--data-dir", str(data_dir))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "5 jobs for 4 cells: 5 done", r.stdout
    assert all(line.startswith(("done ", "numerics: ")) for line in r.stdout.strip().splitlines()[:-1])


# ---------------------------------------------------------------- a Ray worker killed mid-training


KILL = """\
datasets: [svamp]
students: [STUDENT]
supervision: [none, tiny_supervision.jsonl]
train: {epochs: 8, batch_size: 2, limit: 4, lr: 1.0e-3, save_steps: 1}
eval: {limit: 2, max_new_tokens: 4, batch_size: 2}
resources: {train: {cpus: 1}, eval: {cpus: 1}}
"""


def test_ray_worker_killed_mid_train_is_retried_and_resumes(tmp_path, tiny_student, data_dir, local_ray):
    cfg = study.load_study(make_study(tmp_path, tiny_student, KILL))
    out = tmp_path / "run"
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            study.run_study(cfg, out, data_dir=data_dir, report=False, executor=ExecutorSettings(name="ray"))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=drive)
    t.start()
    killed = None
    deadline = time.time() + 180
    while killed is None and time.time() < deadline and t.is_alive():
        ckpts = list(out.glob("models/*/checkpoints/checkpoint-*/trainer_state.json"))
        lock = next(iter(out.glob("jobs/train-*/lock")), None)
        h = holder(lock) if lock else None
        if ckpts and h is not None and h.pid != os.getpid():
            os.kill(h.pid, signal.SIGKILL)  # the Ray worker running the train job
            killed = h.pid
        time.sleep(0.02)
    t.join(timeout=300)
    assert killed and not errors, errors
    acc, _ = outputs(out)
    assert [s for s, _, _ in acc.values()] == ["done", "done"]
    runs = attempts(out)
    train = next(n for n in runs if n.startswith("train-"))
    assert runs[train] == ["start", "start", "finish"]  # killed once, taken over, finished once
    for name, events in runs.items():  # no finished job ran again
        assert events.count("finish") == 1 and events[-1] == "finish", (name, events)
    done = json.loads((out / "jobs" / train / "done.json").read_text())  # 8 epochs x 2 steps, by the retry
    assert done["result"]["steps"] == 16 and done["pid"] != killed


# ---------------------------------------------------------------- two drivers on one folder


@pytest.mark.slow
def test_two_drivers_at_once_run_every_job_once(tmp_path, tiny_student, data_dir):
    path = make_study(tmp_path, tiny_student, FOUR_CELLS)
    out = tmp_path / "run"
    cmd = [str(CLI), "study", str(path), "--out", str(out), "--data-dir", str(data_dir), "--plain"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    runs = attempts(out)
    assert len(runs) == 5 and all(events == ["start", "finish"] for events in runs.values()), runs
    acc, _ = outputs(out)
    assert len(acc) == 4 and all(s == "done" for s, _, _ in acc.values())
    assert (out / "report.html").is_file()


# ---------------------------------------------------------------- locks


def test_lock_is_exclusive_and_a_dead_holder_is_taken_over(tmp_path):
    path = tmp_path / "jobs" / "x" / "lock"
    a, b = JobLock(path), JobLock(path)
    assert a.acquire() and not b.acquire()
    a.release()
    assert holder(path) is None and b.acquire()
    b.release()
    # A lock left by a process that died: stale at once on this host.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": 0, "token": "t"}))
    assert holder(path).stale
    c = JobLock(path)
    assert c.acquire() and c.took_over.pid == dead.pid and holder(path).token == c.token
    c.release()
    # A live holder on another host counts until its heartbeat is older than stale_after.
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": 0, "token": "u"}))
    assert not JobLock(path).acquire()
    os.utime(path, (time.time() - 120, time.time() - 120))
    assert JobLock(path, stale_after=60).acquire()


# ---------------------------------------------------------------- bad input


def test_unknown_executor_names_the_line(tmp_path, tiny_student):
    text = FOUR_CELLS + "executor: rya\n"
    with pytest.raises(CotdistillError, match=r"^<study>:10: executor: unknown executor 'rya'; did you mean ray"):
        parse_study(text)
    cfg = parse_study(FOUR_CELLS)
    with pytest.raises(CotdistillError, match=r"^--executor: unknown executor 'threads'"):
        executor_settings(cfg, name="threads")
    assert executor_settings(parse_study(FOUR_CELLS + "executor: subprocess\n"), max_parallel=3).max_parallel == 3


def test_ray_not_installed_names_the_install_command(monkeypatch):
    from cotdistill.executors.ray import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where Ray is not installed
    with pytest.raises(CotdistillError, match=r'needs Ray, which is not installed: pip install -e "\.\[ray\]"'):
        import_ray()


def test_unreachable_ray_address_fails_fast_with_one_line(tmp_path, tiny_student, data_dir):
    pytest.importorskip("ray")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = make_study(tmp_path, tiny_student, FOUR_CELLS)
    t0 = time.time()
    r = cli(str(path), "--out", str(tmp_path / "run"), "--data-dir", str(data_dir), "--executor", "ray",
            "--ray-address", f"127.0.0.1:{port}", timeout=60)
    assert r.returncode == 2 and time.time() - t0 < 30
    assert r.stderr.strip() == (f"error: cannot reach the Ray cluster at 127.0.0.1:{port} (Connection refused); "
                                "start one with `ray start --head` or fix --ray-address")
    assert not (tmp_path / "run").exists()  # nothing written


def test_failing_job_is_recorded_with_its_log_and_the_study_exits_1(tmp_path, tiny_student, data_dir):
    body = FOUR_CELLS.replace("tiny_supervision.jsonl, none]", "]").split("cells:")[0] + (
        "cells:\n  - {student: STUDENT, supervision: tiny_supervision.jsonl, train: {max_length: 8}}\n")
    path = make_study(tmp_path, tiny_student, body)  # every prompt is longer than 8 tokens: training fails
    out = tmp_path / "run"
    r = cli(str(path), "--out", str(out), "--data-dir", str(data_dir), "--executor", "subprocess", "--plain")
    assert r.returncode == 1 and "1 cell(s) failed" in r.stderr, r.stderr
    acc, _ = outputs(out)
    assert [s for s, _, _ in acc.values()] == ["failed"]
    err = json.loads(next(out.glob("jobs/train-*/error.json")).read_text())
    assert "max-length" in err["error"] and err["log"].endswith("log.txt")
    assert "max-length" in (out / err["log"]).read_text()
    assert not list(out.glob("jobs/eval-*tiny*/error.json"))  # its eval did not run: the cell names the train error
    with open(out / "results.csv") as f:
        assert any(row["error"].startswith("train: ") for row in csv.DictReader(f))
