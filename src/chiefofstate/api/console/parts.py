"""What the console reads and acts on, handed over by the composition root (node/console.py): the same
objects the gRPC services and the CLI use."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from chiefofstate.api.console.decoding import Decoder
from chiefofstate.api.console.sampler import MetricSampler
from chiefofstate.api.console.tail import LiveTail
from chiefofstate.api.readside_manager import ReadSideOperations
from chiefofstate.ports.cluster import LeaseView, Member
from chiefofstate.ports.journal import Journal


@dataclass(frozen=True, slots=True)
class NodeFacts:
    address: str  # how the others reach this node (cluster) or host:management port
    started_at_ms: int
    num_shards: int
    store: str
    schema_version: int | None
    protocol: str
    clustered: bool


@dataclass(frozen=True, slots=True)
class ConsoleParts:
    facts: NodeFacts
    journal: Journal
    read_sides: ReadSideOperations | None  # None without COS_READ_SIDE_ENABLED
    sampler: MetricSampler
    decoder: Decoder
    tail: LiveTail | None  # None without COS_SUBSCRIPTION_ENABLED
    readiness: Callable[[], Awaitable[str | None]]
    members: Callable[[], Sequence[Member]]
    member_id: str
    owned_shards: Callable[[], list[int]]
    owned_projections: Callable[[], list[tuple[str, int]]]
    leases: Callable[[], Awaitable[list[LeaseView]]] | None  # None for a node alone
    wall_clock_ms: Callable[[], int]
