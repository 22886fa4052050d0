"""Read-side manager operations from any member, acting wherever each projection runs (docs/cluster.md,
"Read sides").

Offsets and status are read from the database, so any member answers them; status also names the
member that runs each projection. Pause, resume, restart and skip change a running projection, so
each is carried out by the member that runs it: shards that run here directly, the others sent on to
their member's internal port (COS_CLUSTER_PORT) one shard at a time as the by-shard rpc. A member
answers such a forwarded call only for projections it runs (`HereOnly`), never forwarding it again.
A projection that no member runs right now (its lease is moving) fails the call with UNAVAILABLE
before anything is changed: retry once it has an owner again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from chiefofstate.cluster.peers import NotHere, PeerClients, Unreachable, forwarded_metadata
from chiefofstate.core.errors import Unavailable
from chiefofstate.core.headers import admin_caller
from chiefofstate.core.readside_rules import ProjectionState
from chiefofstate.gen.chief_of_state.v1 import manager_pb2 as pb
from chiefofstate.readside.runtime import ReadSideRuntime, ReadSideView

_SERVICE = "/chief_of_state.v1.ReadSideManagerService/"
# operation → (by-shard method, its request message)
_BY_SHARD: dict[str, tuple[str, Callable[..., object]]] = {
    "pause": ("PauseReadSideByShard", pb.PauseReadSideByShardRequest),
    "resume": ("ResumeReadSideByShard", pb.ResumeReadSideByShardRequest),
    "restart": ("RestartReadSideByShard", pb.RestartReadSideByShardRequest),
    "skip": ("SkipOffsetByShard", pb.SkipOffsetByShardRequest),
}


def _moving(read_side_id: str, shard: int, where: str) -> Unavailable:
    return Unavailable(
        f"read side {read_side_id!r} shard {shard} {where} right now (its lease is moving between "
        "members); nothing was changed, retry in a few seconds"
    )


class ClusterReadSides:
    """The manager's operations for a cluster member: `runtime` runs this member's projections,
    `owners()` says which member address runs each one (the coordinator's last round)."""

    def __init__(
        self,
        runtime: ReadSideRuntime,
        owners: Callable[[], Mapping[tuple[str, int], str]],
        peers: PeerClients,
        own_address: str,
        timeout_s: float,
    ) -> None:
        self._runtime = runtime
        self._owners = owners
        self._peers = peers
        self._own_address = own_address
        self._timeout_s = timeout_s

    @property
    def num_shards(self) -> int:
        return self._runtime.num_shards

    async def offsets(self, read_side_id: str) -> list[tuple[int, int]]:
        return await self._runtime.offsets(read_side_id)

    async def offset(self, read_side_id: str, shard: int) -> int:
        return await self._runtime.offset(read_side_id, shard)

    async def views(self, read_side_id: str | None = None, shard: int | None = None) -> list[ReadSideView]:
        return await self._runtime.views(read_side_id, shard, owners=self._owners())

    def states(self, read_side_id: str, shard: int | None = None) -> dict[int, ProjectionState]:
        return self._runtime.states(read_side_id, shard)

    async def pause(self, read_side_id: str, shard: int | None = None) -> None:
        await self._everywhere("pause", read_side_id, shard)

    async def resume(self, read_side_id: str, shard: int | None = None) -> None:
        await self._everywhere("resume", read_side_id, shard)

    async def restart(self, read_side_id: str, shard: int | None = None) -> None:
        await self._everywhere("restart", read_side_id, shard)

    async def skip(self, read_side_id: str, shard: int | None = None) -> list[tuple[int, int]]:
        return await self._everywhere("skip", read_side_id, shard)

    async def _everywhere(
        self, operation: str, read_side_id: str, shard: int | None
    ) -> list[tuple[int, int]]:
        runtime = self._runtime
        runtime.check_target(read_side_id, shard)
        shards: Sequence[int] = range(runtime.num_shards) if shard is None else [shard]
        owners = self._owners()
        local: list[int] = []
        remote: list[tuple[int, str]] = []
        for number in shards:
            if runtime.runs(read_side_id, number):
                local.append(number)
                continue
            address = owners.get((read_side_id, number))
            if address is None or address == self._own_address:
                raise _moving(read_side_id, number, "has no member running it")
            remote.append((number, address))
        done: list[tuple[int, int]] = []
        for number in local:
            outcome = await getattr(runtime, operation)(read_side_id, number)
            if operation == "skip":
                done.extend(outcome)
        for number, address in remote:
            await self._forward(operation, read_side_id, number, address)
        return done

    async def _forward(self, operation: str, read_side_id: str, shard: int, address: str) -> None:
        method, message = _BY_SHARD[operation]
        request = message(read_side_id=read_side_id, cluster_shard_number=shard)
        try:
            await self._peers.call(
                address,
                _SERVICE + method,
                request.SerializeToString(),  # type: ignore[attr-defined]
                forwarded_metadata(admin_caller.get(), ()),  # the caller's token, checked there again
                self._timeout_s,
            )
        except NotHere:
            raise _moving(read_side_id, shard, "is not run by the member it was sent to") from None
        except Unreachable as failure:
            raise failure.error from None


class HereOnly:
    """The manager's operations on a member's internal port: only for projections it runs."""

    def __init__(self, runtime: ReadSideRuntime) -> None:
        self._runtime = runtime

    @property
    def num_shards(self) -> int:
        return self._runtime.num_shards

    def _check(self, read_side_id: str, shard: int | None) -> int:
        self._runtime.check_target(read_side_id, shard)
        if shard is None or not self._runtime.runs(read_side_id, shard):
            raise _moving(read_side_id, shard if shard is not None else -1, "is not run by this member")
        return shard

    async def offsets(self, read_side_id: str) -> list[tuple[int, int]]:
        return await self._runtime.offsets(read_side_id)

    async def offset(self, read_side_id: str, shard: int) -> int:
        return await self._runtime.offset(read_side_id, shard)

    async def views(self, read_side_id: str | None = None, shard: int | None = None) -> list[ReadSideView]:
        return await self._runtime.views(read_side_id, shard)

    def states(self, read_side_id: str, shard: int | None = None) -> dict[int, ProjectionState]:
        return self._runtime.states(read_side_id, shard)

    async def pause(self, read_side_id: str, shard: int | None = None) -> None:
        await self._runtime.pause(read_side_id, self._check(read_side_id, shard))

    async def resume(self, read_side_id: str, shard: int | None = None) -> None:
        await self._runtime.resume(read_side_id, self._check(read_side_id, shard))

    async def restart(self, read_side_id: str, shard: int | None = None) -> None:
        await self._runtime.restart(read_side_id, self._check(read_side_id, shard))

    async def skip(self, read_side_id: str, shard: int | None = None) -> list[tuple[int, int]]:
        return await self._runtime.skip(read_side_id, self._check(read_side_id, shard))
