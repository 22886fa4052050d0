"""Who may use the console: admin tokens, sessions, and POSTs only from the console's own pages."""

from __future__ import annotations

from pathlib import Path

from chiefofstate.api.console.sessions import COOKIE, ConsoleSessions, same_origin
from chiefofstate.api.token_file import TokenFile
from chiefofstate.core.auth import Verdict, parse_tokens


def _tokens(tmp_path: Path, text: str = "adm1n admin\ncl1ent client\n") -> TokenFile:
    path = tmp_path / "tokens"
    path.write_text(text)
    return TokenFile(path, parse_tokens(text), 60.0)


def test_without_tokens_everyone_is_let_in(tmp_path: Path) -> None:
    sessions = ConsoleSessions(None)
    assert sessions.verdict({}) == (Verdict.ALLOWED, False)
    assert not sessions.required


def test_only_an_admin_token_opens_a_session(tmp_path: Path) -> None:
    sessions = ConsoleSessions(_tokens(tmp_path))
    assert sessions.login("nope") == (Verdict.UNAUTHENTICATED, None)
    assert sessions.login("cl1ent") == (Verdict.PERMISSION_DENIED, None)
    verdict, session = sessions.login("adm1n")
    assert verdict is Verdict.ALLOWED and session
    assert sessions.verdict({"cookie": f"{COOKIE}={session}"}) == (Verdict.ALLOWED, True)
    assert sessions.token_of({"cookie": f"{COOKIE}={session}"}) == "adm1n"
    assert sessions.verdict({"cookie": f"{COOKIE}=forged"}) == (Verdict.UNAUTHENTICATED, False)
    assert sessions.verdict({})[0] is Verdict.UNAUTHENTICATED


def test_a_bearer_header_works_without_a_session(tmp_path: Path) -> None:
    sessions = ConsoleSessions(_tokens(tmp_path))
    assert sessions.verdict({"authorization": "Bearer adm1n"}) == (Verdict.ALLOWED, False)
    assert sessions.verdict({"authorization": "Bearer cl1ent"})[0] is Verdict.PERMISSION_DENIED


def test_a_token_taken_out_of_the_file_ends_its_sessions(tmp_path: Path) -> None:
    tokens = _tokens(tmp_path)
    sessions = ConsoleSessions(tokens)
    _, session = sessions.login("adm1n")
    tokens.book = parse_tokens("other admin\n")
    assert sessions.verdict({"cookie": f"{COOKIE}={session}"})[0] is Verdict.UNAUTHENTICATED


def test_sessions_are_bounded_in_number_and_in_age(tmp_path: Path) -> None:
    now = [0.0]
    sessions = ConsoleSessions(_tokens(tmp_path), capacity=3, lifetime_s=100.0, clock=lambda: now[0])
    opened = [sessions.login("adm1n")[1] for _ in range(5)]
    assert len(sessions) == 3
    assert sessions.verdict({"cookie": f"{COOKIE}={opened[0]}"})[0] is Verdict.UNAUTHENTICATED
    assert sessions.verdict({"cookie": f"{COOKIE}={opened[4]}"})[0] is Verdict.ALLOWED
    now[0] = 101.0
    assert sessions.verdict({"cookie": f"{COOKIE}={opened[4]}"})[0] is Verdict.UNAUTHENTICATED
    sessions.logout({"cookie": f"{COOKIE}={opened[3]}"})
    assert len(sessions) == 1


def test_a_post_must_name_this_host_as_its_origin() -> None:
    assert same_origin({"host": "node:8558", "origin": "http://node:8558"})
    assert not same_origin({"host": "node:8558", "origin": "http://evil.example"})
    assert not same_origin({"host": "node:8558", "origin": "null"})
    assert same_origin({"host": "node:8558", "sec-fetch-site": "same-origin"})
    assert not same_origin({"host": "node:8558", "sec-fetch-site": "cross-site"})
    assert not same_origin({"host": "node:8558"})
