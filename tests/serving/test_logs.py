"""Log lines: text and JSON formats, event fields, and the access log's lines."""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import orjson
import pytest

from torchferry.serving.logs import ACCESS_LOGGER, AccessLog, LineHandler, configure_logging
from torchferry.serving.observe import Observers, RequestRecord

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def configure() -> Iterator[Callable[..., tuple[LineHandler, io.StringIO]]]:
    """``configure(level, fmt)`` logs to a string; the root logger is restored afterwards."""
    root = logging.getLogger()
    level, installed = root.level, []

    def setup(level: str = "info", fmt: str = "text") -> tuple[LineHandler, io.StringIO]:
        stream = io.StringIO()
        handler = configure_logging(level, fmt, stream)  # type: ignore[arg-type]
        installed.append(handler)
        return handler, stream

    yield setup
    for handler in installed:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    logging.logThreads = logging.logMultiprocessing = True


def lines(handler: LineHandler, stream: io.StringIO) -> list[str]:
    handler.flush()
    return stream.getvalue().splitlines()


def finished_record(**fields: object) -> RequestRecord:
    record = Observers().start("v2", "/v2/models/{model_name}/infer", "req-1", method="POST")
    for name, value in fields.items():
        setattr(record, name, value)
    record.status, record.ended = "200", record.started + 0.0042
    return record


def test_json_lines_carry_time_level_logger_message_and_every_extra_field(configure):
    handler, stream = configure("info", "json")
    log = logging.getLogger("torchferry.supervisor")
    log.info(
        "worker 1 started (pid 123)",
        extra={"event": "worker_started", "worker": 1, "pid": 123, "path": object()},
    )
    log.debug("not at this level")
    (line,) = lines(handler, stream)
    document = orjson.loads(line)
    assert RFC3339_UTC.match(document["time"]), document["time"]
    written = datetime.fromisoformat(document["time"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - written).total_seconds()) < 60
    assert {k: document[k] for k in ("level", "logger", "message", "event", "worker", "pid")} == {
        "level": "INFO",
        "logger": "torchferry.supervisor",
        "message": "worker 1 started (pid 123)",
        "event": "worker_started",
        "worker": 1,
        "pid": 123,  # the caller's field wins over the process id
    }
    assert document["path"].startswith("<object object")  # what JSON cannot hold, as text


def test_json_exceptions_stay_on_one_line(configure):
    handler, stream = configure("info", "json")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("torchferry.x").exception("it failed", extra={"event": "failure"})
    (line,) = lines(handler, stream)
    document = orjson.loads(line)
    assert document["level"] == "ERROR" and document["event"] == "failure"
    assert "ValueError: boom" in document["exception"] and "Traceback" in document["exception"]


def test_text_lines_are_readable_one_liners(configure):
    handler, stream = configure("warning", "text")
    logging.getLogger("torchferry.repository").info("hidden")
    logging.getLogger("torchferry.repository").warning("loaded %s", "adder", extra={"event": "x"})
    (line,) = lines(handler, stream)
    stamp, level, pid, rest = line.split(" ", 3)
    assert RFC3339_UTC.match(stamp) and level == "WARNING" and int(pid) > 0
    assert rest == "torchferry.repository: loaded adder"


def test_configuring_again_replaces_the_handler(configure):
    first, _ = configure("info", "text")
    second, stream = configure("info", "json")
    ours = [h for h in logging.getLogger().handlers if isinstance(h, LineHandler)]
    assert ours == [second] and first not in logging.getLogger().handlers
    logging.getLogger("torchferry.t").warning("once")
    assert len(lines(second, stream)) == 1
    with pytest.raises(ValueError, match="log format"):
        configure_logging("info", "yaml")  # type: ignore[arg-type]


def test_access_lines_hold_the_record_and_no_payload(configure):
    handler, stream = configure("info", "json")
    record = finished_record(model="adder", version="2", rows=3, batch_size=8, success=True)
    record.queued, record.compute_started = record.started + 0.001, record.started + 0.003
    AccessLog()(record)
    unrelated = finished_record()
    unrelated.route, unrelated.protocol, unrelated.request_id = "unmatched", "http", "req-2"
    AccessLog()(unrelated)
    first, second = (orjson.loads(line) for line in lines(handler, stream))
    assert first["logger"] == ACCESS_LOGGER and RFC3339_UTC.match(first["time"])
    expected = {
        "request_id": "req-1", "protocol": "v2", "method": "POST",
        "route": "/v2/models/{model_name}/infer", "status": "200", "latency_ms": 4.2,
        "model": "adder", "version": "2", "rows": 3, "batch_size": 8, "queue_ms": 2.0,
    }  # fmt: skip
    assert {k: first[k] for k in expected} == expected
    assert "adder:2" in first["message"] and "req-1" in first["message"]
    assert second["route"] == "unmatched" and "model" not in second


def test_access_lines_in_text(configure):
    handler, stream = configure("info", "text")
    AccessLog()(finished_record(model="adder", version="2", rows=1, batch_size=1))
    (line,) = lines(handler, stream)
    assert line.endswith(
        "torchferry.access: v2 POST /v2/models/{model_name}/infer 200 4.20 ms adder:2 rows=1 "
        "batch=1 id=req-1"
    )


def test_access_lines_go_through_logging_when_someone_else_handles_them(configure):
    handler, stream = configure("info", "json")
    access = logging.getLogger(ACCESS_LOGGER)
    seen: list[logging.LogRecord] = []
    own = logging.Handler()
    own.emit = seen.append  # type: ignore[method-assign]
    access.addHandler(own)
    try:
        AccessLog()(finished_record())
    finally:
        access.removeHandler(own)
    assert [r.request_id for r in seen] == ["req-1"]  # type: ignore[attr-defined]
    assert len(lines(handler, stream)) == 1  # and on to the root's handler, as any record


def test_access_log_off_above_info(configure):
    handler, stream = configure("warning", "json")
    AccessLog()(finished_record())
    assert lines(handler, stream) == []


def test_access_lines_wait_at_most_the_interval(configure):
    _, stream = configure("info", "text")
    AccessLog()(finished_record())
    assert stream.getvalue() == ""  # queued, not yet written
    deadline = time.monotonic() + 5
    while not stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stream.getvalue().count("\n") == 1
    AccessLog()(finished_record())
    logging.getLogger("torchferry.events").info("not an access line: written at once")
    assert stream.getvalue().count("\n") == 3
