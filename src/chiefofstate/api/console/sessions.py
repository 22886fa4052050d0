"""Who may use the console (docs/console.md, "Access").

With COS_AUTH_TOKENS_FILE, every page needs a token with the admin role, presented either as
`authorization: Bearer <token>` (scripts) or once on the login page, which starts a session held in an
HttpOnly, SameSite=Strict cookie. A session keeps its token and checks it again on every request, so a
token taken out of the file ends the sessions opened with it. Sessions are bounded in number and age.

Requests that change something (every POST) must also come from the console's own pages: a POST
without an authorization header needs an `Origin` (or `Sec-Fetch-Site: same-origin`) naming this very
host, so a page on another site cannot make the browser act for the operator, with or without tokens.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from http.cookies import CookieError, SimpleCookie

from chiefofstate.api.token_file import TokenFile
from chiefofstate.core.auth import Role, Verdict

COOKIE = "cos_console"
MAX_SESSIONS = 256
SESSION_LIFETIME_S = 12 * 3600.0


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
        capacity: int = MAX_SESSIONS,
        lifetime_s: float = SESSION_LIFETIME_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tokens = tokens
        self._capacity = capacity
        self._lifetime_s = lifetime_s
        self._clock = clock
        self._sessions: OrderedDict[str, tuple[str, float]] = OrderedDict()  # id → (token, started)

    @property
    def required(self) -> bool:
        return self._tokens is not None

    def __len__(self) -> int:
        return len(self._sessions)

    def login(self, token: str) -> tuple[Verdict, str | None]:
        """The verdict on `token`, and a new session id when it is allowed."""
        if self._tokens is None:
            return Verdict.ALLOWED, None
        verdict = self._tokens.book.check(f"Bearer {token.strip()}", Role.ADMIN)
        if verdict is not Verdict.ALLOWED:
            return verdict, None
        session_id = secrets.token_urlsafe(32)
        self._sessions[session_id] = (token.strip(), self._clock())
        while len(self._sessions) > self._capacity:
            self._sessions.popitem(last=False)  # the oldest session makes room
        return verdict, session_id

    def logout(self, headers: Mapping[str, str]) -> None:
        session_id = cookie_value(headers, COOKIE)
        if session_id is not None:
            self._sessions.pop(session_id, None)

    def verdict(self, headers: Mapping[str, str]) -> tuple[Verdict, bool]:
        """(verdict, whether a session cookie carried it) for a request with `headers`."""
        if self._tokens is None:
            return Verdict.ALLOWED, False
        authorization = headers.get("authorization")
        if authorization is not None:
            return self._tokens.book.check(authorization, Role.ADMIN), False
        session_id = cookie_value(headers, COOKIE)
        session = self._sessions.get(session_id) if session_id is not None else None
        if session is None:
            return Verdict.UNAUTHENTICATED, False
        token, started = session
        if self._clock() - started > self._lifetime_s:
            self._sessions.pop(session_id or "", None)
            return Verdict.UNAUTHENTICATED, False
        return self._tokens.book.check(f"Bearer {token}", Role.ADMIN), True

    def token_of(self, headers: Mapping[str, str]) -> str | None:
        """The token a request acts with, for the calls a cluster member sends on to another one."""
        authorization = headers.get("authorization")
        if authorization is not None:
            return authorization.split(" ", 1)[-1].strip()
        session_id = cookie_value(headers, COOKIE)
        session = self._sessions.get(session_id) if session_id is not None else None
        return session[0] if session is not None else None
