from __future__ import annotations

import pytest

from torchferry import cores


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("200000 100000\n", 2), ("150000 100000", 2), ("50000 100000", 1), ("max 100000", None)],
)
def test_a_cgroup_cpu_limit_is_read_as_whole_cpus(tmp_path, text, cpus):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text(text)
    assert cores.cpu_limit(cpu_max) == cpus


@pytest.mark.parametrize("text", ["", "garbage", "1 0"])
def test_an_unreadable_cpu_limit_is_no_limit(tmp_path, text):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text(text)
    assert cores.cpu_limit(cpu_max) is None
    assert cores.cpu_limit(tmp_path / "missing") is None


def test_threads_default_to_the_cgroup_limit_when_it_is_below_the_affinity(tmp_path, monkeypatch):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("100000 100000")
    monkeypatch.setattr(cores, "CPU_MAX", cpu_max)
    assert cores.default_threads() == 1
    cpu_max.write_text("max 100000")
    assert cores.default_threads() >= 1
