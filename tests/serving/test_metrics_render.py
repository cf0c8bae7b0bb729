"""The supervisor's side of the metrics: the sum over worker processes (real processes
writing to a ``PROMETHEUS_MULTIPROC_DIR``), their process metrics, a dead worker's gauges,
and the ``/metrics`` app on a real port."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from torchferry.errors import TorchferryError
from torchferry.serving.metrics_render import (
    fresh_multiproc_dir,
    metrics_app,
    new_multiproc_dir,
    parse_metrics,
    render_metrics,
    sample_value,
    worker_died,
)
from torchferry.serving.process import free_ports
from torchferry.serving.procstats import read_process

#: A worker in miniature: what the data plane and batcher do to the metrics, for N requests
#: of 2 rows (every fourth fails), then N requests left pending; it lives until stdin closes.
WORKER = """
import sys, time
from torchferry.serving import metrics, metrics_render
from torchferry.serving.observe import Observers
# the supervisor imports these: neither may bring torch or numpy along
assert "torch" not in sys.modules and "numpy" not in sys.modules, sorted(sys.modules)
observers = Observers([metrics.RECORDER])
batches = metrics.batch_observer("m", "1")
count = int(sys.argv[1])
for i in range(count):
    record = observers.start("v2", "/v2/models/{model_name}/infer")
    record.model, record.version, record.rows = "m", "1", 2
    record.queued = record.started
    record.compute_started = record.compute_ended = time.perf_counter()
    record.success = i % 4 != 3
    batches.executed(2, 0.0001)
    observers.finish(record, "200" if record.success else "500")
batches.pending(count)
metrics.flush()
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def multiproc_dir(tmp_path: Path) -> Path:
    return fresh_multiproc_dir(tmp_path / "metrics")


def start_worker(directory: Path, requests: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(requests)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
    return worker


def stop(worker: subprocess.Popen[str]) -> None:
    assert worker.stdin is not None
    worker.stdin.close()
    assert worker.wait(30) == 0


def test_the_page_sums_every_worker_and_forgets_only_dead_gauges(multiproc_dir):
    one, two = start_worker(multiproc_dir, 4), start_worker(multiproc_dir, 8)
    try:
        page, content_type = render_metrics(multiproc_dir, {1: one.pid, 2: two.pid})
        assert content_type.startswith("text/plain")
        samples = parse_metrics(page.decode())

        def value(name: str, **labels: str) -> float:
            return sample_value(samples, name, **labels)

        assert value("nv_inference_request_success", model="m", version="1") == 3 + 6
        assert value("nv_inference_request_failure", model="m", version="1") == 1 + 2
        assert value("nv_inference_count", model="m") == 2 * (3 + 6)
        assert value("nv_inference_exec_count", model="m") == 4 + 8
        assert value("nv_inference_pending_request_count", model="m") == 4 + 8
        assert value("torchferry_batch_size_count", model="m") == 12
        assert value("torchferry_batch_size_bucket", model="m", le="2.0") == 12
        assert value("torchferry_request_duration_seconds_count", status="500") == 3
        for worker in ("1", "2"):
            assert value("process_resident_memory_bytes", worker=worker) > 1_000_000
            assert value("process_cpu_seconds_total", worker=worker) > 0
            assert value("process_open_fds", worker=worker) >= 3
            assert value("process_start_time_seconds", worker=worker) <= time.time()
        text = page.decode()
        assert "nv_inference_request_success_total" not in text
        assert 'nv_inference_request_success{model="m",version="1"} 9.0' in text

        stop(one)
        worker_died(one.pid, multiproc_dir)
        samples = parse_metrics(render_metrics(multiproc_dir, {2: two.pid})[0].decode())
        assert value("nv_inference_pending_request_count", model="m") == 8  # live ones only
        assert value("nv_inference_request_success", model="m") == 9  # totals never go back
        assert value("process_resident_memory_bytes", worker="1") == 0
    finally:
        for worker in (one, two):
            if worker.poll() is None:
                stop(worker)


def test_process_stats_of_this_process_and_a_gone_one():
    stats = read_process(os.getpid())
    assert stats is not None
    assert stats.resident_bytes > 10_000_000 and stats.virtual_bytes >= stats.resident_bytes
    assert 0 < stats.cpu_seconds < time.process_time() + 1
    assert time.time() - 86400 * 365 < stats.start_time_seconds <= time.time()
    assert stats.open_fds is not None and stats.open_fds >= 3
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert read_process(gone.pid) is None


def test_no_writable_temporary_directory_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    with pytest.raises(TorchferryError, match=r"mount a tmpfs on /tmp.*--no-metrics"):
        new_multiproc_dir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made = new_multiproc_dir()
    assert made.parent == tmp_path and made.is_dir()


def test_a_fresh_directory_holds_no_earlier_run(multiproc_dir):
    (multiproc_dir / "counter_1.db").write_bytes(b"stale")
    assert fresh_multiproc_dir(multiproc_dir) == multiproc_dir
    assert list(multiproc_dir.iterdir()) == []


@pytest.fixture
def metrics_server(multiproc_dir) -> Iterator[str]:
    worker = start_worker(multiproc_dir, 2)
    (port,) = free_ports(1)
    app = metrics_app(lambda: render_metrics(multiproc_dir, {1: worker.pid}))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        stop(worker)


def test_the_metrics_app_serves_the_page_and_nothing_else(metrics_server):
    answer = httpx.get(f"{metrics_server}/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    samples = parse_metrics(answer.text)
    assert sample_value(samples, "nv_inference_request_success", model="m") == 2
    assert sample_value(samples, "process_open_fds", worker="1") > 0
    assert httpx.head(f"{metrics_server}/metrics").content == b""
    assert httpx.get(f"{metrics_server}/").status_code == 404
    assert httpx.post(f"{metrics_server}/metrics").status_code == 405
