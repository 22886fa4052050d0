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


def test_a_session_lasts_twelve_hours_and_holds_in_every_process_reading_the_tokens(tmp_path: Path) -> None:
    now = [1_000_000.0]
    tokens = _tokens(tmp_path)
    sessions = ConsoleSessions(tokens, clock=lambda: now[0])
    _, session = sessions.login("adm1n")
    sibling = ConsoleSessions(_tokens(tmp_path), clock=lambda: now[0])  # another worker, same file
    assert sibling.verdict({"cookie": f"{COOKIE}={session}"}) == (Verdict.ALLOWED, True)
    assert sibling.token_of({"cookie": f"{COOKIE}={session}"}) == "adm1n"
    now[0] += 12 * 3600 - 1
    assert sessions.verdict({"cookie": f"{COOKIE}={session}"})[0] is Verdict.ALLOWED
    now[0] += 2
    assert sessions.verdict({"cookie": f"{COOKIE}={session}"})[0] is Verdict.UNAUTHENTICATED


def test_a_cookie_cannot_be_made_without_the_token(tmp_path: Path) -> None:
    now = [1_000_000.0]
    sessions = ConsoleSessions(_tokens(tmp_path), clock=lambda: now[0])
    _, session = sessions.login("adm1n")
    assert session is not None and "adm1n" not in session
    issued, mac = session.split(".")
    for forged in (f"{int(issued) + 1}.{mac}", f"{issued}.{'0' * len(mac)}", issued, f"x.{mac}", ""):
        assert sessions.verdict({"cookie": f"{COOKIE}={forged}"})[0] is Verdict.UNAUTHENTICATED, forged
    later = f"{int(now[0]) + 3600}"  # issued in the future
    assert sessions.verdict({"cookie": f"{COOKIE}={later}.{mac}"})[0] is Verdict.UNAUTHENTICATED


def test_a_post_must_name_this_host_as_its_origin() -> None:
    assert same_origin({"host": "node:8558", "origin": "http://node:8558"})
    assert not same_origin({"host": "node:8558", "origin": "http://evil.example"})
    assert not same_origin({"host": "node:8558", "origin": "null"})
    assert same_origin({"host": "node:8558", "sec-fetch-site": "same-origin"})
    assert not same_origin({"host": "node:8558", "sec-fetch-site": "cross-site"})
    assert not same_origin({"host": "node:8558"})
