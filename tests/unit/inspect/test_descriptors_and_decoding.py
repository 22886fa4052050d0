"""Descriptors from a FileDescriptorSet and what they decode: the shared core of `cos` and the console."""

from __future__ import annotations

from pathlib import Path

import pytest
from chiefofstate_examples.bank.gen.bank.v1 import bank_pb2
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.descriptor_pb2 import FileDescriptorProto, FileDescriptorSet

from chiefofstate.inspect.decoding import CommandJsonError, any_view, decode_any, encode_command, type_name
from chiefofstate.inspect.descriptors import (
    DescriptorsUnavailable,
    NoTypes,
    UnknownType,
    from_descriptor_set,
)


def bank_set(tmp_path: Path, *extra: FileDescriptorProto) -> Path:
    proto = FileDescriptorProto()
    bank_pb2.DESCRIPTOR.CopyToProto(proto)
    descriptor_set = FileDescriptorSet(file=[*extra, proto])
    path = tmp_path / "bank.pb"
    path.write_bytes(descriptor_set.SerializeToString())
    return path


def packed(message: bank_pb2.BankAccount | bank_pb2.Deposit) -> AnyProto:
    value = AnyProto()
    value.Pack(message)
    return value


def test_a_set_without_its_imports_still_decodes_and_encodes(tmp_path: Path) -> None:
    types = from_descriptor_set(bank_set(tmp_path))
    view = any_view(packed(bank_pb2.BankAccount(account_id="a", owner="Vi", balance=5)), types)
    assert view == {
        "type": "type.googleapis.com/bank.v1.BankAccount",
        "json": {"accountId": "a", "owner": "Vi", "balance": "5"},
    }
    command = encode_command("type.googleapis.com/bank.v1.Deposit", '{"amount": 250}', types)
    deposit = bank_pb2.Deposit()
    assert command.Unpack(deposit) and deposit.amount == 250
    assert command.type_url == "type.googleapis.com/bank.v1.Deposit"


def test_the_types_live_in_their_own_pool_not_the_process_one(tmp_path: Path) -> None:
    types = from_descriptor_set(bank_set(tmp_path))
    assert types.message_class("bank.v1.Deposit") is not bank_pb2.Deposit


def test_unknown_types_and_bad_bytes_stay_undecoded_with_a_reason(tmp_path: Path) -> None:
    types = from_descriptor_set(bank_set(tmp_path))
    unknown = AnyProto(type_url="type.googleapis.com/shop.v1.Cart", value=b"\x08\x01")
    view = any_view(unknown, types)
    assert view["json"] is None and view["base64"] == "CAE=" and "shop.v1.Cart" in view["undecoded_reason"]
    garbled = AnyProto(type_url="type.googleapis.com/bank.v1.Deposit", value=b"\xff\xff\xff")
    assert decode_any(garbled, types) == (None, "the bytes are not a valid bank.v1.Deposit")
    assert decode_any(AnyProto(), types) == (None, "empty Any")
    nothing = NoTypes("no descriptors given")
    assert "no descriptors given" in any_view(packed(bank_pb2.Deposit(amount=1)), nothing)["undecoded_reason"]


def test_commands_that_do_not_fit_their_type_are_refused_by_name(tmp_path: Path) -> None:
    types = from_descriptor_set(bank_set(tmp_path))
    with pytest.raises(UnknownType, match="bank.v1.Nope"):
        encode_command("bank.v1.Nope", "{}", types)
    with pytest.raises(CommandJsonError, match="amount"):
        encode_command("bank.v1.Deposit", '{"amount": "lots"}', types)
    with pytest.raises(CommandJsonError, match="colour"):
        encode_command("bank.v1.Deposit", '{"colour": 1}', types)


def test_files_that_cannot_be_descriptors_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "absent.pb"
    with pytest.raises(DescriptorsUnavailable, match=str(missing)):
        from_descriptor_set(missing)
    garbage = tmp_path / "garbage.pb"
    garbage.write_bytes(b"\xff\x00 nope")
    with pytest.raises(DescriptorsUnavailable, match="not a FileDescriptorSet"):
        from_descriptor_set(garbage)
    orphan = FileDescriptorProto(
        name="shop/v1/cart.proto", package="shop.v1", dependency=["shop/v1/money.proto"]
    )
    with pytest.raises(DescriptorsUnavailable, match="--include_imports"):
        from_descriptor_set(bank_set(tmp_path, orphan))


def test_type_names_drop_the_url_host() -> None:
    assert type_name("type.googleapis.com/bank.v1.Deposit") == "bank.v1.Deposit"
    assert type_name("bank.v1.Deposit") == "bank.v1.Deposit"
