"""``autotune``: build every candidate, measure it on the user's data, keep the fastest one
inside the accuracy budget, and write it as the model's next version with a report.

The original (the source archive served as it is now) is always measured, first: its
outputs are the reference for ``agreement`` and ``max-abs``, and its metric is the baseline
the budget counts from. The winner is the accepted candidate with the highest throughput at
its best batch size (the original wins ties). When that is the original, no version is
written ("the original is already the fastest within budget") and the report goes to
``STORE/NAME/optimize-report-vN.html`` instead of beside a new version.
"""

from __future__ import annotations

import datetime as _dt
import gc
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from torchferry.archive.formats import EAGER
from torchferry.archive.manifest import MANIFEST_NAME
from torchferry.archive.store import Archive, ModelStore
from torchferry.errors import ArchiveError, InvalidInput, ModelNotFound, TorchferryError
from torchferry.optimize.candidates import CANDIDATES, Candidate, original_name, select
from torchferry.optimize.context import BuildContext
from torchferry.optimize.data import EvalData, load_data
from torchferry.optimize.errors import Skipped
from torchferry.optimize.instances import best_instances, measure_instances
from torchferry.optimize.measure import MeasureSettings, measure, scores
from torchferry.optimize.outcome import (
    METRICS,
    AutotuneResult,
    CandidateRow,
    budget_text,
    caveats,
    judge,
    metric_unavailable,
    parse_budget,
)

REPORT_NAME = "optimize-report.html"
#: ``progress(done, total, what)``: called before each candidate and once at the end.
Progress = Callable[[int, int, str], None]


def resolve_archive(target: Archive | Path | str) -> Archive:
    """An archive directory, or a model directory (its highest version)."""
    if isinstance(target, Archive):
        return target
    path = Path(target)
    if (path / MANIFEST_NAME).is_file():
        return Archive.open(path)
    versions = ModelStore(path.parent).versions(path.name)
    if not versions:
        raise ModelNotFound(f"{path} is neither a model archive nor a model directory")
    return ModelStore(path.parent).open(path.name, max(versions))


def machine_info(threads: int) -> dict[str, str]:
    import onnxruntime
    import torch

    from torchferry.cores import cpu_name
    from torchferry.runtimes import default_threads

    cpu = cpu_name()
    return {
        "host": platform.node(),
        "os": platform.platform(),
        "cpu": f"{cpu}, {default_threads()} cores available, {threads} threads per runtime",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _message(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, TorchferryError) else str(exc)
    text = " ".join(text.split()) or "(no message)"
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= 4000 else text[:3997] + "..."


def _run_candidate(
    candidate: Candidate, ctx: BuildContext, data: EvalData, settings: MeasureSettings
) -> tuple[CandidateRow, Archive | None, list[np.ndarray] | None]:
    from torchferry.export.quiet import quiet

    row = CandidateRow(candidate.name, candidate.description, device=candidate.device)
    started = time.perf_counter()
    try:
        with quiet():
            archive = candidate.build(ctx)
    except Skipped as exc:
        row.status, row.reason = "skipped", exc.reason
        return row, None, None
    except Exception as exc:
        row.status, row.reason = "failed", f"build: {_message(exc)}"
        return row, None, None
    finally:
        row.build_seconds = time.perf_counter() - started
    row.runtime = archive.manifest.runtime
    started = time.perf_counter()
    try:
        result = measure(archive, data, settings, device=candidate.device)
    except Exception as exc:
        row.status, row.reason = "failed", f"measure: {_message(exc)}"
        return row, archive, None
    finally:
        row.measure_seconds = time.perf_counter() - started
    row.latency_ms, row.latency_p90_ms = result.latency_ms, result.latency_p90_ms
    row.latency_runs = result.latency_runs
    row.throughput, row.best_batch = result.throughput, result.best_batch
    row.throughput_by_batch = result.throughput_by_batch
    row.size_bytes, row.size_files = result.size_bytes, result.size_files
    row.status = "measured"
    return row, archive, result.outputs


def _discard(archive: Archive | None, scratch: ModelStore) -> None:
    if archive is not None and archive.path.is_relative_to(scratch.root):
        shutil.rmtree(archive.path.parent, ignore_errors=True)
        shutil.rmtree(scratch.root / f".{archive.manifest.name}", ignore_errors=True)


def autotune(
    archive_or_path: Archive | Path | str,
    data: dict[str, np.ndarray] | Path | str,
    *,
    budget: float | str = "1%",
    metric: str | None = None,
    candidates: Sequence[str] | None = None,
    store: ModelStore | Path | str | None = None,
    report: bool = True,
    settings: MeasureSettings | None = None,
    progress: Progress | None = None,
    registry: Sequence[Candidate] | None = None,
) -> AutotuneResult:
    """Try the candidates on ``data`` and write the fastest one within ``budget``.

    ``data`` is a ``.npz`` file or a dict: one array per model input, named as the inputs,
    and optionally ``labels``. ``metric`` is ``top1`` (argmax of the first output against
    ``labels``; the default when the data has labels), ``agreement`` (argmax agreement with
    the original's outputs; the default otherwise) or ``max-abs`` (largest absolute
    difference to the original's outputs). ``budget`` is the accepted loss: ``"1%"`` or
    ``0.01`` is one point of top1 or agreement; for ``max-abs`` an absolute bound.
    ``candidates`` are names or glob patterns (default: all of ``registry``, which defaults
    to :data:`~torchferry.optimize.candidates.CANDIDATES`); the original is measured
    whatever they say. The winner is written to ``store`` (default: the source's store) as
    the model's next version, with ``optimize-report.html`` when ``report``.
    """
    begun = time.perf_counter()
    started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    source = resolve_archive(archive_or_path)
    if source.manifest.runtime == EAGER:
        raise InvalidInput(
            f"{source.path} is an eager archive (Python code and weights, for control flow "
            "that no graph captures); autotune starts from an ONNX or TorchScript export"
        )
    target = _target_store(source, store)
    evaluation = load_data(data, source.manifest.signature)
    metric = _choose_metric(metric, evaluation)
    limit = parse_budget(budget, metric)
    chosen = _chosen(source, candidates, registry)
    settings = settings or MeasureSettings()
    settings = settings.with_threads(settings.threads or _default_threads())

    import torch

    torch.set_num_threads(settings.threads or 1)  # for the builders; runtimes set their own
    with tempfile.TemporaryDirectory(prefix="torchferry-autotune-") as scratch_dir:
        scratch = ModelStore(scratch_dir)
        ctx = BuildContext(source, evaluation, scratch)
        rows, reference, baseline, best = [], [], 0.0, None
        for done, candidate in enumerate(chosen):
            if progress:
                progress(done, len(chosen), candidate.name)
            row, built, outputs = _run_candidate(candidate, ctx, evaluation, settings)
            rows.append(row)
            if done == 0:  # the original
                reference = _reference(row, outputs, evaluation)
            if outputs is not None:
                row.scores = scores(outputs, reference, evaluation.labels)
                if row.original:
                    if metric not in row.scores:
                        raise InvalidInput(metric_unavailable(metric, outputs))
                    baseline = row.scores[metric]
                judge(row, metric, limit, baseline)
            faster = best is None or (row.throughput or 0) > (best[0].throughput or 0)
            if row.status == "accepted" and built is not None and faster:
                _discard(best[1] if best else None, scratch)
                best = (row, built)
            else:
                _discard(built, scratch)
            del outputs
            gc.collect()
        if progress:
            progress(len(chosen), len(chosen), "done")
        instances, rates = 1, dict[int, float]()
        if best is not None:
            best[0].winner = True
            instances, rates = _choose_instances(best[0], best[1], evaluation, settings)
        result = AutotuneResult(
            source=source,
            metric=metric,
            budget=limit,
            baseline=baseline,
            data_source=evaluation.source,
            data_sha256=evaluation.sha256,
            data_rows=evaluation.rows,
            calibration_rows=ctx.calibration_rows(),
            rows=rows,
            winner=best[0] if best else None,
            archive=None,
            report_path=None,
            summary="",
            machine=machine_info(settings.threads or 1),
            warnings=caveats(metric, reference),
            started=started,
            seconds=0.0,
            settings=settings,
            instances=instances,
            instances_rates=rates,
        )
        _finish(result, best[1] if best else None, target, report, begun)
    return result


def _choose_instances(
    row: CandidateRow, built: Archive, data: EvalData, settings: MeasureSettings
) -> tuple[int, dict[int, float]]:
    """The winner's best number of instances per worker; 1 when it cannot be measured."""
    try:
        rates = measure_instances(built, data, settings, row.best_batch or 1, device=row.device)
    except Exception:  # the winner measured alone already: keep one instance
        return 1, {}
    return best_instances(rates), rates


def _target_store(source: Archive, store: ModelStore | Path | str | None) -> ModelStore:
    if store is None:
        if not source.path.name.isdigit():
            raise InvalidInput(f"{source.path} is not in a model store; give the store to write to")
        return ModelStore(source.path.parent.parent)
    return store if isinstance(store, ModelStore) else ModelStore(store)


def _choose_metric(metric: str | None, data: EvalData) -> str:
    metric = metric or ("top1" if data.labels is not None else "agreement")
    if metric not in METRICS:
        raise InvalidInput(f"unknown metric {metric!r}; use one of {list(METRICS)}")
    if metric == "top1" and data.labels is None:
        raise InvalidInput(
            f"metric top1 needs an array 'labels' in {data.source}; "
            "without labels use agreement or max-abs"
        )
    return metric


def _chosen(
    source: Archive, patterns: Sequence[str] | None, registry: Sequence[Candidate] | None
) -> list[Candidate]:
    """The selected candidates, the original first whether selected or not."""
    pool = list(registry if registry is not None else CANDIDATES)
    chosen = select(patterns, pool)
    original = original_name(source.manifest)
    first = next((c for c in pool if c.name == original), None)
    if first is None:
        raise ArchiveError(f"no candidate {original!r} serves the original as it is")
    return [first, *(c for c in chosen if c.name != original)]


def _reference(
    row: CandidateRow, outputs: list[np.ndarray] | None, data: EvalData
) -> list[np.ndarray]:
    row.original = True
    if outputs is None:
        raise ArchiveError(
            f"the original model ({row.name}) cannot run on {data.source}, so there is "
            f"nothing to compare with: {row.reason}"
        )
    return outputs


def _default_threads() -> int:
    from torchferry.runtimes import default_threads

    return default_threads()


def _finish(
    result: AutotuneResult,
    built: Archive | None,
    store: ModelStore,
    report: bool,
    begun: float,
) -> None:
    """Write the winner (unless it is the original) and the report; set the summary."""
    from torchferry.optimize.report import render_html

    name = result.source.manifest.name
    winner = result.winner
    version: int | None = None
    if winner is None:
        result.summary = (
            f"no candidate is within the budget ({result.metric}, "
            f"{budget_text(result.metric, result.budget)}); nothing written"
        )
    elif winner.original:
        result.summary = (
            f"the original ({winner.name}) is already the fastest within budget; "
            "no new version written"
        )
    else:
        version = store.next_version(name)
        result.summary = (
            f"wrote {name} version {version}: {winner.name}, "
            f"{winner.throughput:,.0f} rows/s at batch {winner.best_batch} "
            f"(original {result.original.throughput:,.0f} rows/s), "
            f"{result.instances} instance(s) per worker"
        )
    result.seconds = time.perf_counter() - begun
    html = render_html(result, version) if report else None
    if version is None or built is None or winner is None:
        if html is not None:
            directory = store.root / name
            directory.mkdir(parents=True, exist_ok=True)
            result.report_path = (
                directory / f"optimize-report-v{result.source.manifest.version}.html"
            )
            result.report_path.write_text(html, encoding="utf-8")
        return
    source = result.source.manifest
    manifest = built.manifest.model_copy(
        update={
            "name": name,
            "version": version,
            "signature": source.signature,
            "handler": source.handler,
            "batching": source.batching.model_copy(update={"instances": result.instances}),
            "source": f"optimize: {winner.name}",
            "files": {},
            "created": _dt.datetime.now(_dt.UTC).isoformat(),
        }
    )

    def populate(directory: Path) -> None:
        for relative in built.manifest.files:  # copies: versions share no files
            target = directory / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(built.file(relative), target)
        if html is not None:
            (directory / REPORT_NAME).write_text(html, encoding="utf-8")

    result.archive = store.write(manifest, populate)
    if html is not None:
        result.report_path = result.archive.path / REPORT_NAME
