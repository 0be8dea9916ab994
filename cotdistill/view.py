"""What a running study shows: jobs done / running / failed / left, each running job's stage and
progress (several at once under subprocess and ray), the elapsed time and the time left.
PlainView writes one line per event (logs, pipes); LiveView is a rich live panel."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass
class _Running:
    job: Any
    t0: float
    done: float | None = None
    total: float | None = None


class PlainView:
    """One line per event: for logs and pipes (and the base of the live view)."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.total = self.done = self.failed = 0
        self.parallel = 1
        self.t0 = time.time()
        self.kinds: dict[str, str] = {}  # job name -> kind, of jobs not finished yet
        self.seconds: dict[str, list[float]] = {}  # kind -> durations of the jobs run so far
        self.running: dict[str, _Running] = {}
        self.plain_lines = True
        self.last_line: dict[str, float] = {}

    def start(self, plan: Any, done: set[str], executor: str = "local", parallel: int = 1) -> None:
        self.total, self.done, self.parallel = len(plan.jobs), len(done), max(1, parallel)
        self.kinds = {n: j.kind for n, j in plan.jobs.items() if n not in done}
        self.t0 = time.time()
        self.console.print(f"study: {len(plan.cells)} cells, {self.total} jobs, {self.done} already done, "
                           f"{self.total - self.done} to run ({executor} executor)", soft_wrap=True)

    def job_started(self, job: Any) -> None:
        self.running[job.name] = _Running(job, time.time())
        self.console.print(f"[{self.done + self.failed + len(self.running)}/{self.total}] start {job.label}  ({job.name})",
                           markup=False, highlight=False, soft_wrap=True)

    def progress(self, event: dict) -> None:
        r = self.running.get(event.get("job", ""))
        if r is None:
            return
        r.done, r.total = event.get("done"), event.get("total")
        # In a log: at most a line every 30 s per job.
        now = time.time()
        if self.plain_lines and r.done is not None and r.total and now - self.last_line.get(r.job.name, 0) >= 30:
            self.last_line[r.job.name] = now
            self.console.print(f"  {r.job.kind} {r.done:.0f}/{r.total:.0f}  {r.job.name} ({_fmt_s(now - r.t0)})",
                               markup=False, highlight=False, soft_wrap=True)

    def job_finished(self, job: Any, outcome: Any) -> None:
        r = self.running.pop(job.name, None)
        secs = time.time() - r.t0 if r else 0.0
        if outcome.status == "busy":
            self.console.print(f"  {job.name}: another worker holds it; waiting", markup=False, highlight=False, soft_wrap=True)
            return
        self.kinds.pop(job.name, None)
        if outcome.status == "done":
            self.done += 1
            if r:
                self.seconds.setdefault(job.kind, []).append(secs)
            self.console.print(f"  done {job.name} in {secs:.0f} s", markup=False, highlight=False, soft_wrap=True)
        else:
            self.failed += 1
            self.console.print(f"  [red]failed[/red] {job.name} after {secs:.0f} s: {outcome.error}", soft_wrap=True)

    def eta_seconds(self) -> float | None:
        """The mean time of each kind of job run so far, times the jobs left, over the jobs run at once."""
        every = [s for v in self.seconds.values() for s in v]
        if not every:
            return None
        mean = {k: sum(v) / len(v) for k, v in self.seconds.items()}
        overall = sum(every) / len(every)
        now = time.time()
        work = 0.0
        for name, kind in self.kinds.items():
            m = mean.get(kind, overall)
            r = self.running.get(name)
            work += max(0.0, m - (now - r.t0)) if r else m
        return work / self.parallel

    def stop(self) -> None:
        pass


class LiveView(PlainView):
    """A rich live panel with a line per running job."""

    def __init__(self, console: Any = None) -> None:
        super().__init__(console)
        from rich.live import Live

        self.live = Live(console=self.console, refresh_per_second=2, get_renderable=self.render, transient=False)
        self.plain_lines = False

    def start(self, plan: Any, done: set[str], executor: str = "local", parallel: int = 1) -> None:
        super().start(plan, done, executor, parallel)
        self.live.start()

    def render(self):
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        t = Table.grid(padding=(0, 1))
        running = len(self.running)
        left = self.total - self.done - self.failed - running
        t.add_row("jobs", ProgressBar(total=max(self.total, 1), completed=self.done + self.failed, width=30),
                  f"{self.done} done · {running} running · {self.failed} failed · {left} left")
        now = time.time()
        for r in self.running.values():
            frac = f"{r.done:.0f}/{r.total:.0f}" if r.done is not None and r.total else ""
            bar = ProgressBar(total=r.total, completed=r.done or 0, width=30) if r.total else ""
            t.add_row(r.job.kind, bar, f"{frac} {r.job.label} ({_fmt_s(now - r.t0)})")
        eta = self.eta_seconds()
        t.add_row("time", "", f"elapsed {_fmt_s(now - self.t0)} · left {_fmt_s(eta) if eta is not None else 'estimating'}")
        return t

    def stop(self) -> None:
        self.live.stop()


def _fmt_s(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
