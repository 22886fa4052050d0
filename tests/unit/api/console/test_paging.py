"""Paging cursors and the checks on the console's query parameters."""

from __future__ import annotations

import pytest

from chiefofstate.api.console.paging import last_page_after, page_of, query_values, whole_number
from chiefofstate.core.errors import InvalidArgument


def test_pages_through_ten_thousand_events_fifty_at_a_time() -> None:
    after, pages = 0, 0
    while True:
        keys = list(range(after + 1, min(after + 51, 10_000) + 1))  # a limit of size + 1
        page = page_of(after, 50, keys)
        pages += 1
        if page.next_after is None:
            break
        assert page.next_after == after + 50
        after = page.next_after
    assert pages == 200 and after == 9950
    assert page.previous_after == 9900
    assert page_of(0, 50, list(range(1, 52))).previous_after is None
    assert last_page_after(10_000, 50) == 9950 and last_page_after(3, 50) == 0


def test_a_page_with_gaps_in_its_numbers_goes_on_from_the_last_shown() -> None:
    page = page_of(100, 2, [105, 230, 231])
    assert page.next_after == 230


def test_query_values_take_the_first_of_each_and_keep_blanks() -> None:
    assert query_values("id=%3Cscript%3E&id=2&shard=") == {"id": "<script>", "shard": ""}


@pytest.mark.parametrize("raw", ["-1", "abc", "1e3", "9" * 30])
def test_a_number_that_is_not_a_whole_number_is_refused_naming_the_field(raw: str) -> None:
    with pytest.raises(InvalidArgument, match="after must be a whole number"):
        whole_number({"after": raw}, "after", 0)


def test_numbers_have_their_default_and_their_maximum() -> None:
    assert whole_number({}, "size", 50) == 50
    assert whole_number({"size": " 20 "}, "size", 50, maximum=500) == 20
    with pytest.raises(InvalidArgument, match="at most 500"):
        whole_number({"size": "501"}, "size", 50, maximum=500)
