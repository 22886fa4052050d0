"""Log output in upstream's three styles (docs/contract.md §12): JSON (default), STANDARD and SIMPLE."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace

# Attributes every LogRecord has; anything else was passed with `extra=` and goes into the JSON.
_STANDARD_ATTRIBUTES = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_LEVEL_NAMES = {"WARNING": "WARN", "CRITICAL": "ERROR"}
# Upstream's JSON lines come from a Logstash encoder, which also writes `@version` and the level's
# number; pipelines that parse upstream's lines may filter on either.
_LEVEL_VALUES = {"TRACE": 5000, "DEBUG": 10000, "INFO": 20000, "WARN": 30000, "ERROR": 40000}


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _level(record: logging.LogRecord) -> str:
    return _LEVEL_NAMES.get(record.levelname, record.levelname)


class JsonFormatter(logging.Formatter):
    def __init__(self, service_name: str) -> None:
        super().__init__()
        self._constant = {"service": service_name, "powered_by": "chiefofstate"}

    def format(self, record: logging.LogRecord) -> str:
        level = _level(record)
        entry: dict[str, Any] = {
            "timestamp": _timestamp(record),
            "@version": "1",
            "level": level,
            "level_value": _LEVEL_VALUES.get(level, 0),
            "logger_name": record.name,
            "thread_name": record.threadName,
            "message": record.getMessage(),
            **self._constant,
        }
        entry.update(
            (key, value)
            for key, value in record.__dict__.items()
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_")
        )
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            # lets a log line be found from its trace and back (only set while tracing is on)
            entry["trace_id"] = format(span_context.trace_id, "032x")
            entry["span_id"] = format(span_context.span_id, "016x")
        if record.exc_info:
            entry["stack_trace"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class StandardFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {_level(record):<5} {record.name} - {record.getMessage()}"
        return line + ("\n" + self.formatException(record.exc_info) if record.exc_info else "")


class SimpleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_level(record):<5} {record.name} {record.getMessage()}"
        return line + ("\n" + self.formatException(record.exc_info) if record.exc_info else "")


def configure_logging(level: str, style: str, service_name: str, stream: TextIO | None = None) -> None:
    formatter: logging.Formatter
    if style == "JSON":
        formatter = JsonFormatter(service_name)
    elif style == "STANDARD":
        formatter = StandardFormatter()
    else:
        formatter = SimpleFormatter()
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    threshold = _OFF if level == "OFF" else logging.getLevelName(level)
    root.setLevel(threshold)
    # Our own start-up and store lines are worth seeing at INFO even when libraries stay quiet.
    logging.getLogger("chiefofstate").setLevel(threshold)
    for name in _LOGGERS_OF_VALUES:
        logging.getLogger(name).setLevel(max(logging.INFO, threshold))


# LOG_LEVEL=OFF (upstream's logger knows it): above every level anything logs at.
_OFF = logging.CRITICAL + 10


# Libraries whose DEBUG lines quote the values they handle: aiosqlite logs every call with its SQL
# parameters (event payloads, persisted header values), hpack every decoded header. No payload or
# header value is ever logged, at any level (docs/operations.md), so these stay at INFO or above.
_LOGGERS_OF_VALUES = ("aiosqlite", "hpack")
