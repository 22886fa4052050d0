"""Paging through an entity's events and the journal by cursor (the last number shown), and reading
the page's query parameters. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs

from chiefofstate.core.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


@dataclass(frozen=True, slots=True)
class Page:
    """Rows after `after` (a sequence number or an ordering), at most `size` of them."""

    after: int
    size: int
    next_after: int | None  # None on the last page
    previous_after: int | None  # None on the first page


def page_of(after: int, size: int, keys: list[int]) -> Page:
    """The page for rows fetched with a limit of `size + 1` (`keys` their numbers, ascending): one more
    row than the page holds says that a next page exists."""
    shown = keys[:size]
    next_after = shown[-1] if len(keys) > size and shown else None
    previous_after = max(0, after - size) if after > 0 else None
    return Page(after, size, next_after, previous_after)


def last_page_after(count: int, size: int) -> int:
    """The cursor of the page that ends with row number `count` (numbers from 1, as revisions are)."""
    return max(0, count - size)


def query_values(query: str) -> dict[str, str]:
    """The first value of each parameter of a query string or form body; blank values kept."""
    try:
        parsed = parse_qs(query, keep_blank_values=True, max_num_fields=64, strict_parsing=False)
    except ValueError as error:
        raise InvalidArgument(f"the query cannot be read: {error}") from None
    return {name: values[0] for name, values in parsed.items() if values}


def whole_number(values: Mapping[str, str], name: str, default: int, *, maximum: int | None = None) -> int:
    """A parameter that must be a whole number ≥ 0 (and ≤ `maximum`), with a message naming it."""
    raw = values.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or len(raw) > 18:
        raise InvalidArgument(f"{name} must be a whole number ≥ 0 (got {raw!r})")
    number = int(raw)
    if maximum is not None and number > maximum:
        raise InvalidArgument(f"{name} must be at most {maximum} (got {number})")
    return number
