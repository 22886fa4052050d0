import logging
from pathlib import Path

import pytest

from chiefofstate.api.token_file import TokenFile
from chiefofstate.core.auth import Role, Verdict, parse_tokens


def tokens_at(path: Path, text: str) -> TokenFile:
    path.write_text(text)
    return TokenFile(path, parse_tokens(text), interval_s=1.0)


def replace(path: Path, text: str) -> None:
    staged = path.with_suffix(".new")
    staged.write_text(text)
    staged.replace(path)


def test_a_changed_file_replaces_every_token(tmp_path: Path) -> None:
    tokens = tokens_at(tmp_path / "tokens", "old-token client\n")
    assert not tokens.reload_if_changed()  # unchanged
    replace(tokens.path, "new-token admin\n")
    assert tokens.reload_if_changed()
    assert tokens.book.check("Bearer old-token", Role.CLIENT) is Verdict.UNAUTHENTICATED
    assert tokens.book.check("Bearer new-token", Role.ADMIN) is Verdict.ALLOWED


def test_a_broken_or_missing_file_keeps_the_tokens_and_warns_once_per_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = tokens_at(tmp_path / "tokens", "kept-token client\n")
    caplog.set_level(logging.WARNING, "chiefofstate.auth")
    for broken in ("kept-token\n", "kept-token root\n", "", "\xff"):
        replace(tokens.path, broken)
        assert not tokens.reload_if_changed() and not tokens.reload_if_changed()
        assert tokens.book.check("Bearer kept-token", Role.CLIENT) is Verdict.ALLOWED
    tokens.path.write_bytes(b"\xff\xfe tokens client\n")
    assert not tokens.reload_if_changed()
    tokens.path.unlink()
    assert not tokens.reload_if_changed() and not tokens.reload_if_changed()
    assert tokens.book.check("Bearer kept-token", Role.CLIENT) is Verdict.ALLOWED
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 6, warnings  # one per change, none for the checks that saw no change
    assert all("keeping the tokens" in warning and "kept-token" not in warning for warning in warnings)
    replace(tokens.path, "fresh-token client\n")  # a good file after all that is taken
    assert tokens.reload_if_changed()
    assert tokens.book.check("Bearer fresh-token", Role.CLIENT) is Verdict.ALLOWED
