from chiefofstate.telemetry.metrics import (
    MAX_COMMAND_TYPES,
    MAX_LABEL_LENGTH,
    OTHER,
    BoundedLabel,
    NodeMetrics,
)


def test_a_label_is_bounded_in_length_as_well_as_in_number_of_values() -> None:
    label = BoundedLabel(2)
    assert label("a" * 10) == "a" * 10
    assert label("b" * 1_000_000) == "b" * MAX_LABEL_LENGTH
    assert label("c") == OTHER
    assert label("b" * 2_000_000) == "b" * MAX_LABEL_LENGTH  # the same cut value is the same series


def test_the_metrics_page_stays_small_after_many_requests_with_huge_command_types() -> None:
    metrics = NodeMetrics()
    for index in range(MAX_COMMAND_TYPES + 50):
        metrics.observe_request("ProcessCommand", "INVALID_ARGUMENT", f"{index:04d}" + "x" * 100_000, 0.001)
    page = metrics.exposition()
    assert len(page) < 2_000_000
    assert b'command_type="other"' in page
