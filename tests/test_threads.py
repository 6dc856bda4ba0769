"""The thread policy (distill/threads.py): overrides, CPUs available, load elsewhere, and what the CLI says."""

from __future__ import annotations

import pytest
import torch

from distill import threads
from tests.conftest import RECIPES


@pytest.mark.parametrize("cpus, busy, expected", [
    (2, 0.0, 2), (2, 0.4, 2), (2, 0.9, 1), (2, 1.0, 1), (2, 2.7, 1), (8, 3.2, 5), (1, 0.0, 1), (4, 9.0, 1),
])
def test_a_thread_per_free_cpu_at_least_one(cpus, busy, expected):
    assert threads.auto_threads(cpus, busy) == expected


def test_overrides_come_first():
    assert threads.choose({"DISTILL_NUM_THREADS": "3", "OMP_NUM_THREADS": "1"}).threads == 3
    assert threads.choose({"OMP_NUM_THREADS": "2"}).threads == 2
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ValueError, match="DISTILL_NUM_THREADS"):
            threads.choose({"DISTILL_NUM_THREADS": bad})


def test_auto_counts_the_cpus_this_process_may_use_and_the_load_elsewhere(monkeypatch):
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 4)
    monkeypatch.setattr(threads, "cgroup_quota", lambda: None)
    # 2 CPUs busy host-wide; our 4 of 8 CPUs carry half of it: round(4 - 1) = 3.
    choice = threads.choose({"DISTILL_NUM_THREADS": "auto"}, measure=lambda: 2.0)
    assert choice.threads == 3 and "4 CPUs available" in choice.reason and "DISTILL_NUM_THREADS" in choice.reason
    monkeypatch.setattr(threads, "cgroup_quota", lambda: 1.5)  # a container allowed 1.5 CPUs: one thread
    assert threads.choose({}, measure=lambda: 0.0).threads == 1
    monkeypatch.setattr(threads, "cgroup_quota", lambda: None)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (8.0, 0.0, 0.0))  # no /proc/stat: the load average
    choice = threads.choose({}, measure=lambda: None)
    assert choice.threads == 1 and "load average" in choice.reason


def test_cgroup_quota_v2_and_v1(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_quota(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_quota(v1) == 2.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cgroup_quota(v1) is None
    assert threads.cgroup_quota(tmp_path / "absent") is None


def test_proc_stat_is_read_as_busy_and_total_jiffies(tmp_path):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 10 40 800 50 0 5 0 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n")
    assert threads._cpu_times(stat) == (155, 1005)
    assert threads._cpu_times(tmp_path / "absent") is None
    busy = threads.busy_cpus(0.05)  # the real machine's, if it has /proc/stat
    assert busy is None or 0.0 <= busy <= (threads.os.cpu_count() or 1) + 1e-9


def test_the_cli_sets_and_says_the_thread_count(capsys, monkeypatch, tmp_path):
    from distill.cli import main

    before = torch.get_num_threads()
    monkeypatch.setenv("DISTILL_NUM_THREADS", "2")
    monkeypatch.chdir(tmp_path)  # the dry run looks at run.dir (runs/demo): not the checkout's
    try:
        assert main(["fit", str(RECIPES / "demo.yaml"), "--dry-run"]) == 0
        assert torch.get_num_threads() == 2
        assert "distill: 2 intra-op threads (DISTILL_NUM_THREADS=2)" in capsys.readouterr().err
        monkeypatch.setenv("DISTILL_NUM_THREADS", "many")
        assert main(["fit", str(RECIPES / "demo.yaml"), "--dry-run"]) == 2
        assert "DISTILL_NUM_THREADS='many'" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
