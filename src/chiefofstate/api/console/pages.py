"""What each page shows, gathered from the console's parts into plain values for its template."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from chiefofstate.api.console.decoding import Shown
from chiefofstate.api.console.journal_time import cursor_at, parse_moment
from chiefofstate.api.console.paging import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    last_page_after,
    page_of,
    whole_number,
)
from chiefofstate.api.console.parts import ConsoleParts
from chiefofstate.api.console.samples import Interval, sparkline
from chiefofstate.api.readside_manager import OPERATIONS, Operation
from chiefofstate.core.command_rules import validate_entity_id
from chiefofstate.core.errors import InvalidArgument, NotFound
from chiefofstate.core.readside_rules import ProjectionState
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper, StateWrapper
from chiefofstate.inspect.decoding import meta_view, revision_date, type_name
from chiefofstate.ports.journal import JournalRow
from chiefofstate.readside.runtime import ShardView

Context = dict[str, Any]

WHAT_HAPPENS: Mapping[Operation, str] = {
    "pause": "stops delivering events to the read handler once the event in flight is done; the offset "
    "stays where it is, and resume carries on from there",
    "resume": "delivers again from the stored offset; a halted projection forgets its halt and is sent "
    "the event it halted on again",
    "restart": "forgets the stored offset and delivers every event of the journal again from the first "
    "one (a paused projection stays paused); a halt is cleared",
    "skip": "moves the offset past the next event not yet delivered, which the read handler will never "
    "receive; a halt is cleared",
}


def duration_text(seconds: float) -> str:
    """`3d 4h`, `2h 5m`, `4m 10s`, `12s`: two units at most."""
    if math.isnan(seconds):
        return "unknown"
    whole = int(max(0.0, seconds))
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def lag_seconds(shard: ShardView, now_ms: int) -> float:
    """0 when caught up; NaN when the waiting event has no write time; never negative."""
    if shard.lag.events == 0:
        return 0.0
    if shard.oldest_pending_ms is None:
        return math.nan
    return max(0.0, (now_ms - shard.oldest_pending_ms) / 1000)


def _chart(intervals: Sequence[Interval], pick: Any, unit: str) -> dict[str, str]:
    values = [pick(interval) for interval in intervals]
    latest = next((value for value in reversed(values) if value is not None), None)
    return {"svg": sparkline(values), "latest": "–" if latest is None else f"{latest:,.1f} {unit}".strip()}


async def overview(parts: ConsoleParts) -> Context:
    facts = parts.facts
    now_ms = parts.wall_clock_ms()
    readiness = await parts.readiness()
    intervals = parts.sampler.ring.intervals()
    members = sorted(parts.members(), key=lambda member: member.address)
    owned: dict[str, tuple[int, int]] = {}
    if parts.leases is not None:
        for lease in await parts.leases():
            shards, projections = owned.get(lease.owner, (0, 0))
            if lease.key.read_side_id is None:
                owned[lease.owner] = (shards + 1, projections)
            else:
                owned[lease.owner] = (shards, projections + 1)
    window_s = parts.sampler.interval_s * max(0, len(intervals))
    return {
        "node": {
            "address": facts.address,
            "uptime": duration_text((now_ms - facts.started_at_ms) / 1000),
            "health": "ready" if readiness is None else f"not ready: {readiness}",
            "ready": readiness is None,
            "shards": len(parts.owned_shards()),
            "projections": len(parts.owned_projections()),
            "store": facts.store,
            "schema_version": facts.schema_version,
            "num_shards": facts.num_shards,
            "protocol": facts.protocol,
            "clustered": facts.clustered,
        },
        "members": [
            {
                "address": member.address,
                "self": member.member_id == parts.member_id,
                "uptime": duration_text((now_ms - member.started_at_ms) / 1000),
                "heartbeat": f"{member.heartbeat_age_s:.1f}s ago",
                "shards": owned.get(member.member_id, (0, 0))[0],
                "projections": owned.get(member.member_id, (0, 0))[1],
                "read_sides": ", ".join(sorted(member.read_sides)),
            }
            for member in members
        ],
        "window": duration_text(window_s),
        "charts": [
            ("commands/s", _chart(intervals, lambda i: i.commands_per_s, "/s")),
            ("errors/s", _chart(intervals, lambda i: i.errors_per_s, "/s")),
            ("p50 latency", _chart(intervals, lambda i: i.p50_ms, "ms")),
            ("p99 latency", _chart(intervals, lambda i: i.p99_ms, "ms")),
            ("journal batch size", _chart(intervals, lambda i: i.batch_size, "")),
        ],
    }


def _state_text(shard: ShardView) -> str:
    if shard.state is ProjectionState.HALTED and shard.halt is not None:
        return f"halted on event {shard.halt.event_offset}: {shard.halt.reason}"
    return shard.state.value + (f" ({shard.detail})" if shard.detail else "")


async def read_sides(parts: ConsoleParts) -> Context:
    if parts.read_sides is None:
        return {"enabled": False}
    views = await parts.read_sides.views()
    now_ms = parts.wall_clock_ms()
    intervals = parts.sampler.ring.intervals()
    delivered = intervals[-1].delivered_per_s if intervals else {}
    sides = []
    for view in sorted(views, key=lambda view: view.settings.read_side_id):
        read_side_id = view.settings.read_side_id
        rows = [
            {
                "shard": shard.shard,
                "offset": "–" if shard.offset is None else shard.offset,
                "head": shard.head,
                "lag_events": f"{shard.lag.events}{'+' if shard.lag.capped else ''}",
                "lag_seconds": duration_text(lag_seconds(shard, now_ms)),
                "state": shard.state.value,
                "state_text": _state_text(shard),
                "member": shard.member,
            }
            for shard in view.shards
        ]
        halted = sum(1 for shard in view.shards if shard.state is ProjectionState.HALTED)
        sides.append(
            {
                "id": read_side_id,
                "enabled": view.settings.enabled,
                "target": f"{view.settings.protocol}://{view.settings.host}:{view.settings.port}",
                "policy": view.settings.failure_policy.value,
                "rows": rows,
                "halted": halted,
                "lag_total": sum(shard.lag.events for shard in view.shards),
                "delivered_per_s": f"{delivered.get(read_side_id, 0.0):,.1f}",
            }
        )
    return {"enabled": True, "sides": sides, "operations": OPERATIONS}


def operation_request(values: Mapping[str, str], num_shards: int) -> tuple[Operation, str, int | None]:
    """(operation, read side, shard or None for all) from a confirmation or action form."""
    operation = values.get("action", "")
    if operation not in OPERATIONS:
        raise InvalidArgument(f"unknown action {operation!r}: one of {', '.join(OPERATIONS)}")
    read_side_id = values.get("read_side", "").strip()
    if not read_side_id:
        raise InvalidArgument("say which read side")
    shard_text = values.get("shard", "").strip()
    shard = None
    if shard_text:
        shard = whole_number(values, "shard", 0)
        if shard >= num_shards:
            raise InvalidArgument(f"shard must be below {num_shards} (got {shard})")
    return operation, read_side_id, shard


async def confirmation(parts: ConsoleParts, values: Mapping[str, str]) -> Context:
    if parts.read_sides is None:
        raise NotFound("read sides are not enabled on this node (COS_READ_SIDE_ENABLED)")
    operation, read_side_id, shard = operation_request(values, parts.facts.num_shards)
    # Refused here already, before a confirmation is asked for something that cannot be done.
    views = await parts.read_sides.views(read_side_id, shard)
    if views and not views[0].settings.enabled:
        raise InvalidArgument(
            f"read side {read_side_id!r} is disabled on this node; it cannot be {operation}d"
        )
    target = (
        f"shard {shard} of read side {read_side_id!r}"
        if shard is not None
        else (f"every shard ({parts.facts.num_shards}) of read side {read_side_id!r}")
    )
    return {
        "operation": operation,
        "read_side": read_side_id,
        "shard": "" if shard is None else shard,
        "target": target,
        "what": WHAT_HAPPENS[operation],
    }


def done_message(
    operation: Operation, read_side_id: str, shard: int | None, skipped: list[tuple[int, int]]
) -> str:
    where = f"shard {shard} of {read_side_id}" if shard is not None else f"every shard of {read_side_id}"
    if operation == "skip":
        moved = ", ".join(f"shard {number} past event {ordering}" for number, ordering in skipped)
        return f"skip of {where} done: {moved or 'nothing was waiting'}"
    return f"{operation} of {where} done"


@dataclass(frozen=True, slots=True)
class EventLine:
    sequence: int
    ordering: int
    shard: int
    entity_id: str
    written: str | None
    revision_date: str | None
    headers: list[dict[str, Any]]
    event: Shown


async def _event_lines(parts: ConsoleParts, rows: Sequence[JournalRow]) -> list[EventLine]:
    wrappers = [EventWrapper.FromString(row.payload) for row in rows]
    shown = await parts.decoder.show_all([wrapper.event for wrapper in wrappers])
    return [
        EventLine(
            sequence=row.sequence_number,
            ordering=row.ordering,
            shard=row.shard,
            entity_id=row.entity_id,
            written=_iso_ms(row.write_timestamp_ms),
            revision_date=revision_date(wrapper.meta),
            headers=meta_view(wrapper.meta)["headers"],
            event=event,
        )
        for row, wrapper, event in zip(rows, wrappers, shown, strict=True)
    ]


def _event_type(row: JournalRow) -> str:
    return type_name(EventWrapper.FromString(row.payload).event.type_url)


def _iso_ms(epoch_ms: int | None) -> str | None:
    if epoch_ms is None:
        return None
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def entity(parts: ConsoleParts, values: Mapping[str, str]) -> Context:
    entity_id = values.get("id", "")
    if "id" not in values:
        return {"asked": False}
    if not entity_id.strip():
        raise InvalidArgument("type an entity id to look up")
    validate_entity_id(entity_id)
    stored = await parts.journal.latest_state(entity_id)
    if stored is None:
        raise NotFound(f"no entity {entity_id!r} in the journal (no event and no snapshot)")
    wrapper: EventWrapper | StateWrapper
    if stored.kind == "event":
        wrapper = EventWrapper.FromString(stored.payload)
        state_any = wrapper.resulting_state
    else:
        wrapper = StateWrapper.FromString(stored.payload)
        state_any = wrapper.state
    (state,) = await parts.decoder.show_all([state_any])
    revision = wrapper.meta.revision_number
    size = whole_number(values, "size", DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE) or DEFAULT_PAGE_SIZE
    after = whole_number(values, "after", 0)
    rows = await parts.journal.read_events(entity_id, after, size + 1)
    page = page_of(after, size, [row.sequence_number for row in rows])
    return {
        "asked": True,
        "id": entity_id,
        "meta": meta_view(wrapper.meta),
        "state": state,
        "from_snapshot": stored.kind == "snapshot",
        "events": await _event_lines(parts, rows[:size]),
        "page": page,
        "last_after": last_page_after(revision, size),
        "revision": revision,
    }


async def journal(parts: ConsoleParts, values: Mapping[str, str]) -> Context:
    num_shards = parts.facts.num_shards
    size = whole_number(values, "size", DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE) or DEFAULT_PAGE_SIZE
    after = whole_number(values, "after", 0)
    shard_text = values.get("shard", "").strip()
    shard = whole_number(values, "shard", 0) if shard_text else None
    if shard is not None and shard >= num_shards:
        raise InvalidArgument(f"shard must be below {num_shards} (got {shard})")
    type_filter = values.get("type", "").strip()
    shards = [shard] if shard is not None else list(range(num_shards))
    moment = values.get("from", "").strip()
    from_ms = parse_moment(moment) if moment else None
    if from_ms is not None:
        after = await cursor_at(parts.journal, shards, from_ms)
    fetched = await asyncio.gather(*(parts.journal.read_shard(number, after, size + 1) for number in shards))
    rows = sorted((row for shard_rows in fetched for row in shard_rows), key=lambda row: row.ordering)
    page = page_of(after, size, [row.ordering for row in rows])
    shown = rows[:size]
    if type_filter:
        shown = [row for row in shown if type_filter in _event_type(row)]
    if from_ms is not None:
        # The earliest shard's cursor can let other shards' earlier events onto this first page.
        shown = [row for row in shown if row.write_timestamp_ms is None or row.write_timestamp_ms >= from_ms]
    return {
        "events": await _event_lines(parts, shown),
        "page": page,
        "shard": shard_text,
        "type": type_filter,
        "num_shards": num_shards,
    }


async def cluster(parts: ConsoleParts) -> Context:
    facts = parts.facts
    members = {member.member_id: member.address for member in parts.members()}
    if parts.leases is None:
        projections: list[dict[str, object]] = []
        if parts.read_sides is not None:
            for view in await parts.read_sides.views():
                projections.extend(
                    {
                        "read_side": view.settings.read_side_id,
                        "shard": shard.shard,
                        "owner": facts.address
                        if shard.state is not ProjectionState.DISABLED
                        else "nobody (read side disabled)",
                        "state": shard.state.value,
                        "token": "–",
                        "expires": "–",
                    }
                    for shard in view.shards
                )
        return {
            "clustered": False,
            "shards": [
                {"shard": number, "owner": facts.address, "token": "–", "expires": "–"}
                for number in range(facts.num_shards)
            ],
            "projections": projections,
        }
    leases = await parts.leases()
    shard_rows: list[dict[str, Any]] = []
    projection_rows: list[dict[str, Any]] = []
    for lease in leases:
        row = {
            "shard": lease.key.shard,
            "owner": members.get(lease.owner, lease.owner),
            "token": lease.token,
            "expires": f"in {lease.expires_in_s:.1f}s"
            if lease.expires_in_s >= 0
            else f"expired {-lease.expires_in_s:.1f}s ago",
            "expired": lease.expires_in_s < 0,
        }
        if lease.key.read_side_id is None:
            shard_rows.append(row)
        else:
            projection_rows.append({**row, "read_side": lease.key.read_side_id, "state": ""})
    held = {row["shard"] for row in shard_rows}
    shard_rows.extend(
        {"shard": number, "owner": "nobody", "token": "–", "expires": "–", "expired": True}
        for number in range(facts.num_shards)
        if number not in held
    )
    shard_rows.sort(key=lambda row: int(row["shard"]))
    return {"clustered": True, "shards": shard_rows, "projections": projection_rows}
