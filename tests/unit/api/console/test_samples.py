"""The overview's metric ring and what it tells: rates, latency quantiles, batch sizes, sparklines."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry

from chiefofstate.api.console.sampler import sample_of
from chiefofstate.api.console.samples import Sample, SampleRing, interval, quantile, sparkline
from chiefofstate.telemetry.metrics import NodeMetrics


def test_the_ring_keeps_only_its_capacity_and_drops_the_oldest() -> None:
    ring = SampleRing(3)
    for second in range(5):
        ring.add(Sample(at_s=float(second), commands=second * 10.0))
    assert [sample.at_s for sample in ring.samples()] == [2.0, 3.0, 4.0]
    assert [round(point.commands_per_s) for point in ring.intervals()] == [10, 10]


def test_a_ring_too_small_to_tell_a_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="two samples"):
        SampleRing(1)


def test_quantiles_interpolate_inside_the_bucket_they_fall_in() -> None:
    buckets = ((0.01, 50.0), (0.1, 90.0), (1.0, 100.0), (math.inf, 100.0))
    assert quantile(buckets, 0.5) == pytest.approx(0.01)
    assert quantile(buckets, 0.7) == pytest.approx(0.01 + 0.09 * 20 / 40)
    assert quantile(buckets, 0.99) == pytest.approx(0.1 + 0.9 * 9 / 10)
    assert quantile(((0.1, 0.0), (math.inf, 0.0)), 0.5) is None
    assert quantile(((0.1, 0.0), (math.inf, 4.0)), 0.5) == 0.1  # beyond the last bound: that bound


def test_an_interval_counts_only_what_happened_between_its_samples() -> None:
    before = Sample(
        0.0,
        commands=100,
        errors=1,
        latency_buckets=((0.01, 90), (math.inf, 100)),
        batch_sum=100,
        batch_count=50,
        delivered={"audit": 10},
    )
    after = Sample(
        5.0,
        commands=150,
        errors=6,
        latency_buckets=((0.01, 90), (math.inf, 150)),
        batch_sum=200,
        batch_count=60,
        delivered={"audit": 60, "new": 5},
    )
    point = interval(before, after)
    assert point.commands_per_s == 10 and point.errors_per_s == 1
    assert point.p50_ms == 10.0  # every command of the window was slower than 10 ms
    assert point.batch_size == 10.0
    assert point.delivered_per_s == {"audit": 10.0, "new": 1.0}


def test_an_idle_interval_has_no_latency_and_no_batch_size() -> None:
    sample = Sample(1.0, commands=3, latency_buckets=((0.01, 3), (math.inf, 3)), batch_count=2, batch_sum=3)
    point = interval(
        sample, Sample(2.0, commands=3, latency_buckets=sample.latency_buckets, batch_count=2, batch_sum=3)
    )
    assert point.commands_per_s == 0 and point.p50_ms is None and point.batch_size is None


def test_samples_are_read_from_the_nodes_own_metrics() -> None:
    metrics = NodeMetrics()
    metrics.observe_request("ProcessCommand", "OK", "type.googleapis.com/bank.v1.Deposit", 0.002)
    metrics.observe_request("ProcessCommand", "INVALID_ARGUMENT", "x", 0.004)
    metrics.observe_request("GetState", "OK", "", 0.5)  # not a command
    metrics.observe_append_batch(4, 0.001, succeeded=True)
    sample = sample_of(metrics.registry.collect(), 7.0)
    assert (sample.commands, sample.errors) == (2, 1)
    assert sample.latency_buckets[-1] == (math.inf, 2)
    assert (sample.batch_sum, sample.batch_count) == (4, 1)
    assert sample_of(CollectorRegistry().collect(), 0.0).commands == 0


def test_a_sparkline_is_svg_with_gaps_where_values_are_missing() -> None:
    svg = sparkline([1.0, 2.0, None, 4.0], width=30, height=10)
    assert svg.startswith("<svg") and svg.count("<polyline") == 2
    assert "<polyline" not in sparkline([None, None])
