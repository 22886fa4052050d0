"""GET /cluster/members on the management port, in the JSON shape of the cluster-management endpoint
upstream's nodes serve there, so scripts and dashboards written against upstream keep working
(docs/cluster.md, "Membership over HTTP").

Upstream's members are actors addressed `pekko://ChiefOfStateSystem@host:port` on its remoting port
(25520 by default); this project's members are addressed by the host and port of their internal gRPC
service, which has the same default port, so the same form names them. There is no elected leader here:
`leader` and `oldest` both name the member that has been up longest, and a member is listed while its
heartbeat is fresh (`Up`); the others are gone from the table rather than `unreachable`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence

from chiefofstate.api.management import Reply, Route
from chiefofstate.ports.cluster import Member

SYSTEM_NAME = "ChiefOfStateSystem"
# The one role every upstream member has (its data-centre role); scripts filter on it.
DEFAULT_ROLE = "dc-default"


def node_uri(address: str) -> str:
    return f"pekko://{SYSTEM_NAME}@{address}"


def _node_uid(member_id: str) -> str:
    # Upstream's uid is a number unique per incarnation of a member; so is this one, drawn from the
    # member id that each start of a node picks afresh.
    return str(int.from_bytes(hashlib.sha256(member_id.encode()).digest()[:7], "big"))


def cluster_members_document(self_address: str, members: Sequence[Member]) -> dict[str, object]:
    """The document for a cluster whose live members are `members`; `self_address` is the answering
    member's advertised address."""
    ordered = sorted(members, key=lambda member: (member.started_at_ms, member.address))
    oldest = node_uri(ordered[0].address) if ordered else None
    return {
        "selfNode": node_uri(self_address),
        "members": [
            {
                "node": node_uri(member.address),
                "nodeUid": _node_uid(member.member_id),
                "status": "Up",
                "roles": [DEFAULT_ROLE],
            }
            for member in sorted(members, key=lambda member: member.address)
        ],
        "unreachable": [],
        "leader": oldest,
        "oldest": oldest,
        "oldestPerRole": {DEFAULT_ROLE: oldest} if oldest is not None else {},
    }


def cluster_members_route(self_address: str, members: Callable[[], Sequence[Member]]) -> Route:
    """The route over what the node currently knows of its cluster (`members` is read per request)."""

    async def answer() -> Reply:
        document = cluster_members_document(self_address, members())
        return Reply("200 OK", json.dumps(document).encode(), "application/json")

    return answer
