"""Read-side manager operations from any member, acting wherever each projection runs (docs/cluster.md,
"Read sides").

Offsets and status are read from the database, so any member answers them; status also names the
member that runs each projection. A by-shard pause, resume, restart or skip is carried out by the
member that runs the projection: here, or sent on to its member's internal port (COS_CLUSTER_PORT) as
the same rpc, which a member answers only for projections it runs (`HereOnly`), never forwarding it
again. An operation on a whole read side holds every shard's projection wherever it runs (the
internal port's hold service), stores the change for all shards in one transaction fenced by their
lease tokens, then releases them (readside/operations.py): every shard changes or none does. A
projection that no member runs right now (its lease is moving), or whose member does not answer, fails
the call with UNAVAILABLE naming the shard, with nothing changed: retry in a few seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from chiefofstate.cluster.peers import NotHere, PeerClients, Unreachable, forwarded_metadata
from chiefofstate.core.errors import Code, CosError, Unavailable
from chiefofstate.core.headers import admin_caller
from chiefofstate.core.readside_rules import ProjectionState
from chiefofstate.gen.chief_of_state.v1 import manager_pb2 as pb
from chiefofstate.gen.chiefofstate.internal.v1 import readside_admin_pb2 as admin
from chiefofstate.readside.operations import Operation, ShardHold
from chiefofstate.readside.runtime import ReadSideRuntime, ReadSideView

_SERVICE = "/chief_of_state.v1.ReadSideManagerService/"
_HOLD = "/chiefofstate.internal.v1.ProjectionHoldService/Hold"
_RELEASE = "/chiefofstate.internal.v1.ProjectionHoldService/Release"
# A held projection releases itself after this many peer-call timeouts (at least HOLD_MIN_S): long
# enough for every hold, the transaction and the releases of one operation.
HOLD_TIMEOUTS = 4
HOLD_MIN_S = 10.0
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


def _unanswered(read_side_id: str, shard: int, address: str, why: str) -> Unavailable:
    return Unavailable(
        f"read side {read_side_id!r} shard {shard}: the member running it ({address}) did not answer "
        f"({why}); nothing was changed, retry once it answers or its projections have moved"
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

    async def trailer_states(self, read_side_id: str, shard: int | None = None) -> dict[int, ProjectionState]:
        """Every projection of the cluster: the ones running elsewhere by their stored record and the
        lease table's owner."""
        return await self._runtime.cluster_states(read_side_id, shard, self._owners())

    async def pause(self, read_side_id: str, shard: int | None = None) -> None:
        await self._everywhere("pause", read_side_id, shard)

    async def resume(self, read_side_id: str, shard: int | None = None) -> None:
        await self._everywhere("resume", read_side_id, shard)

    async def restart(self, read_side_id: str, shard: int | None = None) -> None:
        await self._everywhere("restart", read_side_id, shard)

    async def skip(self, read_side_id: str, shard: int | None = None) -> list[tuple[int, int]]:
        return await self._everywhere("skip", read_side_id, shard)

    async def _everywhere(
        self, operation: Operation, read_side_id: str, shard: int | None
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
        if shard is None:
            hold_s = max(HOLD_TIMEOUTS * self._timeout_s, HOLD_MIN_S)
            holds = [runtime.local_hold(read_side_id, number, hold_s) for number in local]
            holds.extend(
                self._remote_hold(read_side_id, number, address, hold_s) for number, address in remote
            )
            holds.sort(key=lambda hold: hold.shard)
            return await runtime.change_all(read_side_id, operation, holds, hold_s)
        done: list[tuple[int, int]] = []
        for number in local:
            outcome = await getattr(runtime, operation)(read_side_id, number)
            if operation == "skip":
                done.extend(outcome)
        for number, address in remote:
            await self._forward(operation, read_side_id, number, address)
        return done

    def _remote_hold(self, read_side_id: str, shard: int, address: str, hold_s: float) -> ShardHold:
        metadata = forwarded_metadata(admin_caller.get(), ())  # the caller's token, checked there again

        async def hold() -> int | None:
            request = admin.HoldRequest(
                read_side_id=read_side_id, cluster_shard_number=shard, hold_seconds=hold_s
            )
            reply = await self._peer_call(
                read_side_id, shard, address, _HOLD, request.SerializeToString(), metadata
            )
            return admin.HoldResponse.FromString(reply).lease_token

        async def release() -> None:
            request = admin.ReleaseRequest(read_side_id=read_side_id, cluster_shard_number=shard)
            await self._peer_call(
                read_side_id, shard, address, _RELEASE, request.SerializeToString(), metadata
            )

        return ShardHold(shard, hold, release)

    async def _peer_call(
        self,
        read_side_id: str,
        shard: int,
        address: str,
        method: str,
        request: bytes,
        metadata: Sequence[tuple[str, str | bytes]],
    ) -> bytes:
        try:
            return await self._peers.call(address, method, request, metadata, self._timeout_s)
        except NotHere:
            raise _moving(read_side_id, shard, "is not run by the member it was sent to") from None
        except Unreachable as failure:
            raise _unanswered(read_side_id, shard, address, failure.error.message) from None
        except CosError as error:
            if error.code is Code.DEADLINE_EXCEEDED:
                raise _unanswered(
                    read_side_id, shard, address, f"no answer within {self._timeout_s:g}s"
                ) from None
            raise

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

    async def trailer_states(self, read_side_id: str, shard: int | None = None) -> dict[int, ProjectionState]:
        return self._runtime.states(read_side_id, shard)

    async def pause(self, read_side_id: str, shard: int | None = None) -> None:
        await self._runtime.pause(read_side_id, self._check(read_side_id, shard))

    async def resume(self, read_side_id: str, shard: int | None = None) -> None:
        await self._runtime.resume(read_side_id, self._check(read_side_id, shard))

    async def restart(self, read_side_id: str, shard: int | None = None) -> None:
        await self._runtime.restart(read_side_id, self._check(read_side_id, shard))

    async def skip(self, read_side_id: str, shard: int | None = None) -> list[tuple[int, int]]:
        return await self._runtime.skip(read_side_id, self._check(read_side_id, shard))
