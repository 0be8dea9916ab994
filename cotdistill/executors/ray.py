"""Every job a Ray task with its resource request (num_cpus, num_gpus, memory), on an existing
cluster (`--ray-address auto|HOST:PORT`) or on a local Ray started for the run.

- A task whose worker dies (killed, out of memory) is retried by Ray up to `max_retries` times;
  the job's lock (stale once its process is gone) lets the retry take over, and train resumes
  from its last checkpoint. A raised error is not retried (it would raise again).
- Workers read and write the study folder directly, so it must be on storage every node sees:
  `open()` checks that with a probe task on every node before any job runs.
- Progress events travel through a ray.util.queue.Queue; the worker's output goes to
  jobs/<job>/log.txt.
"""

from __future__ import annotations

import os
import socket
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

from cotdistill.errors import CotdistillError
from cotdistill.executors.base import Executor
from cotdistill.executors.runner import Emit, Outcome, record_crash, run_job, throttled

INSTALL = 'pip install -e ".[ray]"'
CONNECT_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 60.0


def import_ray():
    try:
        import ray
    except ImportError:
        raise CotdistillError(f"the ray executor needs Ray, which is not installed: {INSTALL}") from None
    return ray


def check_reachable(address: str) -> None:
    """Fail in seconds, with one line, when nothing listens at HOST:PORT (ray.init would wait a minute)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise CotdistillError(f"--ray-address {address!r}: give auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise CotdistillError(f"cannot reach the Ray cluster at {address} ({why}); "
                              "start one with `ray start --head` or fix --ray-address") from None


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, settings) -> None:
        self.settings = settings
        self.max_retries = settings.max_retries
        self.pending: dict = {}  # ObjectRef -> job
        self.owns_ray = False

    def open(self, study_dir: Path, data_dir: Path | None, emit: Emit) -> None:
        ray = self.ray = import_ray()
        self.study_dir, self.data_dir, self.emit = Path(study_dir).resolve(), data_dir, emit
        address = self.settings.ray_address
        if not ray.is_initialized():
            if address:
                check_reachable(address)
            try:
                if address:
                    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
                else:
                    ray.init(num_cpus=self.settings.ray_num_cpus, include_dashboard=False, log_to_driver=False,
                             logging_level="ERROR")
            except (ConnectionError, RuntimeError, ValueError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise CotdistillError(f"cannot connect to Ray at {address or 'a new local instance'}: {first}") from None
            self.owns_ray = True
        from ray.util.queue import Queue

        self.queue = Queue(actor_options={"num_cpus": 0})
        self.task = ray.remote(_ray_task)
        resources = ray.cluster_resources()
        self.max_parallel = self.settings.max_parallel or max(1, int(resources.get("CPU", 1)))
        alive = [n["Resources"] for n in ray.nodes() if n["Alive"]]
        self.largest = {k: max((n.get(k, 0) for n in alive), default=0) for k in ("CPU", "GPU", "memory")}
        check_shared_storage(ray, self.study_dir)

    def submit(self, job) -> None:
        r = job.resources
        if r.gpus > self.largest["GPU"]:  # Ray would keep the task waiting forever
            raise CotdistillError(f"job {job.name} asks for {r.gpus:g} GPU(s) but no Ray node has that many; "
                                  "set resources: {train: {gpus: ...}, eval: {gpus: ...}} in the study file")
        # CPUs and memory are estimates from the driver's machine: no more than the largest node has
        cpus = min(r.cpus, self.largest["CPU"]) if self.largest["CPU"] else r.cpus
        memory = r.memory_mb * 2**20
        if self.largest["memory"]:
            memory = min(memory, self.largest["memory"])
        opts = dict(num_cpus=cpus, num_gpus=r.gpus, memory=int(memory), max_retries=self.max_retries,
                    retry_exceptions=False, name=job.name)
        data_dir = str(self.data_dir) if self.data_dir else None
        ref = self.task.options(**opts).remote(job.model_dump_json(), str(self.study_dir), data_dir, self.queue)
        self.pending[ref] = job

    def wait(self, timeout: float) -> list[Outcome]:
        ray = self.ray
        out: list[Outcome] = []
        if self.pending:
            ready, rest = ray.wait(list(self.pending), num_returns=1, timeout=timeout)
            if rest:
                ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            for ref in ready:
                job = self.pending.pop(ref)
                try:
                    out.append(Outcome(**ray.get(ref)))
                except ray.exceptions.RayError as e:  # its worker died on every try
                    why = type(e).__name__
                    out.append(record_crash(self.study_dir, job, f"Ray worker died {self.max_retries + 1} time(s) "
                                            f"({why})", log=f"jobs/{job.name}/log.txt"))
        self._forward_events()
        return out

    def _forward_events(self) -> None:
        n = self.queue.qsize()
        if n:
            for event in self.queue.get_nowait_batch(n):
                self.emit(event)

    def close(self) -> None:
        ray = self.ray
        for ref in self.pending:
            ray.cancel(ref, force=True)
        try:
            ray.kill(self.queue.actor)
        except Exception:  # noqa: BLE001  (already gone with the cluster)
            pass
        if self.owns_ray:
            ray.shutdown()


@contextmanager
def _output_to(path: Path):
    """Send this worker's stdout and stderr (file descriptors included) to `path` for one job."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _ray_task(job_json: str, study_dir: str, data_dir: str | None, queue) -> dict:
    """One job on a Ray worker (module-level, so that workers import it by name)."""
    from cotdistill.plan.jobs import JOB_ADAPTER

    job = JOB_ADAPTER.validate_json(job_json)
    log = f"jobs/{job.name}/log.txt"

    def put(event: dict) -> None:
        try:
            queue.put_nowait(event)
        except Exception:  # noqa: BLE001  (a lost progress event must not fail the job)
            pass

    with _output_to(Path(study_dir) / log):
        outcome = run_job(job, Path(study_dir), Path(data_dir) if data_dir else None, throttled(put), log=log)
    return outcome.model_dump()


def _probe(path: str, token: str) -> str | None:
    """On one node: read the driver's probe file and answer beside it. None: fine, else what failed."""
    try:
        if Path(path).read_text(encoding="utf-8") != token:
            return "found a different file"
        Path(path + ".answer-" + uuid.uuid4().hex).write_text(token, encoding="utf-8")
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror or e}"
    return None


def check_shared_storage(ray, study_dir: Path) -> None:
    """Every alive node must read and write the study folder: one probe task pinned to each."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    probe = study_dir / f".probe-{token}"
    study_dir.mkdir(parents=True, exist_ok=True)
    probe.write_text(token, encoding="utf-8")
    task = ray.remote(_probe)
    try:
        refs = {}
        for node in (n for n in ray.nodes() if n["Alive"]):
            strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
            ref = task.options(num_cpus=0, scheduling_strategy=strategy).remote(str(probe), token)
            refs[ref] = node["NodeManagerAddress"]
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
        for ref, node in refs.items():
            problem = ray.get(ref) if ref in ready else f"no answer in {PROBE_TIMEOUT_S:.0f} s"
            if problem:
                raise CotdistillError(f"study folder {study_dir} is not usable from Ray node {node} ({problem}); "
                                      "put it on storage every worker sees (a shared file system)")
    finally:
        for p in study_dir.glob(f".probe-{token}*"):
            p.unlink(missing_ok=True)
