"""How many intra-op threads torch gets: the CPUs this process may use, minus those other processes keep busy.

Why: PyTorch's CPU kernels split each operation over OpenMP threads that meet at a barrier; when another
process holds a core, the thread scheduled there arrives late and every other thread spins waiting for it.
On a 2-core machine with one other busy process, 150 demo steps took 41-47 s with torch's default two
threads against 21 s with one (idle: 18 s with two). So a thread per *free* core, never more.

Policy (`choose`), first match wins:
1. DISTILL_NUM_THREADS=N (a positive integer) or =auto;
2. OMP_NUM_THREADS set by the user (torch already follows it; we leave it);
3. auto: cpus = CPUs in this process's affinity mask, capped by a cgroup CPU quota (containers, SLURM);
   busy = CPUs' worth of work other processes do right now, from /proc/stat over a quarter of a second
   (the load average lags a minute behind and would still count a job that just ended), scaled to our
   share of the host's CPUs; threads = round(cpus - busy), at least 1. Where /proc/stat is absent (macOS),
   the 1-minute load average stands in for `busy`.
The choice is made once, when a command starts; `distill bench threads` measures it against fixed counts.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

ENV = "DISTILL_NUM_THREADS"
SAMPLE_S = 0.25  # long enough for ~25 scheduler ticks per CPU, short enough not to notice


@dataclass
class Choice:
    threads: int
    reason: str

    def describe(self) -> str:
        return f"{self.threads} intra-op thread{'s' if self.threads != 1 else ''} ({self.reason})"


def affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def cgroup_quota(root: str | Path = "/sys/fs/cgroup") -> float | None:
    """CPUs' worth of time the cgroup may use per period (cgroup v2 cpu.max, v1 cfs_quota_us), None if unlimited."""
    root = Path(root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def _cpu_times(stat: str | Path = "/proc/stat") -> tuple[int, int] | None:
    """(busy, total) jiffies over all CPUs, from the first line of /proc/stat."""
    try:
        fields = [int(v) for v in Path(stat).read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def busy_cpus(seconds: float = SAMPLE_S, stat: str | Path = "/proc/stat") -> float | None:
    """CPUs' worth of work done host-wide over the next `seconds` (this process sleeps meanwhile)."""
    first = _cpu_times(stat)
    if first is None:
        return None
    time.sleep(seconds)
    second = _cpu_times(stat)
    if second is None or second[1] <= first[1]:
        return None
    host = os.cpu_count() or 1
    return host * (second[0] - first[0]) / (second[1] - first[1])


def auto_threads(cpus: int, busy: float) -> int:
    """A thread per CPU that other processes leave free, at least one."""
    return max(1, min(cpus, round(cpus - busy)))


def choose(env: dict | None = None, measure=busy_cpus) -> Choice:
    env = os.environ if env is None else env
    raw = env.get(ENV, "").strip().lower()
    if raw and raw != "auto":
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"{ENV}={env[ENV]!r}: give a positive number of threads, or auto")
        return Choice(int(raw), f"{ENV}={raw}")
    if not raw and env.get("OMP_NUM_THREADS", "").strip().isdigit() and int(env["OMP_NUM_THREADS"]) > 0:
        return Choice(int(env["OMP_NUM_THREADS"]), "OMP_NUM_THREADS")
    cpus = affinity_cpus()
    quota = cgroup_quota()
    if quota is not None:
        cpus = max(1, min(cpus, math.floor(quota)))
    host_busy = measure()
    source = "busy now"
    if host_busy is None:
        host_busy, source = (os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0), "load average"
    # /proc/stat and the load average count the whole host; our share of it is cpus / host CPUs.
    busy = host_busy * cpus / max(os.cpu_count() or 1, cpus)
    return Choice(auto_threads(cpus, busy), f"auto: {cpus} CPU{'s' if cpus != 1 else ''} available, "
                                            f"{busy:.1f} {source} elsewhere; {ENV} overrides")


def apply(log=None, env: dict | None = None) -> Choice:
    """Choose and set torch's intra-op threads; `log` (e.g. print to stderr) hears the choice."""
    import torch

    choice = choose(env)
    torch.set_num_threads(choice.threads)
    if log is not None:
        log(choice.describe())
    return choice
