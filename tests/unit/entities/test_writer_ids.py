"""Writer ids are version-4 UUIDs, distinct across draws and across forked processes."""

from __future__ import annotations

import multiprocessing
import uuid

from chiefofstate.entities.writer_ids import new_writer_id


def test_a_writer_id_is_a_version_4_uuid_in_canonical_form() -> None:
    for _ in range(1000):
        text = new_writer_id()
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_writer_ids_do_not_repeat() -> None:
    drawn = {new_writer_id() for _ in range(100_000)}
    assert len(drawn) == 100_000


def _draw(queue: multiprocessing.Queue[str]) -> None:
    queue.put(new_writer_id())


def test_a_forked_process_draws_other_ids_than_its_parent() -> None:
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[str] = context.Queue()
    child = context.Process(target=_draw, args=(queue,))
    child.start()
    from_child = queue.get(timeout=30)
    child.join(timeout=30)
    assert from_child != new_writer_id()
