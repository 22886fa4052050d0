"""Bounds on what a request may carry, and on how much of it reaches logs (docs/contract.md §3.1).

A client chooses the length of every string it sends. Anything kept per request (a log line, a span
attribute, a metric label) is cut to a bounded length here, so that a few requests with megabyte-long
fields cannot grow the node's memory, its /metrics page or its logs.
"""

from __future__ import annotations

from chiefofstate.core.errors import InvalidArgument

# Longer than any real `type.googleapis.com/<package>.<Message>`; Any.type_url has no limit upstream.
MAX_TYPE_URL_LENGTH = 2048
# A request field quoted in a log line or a span attribute: enough to recognise it.
MAX_LOGGED_CHARS = 256


def clip(text: str, limit: int = MAX_LOGGED_CHARS) -> str:
    """`text` cut to about `limit` characters, saying how long it was when cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…({len(text)} characters)"


def validate_type_url(type_url: str, what: str = "command") -> None:
    if len(type_url) > MAX_TYPE_URL_LENGTH:
        raise InvalidArgument(
            f"the {what}'s type URL is {len(type_url)} characters long; at most {MAX_TYPE_URL_LENGTH} "
            "are allowed"
        )


MAX_SUBSCRIPTION_ID_LENGTH = 255


def validate_subscription_id(subscription_id: str) -> None:
    """A subscription id travels back as a gRPC metadata value (docs/contract.md §7), which must be
    printable ASCII; it is kept while the subscription lives, so its length is bounded too."""
    if len(subscription_id) > MAX_SUBSCRIPTION_ID_LENGTH:
        raise InvalidArgument(
            f"subscription_id is {len(subscription_id)} characters long; at most "
            f"{MAX_SUBSCRIPTION_ID_LENGTH} are allowed"
        )
    if not all(" " <= character <= "~" for character in subscription_id):
        raise InvalidArgument("subscription_id must be printable ASCII (U+0020 to U+007E)")
