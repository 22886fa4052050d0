from chiefofstate.core.errors import (
    Code,
    InvalidArgument,
    StoreFailed,
    StoreFull,
    StoreUnavailable,
    status_message,
)


def test_store_failures_tell_callers_only_that_the_store_failed() -> None:
    outage = StoreUnavailable("PostgreSQL at db.internal:5432/cos could not append events: refused")
    assert status_message(outage) == "the store is unavailable" and outage.code is Code.UNAVAILABLE
    assert "db.internal:5432" in str(outage)  # the log keeps where and why
    refusal = StoreFailed('PostgreSQL refused to read events: relation "event_journal" does not exist')
    assert "event_journal" not in status_message(refusal) and refusal.code is Code.INTERNAL


def test_other_errors_keep_their_message_without_scalas_requirement_prefix() -> None:
    assert status_message(InvalidArgument("requirement failed: bad id")) == "bad id"


def test_a_full_disk_is_named_to_callers_without_the_file() -> None:
    full = StoreFull(
        "the SQLite journal /var/lib/cos/cos.db could not append events: database or disk is full"
    )
    assert status_message(full) == "the store's disk is full; nothing was written"
    assert full.code is Code.UNAVAILABLE and "/var/lib/cos" in str(full)
