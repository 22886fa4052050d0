from chiefofstate.core.headers import (
    parse_header_list,
    select_headers,
    to_outgoing_metadata,
    to_persisted_headers,
)


def test_header_list_is_trimmed_deduplicated_and_drops_empties() -> None:
    assert parse_header_list(" x-user , ,X-User,x-trace-bin,") == ("x-user", "x-trace-bin")


def test_selection_follows_list_order_then_arrival_order_and_keeps_list_spelling() -> None:
    metadata = [("x-b", "1"), ("x-a", "2"), ("x-b", "3"), ("other", "4")]
    assert select_headers(("X-B", "x-a", "missing"), metadata) == [("X-B", "1"), ("X-B", "3"), ("x-a", "2")]


def test_bin_keys_persist_as_bytes_and_others_as_strings() -> None:
    headers = to_persisted_headers([("x-user", "alice"), ("x-token-bin", b"\x00\xff")])
    assert headers[0].key == "x-user" and headers[0].string_value == "alice"
    assert headers[0].WhichOneof("value") == "string_value"
    assert headers[1].key == "x-token-bin" and headers[1].bytes_value == b"\x00\xff"
    assert headers[1].WhichOneof("value") == "bytes_value"


def test_outgoing_metadata_lowercases_keys_and_sends_bytes_for_bin_keys() -> None:
    assert to_outgoing_metadata([("X-User", "alice"), ("X-Sig-Bin", "abc")]) == (
        ("x-user", "alice"),
        ("x-sig-bin", b"abc"),
    )
