import pytest

from chiefofstate.core.auth import Role, TokensFileError, Verdict, bearer_token, parse_tokens

BOOK = parse_tokens("c-token client\na-token admin\n")


@pytest.mark.parametrize(
    ("header", "needed", "verdict"),
    [
        (None, Role.CLIENT, Verdict.UNAUTHENTICATED),
        ("Bearer nope", Role.CLIENT, Verdict.UNAUTHENTICATED),
        ("Basic c-token", Role.CLIENT, Verdict.UNAUTHENTICATED),
        ("Bearer ", Role.CLIENT, Verdict.UNAUTHENTICATED),
        ("Bearer c-token", Role.CLIENT, Verdict.ALLOWED),
        ("bearer c-token", Role.CLIENT, Verdict.ALLOWED),
        ("Bearer c-token", Role.ADMIN, Verdict.PERMISSION_DENIED),
        ("Bearer a-token", Role.ADMIN, Verdict.ALLOWED),
        ("Bearer a-token", Role.CLIENT, Verdict.ALLOWED),
        ("Bearer c-tokenx", Role.CLIENT, Verdict.UNAUTHENTICATED),
        ("Bearer c-toke", Role.CLIENT, Verdict.UNAUTHENTICATED),
    ],
)
def test_verdicts(header: str | None, needed: Role, verdict: Verdict) -> None:
    assert BOOK.check(header, needed) is verdict


def test_bearer_token_takes_the_scheme_in_any_case() -> None:
    assert bearer_token("BEARER abc") == "abc" and bearer_token("Bearer  abc ") == "abc"
    assert bearer_token("Token abc") is None and bearer_token("") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("only-a-token\n", "line 1: expected `token role`, found 1 fields"),
        ("a admin\nb c client\n", "line 2: expected `token role`, found 3 fields"),
        ("a superuser\n", "line 1: the role must be client or admin (got 'superuser')"),
        ("a admin\na client\n", "line 2: this token already appears"),
        ("# nothing\n\n", "no tokens"),
    ],
)
def test_bad_lines_are_named_without_their_token(text: str, message: str) -> None:
    with pytest.raises(TokensFileError) as caught:
        parse_tokens(text)
    assert message in str(caught.value)
    assert "b c" not in str(caught.value)


def test_comments_blank_lines_and_role_case_are_accepted() -> None:
    book = parse_tokens("  # comment\n\n  t1   ADMIN  \nt2 Client\n")
    assert book.role_of("t1") is Role.ADMIN and book.role_of("t2") is Role.CLIENT
