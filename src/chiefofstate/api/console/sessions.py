"""Who may use the console (docs/console.md, "Access").

With COS_AUTH_TOKENS_FILE, every page needs a token with the admin role, presented either as
`authorization: Bearer <token>` (scripts) or once on the sign-in page, which gives the browser a session
cookie (HttpOnly, SameSite=Strict). The cookie is `<issued>.<mac>`: the time it was issued and an HMAC
of that time keyed by the token. Any process that reads the same tokens file recognises it, so sessions
hold across `cos serve --workers` (whose management port is shared by every worker) and restarts; the
token itself never leaves the server again. A cookie is good for 12 hours, and only while its token is
in the file: taking the token out ends the sessions opened with it at the next reload.

Requests that change something (every POST) must also come from the console's own pages: a POST
without an authorization header needs an `Origin` (or `Sec-Fetch-Site: same-origin`) naming this very
host, so a page on another site cannot make the browser act for the operator, with or without tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from http.cookies import CookieError, SimpleCookie

from chiefofstate.api.token_file import TokenFile
from chiefofstate.core.auth import Role, Verdict

COOKIE = "cos_console"
SESSION_LIFETIME_S = 12 * 3600.0
_CLOCK_SKEW_S = 60.0  # a cookie issued by a sibling worker whose clock runs a little ahead


def _mac(token: bytes, issued: str) -> str:
    return hmac.new(token, f"cos-console-session:{issued}".encode(), hashlib.sha256).hexdigest()


def cookie_value(headers: Mapping[str, str], name: str) -> str | None:
    raw = headers.get("cookie")
    if not raw:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


def same_origin(headers: Mapping[str, str]) -> bool:
    """The request was sent by a page of this host (for POSTs carrying the session cookie)."""
    host = headers.get("host")
    origin = headers.get("origin")
    if origin is not None:
        return host is not None and origin in (f"http://{host}", f"https://{host}")
    return headers.get("sec-fetch-site") == "same-origin"


class ConsoleSessions:
    def __init__(
        self,
        tokens: TokenFile | None,
        *,
        lifetime_s: float = SESSION_LIFETIME_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tokens = tokens
        self._lifetime_s = lifetime_s
        self._clock = clock

    @property
    def required(self) -> bool:
        return self._tokens is not None

    def login(self, token: str) -> tuple[Verdict, str | None]:
        """The verdict on `token`, and the session cookie's value when it is allowed."""
        if self._tokens is None:
            return Verdict.ALLOWED, None
        token = token.strip()
        verdict = self._tokens.book.check(f"Bearer {token}", Role.ADMIN)
        if verdict is not Verdict.ALLOWED:
            return verdict, None
        issued = str(int(self._clock()))
        return verdict, f"{issued}.{_mac(token.encode(), issued)}"

    def verdict(self, headers: Mapping[str, str]) -> tuple[Verdict, bool]:
        """(verdict, whether a session cookie carried it) for a request with `headers`."""
        if self._tokens is None:
            return Verdict.ALLOWED, False
        authorization = headers.get("authorization")
        if authorization is not None:
            return self._tokens.book.check(authorization, Role.ADMIN), False
        found = self._session_token(headers)
        if found is None:
            return Verdict.UNAUTHENTICATED, False
        _, role = found
        return (Verdict.ALLOWED if role is Role.ADMIN else Verdict.PERMISSION_DENIED), True

    def token_of(self, headers: Mapping[str, str]) -> str | None:
        """The token a request acts with, for the calls a cluster member sends on to another one."""
        authorization = headers.get("authorization")
        if authorization is not None:
            return authorization.split(" ", 1)[-1].strip()
        found = self._session_token(headers)
        return found[0].decode() if found is not None else None

    def _session_token(self, headers: Mapping[str, str]) -> tuple[bytes, Role] | None:
        """The known token whose session the request's cookie is, while the session lasts."""
        if self._tokens is None:
            return None
        issued, _, mac = (cookie_value(headers, COOKIE) or "").partition(".")
        if not issued.isdigit() or len(issued) > 12 or not mac:
            return None
        age = self._clock() - int(issued)
        if age > self._lifetime_s or age < -_CLOCK_SKEW_S:
            return None
        found = None
        # Every token is tried, so the time taken does not tell which one (if any) came close.
        for known, role in self._tokens.book.entries:
            if hmac.compare_digest(_mac(known, issued), mac) and found is None:
                found = (known, role)
        return found
