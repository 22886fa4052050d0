"""The event loop's own counters and histograms read exactly like prometheus_client's to a scraper."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from chiefofstate.telemetry.loop_metrics import LoopCounter, LoopHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0)
OBSERVED = (0.0005, 0.001, 0.002, 0.01, 0.5, 1.0, 7.0)  # bounds themselves fall in their own bucket


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample but the `_created` timestamps, which differ by when each series was made."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_the_exposition_is_prometheus_clients() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop_counter = LoopCounter("calls_total", "Calls.", ["method", "code"], ours)
    loop_histogram = LoopHistogram("call_seconds", "Call time.", ["method"], ours, BUCKETS)
    counter = Counter("calls_total", "Calls.", ["method", "code"], registry=theirs)
    histogram = Histogram("call_seconds", "Call time.", ["method"], buckets=BUCKETS, registry=theirs)
    for method in ("Get", "Put"):
        for value in OBSERVED:
            loop_histogram.labels(method).observe(value)
            histogram.labels(method).observe(value)
        loop_counter.labels(method, "OK").inc()
        counter.labels(method, "OK").inc()
    loop_counter.labels("Get", "NOT_FOUND").inc(3)
    counter.labels("Get", "NOT_FOUND").inc(3)

    assert samples(ours) == samples(theirs)
    assert samples(ours)[("call_seconds_bucket", (("le", "0.001"), ("method", "Get")))] == 2
    assert samples(ours)[("call_seconds_bucket", (("le", "+Inf"), ("method", "Put")))] == len(OBSERVED)
    created = [line for line in generate_latest(ours).decode().splitlines() if "_created{" in line]
    assert len(created) == 5  # one per series, as prometheus_client writes them


def test_a_series_binds_once_and_checks_its_labels() -> None:
    registry = CollectorRegistry()
    counter = LoopCounter("things_total", "Things.", ["kind"], registry)
    assert counter.labels("a") is counter.labels("a")
    with pytest.raises(ValueError, match="takes labels"):
        counter.labels("a", "b")
    histogram = LoopHistogram("sizes", "Sizes.", [], registry, (1, 2))
    histogram.labels().observe(2)
    assert registry.get_sample_value("sizes_bucket", {"le": "2.0"}) == 1
    assert registry.get_sample_value("sizes_bucket", {"le": "1.0"}) == 0


def test_one_registry_refuses_the_same_name_twice() -> None:
    registry = CollectorRegistry()
    LoopCounter("dupes_total", "Dupes.", [], registry)
    with pytest.raises(ValueError, match="Duplicated"):
        LoopCounter("dupes_total", "Dupes.", [], registry)
