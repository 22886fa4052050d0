"""The GET /cluster/members document (docs/cluster.md, "Membership over HTTP")."""

from __future__ import annotations

from chiefofstate.api.cluster_members import cluster_members_document
from chiefofstate.ports.cluster import Member


def member(member_id: str, address: str, started_at_ms: int) -> Member:
    return Member(member_id, address, 16, started_at_ms, 0.1)


def test_members_are_listed_by_address_and_the_one_up_longest_is_oldest_and_leader() -> None:
    document = cluster_members_document(
        "10.0.0.9:25520",
        [member("b", "10.0.0.9:25520", 2_000), member("a", "10.0.0.5:25520", 1_000)],
    )
    assert document["selfNode"] == "pekko://ChiefOfStateSystem@10.0.0.9:25520"
    assert [m["node"] for m in document["members"]] == [  # type: ignore[attr-defined]
        "pekko://ChiefOfStateSystem@10.0.0.5:25520",
        "pekko://ChiefOfStateSystem@10.0.0.9:25520",
    ]
    assert document["leader"] == document["oldest"] == "pekko://ChiefOfStateSystem@10.0.0.5:25520"
    assert document["oldestPerRole"] == {"dc-default": "pekko://ChiefOfStateSystem@10.0.0.5:25520"}


def test_node_uids_differ_per_incarnation_and_are_stable_for_one() -> None:
    first = cluster_members_document("h:1", [member("id-1", "h:1", 1)])["members"]
    again = cluster_members_document("h:1", [member("id-1", "h:1", 1)])["members"]
    restarted = cluster_members_document("h:1", [member("id-2", "h:1", 5)])["members"]
    assert first == again and first != restarted  # type: ignore[comparison-overlap]


def test_an_empty_view_has_no_leader() -> None:
    document = cluster_members_document("h:1", [])
    assert document["members"] == [] and document["leader"] is None and document["oldestPerRole"] == {}
