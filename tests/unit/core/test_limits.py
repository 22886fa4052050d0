import pytest
from hypothesis import given
from hypothesis import strategies as st

from chiefofstate.core.errors import Code, HeadersTooLarge, InvalidArgument
from chiefofstate.core.headers import (
    MAX_CARRIED_HEADER_BYTES,
    MAX_CARRIED_HEADER_VALUES,
    check_carried_headers,
)
from chiefofstate.core.limits import (
    MAX_LOGGED_CHARS,
    MAX_TYPE_URL_LENGTH,
    clip,
    validate_subscription_id,
    validate_type_url,
)


@given(st.text(max_size=2000))
def test_clipped_text_is_bounded_and_keeps_a_short_text_whole(text: str) -> None:
    clipped = clip(text)
    assert len(clipped) <= MAX_LOGGED_CHARS + 40
    if len(text) <= MAX_LOGGED_CHARS:
        assert clipped == text
    else:
        assert clipped.startswith(text[:MAX_LOGGED_CHARS]) and f"({len(text)} characters)" in clipped


def test_an_overlong_type_url_is_refused_naming_its_length_and_the_limit() -> None:
    validate_type_url("type.googleapis.com/" + "x" * (MAX_TYPE_URL_LENGTH - 20))
    with pytest.raises(InvalidArgument, match=f"{MAX_TYPE_URL_LENGTH + 1} characters.*{MAX_TYPE_URL_LENGTH}"):
        validate_type_url("y" * (MAX_TYPE_URL_LENGTH + 1))


@pytest.mark.parametrize("subscription_id", ["s" * 256, "new\nline", "é", "\x00"])
def test_subscription_ids_must_be_short_printable_ascii(subscription_id: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_subscription_id(subscription_id)


def test_carried_headers_are_bounded_in_size_and_count_as_invalid_arguments() -> None:
    check_carried_headers([("x-user", "a" * (MAX_CARRIED_HEADER_BYTES - 6))])
    with pytest.raises(HeadersTooLarge, match="x-user.*8193 bytes") as caught:
        check_carried_headers([("x-user", "a" * (MAX_CARRIED_HEADER_BYTES - 5))])
    assert caught.value.code is Code.INVALID_ARGUMENT
    with pytest.raises(HeadersTooLarge, match="bytes"):
        check_carried_headers([("x-sig-bin", b"\x00" * MAX_CARRIED_HEADER_BYTES)])
    with pytest.raises(HeadersTooLarge, match=f"at most {MAX_CARRIED_HEADER_VALUES}"):
        check_carried_headers([("x", "1")] * (MAX_CARRIED_HEADER_VALUES + 1))
