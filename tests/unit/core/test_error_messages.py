from chiefofstate.core.errors import Code, InvalidArgument, StoreFailed, StoreUnavailable, status_message


def test_store_failures_tell_callers_only_that_the_store_failed() -> None:
    outage = StoreUnavailable("PostgreSQL at db.internal:5432/cos could not append events: refused")
    assert status_message(outage) == "the store is unavailable" and outage.code is Code.UNAVAILABLE
    assert "db.internal:5432" in str(outage)  # the log keeps where and why
    refusal = StoreFailed('PostgreSQL refused to read events: relation "event_journal" does not exist')
    assert "event_journal" not in status_message(refusal) and refusal.code is Code.INTERNAL


def test_other_errors_keep_their_message_without_scalas_requirement_prefix() -> None:
    assert status_message(InvalidArgument("requirement failed: bad id")) == "bad id"
