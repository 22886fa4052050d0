import io
import json
import logging

import pytest

from chiefofstate.telemetry.logging import configure_logging


@pytest.fixture(autouse=True)
def restore_root_logger():  # type: ignore[no-untyped-def]
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def emit(style: str) -> str:
    stream = io.StringIO()
    configure_logging("INFO", style, "bank-cos", stream)
    logging.getLogger("chiefofstate.test").warning("hello %s", "world", extra={"entity_id": "e-1"})
    return stream.getvalue().strip()


def test_json_lines_carry_upstreams_fields() -> None:
    entry = json.loads(emit("JSON"))
    assert entry["message"] == "hello world"
    assert entry["level"] == "WARN"
    assert entry["logger_name"] == "chiefofstate.test"
    assert entry["service"] == "bank-cos" and entry["powered_by"] == "chiefofstate"
    assert entry["timestamp"].endswith("Z") and "thread_name" in entry
    assert entry["entity_id"] == "e-1"
    # the fields upstream's Logstash encoder adds
    assert entry["@version"] == "1" and entry["level_value"] == 30000


@pytest.mark.parametrize(
    ("level", "value"),
    [("debug", 10000), ("info", 20000), ("warning", 30000), ("error", 40000), ("critical", 40000)],
)
def test_json_level_values_are_logbacks(level: str, value: int) -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", "JSON", "cos", stream)
    getattr(logging.getLogger("chiefofstate.levels"), level)("x")
    assert json.loads(stream.getvalue())["level_value"] == value


def test_standard_and_simple_styles() -> None:
    standard = emit("STANDARD")
    assert standard.endswith("WARN  chiefofstate.test - hello world")
    assert standard[:4].isdigit() and "Z WARN" in standard
    assert emit("SIMPLE") == "WARN  chiefofstate.test hello world"


def test_level_filters_lower_levels() -> None:
    stream = io.StringIO()
    configure_logging("ERROR", "SIMPLE", "cos", stream)
    logging.getLogger("chiefofstate.x").warning("dropped")
    logging.getLogger("chiefofstate.x").error("kept")
    assert stream.getvalue().strip() == "ERROR chiefofstate.x kept"
