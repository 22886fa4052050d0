"""The node's counts that Prometheus reads at scrape time (names documented in docs/operations.md)."""

from __future__ import annotations

from chiefofstate.cluster.coordinator import Coordinator
from chiefofstate.entities.command_processor import CommandProcessor
from chiefofstate.entities.host import EntityHost
from chiefofstate.entities.snapshotter import Snapshotter
from chiefofstate.journal.group_commit import GroupCommitWriter
from chiefofstate.subscription.hub import SubscriptionHub
from chiefofstate.telemetry.metrics import NodeMetrics


def register_node_readings(
    metrics: NodeMetrics,
    host: EntityHost,
    processor: CommandProcessor,
    snapshotter: Snapshotter,
    writer: GroupCommitWriter,
    subscriptions: SubscriptionHub | None,
) -> None:
    metrics.read_scalar("cos_entities_cached", "Entities held in memory right now.", lambda: len(host))
    metrics.read_scalar(
        "cos_entity_recoveries",
        "Entities rebuilt from the journal (first use, or after eviction).",
        lambda: processor.recoveries,
        monotonic=True,
    )
    metrics.read_scalar(
        "cos_entity_passivations",
        "Entities evicted from memory (least recently used beyond capacity, or idle).",
        lambda: host.passivations,
        monotonic=True,
    )
    metrics.read_scalar(
        "cos_snapshots_written", "Snapshots saved.", lambda: snapshotter.saved, monotonic=True
    )
    metrics.read_scalar(
        "cos_snapshots_dropped",
        "Snapshots skipped because the snapshot queue was full.",
        lambda: snapshotter.dropped,
        monotonic=True,
    )
    metrics.read_scalar(
        "cos_journal_pending_appends", "Appends waiting for the journal writer.", lambda: writer.pending
    )
    if subscriptions is not None:
        hub = subscriptions
        metrics.read_scalar("cos_subscriptions", "Open subscription streams.", lambda: hub.open_streams)
        metrics.read_scalar(
            "cos_subscriptions_dropped",
            "Subscribers ended with RESOURCE_EXHAUSTED for falling behind their buffer.",
            lambda: hub.overflows,
            monotonic=True,
        )
        source = hub.source
        if source is not None:
            metrics.read_scalar(
                "cos_subscription_feed_reads",
                "Journal reads of the cluster subscription feed (none while the member has no subscriber).",
                lambda: source.reads,
                monotonic=True,
            )


def register_cluster_readings(
    metrics: NodeMetrics, coordinator: Coordinator, processor: CommandProcessor
) -> None:
    metrics.read_scalar(
        "cos_cluster_fence_rejections",
        "Appends the journal refused because the shard's lease had moved to another member.",
        lambda: processor.fence_rejections,
        monotonic=True,
    )
    metrics.read_scalar(
        "cos_cluster_members",
        "Live cluster members, as this member last read them.",
        lambda: len(coordinator.members),
    )
    metrics.read_scalar(
        "cos_cluster_shards_owned",
        "Entity shards whose lease this member holds.",
        lambda: len(coordinator.owned_shards()),
    )
    metrics.read_scalar(
        "cos_cluster_projections_owned",
        "Read-side projections (read side, shard) whose lease this member holds.",
        lambda: len(coordinator.owned_projections()),
    )
    metrics.read_scalar(
        "cos_cluster_lease_acquisitions",
        "Shard and projection leases this member acquired.",
        lambda: coordinator.acquisitions,
        monotonic=True,
    )
    metrics.read_scalar(
        "cos_cluster_lease_losses",
        "Shard and projection leases this member lost: taken by another member, or not renewed in time.",
        lambda: coordinator.losses,
        monotonic=True,
    )
