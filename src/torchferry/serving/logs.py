"""Log lines of the supervisor and the workers: plain text or one JSON object per line,
and the access log.

:func:`configure_logging` sets up the process's root logger once, in either format:

- ``text``: ``2026-01-31T12:00:00.123Z INFO 4242 torchferry.repository: loaded adder
  version 1 (onnxruntime, ...)``, one line per message (a traceback follows its line);
- ``json``: ``{"time": "2026-01-31T12:00:00.123Z", "level": "INFO", "logger": ...,
  "message": ..., "pid": 4242, ...}``, with every field a caller passes in ``extra``:
  events are logged as ``log.info("worker 1 started (pid 123)", extra={"event":
  "worker_started", "worker": 1, "pid": 123})``, so that a machine reads the fields and a
  person the message.

Access lines go out in bunches (``LineHandler``), within 0.1 s; every other line at once,
with the access lines before it.

:class:`AccessLog` is a request observer: one line per finished request on the
``torchferry.access`` logger, with the request id, protocol, method, route template, status,
latency and, for inference, model, version, rows, batch size and queue time; never a payload
value, never a raw path or query. Set that logger's level above INFO to turn it off (it then
costs a level check). When the process's logging is :func:`configure_logging`'s and nobody
has given the access logger handlers of its own, a line skips the ``logging`` machinery
(record, handler chain, formatter): the same line, for a third of the cost.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import IO, Any, Literal

import orjson

from torchferry.serving.observe import RequestRecord

LogFormat = Literal["text", "json"]
ACCESS_LOGGER = "torchferry.access"

#: Attributes every LogRecord has: whatever else a record carries came in ``extra``
#: (but uvicorn's ``color_message``, its message again with terminal colour codes).
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class _Clock:
    """RFC 3339 UTC timestamps with milliseconds; the date and time part is formatted once
    per second (``strftime`` per line would cost more than the rest of the line)."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def rfc3339(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{int((created - second) * 1000):03d}Z"


class LineFormatter(logging.Formatter):
    """A formatter that can also write a line from its parts, without a LogRecord."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = _Clock()

    def line(
        self,
        created: float,
        level: str,
        logger: str,
        pid: int | None,
        message: str,
        fields: dict[str, Any] | None,
    ) -> str:
        raise NotImplementedError

    def format(self, record: logging.LogRecord) -> str:
        extra = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        line = self.line(
            record.created,
            record.levelname,
            record.name,
            record.process,
            record.getMessage(),
            extra,
        )
        return self.finish(line, record)

    def finish(self, line: str, record: logging.LogRecord) -> str:
        """Add the record's traceback and stack, if any."""
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


class TextFormatter(LineFormatter):
    """``TIME LEVEL PID LOGGER: MESSAGE`` (``extra`` fields are for machines: the message
    says it for people), and the traceback, if any, on the lines after."""

    def line(
        self,
        created: float,
        level: str,
        logger: str,
        pid: int | None,
        message: str,
        fields: dict[str, Any] | None,
    ) -> str:
        return f"{self.clock.rfc3339(created)} {level} {pid} {logger}: {message}"


class JsonFormatter(LineFormatter):
    """One JSON object per line: time, level, logger, message, pid, then every ``extra``
    field (values JSON cannot hold are written as their ``str``)."""

    def line(
        self,
        created: float,
        level: str,
        logger: str,
        pid: int | None,
        message: str,
        fields: dict[str, Any] | None,
    ) -> str:
        document: dict[str, Any] = {
            "time": self.clock.rfc3339(created),
            "level": level,
            "logger": logger,
            "message": message,
            "pid": pid,
        }
        if fields:
            document.update(fields)
        return orjson.dumps(document, default=str).decode()

    def finish(self, line: str, record: logging.LogRecord) -> str:
        if not (record.exc_info or record.stack_info):
            return line
        document = orjson.loads(line)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(document, default=str).decode()


class LineHandler(logging.StreamHandler):
    """A stream handler that writes access lines in bunches: within ``interval_s`` (by a
    background thread), or as soon as ``max_bytes`` are waiting, or with the next line of
    any other logger, which goes out at once.

    A write and a flush per line cost more than the rest of an access line. Other lines are
    few and may be a process's last (uvicorn ends by re-raising SIGTERM, which skips every
    exit handler): they never wait. A process killed outright loses at most the last
    ``interval_s`` of access lines."""

    def __init__(
        self, stream: IO[str] | None = None, interval_s: float = 0.1, max_bytes: int = 64 * 1024
    ) -> None:
        super().__init__(stream)
        self.interval_s = interval_s
        self.max_bytes = max_bytes
        self._lines: list[str] = []
        self._size = 0
        self._buffer_lock = threading.Lock()
        self._waiting = threading.Event()
        self._closed = False
        threading.Thread(target=self._flusher, name="log-lines", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.add_line(line, urgent=record.name != ACCESS_LOGGER)

    def add_line(self, line: str, urgent: bool = False) -> None:
        """Queue a formatted line; ``urgent`` writes it (and those before it) at once."""
        with self._buffer_lock:
            self._lines.append(line)
            self._size += len(line)
            full = self._size >= self.max_bytes
        if urgent or full:
            self.flush()
        elif not self._waiting.is_set():
            self._waiting.set()

    def flush(self) -> None:
        self.acquire()  # one writer at a time
        try:
            with self._buffer_lock:
                lines, self._lines, self._size = self._lines, [], 0
            if lines:
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
        except Exception:  # a closed or broken stream: there is nothing to tell it with
            pass
        finally:
            self.release()

    def close(self) -> None:
        self.flush()
        self._closed = True
        self._waiting.set()
        super().close()

    def _flusher(self) -> None:
        while True:
            self._waiting.wait()
            if self._closed:
                return
            time.sleep(self.interval_s)
            self._waiting.clear()
            self.flush()


#: Libraries whose lines quote request data, each with the least level it may log at:
#: Pillow's debug lines name an image's chunks (``STREAM b'tEXt' 41 23``), python-multipart's
#: warnings the bytes of a malformed body (``Expected boundary character 45, got 77``). The
#: client hears of such a failure in its 400; the log would only hold its data. httpx's info
#: lines quote every URL it requests (a remote source's signed query; each try-it call the
#: console forwards, which the worker's access line already records).
PAYLOAD_LOGGERS = {
    "PIL": logging.INFO,
    "httpx": logging.WARNING,
    "python_multipart": logging.ERROR,
    "multipart": logging.ERROR,
}

#: Marks the handler ``configure_logging`` installed, so that a second call replaces it.
_HANDLER_NAME = "torchferry"
#: The handler (and its formatter) that access lines may be written to directly.
_sink: tuple[LineHandler, LineFormatter] | None = None


def configure_logging(
    level: str = "info", fmt: LogFormat = "text", stream: IO[str] | None = None
) -> LineHandler:
    """Send every logger's lines at ``level`` and above to ``stream`` (stderr) in ``fmt``;
    returns the handler. Calling it again replaces the earlier setup."""
    global _sink
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', not {fmt!r}")
    # the line formats name neither threads nor processes: skip looking them up per record
    logging.logThreads = False
    logging.logMultiprocessing = False
    formatter: LineFormatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handler = LineHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    unconfigure_logging()
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name, least in PAYLOAD_LOGGERS.items():
        logging.getLogger(name).setLevel(least)
    _sink = (handler, formatter)
    return handler


def unconfigure_logging() -> None:
    """Undo ``configure_logging``: its handler off the root logger. For a process that runs
    several servers in turn (tests, notebooks): access lines then go through ``logging``
    again, to whatever handlers are there."""
    global _sink
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    _sink = None


class AccessLog:
    """Request observer: one INFO line per finished request on ``torchferry.access``."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger(ACCESS_LOGGER)
        self._root = logging.getLogger()

    def __call__(self, record: RequestRecord) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        ended = record.ended if record.ended is not None else time.perf_counter()
        latency_ms = round((ended - record.started) * 1000, 3)
        fields: dict[str, Any] = {
            "request_id": record.request_id,
            "protocol": record.protocol,
            "method": record.method,
            "route": record.route,
            "status": record.status,
            "latency_ms": latency_ms,
        }
        who = getattr(record.grant, "id", None)  # the token's id (with --auth), never its text
        if who is not None:
            fields["token"] = who
        where = f"{record.method} {record.route}" if record.method else record.route
        if record.model is None:
            message = (
                f"{record.protocol} {where} {record.status} {latency_ms:.2f} ms "
                f"id={record.request_id}"
            )
        else:
            fields["model"] = record.model
            fields["version"] = record.version
            fields["rows"] = record.rows
            fields["batch_size"] = record.batch_size
            if record.queued is not None and record.compute_started is not None:
                fields["queue_ms"] = round((record.compute_started - record.queued) * 1000, 3)
            message = (
                f"{record.protocol} {where} {record.status} {latency_ms:.2f} ms "
                f"{record.model}:{record.version} rows={record.rows} "
                f"batch={record.batch_size} id={record.request_id}"
            )
        if record.cold_load_s is not None:  # it waited for its model to load
            fields["cold_load_ms"] = round(record.cold_load_s * 1000, 3)
            message = f"{message} cold_load={fields['cold_load_ms']:.1f}ms"
        if who is not None:
            message = f"{message} token={who}"
        sink = _sink
        if (
            sink is not None
            and not logger.handlers
            and logger.propagate
            and sink[0] in self._root.handlers
        ):
            handler, formatter = sink
            created = time.time()
            handler.add_line(
                formatter.line(created, "INFO", logger.name, os.getpid(), message, fields)
            )
            return
        # Made here rather than by Logger.info, which would also walk the stack for the
        # caller's file and line, that an access line never shows.
        line = logging.LogRecord(logger.name, logging.INFO, "", 0, message, None, None)
        line.__dict__.update(fields)
        logger.handle(line)
