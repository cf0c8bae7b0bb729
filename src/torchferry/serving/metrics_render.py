"""The ``/metrics`` page: the workers' metrics summed, rendered as Prometheus text.

The supervisor (which imports neither torch nor numpy, and this module imports neither)
gives every worker a fresh ``PROMETHEUS_MULTIPROC_DIR``; each worker writes its values
there (``metrics``), and on a scrape :func:`render_metrics` sums them with
``prometheus_client``'s ``MultiProcessCollector`` and adds each worker's process metrics
(``procstats``). Counters and histograms of a dead worker stay in the sum, so totals never
go back; :func:`worker_died` drops its share of the live gauges (requests pending). Without a
directory, the page is this process's own default registry (one process, in-process tests).

Triton's counters keep Triton's exact names: ``prometheus_client`` writes every counter as
``NAME_total``, which dashboards written for Triton would not find, so the ``nv_*`` counters
are rendered here without the suffix. ``*_created`` series are left out everywhere (the
multiprocess files do not keep them, so a page never depends on the mode).

:func:`metrics_app` is a tiny ASGI app serving the page; :func:`parse_metrics` and
:func:`sample_value` read a page back (tests, tools).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString
from starlette.types import ASGIApp, Receive, Scope, Send

from torchferry.errors import TorchferryError
from torchferry.serving.procstats import WorkerProcesses

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Counters rendered under their own name, as Triton does (no ``_total``).
TRITON_PREFIX = "nv_"


def workers_metrics(multiproc_dir: str | os.PathLike[str]) -> list[Metric]:
    """Every worker's metrics from the multiprocess files in ``multiproc_dir``, summed as
    ``/metrics`` shows them (reads every file: callers off the event loop run it in a
    thread)."""
    return list(MultiProcessCollector(None, path=str(multiproc_dir)).collect())


def render_metrics(
    multiproc_dir: str | os.PathLike[str] | None,
    workers: Mapping[int, int] | None = None,
    extra: Iterable[Metric] = (),
) -> tuple[bytes, str]:
    """The metrics page and its content type: the sum over every process that wrote to
    ``multiproc_dir``, plus the process metrics of ``workers`` (worker index -> pid); or,
    with no directory, this process's default registry. ``extra`` families (the
    supervisor's own) are added to either."""
    metrics: list[Metric] = list(extra)
    if multiproc_dir is None:
        metrics.extend(REGISTRY.collect())
    else:
        metrics.extend(workers_metrics(multiproc_dir))
        if workers:
            metrics.extend(WorkerProcesses(workers).collect())
    return _render(metrics), CONTENT_TYPE_LATEST


def worker_died(pid: int, multiproc_dir: str | os.PathLike[str] | None = None) -> None:
    """A worker is gone: drop its share of the live gauges (its counters stay summed).
    ``multiproc_dir`` defaults to ``$PROMETHEUS_MULTIPROC_DIR``."""
    path = multiproc_dir if multiproc_dir is not None else os.environ.get(MULTIPROC_ENV)
    if path is not None:
        mark_process_dead(pid, str(path))


def new_multiproc_dir() -> Path:
    """A new, empty directory under ``$TMPDIR`` for one run's metric files; a clear error
    where no temporary directory is writable (a read-only root with no tmpfs on ``/tmp``)."""
    try:
        return Path(tempfile.mkdtemp(prefix="torchferry-metrics-"))
    except OSError as exc:
        where = os.environ.get("TMPDIR") or tempfile.tempdir or "/tmp"
        raise TorchferryError(
            f"no writable temporary directory for the workers' metrics ({where}: "
            f"{exc.strerror or exc}): set TMPDIR to a writable directory, or mount a tmpfs on "
            "/tmp (a read-only container: docker run --tmpfs /tmp), or serve --no-metrics"
        ) from None


def fresh_multiproc_dir(path: str | os.PathLike[str]) -> Path:
    """Make ``path`` an empty directory for the workers' metric files (files left by an
    earlier run would be summed into this one's counters)."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    return directory


# -- rendering ------------------------------------------------------------------------------------


class _Collected:
    """Already collected metrics, in the shape ``generate_latest`` takes."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics


def _render(metrics: Iterable[Metric]) -> bytes:
    triton: list[str] = []
    others: list[Metric] = []
    for metric in sorted(metrics, key=lambda m: m.name):
        samples = [s for s in metric.samples if not s.name.endswith("_created")]
        if metric.type == "counter" and metric.name.startswith(TRITON_PREFIX):
            triton.append(_triton_counter(metric, samples))
            continue
        kept = Metric(metric.name, metric.documentation, metric.type, metric.unit)
        kept.samples = samples
        others.append(kept)
    return "".join(triton).encode() + generate_latest(_Collected(others))


def _triton_counter(metric: Metric, samples: list[Sample]) -> str:
    name = metric.name
    help_text = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
    lines = [f"# HELP {name} {help_text}\n", f"# TYPE {name} counter\n"]
    for sample in sorted(samples, key=lambda s: sorted(s.labels.items())):
        labels = ",".join(
            f'{key}="{_escape(value)}"' for key, value in sorted(sample.labels.items())
        )
        lines.append(f"{name}{{{labels}}} {floatToGoString(sample.value)}\n")
    return "".join(lines)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


# -- serving ------------------------------------------------------------------------------------


def metrics_app(render: Callable[[], tuple[bytes, str]]) -> ASGIApp:
    """An ASGI app answering ``GET /metrics`` with ``render()`` (run on a thread: it reads
    files); every other path is a 404."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["path"] != "/metrics":
            status, body, content_type = (
                404,
                b"not found: the metrics are at /metrics\n",
                "text/plain",
            )
        elif scope["method"] not in ("GET", "HEAD"):
            status, body, content_type = 405, b"method not allowed\n", "text/plain"
        else:
            body, content_type = await asyncio.to_thread(render)
            status = 200
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )

    return app


# -- reading a page back --------------------------------------------------------------------------


def parse_metrics(text: str) -> list[Sample]:
    """Every sample of a metrics page, named as written (``nv_inference_count``,
    ``process_cpu_seconds_total``, ``torchferry_batch_size_bucket``...)."""
    samples = []
    for family in text_string_to_metric_families(text):
        triton = family.type == "counter" and family.name.startswith(TRITON_PREFIX)
        for sample in family.samples:
            # the parser names every counter sample NAME_total; Triton's are written bare
            samples.append(sample._replace(name=family.name) if triton else sample)
    return samples


def sample_value(samples: Iterable[Sample], name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels`` (0 if none):
    ``sample_value(samples, "nv_inference_count", model="adder")`` sums over versions."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )
