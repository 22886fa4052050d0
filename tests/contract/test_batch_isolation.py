"""Nothing one request of a batch carries may fail another request of the same batch (docs/contract.md
§3.1, §4.2): the offending request fails alone and the rest commit. Ids here include every kind the API
refuses (NUL, line breaks, surrogates, overlong), because a store must stay safe even when handed one.
"""

from __future__ import annotations

import asyncio
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chiefofstate.core.command_rules import validate_entity_id
from chiefofstate.core.errors import InvalidArgument
from chiefofstate.core.sharding import shard_of
from chiefofstate.ports.journal import AppendRequest, Journal
from tests.contract.appends import NOW_MS, WRITER
from tests.contract.conftest import NUM_SHARDS

_RUN = itertools.count()

_ids = st.one_of(
    st.text(min_size=0, max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40),
    st.sampled_from(["\x00", "a\x00b", "line\nbreak", "x\ud800", "y" * 300, "z" * 250]),
)
_requests = st.lists(st.tuples(_ids, st.lists(st.binary(max_size=64), min_size=1, max_size=3)), max_size=8)


def _is_valid(entity_id: str) -> bool:
    try:
        validate_entity_id(entity_id)
    except InvalidArgument:
        return False
    return True


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(_requests, min_size=1, max_size=3))
async def test_a_request_that_cannot_be_stored_fails_alone(
    journal: Journal, batches: list[list[tuple[str, list[bytes]]]]
) -> None:
    run = next(_RUN)
    # A prefix makes each id unique in the run (no revision conflicts), and keeps its characters.
    planned = [
        [(f"r{run}b{b}i{i}:{entity_id}", payloads) for i, (entity_id, payloads) in enumerate(batch)]
        for b, batch in enumerate(batches)
    ]

    def to_request(entity_id: str, payloads: list[bytes]) -> AppendRequest:
        return AppendRequest(
            entity_id=entity_id,
            shard=shard_of(entity_id, NUM_SHARDS),
            expected_sequence=0,
            events=payloads,
            write_timestamp_ms=NOW_MS,
            writer=WRITER,
        )

    results = await asyncio.gather(
        *(journal.append_batch([to_request(*item) for item in batch]) for batch in planned)
    )

    for batch, outcomes in zip(planned, results, strict=True):
        assert len(outcomes) == len(batch)
        for (entity_id, payloads), outcome in zip(batch, outcomes, strict=True):
            if _is_valid(entity_id):
                assert outcome is None, f"a valid request failed because of another: {outcome!r}"
                stored = await journal.read_events(entity_id)
                assert [row.payload for row in stored] == payloads
            elif outcome is None:
                # A store may keep an id the API refuses; then it keeps it exactly.
                stored = await journal.read_events(entity_id)
                assert [row.payload for row in stored] == payloads
