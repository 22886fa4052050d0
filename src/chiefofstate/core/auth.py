"""Bearer tokens and the two roles they grant (docs/operations.md, "Security").

Pure rules: the tokens file's syntax, and what a presented credential is allowed. Tokens are compared in
constant time and never appear in a message or a log line.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum


class Role(Enum):
    CLIENT = "client"  # ChiefOfStateService and the HTTP API
    ADMIN = "admin"  # everything a client may, and ReadSideManagerService


class Verdict(Enum):
    ALLOWED = "allowed"
    UNAUTHENTICATED = "unauthenticated"  # no token, a malformed header, or a token not in the file
    PERMISSION_DENIED = "permission denied"  # a known token whose role is not enough


class TokensFileError(ValueError):
    """A line of the tokens file is not `token role`; the message names the line, never its token."""


_BEARER = "bearer "


@dataclass(frozen=True, slots=True)
class TokenBook:
    """The tokens of COS_AUTH_TOKENS_FILE with their roles."""

    entries: tuple[tuple[bytes, Role], ...]

    def role_of(self, token: str) -> Role | None:
        presented = token.encode()
        found: Role | None = None
        # Every entry is compared, so the time taken does not tell how many tokens are known or which one
        # came closest.
        for known, role in self.entries:
            if hmac.compare_digest(known, presented) and found is None:
                found = role
        return found

    def check(self, authorization: str | None, needed: Role) -> Verdict:
        """The verdict for a call presenting `authorization` (the header's value) that needs `needed`."""
        token = bearer_token(authorization)
        role = self.role_of(token) if token is not None else None
        if role is None:
            return Verdict.UNAUTHENTICATED
        if needed is Role.ADMIN and role is not Role.ADMIN:
            return Verdict.PERMISSION_DENIED
        return Verdict.ALLOWED


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `authorization: Bearer <token>` header; None when absent or of another scheme."""
    if authorization is None or authorization[: len(_BEARER)].lower() != _BEARER:
        return None
    token = authorization[len(_BEARER) :].strip()
    return token or None


def parse_tokens(text: str) -> TokenBook:
    """One `token role` per line; blank lines and lines starting with # are ignored."""
    entries: dict[str, Role] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise TokensFileError(f"line {number}: expected `token role`, found {len(parts)} fields")
        token, role_name = parts
        role = _ROLES.get(role_name.lower())
        if role is None:
            raise TokensFileError(f"line {number}: the role must be client or admin (got {role_name!r})")
        if token in entries:
            raise TokensFileError(f"line {number}: this token already appears on an earlier line")
        entries[token] = role
    if not entries:
        raise TokensFileError("no tokens: every call would be refused")
    return TokenBook(tuple((token.encode(), role) for token, role in entries.items()))


_ROLES: Mapping[str, Role] = {role.value: role for role in Role}
